"""Class activation maps (Zhou et al., CVPR 2016) for nets ending in global average pooling and a linear
classifier (the pair is found in cam/pairs.py).

The map of class c is M_c(x, y) = Σ_k w[c, k] · A_k(x, y): A_k are the feature maps feeding the global average
pooling, w[c] the classifier row of c. The bias is left out, as in the paper. Maps for all requested classes are
one einsum on the device; the per-channel loop and an autograd Grad-CAM are kept as references. CamModel also runs
the gradient family (cam/gradients.py) on nets CAM does not fit, or when --method asks for it.
"""

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from caffecam.cam.gradients import TITLES, choose_layers, run_gradients, run_scorecam
from caffecam.cam.pairs import classifier_weight, find_cam_layers, identity_weight
from caffecam.data.net_input import DEFAULT_MEAN, NetInput, parse_mean  # noqa: F401 (parse_mean: API)
from caffecam.engine import precision
from caffecam.engine.fold import fold_batchnorm
from caffecam.engine.net import TEST, Net
from caffecam.engine.prototxt import read_net
from caffecam.engine.weights import copy_weights, layers_with_blobs, read_caffemodel
from caffecam.errors import CaffeCamError, net_label
from caffecam.textfile import content_lines


def read_class_labels(path):
    """Class names by id, from the label files researchers hold, the layout decided for the whole file:
    `id name` per line (class_labels.csv, ids 0..N−1 in any order); `name id` (Places365's categories_places365.txt,
    `/a/airfield 0`); or one name per line, the id being the line's rank (ImageNet's synset_words.txt,
    `n01440764 tench, Tinca tinca`, and Caffe's labels.txt)."""
    rows = [(n, line.strip()) for n, line in content_lines(path)]
    if not rows:
        raise CaffeCamError(f"{path}: no class names; write one per line (`id name`, `name id` or just `name`)")

    def split(line, leading):
        parts = line.split(None, 1) if leading else line.rsplit(None, 1)
        idx, name = (0, 1) if leading else (1, 0)
        if len(parts) == 2 and parts[idx].isdigit():
            return int(parts[idx]), parts[name].strip()
        return None

    for leading, example in ((True, "0 bicycling"), (False, "/a/airfield 0")):
        parsed = [split(line, leading) for _, line in rows]
        if all(parsed):
            break
        if leading and parsed[0] is not None:  # starts as `id name`: a line without its id is a mistake
            n, line = rows[parsed.index(None)]
            raise CaffeCamError(f"{path}:{n}: expected `id name` (e.g. `{example}`) as on line {rows[0][0]}, "
                                f"got {line!r}")
    else:
        return [line for _, line in rows]  # one name per line
    names = {}
    for (n, _), (i, name) in zip(rows, parsed):
        if i in names:
            raise CaffeCamError(f"{path}:{n}: class id {i} given twice")
        names[i] = name
    if sorted(names) != list(range(len(names))):
        raise CaffeCamError(f"{path}: class ids must be 0..N-1 without gaps, got {sorted(names)[:10]}")
    return [names[i] for i in range(len(names))]


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
    """A deploy net ready for CAM or a gradient method: finds the layers (`layers`, `method`, `title`, and `note`,
    the line saying why CAM gave way to Grad-CAM), preprocesses images, runs batches on the device."""

    def __init__(self, net, labels=None, feature_blob=None, fc_layer=None, mean=DEFAULT_MEAN, device=None,
                 channels_last=None, labels_file=None, tf32=False, method=None, layer=None, score_batch=32,
                 progress=True, bf16=False, input_options=None):
        self.net = net.eval()
        # method None: CAM where the net has a CAM pair, else Grad-CAM with `note` saying why (cam/gradients.py).
        self.layers, self.method, self.note = choose_layers(net, method, layer, feature_blob, fc_layer)
        self.title = TITLES[self.method]
        self.score_batch, self.progress = score_batch, progress
        # BatchNorm/Scale run inside their convolutions at inference (ResNet, MobileNet); the gradient methods' forward,
        # which records gradients, runs them unfolded
        lay = self.layers
        fold_batchnorm(net, keep={lay.feature_blob, lay.score_blob} | ({lay.prob_blob} if lay.prob_blob else set()))
        images = [b for b in net.input_blobs if len(net.blob_shapes[b]) == 4]
        if not images:
            raise CaffeCamError(f"{net_label(net.name)}: no 4-D image input blob among {net.input_blobs}")
        self.input_blob = images[0]
        channels, *self.input_size = net.blob_shapes[self.input_blob][1:]
        if channels != 3:
            raise CaffeCamError(f"{net_label(net.name)}: input '{self.input_blob}' has {channels} channels; CAM feeds "
                                "3-channel BGR images")
        self.device = torch.device(device if device else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = precision.configure(self.device, tf32) or "float32"  # TF32 only when asked for
        self.bf16 = bool(bf16)
        if self.bf16:
            self.precision = precision.check_bf16(self.device)
            if self.method != "cam":  # their gradients and masked re-runs stay float32 (not measured in bfloat16)
                self.bf16, self.precision = False, f"float32: --bf16 applies to --method cam only, not {self.method}"
        # channels_last measured faster here on the CPU as well (GoogLeNet-CAM, batch 16: 2.3-3.6 s vs 3.6-4.6 s).
        self.channels_last = True if channels_last is None else bool(channels_last)
        self.net.to(self.device)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.method != "cam":  # the gradient family weighs the maps by gradients or scores, not a classifier
            self.weight = None
            self.num_classes = math.prod(net.blob_shapes[self.layers.score_blob][1:])
        elif self.layers.identity:  # SqueezeNet: the class maps are the feature channels themselves
            self.weight = identity_weight(net.blob_shapes[self.layers.feature_blob][1], self.device)
        else:
            self.weight = classifier_weight(net, self.layers.fc_layer).detach()
        if self.weight is not None:
            self.num_classes = self.weight.shape[0]
        if labels is not None and len(labels) != self.num_classes:
            where = f"{labels_file}: " if labels_file else ""
            head = self.layers.fc_layer or (f"{self.layers.feature_blob} channels" if self.layers.identity
                                            else self.layers.score_blob)
            raise CaffeCamError(f"{where}{len(labels)} class labels for a classifier of {self.num_classes} classes "
                                f"('{head}'): wrong labels file or wrong prototxt?")
        self.labels = list(labels) if labels is not None else [str(i) for i in range(self.num_classes)]
        # input_options: NetInput's (mean values or image, scale, raw_scale, channel_order); else `mean` alone.
        self.input = NetInput(*self.input_size, **(input_options or {"mean": mean}))
        self.mean = self.input.mean

    @classmethod
    def from_files(cls, model, weights, labels=None, **kwargs):
        source = read_caffemodel(weights)
        net = Net(read_net(model), TEST, unfilled=layers_with_blobs(source))
        report = copy_weights(net, source, str(weights))
        if report.fresh:
            raise CaffeCamError(f"{weights}: has no weights for layers {', '.join(report.fresh[:5])} of {model}, "
                                "so their maps would be noise; use a snapshot trained for this net (`make train`)")
        if labels:
            kwargs["labels_file"] = str(labels)
        return cls(net, read_class_labels(labels) if labels else None, **kwargs)

    def preprocess(self, image):
        """H×W×3 uint8 BGR -> the net's input as H'×W'×3 float32: the whole image resized, then the options of
        data/net_input.py (by default B,G,R minus the mean, in [0, 255])."""
        return self.input(image)

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
        if self.method != "cam":
            x = self.to_input(batch)
            if self.method == "scorecam":
                out = run_scorecam(self, x, top_k, extra_ids, self.score_batch, self.progress)
            else:
                out = run_gradients(self, x, top_k, extra_ids)
            top_ids, top_p, probs, maps = (t.detach().cpu().numpy() for t in out)
            return CamBatch(top_ids, top_p, probs, maps.astype(np.float32, copy=False))
        with torch.inference_mode():
            with precision.autocast(self.device, self.bf16):
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
