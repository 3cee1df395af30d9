"""The CAM pipeline over many images: decode ahead in threads, compute maps in batches on the device, write
overlays, JSON and maps behind in threads; the localization scores of a CAM model on labelled images; building the
model from the command-line options (options.py defines them)."""

import io
import json
import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from caffecam.atomic import atomic_write_bytes
from caffecam.cam.drawing import contact_sheet, overlay
from caffecam.cam.localize import (
    DEFAULT_BOX_THRESHOLD,
    LocalizationTally,
    format_summary,
    map_box,
    path_key,
    read_boxes,
)
from caffecam.cam.maps import CamModel, upsample_maps
from caffecam.cam.shards import merge
from caffecam.data.images import DEFAULT_MAX_PIXELS, ImageLoadError, InputItem, load_image, output_stems
from caffecam.data.net_input import input_options
from caffecam.errors import CaffeCamError

# ---- the pipeline: decode ahead in threads, compute in batches, write behind in threads -----------------------------

@dataclass
class CamResult:
    item: InputItem
    image: np.ndarray | None  # the original image, H×W×3 BGR (None when it failed)
    error: str | None = None
    class_ids: np.ndarray | None = None  # (K,)
    probs: np.ndarray | None = None  # (K,)
    maps: np.ndarray | None = None  # (K, h, w) raw maps at feature resolution, rank order
    label_map: np.ndarray | None = None  # (h, w) map of the item's label, when asked for


# Overlays are photos under a heat map: deflate level 1 with run-length matching on left-differenced rows encodes
# them ×2–2.5 faster than OpenCV's default filters and strategy, in files within 10 % of the same size (measured).
PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
            cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]


def _ordered(pool, fn, items, window):
    pending = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def iter_cams(model, items, top_k=1, batch_size=16, workers=None, label_maps=False, max_pixels=DEFAULT_MAX_PIXELS):
    """One CamResult per InputItem, in order. Images are decoded and preprocessed by a thread pool ahead of the
    batched forward; a file that fails to load gives a result with `error` set and no maps."""
    workers = workers or min(8, (os.cpu_count() or 2) + 1)

    def decode(item):
        try:
            if label_maps and item.label is not None and not 0 <= item.label < model.num_classes:
                raise ImageLoadError(f"{item.path}: label {item.label} is outside the net's {model.num_classes} "
                                     "classes")
            image = load_image(item.path, max_pixels)
            return CamResult(item, image), model.preprocess(image)
        except ImageLoadError as exc:
            return CamResult(item, None, str(exc)), None

    def flush(group):
        ready = [(r, x) for r, x in group if x is not None]
        if ready:
            extra = None
            if label_maps:
                extra = np.array([[r.item.label if r.item.label is not None else 0] for r, _ in ready])
            out = model.run([x for _, x in ready], top_k, extra)
            for i, (r, _) in enumerate(ready):
                r.class_ids, r.probs, r.maps = out.class_ids[i], out.probs[i], out.maps[i, :top_k]
                if label_maps and r.item.label is not None:
                    r.label_map = out.maps[i, top_k]
        return [r for r, _ in group]

    with ThreadPoolExecutor(workers, thread_name_prefix="cam-decode") as pool:
        group, ok = [], 0
        for result, x in _ordered(pool, decode, items, 2 * batch_size + workers):
            group.append((result, x))
            ok += x is not None
            if ok == batch_size:
                yield from flush(group)
                group, ok = [], 0
        yield from flush(group)


THUMB = 200  # gallery cell height in pixels


def _strip(image, maps, tops, alpha):
    """One overlay panel per class (maps at image size), side by side."""
    panels = [overlay(image, maps[k], alpha, _caption(t, k, len(tops)), t["box"]) for k, t in enumerate(tops)]
    return panels[0] if len(panels) == 1 else np.hstack(panels)


def _caption(top, rank, count):
    text = f"{top['class_name']} {top['prob']:.1%}"
    return f"#{rank + 1} {text}" if count > 1 else text


