"""Caffe's WindowData layer (R-CNN fine-tuning) as a feed: windows of images, cut out, warped and labelled.

The window file, read as whitespace-separated tokens, repeats for each image:
    # <image index>
    <image path>          (root_folder + path)
    <channels> <height> <width>
    <number of windows>
    <class> <overlap> <x1> <y1> <x2> <y2>      (one line per window, inclusive pixel corners)
A window with overlap ≥ fg_threshold is foreground (its class must be > 0); one with overlap < bg_threshold is
background (class 0); the others are never used. Each batch holds batch_size − int(batch_size · fg_fraction)
background windows, then the foreground ones, each drawn at random with replacement (Caffe draws from its own RNG;
here from (seed, phase, batch), so batches are reproducible and a resume continues the stream).

Cutting a window follows window_data_layer.cpp (load_batch): with context_pad > 0 or crop_mode "square" the window
is grown by crop_size / (crop_size − 2·context_pad) about its centre (square: to its longer side first), clipped
to the image, and the clipped part is warped so that the whole grown window would span crop_size; the part outside
the image stays 0. Mirroring flips the warped cut and moves it to the mirrored padding side. Pixels become
(pixel − mean) · window_data_param.scale, with transform_param's mean_value or mean_file (indexed at the output
position plus (mean width − crop_size) / 2 on both axes, as Caffe does); transform_param.scale is not used.
"""

import math
import os

import cv2
import numpy as np

from caffecam.data.hdf5 import StreamFeed
from caffecam.data.transform import load_mean
from caffecam.errors import CaffeCamError


def read_window_file(path, root_folder="", fg_threshold=0.5, bg_threshold=0.5):
    """-> (images [(path, (channels, height, width))], fg windows, bg windows); a window is
    (image index, label, overlap, x1, y1, x2, y2)."""
    if not os.path.isfile(path):
        raise CaffeCamError(f"window file '{path}' not found (relative paths start at {os.getcwd()}); fix "
                            "window_data_param.source")
    with open(path, encoding="utf-8", errors="replace") as f:
        tokens = f.read().split()
    pos, images, fg, bg, no = 0, [], [], [], 0  # no: the image being read, in file order

    def take(n, what):
        nonlocal pos
        if pos + n > len(tokens):
            raise CaffeCamError(f"{path}: ends inside image {no} while reading {what}")
        pos += n
        return tokens[pos - n:pos]

    def ints(values, what):
        try:
            return [int(v) for v in values]
        except ValueError:
            raise CaffeCamError(f"{path}: image {no}: {what} {' '.join(values)} are not integers") from None

    if not tokens:
        raise CaffeCamError(f"{path}: window file is empty")
    while pos < len(tokens):
        no = len(images)
        hashtag, index = take(2, "'# <image index>'")
        if hashtag != "#":
            raise CaffeCamError(f"{path}: expected '# <image index>' before image {no}, found '{hashtag}'")
        (index,) = ints([index], "image index")
        (image_path,) = take(1, "the image path")
        size = ints(take(3, "channels height width"), "channels height width")
        (count,) = ints(take(1, "the window count"), "window count")
        images.append((root_folder + image_path, tuple(size)))
        for _ in range(count):
            label, overlap, *box = take(6, "a window (class overlap x1 y1 x2 y2)")
            (label,), box = ints([label], "class"), ints(box, "window corners")
            try:
                overlap = float(overlap)
            except ValueError:
                raise CaffeCamError(f"{path}: image {no}: overlap '{overlap}' is not a number") from None
            if overlap >= fg_threshold:
                if label <= 0:
                    raise CaffeCamError(f"{path}: image {no}: foreground window (overlap {overlap}) "
                                        f"has class {label}; foreground classes are > 0 (0 is background)")
                fg.append((index, label, overlap, *box))
            elif overlap < bg_threshold:
                bg.append((index, 0, 0.0, *box))
    return images, fg, bg


def _round(x):
    """C's round(): halves away from zero."""
    return int(math.copysign(math.floor(abs(float(x)) + 0.5), x))


def window_geometry(box, img_h, img_w, crop, context_pad, square, mirror):
    """(x1, y1, x2, y2) of the image region to cut, the (width, height) to warp it to, and the (pad_w, pad_h) offset
    of the warped cut in the crop×crop output, in Caffe's float32 arithmetic."""
    x1, y1, x2, y2 = box
    f32 = np.float32
    if context_pad <= 0 and not square:
        return (x1, y1, x2, y2), (crop, crop), (0, 0)
    context_scale = f32(crop) / f32(crop - 2 * context_pad)
    half_h, half_w = f32((y2 - y1 + 1) / 2.0), f32((x2 - x1 + 1) / 2.0)
    cx, cy = f32(x1) + half_w, f32(y1) + half_h
    if square:
        half_h = half_w = max(half_h, half_w)
    x1, x2 = _round(cx - half_w * context_scale), _round(cx + half_w * context_scale)
    y1, y2 = _round(cy - half_h * context_scale), _round(cy + half_h * context_scale)
    unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
    pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
    pad_x2, pad_y2 = max(0, x2 - img_w + 1), max(0, y2 - img_h + 1)
    x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
    scale_x, scale_y = f32(crop) / f32(unclipped_w), f32(crop) / f32(unclipped_h)
    out_w, out_h = _round(f32(x2 - x1 + 1) * scale_x), _round(f32(y2 - y1 + 1) * scale_y)
    pad_x1, pad_x2 = _round(f32(pad_x1) * scale_x), _round(f32(pad_x2) * scale_x)
    pad_y1 = _round(f32(pad_y1) * scale_y)
    pad_h, pad_w = pad_y1, pad_x2 if mirror else pad_x1
    out_h, out_w = min(out_h, crop - pad_h), min(out_w, crop - pad_w)
    return (x1, y1, x2, y2), (out_w, out_h), (pad_w, pad_h)


