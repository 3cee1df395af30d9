"""Robust image loading (any depth, channel count or size -> 8-bit BGR) and input lists.

A file that cannot be used raises ImageLoadError (a CaffeCamError): callers report it by name and go on.
"""

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from caffecam.errors import CaffeCamError
from caffecam.textfile import content_lines

DEFAULT_MAX_PIXELS = 100_000_000
IMAGE_EXTS = {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".pbm", ".pgm", ".ppm",
              ".pnm", ".pxm", ".jp2", ".gif", ".exr", ".hdr", ".pic", ".sr", ".ras", ".avif"}
LIST_EXTS = {".txt", ".lst", ".list"}


class ImageLoadError(CaffeCamError):
    """One image could not be used; the message names the file."""


# ---- header sniffing: size before decoding ------------------------------------------------------------------------

def _jpeg_size(head):
    i = 2
    while i + 9 < len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = struct.unpack(">H", head[i + 2:i + 4])[0]
        # SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", head[i + 5:i + 9])
            return w, h
        i += 2 + length
    return None


def header_size(head):
    """(width, height) read from the first bytes of a PNG, JPEG, GIF, BMP, WebP or PNM file, else None."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(head)
    if head[:4] in (b"GIF8",) and len(head) >= 10:
        return struct.unpack("<HH", head[6:10])
    if head[:2] == b"BM" and len(head) >= 26:
        w, h = struct.unpack("<ii", head[18:26])
        return abs(w), abs(h)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        kind = head[12:16]
        if kind == b"VP8X":
            return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
        if kind == b"VP8L":
            bits = int.from_bytes(head[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if kind == b"VP8 ":
            w, h = struct.unpack("<HH", head[26:30])
            return w & 0x3FFF, h & 0x3FFF
    if head[:1] == b"P" and head[1:2] in b"123456":
        fields = head[2:].split()
        try:
            return int(fields[0]), int(fields[1])
        except (IndexError, ValueError):
            return None
    return None


# ---- size limits and OpenCV's refusals --------------------------------------------------------------------------

def too_many_pixels(head, size, max_pixels):
    """Why an image file is too large to decode: `is W×H = N pixels, over the limit of M` from its header (PNG,
    JPEG, GIF, BMP, WebP, PNM), or from its byte size for other formats; None when it may be decoded."""
    dims = header_size(head)
    if dims is not None and dims[0] * dims[1] > max_pixels:
        return f"is {dims[0]}×{dims[1]} = {dims[0] * dims[1]:,} pixels, over the limit of {max_pixels:,} pixels"
    # A compressed file is smaller than its pixels; 16-bit RGBA uncompressed is 8 bytes a pixel.
    if size > 8 * max_pixels + (1 << 20):
        return f"is a file of {size:,} bytes, too large for an image of at most {max_pixels:,} pixels"
    return None


def opencv_reason(exc):
    """A cv2.error as a short phrase: OpenCV's failed condition (e.g. its own pixel limit), on one line."""
    text = " ".join(str(exc).split())
    m = re.search(r"error: \([^)]*\) (.*?)(?: in function .*)?$", text)
    return m.group(1) if m else text


# ---- decoding -----------------------------------------------------------------------------------------------------

def _to_uint8(img):
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return np.round(img / 257.0).astype(np.uint8)  # 65535 -> 255
    if np.issubdtype(img.dtype, np.floating):  # HDR/EXR/float TIFF: taken as [0, 1]
        return np.round(np.clip(np.nan_to_num(img), 0.0, 1.0) * 255.0).astype(np.uint8)
    if np.issubdtype(img.dtype, np.integer):
        top = float(np.iinfo(img.dtype).max)
        return np.round(np.clip(img, 0, None) * (255.0 / top)).astype(np.uint8)
    raise ValueError(f"pixel type {img.dtype} is not supported")


def to_bgr8(img):
    """Any decoded image (gray, gray+alpha, BGR, BGRA; 8/16-bit, float) -> H×W×3 uint8 BGR.

    Alpha is composited on black (a transparent pixel becomes black), so what the net sees matches what is drawn.
    """
    img = _to_uint8(img)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"unexpected image shape {img.shape}")
    channels = img.shape[2]
    if channels in (2, 4):
        alpha = img[:, :, -1:].astype(np.float32) / 255.0
        img = np.round(img[:, :, :-1].astype(np.float32) * alpha).astype(np.uint8)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img)


