"""The gradient family of class activation maps, for any spatial blob of any Caffe classifier, and the choice between
it and CAM.

A_k is channel k of the chosen blob as Caffe holds it after the forward pass: a blob written in place keeps its last
writer's value, so 'conv5' under an in-place 'relu5' is the ReLU's output (as extract_features.py and the torchcam
adapter see it). g_k = ∂y_c/∂A_k, y_c the class score before the softmax, Z = h·w. Every map is
ReLU(Σ_k w_k · A_k) over the channels, with w_k:

    Grad-CAM   (Selvaraju et al. 2017)      w_k = (1/Z) Σ_ij g_k(i,j)
    Grad-CAM++ (Chattopadhay et al. 2018)   w_k = Σ_ij α_k(i,j) ReLU(g_k(i,j)),
                                            α_k(i,j) = g² / (2g² + (Σ_ab A_k(a,b)) g³) at (i,j), 0 where that is 0
    XGrad-CAM  (Fu et al. 2020)             w_k = Σ_ij g_k(i,j) A_k(i,j) / Σ_ij A_k(i,j)   (0 for an all-zero A_k)
    Layer-CAM  (Jiang et al. 2021)          w_k(i,j) = ReLU(g_k(i,j)), position by position
    Score-CAM  (Wang et al. 2020)           w = softmax_k(y_c(X ∘ H_k)), H_k = A_k upsampled to the input and
                                            min-max scaled to [0, 1] (0 for a flat A_k); X the preprocessed input

Grad-CAM++'s α is the paper's closed form for Y = exp(y_c), whose exp factors cancel in α and only scale w by a
positive number per image. The gradient methods take one forward per batch (autograd records only the layers after
the blob: the parameters are frozen and the blob is made a leaf) and one backward per requested rank; Score-CAM's
C masked inputs per image run through the net `score_batch` at a time.
"""

import difflib
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from caffecam.cam.options import METHODS, TITLES
from caffecam.cam.pairs import NoCamPair, find_cam_layers
from caffecam.errors import CaffeCamError, net_label

GRADIENT_METHODS = METHODS[1:]


@dataclass(frozen=True)
class GradientLayers:
    """What a gradient method reads: the blob of the maps and the class scores (the CamLayers of the CAM family)."""
    method: str
    feature_blob: str  # A_k
    score_blob: str  # class scores before softmax
    prob_blob: str | None  # the Softmax over the scores, when the net has one
    end_layer: str  # the last layer the forward pass needs
    fc_layer = None
    pool_layer = None
    identity = False

    def describe(self):
        return f"'{self.feature_blob}' (scores '{self.score_blob}')"


# ---- which blob, which scores -------------------------------------------------------------------------------------

def _last_writer(net, blob, before=None):
    """Index of the last layer (before index `before`) writing `blob`, or None (a net input)."""
    stop = len(net.layer_params) if before is None else before
    return next((i for i in range(stop - 1, -1, -1) if blob in net.layer_params[i].top), None)


def score_layers(net):
    """(scores blob, softmax top or None, last layer to run) of a classifier: the last Softmax's bottom and top;
    without a Softmax, the bottom of a final loss/Accuracy layer, else the last layer's top."""
    params = net.layer_params
    for lp in reversed(params):
        if lp.type == "Softmax":
            return lp.bottom[0], lp.top[0], lp.name
    last = params[-1]
    score = last.bottom[0] if (last.type.endswith("Loss") or last.type == "Accuracy") and last.bottom else last.top[0]
    return score, None, params[_last_writer(net, score)].name


def _spatial(net, blob):
    shape = net.blob_shapes[blob]
    return len(shape) == 4 and shape[2] * shape[3] > 1


def default_layer(net, score_blob):
    """The last spatial blob before the classifier: from the scores back along first bottoms, the first N×C×H×W blob
    with H·W > 1 that a Pooling layer did not write (pooling only subsamples the maps: conv5, not AlexNet's 6×6
    pool5; conv5_3, not VGG16's pool5; res5c, not ResNet's 1×1 pool5)."""
    blob, index = score_blob, None
    while True:
        index = _last_writer(net, blob, index)
        if index is None:
            raise CaffeCamError(f"{net_label(net.name)}: no spatial blob (N×C×H×W, H·W > 1) feeds the scores "
                                f"'{score_blob}'; name one with --layer")
        lp = net.layer_params[index]
        if _spatial(net, blob) and lp.type != "Pooling":
            return blob
        if not lp.bottom:
            raise CaffeCamError(f"{net_label(net.name)}: no spatial blob feeds the scores '{score_blob}'; name one "
                                "with --layer")
        blob = lp.bottom[0]


