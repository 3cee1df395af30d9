"""Drawing CAM results: heat maps, overlays with a label and a box, and the contact sheet."""

import math

import cv2
import numpy as np

from caffecam.errors import CaffeCamError

MIN_TEXT_SIZE = 48


# ---- drawing ------------------------------------------------------------------------------------------------------

def heatmap(cam):
    """A map (H×W float) -> jet colours (H×W×3 uint8 BGR), normalised min..max; a flat map is all blue (0)."""
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float32))
    lo, hi = float(cam.min()), float(cam.max())
    scaled = np.zeros(cam.shape, np.uint8) if hi <= lo else np.round((cam - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    return cv2.applyColorMap(scaled, cv2.COLORMAP_JET)


def put_label(img, text, origin=(0, 0), max_width=None):
    """Draw `text` in white on a black band at `origin` (top-left), shrunk to fit `max_width`; returns band height."""
    h, w = img.shape[:2]
    max_width = max_width or w
    scale = max(0.3, min(h, w) / 400.0)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    if tw > max_width - 4:
        scale *= max(0.1, (max_width - 4) / tw)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = origin
    band = th + base + 4
    cv2.rectangle(img, (x, y), (x + tw + 4, y + band), (0, 0, 0), cv2.FILLED)
    cv2.putText(img, text, (x + 2, y + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return band


def overlay(image, cam, alpha=0.5, text=None, box=None):
    """The image (H×W×3 BGR) blended with the jet heat map of `cam` (H×W): (1 − alpha)·image + alpha·heat, with the
    box [x1, y1, x2, y2] (x2, y2 exclusive) in green and `text` on top. Same size as the image; the text is left
    out of images under MIN_TEXT_SIZE pixels high or wide, which cannot hold a legible line."""
    out = cv2.addWeighted(image, 1.0 - alpha, heatmap(cam), alpha, 0.0)
    if box is not None:
        thick = max(1, round(min(image.shape[:2]) / 150))
        cv2.rectangle(out, (int(box[0]), int(box[1])), (int(box[2]) - 1, int(box[3]) - 1), (0, 255, 0), thick)
    if text and min(image.shape[:2]) >= MIN_TEXT_SIZE:
        put_label(out, text)
    return out


def contact_sheet(tiles, labels, cell=200, columns=None, label_height=20):
    """Tiles (BGR images of any size) scaled to fit `cell`-high cells, in a grid with a label under each."""
    if not tiles:
        raise CaffeCamError("gallery: no images to put in it")
    columns = columns or min(len(tiles), max(1, math.ceil(math.sqrt(len(tiles)))), 8)
    widths = [max(1, round(t.shape[1] * cell / t.shape[0])) for t in tiles]
    cell_w = min(max(widths), 4 * cell)
    rows = math.ceil(len(tiles) / columns)
    pad = 4
    sheet = np.full((rows * (cell + label_height + pad) + pad, columns * (cell_w + pad) + pad, 3), 32, np.uint8)
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        scale = min(cell / tile.shape[0], cell_w / tile.shape[1])
        tw, th = max(1, round(tile.shape[1] * scale)), max(1, round(tile.shape[0] * scale))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        thumb = cv2.resize(tile, (tw, th), interpolation=interp)
        r, c = divmod(i, columns)
        y, x = pad + r * (cell + label_height + pad), pad + c * (cell_w + pad)
        ty, tx = y + (cell - th) // 2, x + (cell_w - tw) // 2
        sheet[ty: ty + th, tx: tx + tw] = thumb
        strip = sheet[y + cell: y + cell + label_height, x: x + cell_w]
        _fit_text(strip, label)
    return sheet


def _fit_text(strip, text):
    h, w = strip.shape[:2]
    scale = 0.4
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    if tw > w - 2:
        scale *= (w - 2) / tw
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(strip, text, (1, min(h - 2, (h + th) // 2)), cv2.FONT_HERSHEY_SIMPLEX, scale, (235, 235, 235), 1,
                cv2.LINE_AA)