def run_cam(model, items, out_dir=None, top_k=1, alpha=0.5, box_threshold=DEFAULT_BOX_THRESHOLD, save_maps=False,
            gallery=None, batch_size=16, workers=None, boxes=None, thresholds=None, max_pixels=DEFAULT_MAX_PIXELS,
            progress=True, gallery_limit=400, report=None, shard=None):
    """CAM over `items` (InputItems). Writes <stem>_cam.png/.json (and .npy with save_maps) into `out_dir` when given,
    a contact sheet to `gallery` when given, and scores localization against `boxes` ({path_key: [box]}) when
    given. Files are written by a thread pool while the next batches compute. `report` (a report.ReportWriter) is
    handed each result in those threads and writes its page at the end. With `shard` (a shards.Shard, under
    torchrun) this process takes its share of `items` and rank 0 writes the gallery, page and scores over all of them.

    Returns {"records": [per-image JSON dicts], "failures": [(path, message)], "localization": summary or None,
    "gallery": path or None, "report": path of the page or None}; None on the other ranks of a shard.
    """
    out_dir = Path(out_dir) if out_dir is not None else None
    stems = output_stems([it.path for it in items])
    tally = LocalizationTally(thresholds or [box_threshold], box_threshold) if boxes is not None else None
    draw = out_dir is not None or gallery is not None
    workers = workers or min(8, (os.cpu_count() or 2) + 1)

    def finish(res, i):
        stem = stems[i]
        h, w = res.image.shape[:2]
        up = upsample_maps(res.maps, w, h)
        tops = [{"class_id": int(c), "class_name": model.labels[c], "prob": float(p),
                 "box": map_box(up[k], box_threshold)} for k, (c, p) in enumerate(zip(res.class_ids, res.probs))]
        record = {"image": str(res.item.path), "width": w, "height": h, "method": model.method,
                  "layer": model.layers.feature_blob, "top_k": tops}
        thumb = scored = None
        if draw:
            strip = _strip(res.image, up, tops, alpha)
            if out_dir is not None:
                ok, png = cv2.imencode(".png", strip, PNG_FAST)
                atomic_write_bytes(out_dir / f"{stem}_cam.png", png.tobytes())
                atomic_write_bytes(out_dir / f"{stem}_cam.json", (json.dumps(record, indent=1) + "\n").encode())
                if save_maps:
                    buf = io.BytesIO()
                    np.save(buf, np.ascontiguousarray(res.maps, np.float32))
                    atomic_write_bytes(out_dir / f"{stem}_cam.npy", buf.getvalue())
            if gallery is not None:  # drawn again at thumbnail size, so its text is legible there
                s = min(THUMB / h, 4 * THUMB / w)
                tw, th = max(1, round(w * s)), max(1, round(h * s))
                small = cv2.resize(res.image, (tw, th), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
                scaled = [dict(t, box=[round(v * s) for v in t["box"]]) for t in tops]
                thumb = _strip(small, upsample_maps(res.maps, tw, th), scaled, alpha)
        gt = boxes.get(path_key(res.item.path)) if tally is not None else None
        if gt and res.label_map is not None:
            label = res.item.label
            label_map = up[0] if label == tops[0]["class_id"] else upsample_maps(res.label_map[None], w, h)[0]
            scored = (tops[0]["class_id"] == label, tally.score(label_map, gt), label)
        if report is not None:
            report.add(i, stem, res, record, up)
        return record, thumb, scored

    records, failures, thumbs, scores, unscored = [], [], [], [], 0
    span = shard.span(len(items)) if shard is not None else range(len(items))
    bar = tqdm(total=len(span), disable=None if progress else True, unit="img", desc="cam")

    def drain(i, fut):
        nonlocal unscored
        try:
            record, thumb, scored = fut.result()
        except OSError as exc:
            failures.append((i, str(items[i].path), f"{items[i].path}: cannot write the outputs ({exc})"))
            tqdm.write(failures[-1][2], file=sys.stderr)
        else:
            records.append((i, record))
            if thumb is not None and len(thumbs) < gallery_limit:
                top = record["top_k"][0]
                thumbs.append((i, thumb, f"{stems[i]}: {top['class_name']} {top['prob']:.0%}"))
            if scored is not None:
                scores.append((i, *scored))
            elif tally is not None:
                unscored += 1
        bar.update()

    pending = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="cam-write") as writer:
        # The report shows the true class's map beside the top-k ones, so it asks for the label maps too.
        label_maps = tally is not None or report is not None
        mine = iter_cams(model, [items[i] for i in span], top_k, batch_size, workers, label_maps, max_pixels)
        for i, res in zip(span, mine):
            if res.error:
                failures.append((i, str(res.item.path), res.error))
                tqdm.write(res.error, file=sys.stderr)
                bar.update()
                continue
            pending.append((i, writer.submit(finish, res, i)))
            while len(pending) > 2 * batch_size:
                drain(*pending.popleft())
        while pending:
            drain(*pending.popleft())
    bar.close()
    part = {"records": records, "failures": failures, "thumbs": thumbs, "scored": scores, "unscored": unscored,
            "entries": report.entries if report is not None else {}}
    part = shard.gather(part, gallery_limit) if shard is not None else merge([part])
    if part is None:
        return None
    records, failures = [r for _, r in part["records"]], [tuple(f[1:]) for f in part["failures"]]
    thumbs = part["thumbs"][:gallery_limit]
    if report is not None:
        report.entries = part["entries"]
    if gallery is not None and thumbs:
        ok, png = cv2.imencode(".png", contact_sheet([t for _, t, _ in thumbs], [c for _, _, c in thumbs], cell=THUMB))
        atomic_write_bytes(gallery, png.tobytes())
    summary = None
    if tally is not None:
        for _, *scored in part["scored"]:
            tally.record(*scored)
        summary = tally.summary()
        summary["unscored"] = part["unscored"]
    page = report.write(summary, failures) if report is not None else None
    return {"records": records, "failures": failures, "localization": summary,
            "gallery": str(gallery) if gallery is not None and thumbs else None, "report": page}