def check_layer(net, blob, score_blob):
    """--layer BLOB exists, is spatial and is written before the scores, else one line."""
    if blob not in net.blob_shapes:
        near = difflib.get_close_matches(blob, list(net.blob_shapes), n=3, cutoff=0.0)
        raise CaffeCamError(f"--layer {blob}: {net_label(net.name)} has no such blob; nearest: {', '.join(near)}")
    if not _spatial(net, blob):
        raise CaffeCamError(f"--layer {blob}: its shape {tuple(net.blob_shapes[blob])} has no spatial extent "
                            "(N×C×H×W with H·W > 1 needed); pick an earlier blob")
    writer, scores = _last_writer(net, blob), _last_writer(net, score_blob)
    if writer is not None and scores is not None and writer >= scores:
        raise CaffeCamError(f"--layer {blob}: is written at or after the scores '{score_blob}'; pick a blob before "
                            "the classifier")


def choose_layers(net, method=None, layer=None, feature_blob=None, fc_layer=None):
    """-> (CamLayers or GradientLayers, method, note). method None: CAM when the net has a CAM pair and no --layer
    is given, else Grad-CAM, with `note` the one line saying why; never a CAM map from a head it does not fit."""
    if method is not None and method not in METHODS:
        raise CaffeCamError(f"--method {method}: choose one of {', '.join(METHODS)}")
    pair_named = feature_blob is not None or fc_layer is not None
    if method in GRADIENT_METHODS and pair_named:
        raise CaffeCamError(f"--feature-blob/--fc-layer name CAM's pair; {TITLES[method]} takes its blob from "
                            "--layer BLOB")
    if method == "cam" and layer is not None:
        raise CaffeCamError("--layer picks the blob of the gradient methods; CAM reads the blob its global pooling "
                            "reads (override it with --feature-blob)")
    note = None
    if method == "cam" or (method is None and layer is None):
        try:
            return find_cam_layers(net, feature_blob, fc_layer), "cam", None
        except NoCamPair as exc:
            if method == "cam" or pair_named:
                raise
            note = exc.reason
    method = method or "gradcam"
    score, prob, end = score_layers(net)
    blob = layer if layer is not None else default_layer(net, score)
    check_layer(net, blob, score)
    found = GradientLayers(method, blob, score, prob, end)
    if note is not None:
        note = f"no CAM pair in {net_label(net.name)}: {note}; using {TITLES[method]} of '{blob}' (--method, --layer " \
               "choose another)"
    return found, method, note


# ---- the weights of each method -----------------------------------------------------------------------------------

def _weighted(weights, feats):
    """ReLU(Σ_k w_k · A_k): weights (N, C) or (N, C, h, w), feats (N, C, h, w) -> (N, h, w)."""
    if weights.ndim == 2:
        weights = weights[:, :, None, None]
    return F.relu((weights * feats).sum(1))


def gradient_map(method, feats, grads):
    """One map per image from A (N, C, h, w) and g = ∂y_c/∂A (same shape), by the formulas of the module doc."""
    if method == "gradcam":
        return _weighted(grads.mean((2, 3)), feats)
    if method == "gradcam++":
        g2, g3 = grads.pow(2), grads.pow(3)
        denom = 2 * g2 + feats.sum((2, 3), keepdim=True) * g3
        alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)),
                            torch.zeros_like(denom))
        return _weighted((alpha * F.relu(grads)).sum((2, 3)), feats)
    if method == "xgradcam":
        total = feats.sum((2, 3))
        weights = (grads * feats).sum((2, 3)) / torch.where(total != 0, total, torch.ones_like(total))
        return _weighted(torch.where(total != 0, weights, torch.zeros_like(weights)), feats)
    if method == "layercam":
        return _weighted(F.relu(grads), feats)
    raise CaffeCamError(f"no gradient formula for method '{method}'")


def unit_masks(feats):
    """Score-CAM's H_k before upsampling: each channel min-max scaled to [0, 1]; a flat channel gives 0."""
    low, high = feats.amin((2, 3), keepdim=True), feats.amax((2, 3), keepdim=True)
    span = high - low
    return torch.where(span > 0, (feats - low) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(feats))


