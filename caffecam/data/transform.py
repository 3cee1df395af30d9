"""Caffe's transform_param (crop, mirror, mean, scale) and image reading for the data layers.

Images are H×W×C uint8 in BGR order, as OpenCV loads them; the output is a float32 C×H×W array.
"""

import functools
import os

import cv2
import numpy as np

from caffecam.data.datum import read_mean_binaryproto
from caffecam.data.images import DEFAULT_MAX_PIXELS, opencv_reason, too_many_pixels
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def read_image(path, is_color=True, new_h=0, new_w=0, where=None, max_pixels=DEFAULT_MAX_PIXELS,
               fix="fix or remove that line of the list", drop="remove that line"):
    """Caffe's ReadImageToCVMat: H×W×C uint8 BGR (C=1 when not is_color), resized to new_w×new_h when both > 0.

    Raises CaffeCamError naming `where` (default: the path) and the file when it is missing, has more than
    `max_pixels` pixels (read from its header, before decoding: a decompression bomb allocates nothing) or
    cannot be decoded (Caffe: `Could not open or find file`), with `fix` (for a huge image: shrink it or `drop`),
    what to do about it.
    """
    where = where or str(path)
    if (new_h > 0) != (new_w > 0):
        raise CaffeCamError(f"{where}: new_height and new_width must both be 0 or both be > 0, got {new_h}, {new_w}")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(65536)
    except FileNotFoundError:
        raise CaffeCamError(f"{where}: image '{path}' does not exist; {fix}") from None
    except OSError as exc:
        raise CaffeCamError(f"{where}: image '{path}' cannot be read ({exc.strerror or exc}); {fix}") from None
    too_big = too_many_pixels(head, size, max_pixels)
    if too_big:
        raise CaffeCamError(f"{where}: image '{path}' {too_big} (--max-pixels); shrink it or {drop}")
    try:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE)
    except cv2.error as exc:  # e.g. over OpenCV's own pixel limit, for a format whose header is not read above
        raise CaffeCamError(f"{where}: image '{path}' cannot be decoded (OpenCV: {opencv_reason(exc)}); "
                            f"{fix}") from None
    if img is None:
        raise CaffeCamError(f"{where}: image '{path}' cannot be decoded (corrupt or not an image); {fix}")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise CaffeCamError(f"{where}: image '{path}' is {img.shape[1]}×{img.shape[0]} = "
                            f"{img.shape[0] * img.shape[1]:,} pixels, over the limit of {max_pixels:,} pixels "
                            f"(--max-pixels); shrink it or {drop}")
    if new_h > 0:
        img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if img.ndim == 2:
        img = img[:, :, None]
    return img


@functools.lru_cache(maxsize=8)
def _cached_mean(path):
    mean = read_mean_binaryproto(path)
    mean.setflags(write=False)
    return mean


def load_mean(tp, where="transform_param"):
    """The mean image of tp.mean_file (C×H×W float32, cached per path), or None; rejects mean_file + mean_value."""
    if tp.HasField("mean_file") and len(tp.mean_value):
        raise CaffeCamError(f"{where}: transform_param sets both mean_file and mean_value; keep one")
    if not tp.HasField("mean_file"):
        return None
    return _cached_mean(tp.mean_file)


def check_transform_param(tp, channels, where="transform_param"):
    """Errors Caffe's DataTransformer raises at set-up: both mean kinds, wrong mean_value count, both force flags."""
    load_mean(tp, where)
    if len(tp.mean_value) not in (0, 1, channels):
        raise CaffeCamError(f"{where}: {len(tp.mean_value)} mean_value entries for {channels}-channel images; "
                            f"give 1 (used for all channels) or {channels} (B, G, R order)")
    if tp.force_color and tp.force_gray:
        raise CaffeCamError(f"{where}: transform_param sets both force_color and force_gray; keep one")


def output_size(tp, height, width):
    """(H, W) of the transformed image."""
    return (tp.crop_size, tp.crop_size) if tp.crop_size else (height, width)


def transform(img, tp, phase, rng=None, mean=None, where="image", hwc=False):
    """Caffe's DataTransformer on one H×W×C image -> float32 C×H×W (H×W×C with hwc: channels_last batches are
    filled from it without a transpose; the values are the same).

    Order of random draws as in Caffe: mirror (only when tp.mirror, in either phase), then the crop's row offset,
    then its column offset (random in [0, H-crop] at TRAIN; (H-crop)//2 at TEST).
    value = (pixel - mean) * scale; a mean_file image is indexed at the source pixel, i.e. cropped at the same offset
    and not mirrored (Caffe subtracts before writing the pixel to its mirrored place).
    `mean`: the mean_file array (loaded from tp.mean_file when None). `rng`: numpy Generator for TRAIN crops/mirror.
    """
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[:, :, None]
    h, w, c = img.shape
    if mean is None:
        mean = load_mean(tp, where)
    if len(tp.mean_value) not in (0, 1, c):
        raise CaffeCamError(f"{where}: {len(tp.mean_value)} mean_value entries for a {c}-channel image; "
                            f"give 1 or {c}")
    crop = tp.crop_size
    need_rng = tp.mirror or (crop and phase == TRAIN)
    if need_rng and rng is None:
        raise CaffeCamError(f"{where}: transform needs a random generator for mirror / TRAIN crop")
    do_mirror = bool(tp.mirror and rng.integers(2))
    h_off = w_off = 0
    out_h, out_w = h, w
    if crop:
        if h < crop or w < crop:
            raise CaffeCamError(f"{where}: image is {w}x{h} (WxH), smaller than crop_size {crop}; "
                                "resize it (new_height/new_width) or lower crop_size")
        if phase == TRAIN:
            h_off = int(rng.integers(h - crop + 1))
            w_off = int(rng.integers(w - crop + 1))
        else:
            h_off, w_off = (h - crop) // 2, (w - crop) // 2
        out_h = out_w = crop
    x = img[h_off:h_off + out_h, w_off:w_off + out_w].astype(np.float32)  # H×W×C
    if mean is not None:
        if mean.shape != (c, h, w):
            raise CaffeCamError(f"{where}: image is {c}x{h}x{w} (CxHxW) but the mean file {tp.mean_file} is "
                                f"{'x'.join(map(str, mean.shape))}; Caffe needs the same size (resize the images or "
                                "recompute the mean)")
        x -= mean[:, h_off:h_off + out_h, w_off:w_off + out_w].transpose(1, 2, 0)
    elif len(tp.mean_value):
        x -= np.asarray(tp.mean_value, np.float32).reshape(1, 1, -1)
    if tp.scale != 1:
        x *= np.float32(tp.scale)
    if do_mirror:
        x = x[:, ::-1]
    return np.ascontiguousarray(x if hwc else x.transpose(2, 0, 1))
