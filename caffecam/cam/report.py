"""The CAM report: one page, index.html, to browse a run's results from file:// with no server and no internet.

What it writes into the run's output folder:

    index.html             the page (report_assets/index.html with the title filled in)
    report/*.js, *.css     its scripts and style, copied from report_assets/ (the project's own, no CDN)
    report/data.js         one row per image (name, top-1 class and probability, true class, size), the summary
    report/maps/NNNN.js    CHUNK images each: the raw maps (float32, base64), top-k classes, boxes, ground truth
    report/thumbs/N.jpg    the grid's thumbnail of input N: its top-1 overlay with the box
    report/images/N.jpg    the original, at most DETAIL_SIZE pixels on its long side

Browsers refuse fetch() of local files on a page opened from file://, but load scripts: so the data are
JavaScript files that <script> tags load (data.js with the page, a chunk of maps when one of its images opens).
The page recomputes boxes from the raw maps with localize.map_box's rule; the summary's numbers are computed
here (classification) and by localize.LocalizationTally (localization), never in the page.
"""

import base64
import html
import json
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from caffecam.atomic import atomic_write_bytes
from caffecam.cam.drawing import overlay
from caffecam.cam.localize import DEFAULT_BOX_THRESHOLD, IOU_THRESHOLD, path_key
from caffecam.cam.maps import upsample_maps
from caffecam.errors import CaffeCamError

ASSETS = Path(__file__).with_name("report_assets")
SCRIPTS = ("boxes.js", "summary.js", "grid.js", "detail.js")
PAGE = "index.html"
THUMB = 192  # thumbnails fit in THUMB×THUMB pixels
DETAIL_SIZE = 1024  # the detail view's copy of the original fits in this many pixels
CHUNK = 100  # images per maps file: one file loads when one of its images is opened
JPEG = [cv2.IMWRITE_JPEG_QUALITY, 88]


def _fit(image, size):
    """The image scaled down (never up) to fit size×size, and the scale."""
    h, w = image.shape[:2]
    s = min(1.0, size / max(h, w))
    if s == 1.0:
        return image, 1.0
    small = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return small, s


def _b64(array):
    return base64.b64encode(np.ascontiguousarray(array, "<f4").tobytes()).decode("ascii")


def _write(path, data):
    # Plain writes, no fsync: a run writes two of these per image, and a report cut short is rewritten whole by
    # the next run. index.html is written last, atomically, so a page that opens has all its files.
    with open(path, "wb") as f:
        f.write(data)


def _script(name, value):
    """A JavaScript file that assigns `value` (JSON) to window[name]."""
    return f"window.{name} = {json.dumps(value, separators=(',', ':'))};\n".encode()


def classification_summary(entries, num_classes):
    """Accuracy, per-class accuracy and the confusion matrix (rows: true class, columns: top-1) of the labelled
    entries, or None when none has a label."""
    labelled = [e for e in entries if e["label"] is not None]
    if not labelled:
        return None
    m = np.zeros((num_classes, num_classes), np.int64)
    for e in labelled:
        m[e["label"], e["ids"][0]] += 1
    per = [{"class_id": c, "images": int(m[c].sum()), "right": int(m[c, c]), "predicted": int(m[:, c].sum()),
            "accuracy": float(m[c, c] / m[c].sum()) if m[c].sum() else None} for c in range(num_classes)]
    return {"images": len(labelled), "right": int(np.trace(m)), "accuracy": float(np.trace(m) / len(labelled)),
            "confusion": m.tolist(), "per_class": per}