def load_image(path, max_pixels=DEFAULT_MAX_PIXELS):
    """Read `path` as H×W×3 uint8 BGR. Raises ImageLoadError (one line naming the file) when it cannot.

    The pixel count is read from the file header before decoding (PNG, JPEG, GIF, BMP, WebP, PNM), so a huge
    image is rejected without allocating it; other formats are checked against the file size first and after
    decoding. JPEGs are decoded with their EXIF orientation applied, as viewers show them.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(65536)
    except FileNotFoundError:
        raise ImageLoadError(f"{path}: file not found") from None
    except OSError as exc:
        raise ImageLoadError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if size == 0:
        raise ImageLoadError(f"{path}: empty file, not an image")
    shrink = "shrink it first (e.g. to a few megapixels)"
    reason = too_many_pixels(head, size, max_pixels)
    if reason:
        raise ImageLoadError(f"{path}: image {reason}; {shrink}")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageLoadError(f"{path}: cannot read ({exc.strerror or exc})") from None
    flag = cv2.IMREAD_COLOR if head[:2] == b"\xff\xd8" else cv2.IMREAD_UNCHANGED
    try:
        img = cv2.imdecode(data, flag)
    except cv2.error as exc:
        raise ImageLoadError(f"{path}: OpenCV refuses to decode it ({opencv_reason(exc)})") from None
    if img is None or img.size == 0:
        raise ImageLoadError(f"{path}: not an image, or a damaged one (OpenCV cannot decode it)")
    h, w = img.shape[:2]
    if h * w > max_pixels:
        raise ImageLoadError(f"{path}: image is {w}×{h} = {w * h:,} pixels, over the limit of {max_pixels:,} pixels; "
                             f"{shrink}")
    try:
        return to_bgr8(img)
    except ValueError as exc:
        raise ImageLoadError(f"{path}: {exc}") from None


# ---- inputs: files, folders, list files ---------------------------------------------------------------------------

@dataclass(frozen=True)
class InputItem:
    path: Path
    label: int | None = None


def read_list_file(path, root=None):
    """ImageData list (`path label` per line, split at the last space) -> [InputItem]; relative paths are
    resolved against `root`, or the list's own folder."""
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    items = []
    for n, line in content_lines(path):
        name, _, label = line.rpartition(" ")
        if not name:
            name, label = label, None
        elif not label.lstrip("-").isdigit():
            raise CaffeCamError(f"{path}:{n}: expected `path label` with an integer label, got {line!r}")
        items.append(InputItem(base / name.strip(), None if label is None else int(label)))
    return items


def collect_inputs(inputs, root=None):
    """Image files, folders (searched recursively for image extensions) and list files -> [InputItem].

    A path that does not exist is a user error; files inside lists that are missing fail later, one by one.
    """
    items = []
    for arg in inputs:
        p = Path(arg)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file()
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            items += [InputItem(f) for f in found]
        elif p.is_file():
            if p.suffix.lower() in LIST_EXTS:
                items += read_list_file(p, root)
            else:
                items.append(InputItem(p))
        else:
            raise CaffeCamError(f"{arg}: no such file or folder")
    return items


def output_stems(paths):
    """A distinct output name per path: the file stem, with parent folder names prepended where stems clash."""
    full = [os.path.normpath(p) for p in paths]
    parts = [Path(p).with_suffix("").parts for p in full]
    depth = [1] * len(parts)
    while True:
        names = ["__".join(pp[-d:]) for pp, d in zip(parts, depth)]
        groups = {}
        for i, name in enumerate(names):
            groups.setdefault(name, []).append(i)
        clash = [i for group in groups.values() if len({full[j] for j in group}) > 1 for i in group
                 if depth[i] < len(parts[i])]
        if not clash:
            break
        for i in clash:
            depth[i] += 1
    seen = {}
    out = []
    for name in names:  # the same file listed twice
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out
