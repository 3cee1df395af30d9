"""Boxes from class activation maps (the CAM paper's rule), IoU, and localization scores.

Boxes are [x1, y1, x2, y2] in pixels of the original image with x2, y2 exclusive (pixel edges): the box holds the
pixels x1 <= x < x2, y1 <= y < y2, a one-pixel box at (0, 0) is [0, 0, 1, 1], the whole W×H image [0, 0, W, H],
and the area is (x2 − x1)·(y2 − y1). The demo set's boxes.csv uses the same convention.
"""

import math
import os
from pathlib import Path

import cv2
import numpy as np

from caffecam.errors import CaffeCamError
from caffecam.textfile import content_lines

DEFAULT_BOX_THRESHOLD = 0.2
IOU_THRESHOLD = 0.5


def map_box(cam, threshold=DEFAULT_BOX_THRESHOLD):
    """The box around the largest 8-connected region where cam ≥ threshold · max(cam).

    Maps with no positive value (all zero, negative only, or not finite anywhere) point nowhere in particular:
    their box is the whole image. A constant positive map keeps every pixel, which also gives the whole image.
    Ties between equally large regions go to the first one in raster order.
    """
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2 or cam.size == 0:
        raise ValueError(f"map_box needs a non-empty 2-D map, got shape {cam.shape}")
    h, w = cam.shape
    whole = [0, 0, w, h]
    finite = np.isfinite(cam)
    peak = float(cam[finite].max()) if finite.any() else 0.0
    if not peak > 0.0:
        return whole
    mask = (finite & (cam >= threshold * peak)).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count < 2:  # cannot happen (the peak itself passes), kept for safety
        return whole
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, bw, bh = (int(v) for v in stats[best, :4])
    return [x, y, x + bw, y + bh]


def box_area(b):
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def iou(a, b):
    """Intersection over union of two boxes (x2, y2 exclusive)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, iw) * max(0.0, ih)
    union = box_area(a) + box_area(b) - inter
    return float(inter / union) if union > 0 else 0.0


def parse_thresholds(text):
    """'0.2', '0.1,0.2,0.3' or a sweep 'start:stop:step' (stop included) -> sorted list of floats in [0, 1]."""
    text = str(text).strip()
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            values = [round(start + i * step, 10) for i in range(n)]
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CaffeCamError(f"thresholds {text!r}: use a number, a comma list, or start:stop:step "
                            "(e.g. 0.1:0.5:0.05)") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise CaffeCamError(f"thresholds {text!r}: values must lie in [0, 1] (fractions of the map's maximum)")
    return sorted(set(values))


def path_key(path):
    """How images are matched between a list file and boxes.csv: the absolute, normalised path."""
    return os.path.normcase(os.path.abspath(os.path.normpath(str(path))))


def read_boxes(path, root=None):
    """boxes.csv (`path x1 y1 x2 y2` per line, space separated, paths relative to `root` or the file's folder)
    -> {path_key: [box, ...]} (an image may have several boxes; the best match counts)."""
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    boxes = {}
    for n, line in content_lines(path):
        parts = line.rsplit(None, 4)
        try:
            box = [float(v) for v in parts[1:]]
            if len(box) != 4:
                raise ValueError
        except ValueError:
            raise CaffeCamError(f"{path}:{n}: expected `path x1 y1 x2 y2`, got {line!r}") from None
        if box[2] <= box[0] or box[3] <= box[1]:
            raise CaffeCamError(f"{path}:{n}: box {box} is empty (x2, y2 are exclusive: need x2 > x1, y2 > y1)")
        boxes.setdefault(path_key(base / parts[0]), []).append(box)
    if not boxes:
        raise CaffeCamError(f"{path}: no boxes in the file")
    return boxes


def best_iou(box, gt_boxes):
    return max(iou(box, g) for g in gt_boxes)


class LocalizationTally:
    """Accumulates per-image outcomes; summary() gives the CAM paper's three numbers for each threshold, and
    per true class (`per_class`) at the main threshold."""

    def __init__(self, thresholds, main_threshold=DEFAULT_BOX_THRESHOLD):
        self.thresholds = sorted(set(thresholds) | {main_threshold})
        self.main = main_threshold
        self.n = self.correct = 0
        self.loc = [0] * len(self.thresholds)
        self.gt_known = [0] * len(self.thresholds)
        self.by_class = {}  # true class -> [images, right, loc hits, gt-known hits] at the main threshold

    def score(self, label_map, gt_boxes):
        """Per threshold: does the box of the true class's map (original image size) hit a ground-truth box?"""
        return [best_iou(map_box(label_map, t), gt_boxes) >= IOU_THRESHOLD for t in self.thresholds]

    def record(self, right, gt_hits, label=None):
        """One image: `right` (top-1 is the true class), `gt_hits` (from score), `label` (its true class, for the
        per-class numbers)."""
        self.n += 1
        self.correct += bool(right)
        for i, hit in enumerate(gt_hits):
            self.gt_known[i] += bool(hit)
            # With the right class the predicted class's map is the true class's map.
            self.loc[i] += bool(right and hit)
        if label is not None:
            hit = bool(gt_hits[self.thresholds.index(self.main)])
            counts = self.by_class.setdefault(int(label), [0, 0, 0, 0])
            for j, v in enumerate((1, bool(right), bool(right and hit), hit)):
                counts[j] += v

    def add(self, pred, label, label_map, gt_boxes):
        """`label_map`: the true class's map at original image size (also the predicted one when right)."""
        self.record(int(pred) == int(label), self.score(label_map, gt_boxes), int(label))

    def summary(self):
        if not self.n:
            raise CaffeCamError("localization: no image had both a label and a ground-truth box")
        per = [{"threshold": t, "loc_accuracy": lo / self.n, "gt_known_loc_accuracy": g / self.n}
               for t, lo, g in zip(self.thresholds, self.loc, self.gt_known)]
        main = next(p for p in per if p["threshold"] == self.main)
        best = max(per, key=lambda p: (p["loc_accuracy"], p["gt_known_loc_accuracy"]))
        return {"images": self.n, "accuracy": self.correct / self.n, "threshold": self.main,
                "loc_accuracy": main["loc_accuracy"], "gt_known_loc_accuracy": main["gt_known_loc_accuracy"],
                "iou_threshold": IOU_THRESHOLD, "best_threshold": best["threshold"],
                "best_loc_accuracy": best["loc_accuracy"], "per_threshold": per,
                "per_class": [{"class_id": c, "images": n, "accuracy": right / n, "loc_accuracy": lo / n,
                               "gt_known_loc_accuracy": g / n}
                              for c, (n, right, lo, g) in sorted(self.by_class.items())]}


def format_summary(s):
    lines = [f"images scored: {s['images']}",
             f"top-1 classification accuracy: {s['accuracy']:.4f}",
             f"top-1 localization accuracy (IoU >= {s['iou_threshold']}, threshold {s['threshold']:g}): "
             f"{s['loc_accuracy']:.4f}",
             f"GT-known localization accuracy (threshold {s['threshold']:g}): {s['gt_known_loc_accuracy']:.4f}"]
    if len(s["per_threshold"]) > 1:
        lines.append("threshold  loc_acc  gt_known_loc_acc")
        lines += [f"{p['threshold']:9.3f}  {p['loc_accuracy']:7.4f}  {p['gt_known_loc_accuracy']:16.4f}"
                  for p in s["per_threshold"]]
    return lines
