"""Class activation maps (Zhou et al., CVPR 2016) for nets ending in global average pooling + InnerProduct.

The map of class c is M_c(x, y) = Σ_k w[c, k] · A_k(x, y): A_k are the feature maps feeding the global average
pooling, w[c] the classifier row of c. The bias is left out, as in the paper. Maps for all requested classes are
one einsum on the device; the per-channel loop and an autograd Grad-CAM are kept as references.
"""

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
import torch
import torch.nn.functional as F
from tqdm import tqdm

from caffecam.errors import CaffeCamError
from caffecam.images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    InputItem,
    contact_sheet,
    load_image,
    output_stems,
    overlay,
)
from caffecam.localize import DEFAULT_BOX_THRESHOLD, LocalizationTally, map_box, path_key
from caffecam.net import TEST, Net
from caffecam.prototxt import atomic_write_bytes, read_net
from caffecam.weights import copy_weights, read_caffemodel

DEFAULT_MEAN = (104.0, 117.0, 123.0)  # B, G, R
# Layers between the pooling and the classifier that leave the pooled values alone (at TEST).
PASS_THROUGH = {"Dropout", "Flatten", "Split", "Reshape"}


def read_class_labels(path):
    """class_labels.csv (`id name` per line, space separated; ids 0..N−1) -> [name by id]."""
    try:
        lines = open(path).read().splitlines()
    except FileNotFoundError:
        raise CaffeCamError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CaffeCamError(f"{path}: cannot read ({exc})") from None
    names = {}
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise CaffeCamError(f"{path}:{n}: expected `id name` (e.g. `0 bicycling`), got {line!r}")
        if int(parts[0]) in names:
            raise CaffeCamError(f"{path}:{n}: class id {parts[0]} given twice")
        names[int(parts[0])] = parts[1].strip()
    if sorted(names) != list(range(len(names))) or not names:
        raise CaffeCamError(f"{path}: class ids must be 0..N-1 without gaps, got {sorted(names)[:10]}")
    return [names[i] for i in range(len(names))]


def parse_mean(text):
    """'104,117,123' (B,G,R) or one value -> tuple of floats."""
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) not in (1, 3):
        raise CaffeCamError(f"--mean {text!r}: give B,G,R values (e.g. 104,117,123) or a single value")
    return values


# ---- finding the feature blob and the classifier ------------------------------------------------------------------

@dataclass(frozen=True)
class CamLayers:
    feature_blob: str  # the blob the global average pooling reads (A_k)
    fc_layer: str  # the InnerProduct classifier (w)
    score_blob: str  # its top (class scores before softmax)
    prob_blob: str | None  # the Softmax over the scores, when the net has one
    end_layer: str  # the last layer the forward pass needs
    pool_layer: str | None


def _writer_before(net, blob, index):
    """Index of the last layer before `index` that writes `blob` (in-place layers included), or None."""
    for i in range(index - 1, -1, -1):
        if blob in net.layer_params[i].top:
            return i
    return None


def _is_gap(net, lp):
    p = lp.pooling_param
    if p.pool != p.AVE:
        return False
    if p.global_pooling:
        return True
    shape = net.blob_shapes[lp.bottom[0]]
    kernel = (p.kernel_h, p.kernel_w) if p.HasField("kernel_h") else (p.kernel_size,) * 2
    pad = (p.pad_h, p.pad_w) if p.HasField("pad_h") or p.HasField("pad_w") else (p.pad,) * 2
    return len(shape) == 4 and tuple(kernel) == tuple(shape[2:]) and pad == (0, 0)


def _gap_feeding(net, index):
    """The global-average Pooling layer feeding layer `index` (through pass-through layers), or None."""
    blob, i = net.layer_params[index].bottom[0], index
    while True:
        i = _writer_before(net, blob, i)
        if i is None:
            return None
        lp = net.layer_params[i]
        if lp.type == "Pooling":
            return lp if _is_gap(net, lp) else None
        if lp.type not in PASS_THROUGH:
            return None
        blob = lp.bottom[0]