def evaluate_localization(model, items, boxes, thresholds=(DEFAULT_BOX_THRESHOLD,),
                          main_threshold=DEFAULT_BOX_THRESHOLD, batch_size=16, workers=None, progress=True,
                          max_pixels=DEFAULT_MAX_PIXELS, shard=None):
    """Top-1 accuracy, top-1 and GT-known localization accuracy of `model` (a caffecam.CamModel, or a Net with
    a GAP classifier) on `items` (InputItems with labels) against `boxes` ({path_key: [box]}, see read_boxes).

    Returns the summary dict (accuracy, loc_accuracy, gt_known_loc_accuracy at `main_threshold`, per_threshold, …)
    plus `failures` [(path, message)] and `unscored` (images without a label or a box); None on a shard's other
    ranks (see run_cam).
    """
    if not isinstance(model, CamModel):
        model = CamModel(model)
    if isinstance(boxes, (str, Path)):
        boxes = read_boxes(boxes)
    items = list(items)
    if not any(it.label is not None for it in items):
        raise CaffeCamError("localization needs labelled images: give a list file (`path label` per line)")
    out = run_cam(model, items, None, box_threshold=main_threshold, batch_size=batch_size, workers=workers,
                  boxes=boxes, thresholds=list(thresholds), max_pixels=max_pixels, progress=progress, shard=shard)
    if out is None:
        return None  # another rank of a shard: rank 0 has the scores
    summary = out["localization"]
    summary["failures"] = out["failures"]
    return summary


def model_from_args(args, device=None):
    """The CamModel the options name; `device` (a torchrun rank's) overrides --cpu's choice."""
    device = device or ("cpu" if args.cpu else None)
    return CamModel.from_files(args.model, args.weights, args.labels, feature_blob=args.feature_blob,
                               fc_layer=args.fc_layer, device=device,
                               channels_last=args.channels_last, tf32=args.tf32, method=args.method, layer=args.layer,
                               score_batch=args.batch_size, progress=not args.no_progress, bf16=args.bf16,
                               input_options=input_options(args))


def report_localization(summary, json_path=None, unscored_why="no label or no box"):
    """Print the scores (and how many images went unscored); write them to `json_path` when given."""
    for line in format_summary(summary):
        print(line)
    if summary["unscored"]:
        print(f"not scored ({unscored_why}): {summary['unscored']} image(s)")
    if json_path:
        atomic_write_bytes(json_path, (json.dumps(summary, indent=1) + "\n").encode())