class WindowFeed(StreamFeed):
    def __init__(self, lp, phase, seed=0, rank=0, world_size=1, start_batch=0, **_ignored):
        where = self.where = f"layer '{lp.name}' (WindowData)"
        p, tp = lp.window_data_param, lp.transform_param
        if len(lp.top) != 2:
            raise CaffeCamError(f"{where}: has {len(lp.top)} tops; WindowData has exactly 2 (data, label)")
        if tp.crop_size <= 0:
            raise CaffeCamError(f"{where}: transform_param.crop_size must be > 0 (the warped window size)")
        if p.batch_size <= 0:
            raise CaffeCamError(f"{where}: window_data_param.batch_size must be > 0")
        if p.crop_mode not in ("warp", "square"):
            raise CaffeCamError(f"{where}: crop_mode '{p.crop_mode}'; Caffe knows 'warp' and 'square'")
        if 2 * p.context_pad >= tp.crop_size:
            raise CaffeCamError(f"{where}: context_pad {p.context_pad} leaves nothing of crop_size {tp.crop_size}")
        self.images, self.fg, self.bg = read_window_file(p.source, p.root_folder, p.fg_threshold, p.bg_threshold)
        self.num_fg = int(np.float32(p.batch_size) * np.float32(p.fg_fraction))
        if not self.fg or not self.bg:
            raise CaffeCamError(f"{p.source}: {len(self.fg)} foreground and {len(self.bg)} background windows at "
                                f"fg_threshold {p.fg_threshold:g} / bg_threshold {p.bg_threshold:g}; Caffe needs both")
        for w in self.fg + self.bg:
            if not 0 <= w[0] < len(self.images):
                raise CaffeCamError(f"{p.source}: a window names image index {w[0]}, but the file lists "
                                    f"{len(self.images)} images (indices 0..{len(self.images) - 1}, in file order)")
        channels = self.images[-1][1][0]  # Caffe takes the channel count of the last image listed
        if len(tp.mean_value) not in (0, 1, channels):
            raise CaffeCamError(f"{where}: {len(tp.mean_value)} mean_value entries for {channels} channels")
        self.mean = load_mean(tp, where)
        self.mean_values = np.resize(np.asarray(tp.mean_value, np.float32), channels) if len(tp.mean_value) else None
        self.name, self.phase, self.seed = lp.name, phase, 0 if seed is None or seed < 0 else seed
        self.rank, self.world_size = rank, world_size
        self.top_names, self.batch_size, self.batches_done = list(lp.top), p.batch_size, start_batch
        self.crop, self.channels, self.p, self.mirror = tp.crop_size, channels, p, tp.mirror
        self.shapes = {lp.top[0]: (p.batch_size, channels, tp.crop_size, tp.crop_size), lp.top[1]: (p.batch_size,)}
        self._cache = {}

    def _image(self, i):
        path, (c, h, w) = self.images[i]
        img = self._cache.get(i)
        if img is None:
            img = cv2.imread(path, cv2.IMREAD_COLOR)
            if img is None:
                raise CaffeCamError(f"{self.p.source}: image {i} '{path}' cannot be read (missing or not an image)")
            if img.shape[2] != self.channels:
                raise CaffeCamError(f"{self.p.source}: image {i} '{path}' has {img.shape[2]} channels, the window "
                                    f"file says {self.channels}")
            self._cache = {i: img} if not self.p.cache_images else self._cache | {i: img}
        return img

    def item(self, window, do_mirror):
        """One warped window -> C×crop×crop float32."""
        img = self._image(window[0])
        (x1, y1, x2, y2), (out_w, out_h), (pad_w, pad_h) = window_geometry(
            window[3:], img.shape[0], img.shape[1], self.crop, self.p.context_pad, self.p.crop_mode == "square",
            do_mirror)
        if not (0 <= x1 <= x2 < img.shape[1] and 0 <= y1 <= y2 < img.shape[0]):
            raise CaffeCamError(f"{self.p.source}: window {window[3:]} of image {window[0]} lies outside its "
                                f"{img.shape[1]}x{img.shape[0]} pixels")
        cut = cv2.resize(img[y1:y2 + 1, x1:x2 + 1], (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        if do_mirror:
            cut = cut[:, ::-1]
        cut = cut.transpose(2, 0, 1).astype(np.float32)
        if self.mean is not None:
            off = (self.mean.shape[2] - self.crop) // 2
            cut = cut - self.mean[:, off + pad_h:off + pad_h + out_h, off + pad_w:off + pad_w + out_w]
        elif self.mean_values is not None:
            cut = cut - self.mean_values[:, None, None]
        out = np.zeros((self.channels, self.crop, self.crop), np.float32)
        out[:, pad_h:pad_h + out_h, pad_w:pad_w + out_w] = cut * np.float32(self.p.scale)
        return out

    def next(self):
        g = self.batches_done * self.world_size + self.rank
        rng = np.random.default_rng([self.seed, 3, self.phase, g])
        data = np.empty(self.shapes[self.top_names[0]], np.float32)
        labels = np.empty(self.batch_size, np.float32)
        k = 0
        for pool, count in ((self.bg, self.batch_size - self.num_fg), (self.fg, self.num_fg)):
            for _ in range(count):
                window = pool[int(rng.integers(len(pool)))]
                do_mirror = bool(self.mirror and rng.integers(2))
                data[k], labels[k] = self.item(window, do_mirror), window[1]
                k += 1
        self.batches_done += 1
        return {self.top_names[0]: data, self.top_names[1]: labels}