def find_cam_layers(net, feature_blob=None, fc_layer=None):
    """Locate the classifier (an InnerProduct fed by a global average pooling) and the blob that pooling reads.

    `fc_layer` / `feature_blob` narrow the search; given both, a net without the pooling is accepted as long as
    the classifier's input width equals the feature blob's channel count.
    """
    names = [lp.name for lp in net.layer_params]
    if fc_layer is not None and fc_layer not in names:
        raise CaffeCamError(f"--fc-layer {fc_layer}: no such layer in net '{net.name}'")
    if feature_blob is not None and feature_blob not in net.blob_shapes:
        raise CaffeCamError(f"--feature-blob {feature_blob}: no such blob in net '{net.name}'")
    found = None
    for index in range(len(names) - 1, -1, -1):
        lp = net.layer_params[index]
        if lp.type != "InnerProduct" or (fc_layer is not None and lp.name != fc_layer):
            continue
        pool = _gap_feeding(net, index)
        if pool is not None and feature_blob in (None, pool.bottom[0]):
            found = (index, pool.bottom[0], pool.name)
            break
        if fc_layer is not None and feature_blob is not None:
            found = (index, feature_blob, None)
            break
    if found is None:
        wanted = "an InnerProduct layer" if fc_layer is None else f"InnerProduct '{fc_layer}'"
        src = "a blob" if feature_blob is None else f"blob '{feature_blob}'"
        raise CaffeCamError(
            f"net '{net.name}': found no {wanted} fed by a global average pooling of {src} (looked for a Pooling "
            "layer with pool: AVE and global_pooling: true or a kernel covering its whole input, whose top feeds an "
            "InnerProduct); CAM needs that structure, or name both --feature-blob and --fc-layer")
    index, feature, pool_name = found
    fc = net.layer_params[index]
    if fc.type != "InnerProduct":
        raise CaffeCamError(f"--fc-layer {fc.name}: is a {fc.type} layer, not an InnerProduct")
    fshape = net.blob_shapes[feature]
    width = classifier_weight(net, fc.name).shape[1]
    if len(fshape) != 4 or fshape[1] != width:
        raise CaffeCamError(f"feature blob '{feature}' has shape {fshape} but classifier '{fc.name}' takes {width} "
                            "inputs: CAM needs one classifier weight per feature channel")
    score = fc.top[0]
    prob, end = None, fc.name
    for lp in net.layer_params[index + 1:]:
        if lp.type == "Softmax" and list(lp.bottom) == [score]:
            prob, end = lp.top[0], lp.name
            break
    return CamLayers(feature, fc.name, score, prob, end, pool_name)


def classifier_weight(net, fc_layer):
    """The classifier's weight as (num_classes, channels)."""
    layer = net.layer_by_name[fc_layer]
    weight = layer.blobs[0]
    return weight.t() if getattr(layer, "transpose", False) else weight


# ---- the maps -----------------------------------------------------------------------------------------------------

def cam_maps(features, weight, class_ids):
    """features (N, C, h, w), weight (classes, C), class_ids (N, K) -> maps (N, K, h, w), one tensor operation."""
    rows = weight[class_ids.long()]  # (N, K, C)
    return torch.einsum("nkc,nchw->nkhw", rows.to(features.dtype), features)


def loop_cam_maps(features, weight, class_ids):
    """Reference: the classic pycaffe recipe, a Python loop adding w[c, k]·A_k channel by channel (NumPy)."""
    features = np.asarray(torch.as_tensor(features).detach().cpu(), dtype=np.float32)
    weight = np.asarray(torch.as_tensor(weight).detach().cpu(), dtype=np.float32)
    class_ids = np.asarray(torch.as_tensor(class_ids).cpu())
    n, c, h, w = features.shape
    out = np.zeros((n, class_ids.shape[1], h, w), np.float32)
    for i in range(n):
        for k, cls in enumerate(class_ids[i]):
            cam = np.zeros((h, w), np.float32)
            for ch in range(c):
                cam += weight[cls, ch] * features[i, ch]
            out[i, k] = cam
    return out


def gradcam_maps(net, x, class_ids, feature_blob, score_blob=None):
    """Reference: Grad-CAM by autograd. α_k = mean over positions of ∂y_c/∂A_k; map = ReLU(Σ_k α_k·A_k).

    For a GAP net y_c = Σ_k w[c, k]·(1/Z)·Σ_xy A_k(x, y) + b_c (Z = h·w), so α_k = w[c, k]/Z and the Grad-CAM map is
    ReLU(M_c)/Z: the CAM map up to the positive factor 1/Z, negative parts cut.
    """
    if score_blob is None:
        score_blob = find_cam_layers(net, feature_blob=feature_blob).score_blob
    class_ids = torch.as_tensor(class_ids).long()
    x = x.detach().clone()
    with torch.enable_grad():
        blobs = net(x)
        feats, scores = blobs[feature_blob], blobs[score_blob].flatten(1)
        out = []
        for k in range(class_ids.shape[1]):  # over requested ranks, not channels
            chosen = scores.gather(1, class_ids[:, k:k + 1].to(scores.device)).sum()
            (grad,) = torch.autograd.grad(chosen, feats, retain_graph=k + 1 < class_ids.shape[1])
            alpha = grad.mean((2, 3), keepdim=True)
            out.append(F.relu((alpha * feats).sum(1)))
    return torch.stack(out, 1).detach()