# ---- running them -------------------------------------------------------------------------------------------------

@contextmanager
def leaf_blob(net, blob):
    """Inside, a forward pass makes `blob` (its last writer's output) a leaf that requires grad, with the parameters
    frozen: autograd records only the layers after it. Yields a dict whose "leaf" is that tensor after a forward."""
    box, index = {}, _last_writer(net, blob)
    frozen = [p for p in net.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    handle = None
    if index is not None:
        position = list(net.layer_params[index].top).index(blob)

        def hook(module, inputs, output):
            tops = list(output)
            tops[position] = box["leaf"] = tops[position].detach().requires_grad_(True)
            return tops

        handle = net.layers[index].register_forward_hook(hook)
    try:
        yield box
    finally:
        if handle is not None:
            handle.remove()
        for p in frozen:
            p.requires_grad_(True)


def _scores_and_ids(layers, blobs, top_k, extra_ids):
    scores = blobs[layers.score_blob].float().flatten(1)
    probs = blobs[layers.prob_blob].float().flatten(1) if layers.prob_blob else scores.softmax(1)
    top_p, top_ids = probs.detach().topk(top_k, dim=1)
    ids = top_ids
    if extra_ids is not None:
        ids = torch.cat([top_ids, torch.as_tensor(extra_ids, device=ids.device).long()], 1)
    return scores, probs.detach(), top_p, top_ids, ids


def run_gradients(model, x, top_k, extra_ids=None):
    """One forward and one backward per rank -> (top ids, top probs, all probs, maps (N, K + E, h, w)) for a
    gradient method; `model` is a CamModel whose layers are GradientLayers."""
    layers = model.layers
    inputs = x.detach().requires_grad_(True) if layers.feature_blob in model.net.input_blobs else x
    with leaf_blob(model.net, layers.feature_blob) as box, torch.enable_grad():
        blobs = model.forward(inputs)
        feats = box.get("leaf", inputs)
        scores, probs, top_p, top_ids, ids = _scores_and_ids(layers, blobs, top_k, extra_ids)
        maps = []
        for k in range(ids.shape[1]):
            chosen = scores.gather(1, ids[:, k:k + 1]).sum()
            (grad,) = torch.autograd.grad(chosen, feats, retain_graph=k + 1 < ids.shape[1], allow_unused=True)
            if grad is None:
                raise CaffeCamError(f"--layer {layers.feature_blob}: the scores '{layers.score_blob}' do not depend "
                                    "on it; pick a blob that feeds the classifier")
            maps.append(gradient_map(layers.method, feats.detach().float(), grad.float()))
    return top_ids, top_p, probs, torch.stack(maps, 1)


def run_scorecam(model, x, top_k, extra_ids=None, score_batch=32, progress=True):
    """Score-CAM: the forward, then the N·C masked inputs through the net `score_batch` at a time (a progress bar
    counts them) -> as run_gradients."""
    layers = model.layers
    with torch.inference_mode():
        blobs = model.forward(x)
        feats = blobs[layers.feature_blob].float()
        _, probs, top_p, top_ids, ids = _scores_and_ids(layers, blobs, top_k, extra_ids)
        n, c = feats.shape[:2]
        masks = unit_masks(feats).flatten(0, 1)[:, None]  # (N·C, 1, h, w)
        owner = torch.arange(n, device=x.device).repeat_interleave(c)
        masked_scores = []
        bar = tqdm(total=n * c, unit="mask", desc="score-cam", leave=False, disable=None if progress else True)
        for start in range(0, n * c, score_batch):
            part = slice(start, min(start + score_batch, n * c))
            up = F.interpolate(masks[part], size=x.shape[2:], mode="bilinear", align_corners=False)
            out = model.forward((up * x[owner[part]].float()).to(x.dtype))
            masked_scores.append(out[layers.score_blob].float().flatten(1))
            bar.update(part.stop - part.start)
        bar.close()
        masked = torch.cat(masked_scores).view(n, c, -1)  # (N, C, classes)
        maps = [_weighted(masked.gather(2, ids[:, None, k:k + 1].expand(n, c, 1))[..., 0].softmax(1), feats)
                for k in range(ids.shape[1])]
    return top_ids, top_p, probs, torch.stack(maps, 1)