class ReportWriter:
    """Collects what the page needs from each result (add, from the pipeline's writer threads) and writes the
    page and its data at the end (write)."""

    def __init__(self, out_dir, labels, box_threshold=DEFAULT_BOX_THRESHOLD, alpha=0.5, top_k=1, boxes=None,
                 title=None, info=None):
        self.out = Path(out_dir)
        self.dir = self.out / "report"
        self.labels = list(labels)
        self.threshold, self.alpha, self.top_k = float(box_threshold), float(alpha), int(top_k)
        self.boxes = boxes
        self.title = title or f"CAM report: {self.out.resolve().name}"
        self.info = dict(info or {})
        self.entries = {}
        self.lock = threading.Lock()
        try:
            for sub in ("thumbs", "images", "maps"):
                (self.dir / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CaffeCamError(f"{self.dir}: cannot create the report's folder ({exc})") from None

    def add(self, index, stem, res, record, up):
        """One image: `res` (a pipeline.CamResult: image, raw maps, label map), its JSON `record`, and `up`, its
        top-k maps at the image's size (the pipeline has them already)."""
        h, w = res.image.shape[:2]
        tops = record["top_k"]
        small, s = _fit(res.image, THUMB)
        th, tw = small.shape[:2]
        box = [round(v * s) for v in tops[0]["box"]]
        small_map = up[0] if s == 1.0 else upsample_maps(res.maps[:1], tw, th)[0]
        ok, thumb = cv2.imencode(".jpg", overlay(small, small_map, self.alpha, None, box), JPEG)
        _write(self.dir / "thumbs" / f"{index}.jpg", thumb.tobytes())
        ok, detail = cv2.imencode(".jpg", _fit(res.image, DETAIL_SIZE)[0], JPEG)
        _write(self.dir / "images" / f"{index}.jpg", detail.tobytes())
        ids = [t["class_id"] for t in tops]
        label = res.item.label
        # The true class's map, when it is not among the top-k: where the net would have looked for it.
        label_map = None
        if label is not None and label not in ids and res.label_map is not None:
            label_map = _b64(res.label_map)
        gt = self.boxes.get(path_key(res.item.path)) if self.boxes is not None else None
        entry = {"file": index, "stem": stem, "image": record["image"], "w": w, "h": h, "label": label, "ids": ids,
                 "probs": [t["prob"] for t in tops], "boxes": [t["box"] for t in tops],
                 "map_w": int(res.maps.shape[2]), "map_h": int(res.maps.shape[1]), "maps": _b64(res.maps),
                 "label_map": label_map, "gt": gt}
        with self.lock:
            self.entries[index] = entry

    def write(self, localization=None, failures=()):
        """The page and its data; returns the page's path. `localization`: LocalizationTally's summary (with
        `per_class`), shown as it is."""
        entries = [self.entries[i] for i in sorted(self.entries)]
        try:
            for name in SCRIPTS + ("report.css",):
                shutil.copyfile(ASSETS / name, self.dir / name)
            for start in range(0, len(entries), CHUNK):
                chunk = [{k: v for k, v in e.items() if k not in ("stem", "w", "h")}
                         for e in entries[start:start + CHUNK]]
                _write(self.dir / "maps" / f"{start // CHUNK:04d}.js",
                       f"CAM_REPORT_CHUNK({start // CHUNK}, {json.dumps(chunk, separators=(',', ':'))});\n".encode())
            _write(self.dir / "data.js", _script("CAM_REPORT", self.data(entries, localization, failures)))
            page = (ASSETS / PAGE).read_text().replace("{{title}}", html.escape(self.title))
            atomic_write_bytes(self.out / PAGE, page.encode())
        except OSError as exc:
            raise CaffeCamError(f"{self.out}: cannot write the report ({exc})") from None
        return self.out / PAGE

    def data(self, entries, localization, failures):
        labelled = any(e["label"] is not None for e in entries)
        return {
            "title": self.title, "created": time.strftime("%Y-%m-%d %H:%M"), "info": self.info,
            "classes": self.labels, "threshold": self.threshold, "alpha": self.alpha, "top_k": self.top_k,
            "iou_threshold": IOU_THRESHOLD, "chunk": CHUNK, "has_labels": labelled,
            "has_boxes": any(e["gt"] for e in entries),
            # one row per image, in input order: [file number, name, top-1 class, its probability, true class or
            # -1, width, height]
            "columns": ["file", "name", "pred", "prob", "label", "width", "height"],
            "items": [[e["file"], e["stem"], e["ids"][0], round(e["probs"][0], 5),
                       -1 if e["label"] is None else e["label"], e["w"], e["h"]] for e in entries],
            "predicted": np.bincount(np.array([e["ids"][0] for e in entries], int),
                                     minlength=len(self.labels)).tolist(),
            "classification": classification_summary(entries, len(self.labels)),
            "localization": localization,
            "failures": [list(f) for f in failures],
        }