def upsample_maps(maps, width, height):
    """(K, h, w) maps -> (K, height, width), bilinear with pixel centres aligned (as F.interpolate with
    align_corners=False)."""
    return np.stack([cv2.resize(np.asarray(m, np.float32), (int(width), int(height)), interpolation=cv2.INTER_LINEAR)
                     for m in maps])


# ---- the model: preprocessing, batched forward, top-k maps --------------------------------------------------------

@dataclass
class CamBatch:
    class_ids: np.ndarray  # (N, K) in rank order
    probs: np.ndarray  # (N, K)
    all_probs: np.ndarray  # (N, classes)
    maps: np.ndarray  # (N, K + extra, h, w) float32 at feature resolution


class CamModel:
    """A deploy net ready for CAM: finds the layers, preprocesses images, runs batches on the device."""

    def __init__(self, net, labels=None, feature_blob=None, fc_layer=None, mean=DEFAULT_MEAN, device=None,
                 channels_last=None):
        self.net = net.eval()
        self.layers = find_cam_layers(net, feature_blob, fc_layer)
        images = [b for b in net.input_blobs if len(net.blob_shapes[b]) == 4]
        if not images:
            raise CaffeCamError(f"net '{net.name}': no 4-D image input blob among {net.input_blobs}")
        self.input_blob = images[0]
        channels, *self.input_size = net.blob_shapes[self.input_blob][1:]
        if channels != 3:
            raise CaffeCamError(f"net '{net.name}': input '{self.input_blob}' has {channels} channels; CAM feeds "
                                "3-channel BGR images")
        self.device = torch.device(device if device else ("cuda" if torch.cuda.is_available() else "cpu"))
        # channels_last measured faster here on the CPU as well (GoogLeNet-CAM, batch 16: 2.3-3.6 s vs 3.6-4.6 s).
        self.channels_last = True if channels_last is None else bool(channels_last)
        self.net.to(self.device)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.weight = classifier_weight(net, self.layers.fc_layer).detach()
        self.num_classes = self.weight.shape[0]
        if labels is not None and len(labels) != self.num_classes:
            raise CaffeCamError(f"{len(labels)} class labels for a classifier of {self.num_classes} classes "
                                f"('{self.layers.fc_layer}'): wrong labels file or wrong prototxt?")
        self.labels = list(labels) if labels is not None else [str(i) for i in range(self.num_classes)]
        self.mean = np.asarray(mean, np.float32).reshape(-1)
        if self.mean.size not in (1, 3):
            raise CaffeCamError(f"--mean {mean}: give one value or three (B,G,R)")

    @classmethod
    def from_files(cls, model, weights, labels=None, **kwargs):
        net = Net(read_net(model), TEST)
        report = copy_weights(net, read_caffemodel(weights), str(weights))
        if report.fresh:
            raise CaffeCamError(f"{weights}: has no weights for layers {', '.join(report.fresh[:5])} of {model}, "
                                "so their maps would be noise; use a snapshot trained for this net (`make train`)")
        return cls(net, read_class_labels(labels) if labels else None, **kwargs)

    def preprocess(self, image):
        """H×W×3 uint8 BGR -> the net's input as H'×W'×3 float32: whole image resized, mean subtracted, [0, 255]."""
        h, w = self.input_size
        if image.shape[:2] != (h, w):
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        return image.astype(np.float32) - self.mean

    def to_input(self, batch):
        """Preprocessed H×W×3 arrays -> an N×3×H×W tensor on the device (channels_last strides when asked)."""
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
        x = x if self.channels_last else x.contiguous()
        return x.to(self.device, non_blocking=True)

    def forward(self, x):
        """{blob: tensor} up to the classifier (or its Softmax); other inputs (e.g. `label`) are fed zeros."""
        feeds = {self.input_blob: x}
        for b in self.net.input_blobs:
            if b != self.input_blob:
                feeds[b] = torch.zeros((x.shape[0],) + tuple(self.net.blob_shapes[b][1:]), device=x.device)
        return self.net.forward(feeds, end=self.layers.end_layer)

    def run(self, batch, top_k=1, extra_ids=None):
        """Top-k classes, their probabilities and maps for a batch of preprocessed images; `extra_ids` (N, E)
        appends the maps of given classes (e.g. the true ones) after the top-k."""
        if not 1 <= top_k <= self.num_classes:
            raise CaffeCamError(f"--top-k {top_k}: must be between 1 and the {self.num_classes} classes")
        with torch.inference_mode():
            blobs = self.forward(self.to_input(batch))
            scores = blobs[self.layers.score_blob].float().flatten(1)
            probs = blobs[self.layers.prob_blob].float().flatten(1) if self.layers.prob_blob else scores.softmax(1)
            top_p, top_ids = probs.topk(top_k, dim=1)
            ids = top_ids
            if extra_ids is not None:
                ids = torch.cat([top_ids, torch.as_tensor(extra_ids, device=ids.device).long()], 1)
            maps = cam_maps(blobs[self.layers.feature_blob].float(), self.weight.float(), ids)
            return CamBatch(top_ids.cpu().numpy(), top_p.cpu().numpy(), probs.cpu().numpy(),
                            maps.cpu().numpy().astype(np.float32, copy=False))


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
            progress=True, gallery_limit=400):
    """CAM over `items` (InputItems). Writes <stem>_cam.png/.json (and .npy with save_maps) into `out_dir` when given,
    a contact sheet to `gallery` when given, and scores localization against `boxes` ({path_key: [box]}) when
    given. Files are written by a thread pool while the next batches compute.

    Returns {"records": [per-image JSON dicts], "failures": [(path, message)], "localization": summary or None}.
    """
    out_dir = Path(out_dir) if out_dir is not None else None
    stems = output_stems([it.path for it in items])
    tally = LocalizationTally(thresholds or [box_threshold], box_threshold) if boxes is not None else None
    draw = out_dir is not None or gallery is not None
    workers = workers or min(8, (os.cpu_count() or 2) + 1)

    def finish(res, stem):
        h, w = res.image.shape[:2]
        up = upsample_maps(res.maps, w, h)
        tops = [{"class_id": int(c), "class_name": model.labels[c], "prob": float(p),
                 "box": map_box(up[k], box_threshold)} for k, (c, p) in enumerate(zip(res.class_ids, res.probs))]
        record = {"image": str(res.item.path), "width": w, "height": h, "top_k": tops}
        thumb = scored = None
        if draw:
            strip = _strip(res.image, up, tops, alpha)
            if out_dir is not None:
                ok, png = cv2.imencode(".png", strip, [cv2.IMWRITE_PNG_COMPRESSION, 1])
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
            scored = (tops[0]["class_id"] == label, tally.score(label_map, gt))
        return record, thumb, scored

    records, failures, thumbs, captions, unscored = [], [], [], [], 0
    bar = tqdm(total=len(items), disable=None if progress else True, unit="img", desc="cam")

    def drain(i, fut):
        nonlocal unscored
        try:
            record, thumb, scored = fut.result()
        except OSError as exc:
            failures.append((str(items[i].path), f"{items[i].path}: cannot write the outputs ({exc})"))
            tqdm.write(failures[-1][1], file=sys.stderr)
        else:
            records.append(record)
            if thumb is not None and len(thumbs) < gallery_limit:
                top = record["top_k"][0]
                thumbs.append(thumb)
                captions.append(f"{stems[i]}: {top['class_name']} {top['prob']:.0%}")
            if scored is not None:
                tally.record(*scored)
            elif tally is not None:
                unscored += 1
        bar.update()

    pending = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="cam-write") as writer:
        for i, res in enumerate(iter_cams(model, items, top_k, batch_size, workers, tally is not None, max_pixels)):
            if res.error:
                failures.append((str(res.item.path), res.error))
                tqdm.write(res.error, file=sys.stderr)
                bar.update()
                continue
            pending.append((i, writer.submit(finish, res, stems[i])))
            while len(pending) > 2 * batch_size:
                drain(*pending.popleft())
        while pending:
            drain(*pending.popleft())
    bar.close()
    if gallery is not None and thumbs:
        ok, png = cv2.imencode(".png", contact_sheet(thumbs, captions, cell=THUMB))
        atomic_write_bytes(gallery, png.tobytes())
    summary = None
    if tally is not None:
        summary = tally.summary()
        summary["unscored"] = unscored
    return {"records": records, "failures": failures, "localization": summary,
            "gallery": str(gallery) if gallery is not None and thumbs else None}
