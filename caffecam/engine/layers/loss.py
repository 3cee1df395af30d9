"""Loss layers and Accuracy, as Caffe's loss_layers family: the ones over class scores (SoftmaxWithLoss, Accuracy,
InfogainLoss, MultinomialLogisticLoss, SigmoidCrossEntropyLoss); the distance losses are in loss_distance.py."""

import math

import torch
import torch.nn.functional as F

from caffecam.engine.layers.base import Layer, canonical_axis, register
from caffecam.engine.prototxt import read_binary
from caffecam.engine.weights import blob_to_array
from caffecam.proto import caffe_pb2

_LOG_FLT_MIN = math.log(1.1754943508222875e-38)


@register()
class SoftmaxWithLoss(Layer):
    def setup(self, lp, shapes, gen):
        self.need_bottoms(shapes, 2)
        self.axis = canonical_axis(lp.softmax_param.axis, len(shapes[0]), self)
        lossp = lp.loss_param
        self.ignore = lossp.ignore_label if lossp.HasField("ignore_label") else None
        self.norm = _normalization(lossp, lossp.VALID)
        _need_same_num(self, shapes)
        _need_one_label_per_prediction(self, shapes)
        self.ntops = len(lp.top)
        return [()] + ([shapes[0]] if self.ntops > 1 else [])

    def forward(self, x, label):
        scores, label, valid = _scores_and_labels(self, x, label)
        picked = F.log_softmax(scores, 1).gather(1, torch.where(valid, label, 0)[:, None])[:, 0]
        # Caffe takes −log(max(p, FLT_MIN)): a sample's loss tops out at 87.3365 (its gradient stays p − 1).
        picked = picked + (picked.clamp(min=_LOG_FLT_MIN) - picked).detach()
        total = -(picked * valid).sum()
        outer = math.prod(x.shape[: self.axis])
        tops = [total / _normalizer(self.norm, outer, label.numel() // max(outer, 1), valid)]
        if self.ntops > 1:
            # Caffe's backward reads only the loss top's diff: nothing flows back through the probabilities.
            tops.append(F.softmax(x, self.axis).detach())
        return tops


def _need_one_label_per_prediction(layer, shapes):
    outer, inner = math.prod(shapes[0][: layer.axis]), math.prod(shapes[0][layer.axis + 1:])
    if math.prod(shapes[1]) != outer * inner:
        layer.fail(f"label count {math.prod(shapes[1])} does not match prediction shape {shapes[0]}")


def _scores_and_labels(layer, x, label):
    """Scores as (samples, classes) with classes along `layer.axis`, int64 labels, and which labels count."""
    classes = x.shape[layer.axis]
    # At least float32: in bfloat16 near scores tie, 301 valid labels count as 300, the loss sums coarsely.
    scores = x.movedim(layer.axis, -1).reshape(-1, classes).to(torch.promote_types(x.dtype, torch.float32))
    label = label.reshape(-1).long()
    valid = torch.ones_like(label, dtype=torch.bool) if layer.ignore is None else label != layer.ignore
    # An out-of-range label would be an index error here (a device-side assert on a GPU); Caffe aborts too.
    bad = valid & ((label < 0) | (label >= classes))
    if bool(bad.any()):
        layer.fail(f"label {int(label[bad][0])} is out of range for {classes} classes; the classifier's num_output "
                   "must exceed every label in the data")
    return scores, label, valid


@register()
class Accuracy(Layer):
    def setup(self, lp, shapes, gen):
        self.need_bottoms(shapes, 2)
        p = lp.accuracy_param
        self.top_k, self.axis = p.top_k, canonical_axis(p.axis, len(shapes[0]), self)
        self.ignore = p.ignore_label if p.HasField("ignore_label") else None
        if self.top_k > shapes[0][self.axis]:
            self.fail(f"top_k {self.top_k} exceeds the {shapes[0][self.axis]} classes")
        _need_one_label_per_prediction(self, shapes)
        if len(lp.top) > 2:
            self.fail(f"has {len(lp.top)} tops; at most 2 (accuracy, and per-class accuracy)")
        # A second top: the accuracy of each class over the samples labelled with it (0 for a class with none).
        self.per_class = len(lp.top) == 2
        return [()] + ([(shapes[0][self.axis],)] if self.per_class else [])

    def forward(self, x, label):
        with torch.no_grad():
            scores, label, valid = _scores_and_labels(self, x, label)
            true_score = scores.gather(1, torch.where(valid, label, 0)[:, None])
            # Caffe: correct when fewer than top_k other classes score >= the true class (a tie counts against it;
            # all scores equal is wrong at any top_k < classes).
            correct = ((scores >= true_score).sum(1) - 1 < self.top_k) & valid
            tops = [correct.sum().to(scores.dtype) / valid.sum().clamp(min=1).to(scores.dtype)]
            if self.per_class:
                classes = scores.shape[1]
                seen = torch.bincount(label[valid], minlength=classes).to(scores.dtype)
                right = torch.bincount(label[correct], minlength=classes).to(scores.dtype)
                tops.append(torch.where(seen > 0, right / seen.clamp(min=1), torch.zeros_like(seen)))
            return tops


# Caffe's kLOG_THRESHOLD (loss_layer.hpp), a float constant: InfogainLoss and MultinomialLogisticLoss take
# log(max(p, 1e-20)).
_LOG_THRESHOLD = float(torch.tensor(1e-20, dtype=torch.float32))


def _normalization(lossp, default):
    """The loss_param normalization mode: `normalization` if given, else the legacy `normalize` flag (true = VALID,
    false = BATCH_SIZE), else the layer type's default (Caffe: VALID for SoftmaxWithLoss and InfogainLoss,
    BATCH_SIZE for SigmoidCrossEntropyLoss)."""
    if lossp.HasField("normalization"):
        return lossp.normalization
    if lossp.HasField("normalize"):
        return lossp.VALID if lossp.normalize else lossp.BATCH_SIZE
    return default


def _normalizer(mode, outer, inner, valid):
    """Caffe's get_normalizer (softmax_loss_layer.cpp; the same in infogain and sigmoid_cross_entropy): FULL =
    every prediction, VALID = the non-ignored ones, BATCH_SIZE = the outer count, NONE = 1; never below 1."""
    lp = caffe_pb2.LossParameter
    if mode == lp.VALID:
        return valid.sum().clamp(min=1)
    return max(1, {lp.FULL: outer * inner, lp.BATCH_SIZE: outer, lp.NONE: 1}[mode])


def _need_same_num(layer, shapes):
    """LossLayer::Reshape: the data and the label have the same first dimension."""
    if shapes[0][:1] != shapes[1][:1]:
        layer.fail(f"data and label need the same first dimension, got {shapes[0]} and {shapes[1]}")


def _read_blobproto(layer, path):
    if not path:
        layer.fail("needs the infogain matrix H: give infogain_loss_param.source (a .binaryproto) or a third bottom")
    return torch.from_numpy(blob_to_array(read_binary(path, caffe_pb2.BlobProto, "binaryproto")).copy())


@register()
class InfogainLoss(Layer):
    """loss = −Σ_valid Σ_l H[label, l] · log(max(p_l, 1e-20)) / normalizer, p = softmax along infogain axis.

    Caffe's gradient is (p_l · Σ_k H[label, k] − H[label, l]) / normalizer: the clamp does not cut it
    (infogain_loss_layer.cpp). H comes from a third bottom (no gradient) or from infogain_loss_param.source."""

    def setup(self, lp, shapes, gen):
        if len(shapes) not in (2, 3):
            self.fail(f"expects 2 or 3 bottom blobs, got {len(shapes)}")
        _need_same_num(self, shapes)
        lossp = lp.loss_param
        if lossp.HasField("normalize"):
            self.fail("loss_param.normalize is deprecated for InfogainLoss (Caffe refuses it); use normalization")
        self.norm, self.axis = lossp.normalization, canonical_axis(lp.infogain_loss_param.axis, len(shapes[0]), self)
        self.ignore = lossp.ignore_label if lossp.HasField("ignore_label") else None
        _need_one_label_per_prediction(self, shapes)
        classes = shapes[0][self.axis]
        self.register_buffer("H", None if len(shapes) == 3 else _read_blobproto(self, lp.infogain_loss_param.source),
                             persistent=False)
        h_count = math.prod(shapes[2]) if len(shapes) == 3 else self.H.numel()
        if h_count != classes * classes:
            self.fail(f"the infogain matrix H has {h_count} values, needs {classes}×{classes} for {classes} classes")
        self.ntops = len(lp.top)
        return [()] + ([shapes[0]] if self.ntops > 1 else [])

    def forward(self, x, label, infogain=None):
        H = (self.H if infogain is None else infogain).detach().to(x.dtype).reshape(x.shape[self.axis], -1)
        scores, label, valid = _scores_and_labels(self, x, label)
        logp = F.log_softmax(scores, 1)
        # Forward clamps p at 1e-20; the gradient stays the unclamped one (see the class docstring).
        logp = logp + (logp.clamp(min=math.log(_LOG_THRESHOLD)) - logp).detach()
        rows = H[torch.where(valid, label, 0)]
        total = -((rows * logp).sum(1) * valid).sum()
        outer = math.prod(x.shape[: self.axis])
        tops = [total / _normalizer(self.norm, outer, label.numel() // max(outer, 1), valid)]
        if self.ntops > 1:
            tops.append(F.softmax(x, self.axis).detach())  # as SoftmaxWithLoss: no gradient through it
        return tops


@register()
class MultinomialLogisticLoss(Layer):
    """loss = −Σ_n log(max(x[n, label_n], 1e-20)) / N over probabilities x (flattened per sample). Caffe's gradient
    is −1 / max(x, 1e-20) at the label, clamp included (multinomial_logistic_loss_layer.cpp)."""

    def setup(self, lp, shapes, gen):
        self.need_bottoms(shapes, 2)
        _need_same_num(self, shapes)
        if math.prod(shapes[1][1:]) != 1:
            self.fail(f"needs one label per sample (N×1×1×1), got a label of shape {shapes[1]}")
        return [()]

    def forward(self, x, label):
        n = x.shape[0]
        flat = x.reshape(n, -1)
        label = label.reshape(-1).long()
        if bool(((label < 0) | (label >= flat.shape[1])).any()):
            self.fail(f"a label is out of range for {flat.shape[1]} values per sample")
        p = flat.gather(1, label[:, None])[:, 0]
        p = p + (p.clamp(min=_LOG_THRESHOLD) - p).detach()  # the value and the divisor of the gradient are clamped
        return [-torch.log(p).sum() / n]


@register()
class SigmoidCrossEntropyLoss(Layer):
    """loss = −Σ_valid [x·(t − [x ≥ 0]) − log(1 + exp(x − 2x·[x ≥ 0]))] / normalizer, Caffe's overflow-safe form
    of the cross-entropy of sigmoid(x) against targets t (sigmoid_cross_entropy_loss_layer.cpp). Its gradient is
    sigmoid(x) − t. A target is ignored when int(t) equals ignore_label; the normalization defaults to
    BATCH_SIZE (not VALID as in SoftmaxWithLoss)."""

    def setup(self, lp, shapes, gen):
        self.need_bottoms(shapes, 2)
        _need_same_num(self, shapes)
        if math.prod(shapes[0]) != math.prod(shapes[1]):
            self.fail(f"inputs need the same count, got shapes {shapes[0]} and {shapes[1]}")
        lossp = lp.loss_param
        self.ignore = lossp.ignore_label if lossp.HasField("ignore_label") else None
        self.norm = _normalization(lossp, lossp.BATCH_SIZE)
        return [()]

    def forward(self, x, target):
        t = target.detach().reshape(x.shape).to(x.dtype)
        positive = (x >= 0).to(x.dtype)
        # The mask is a constant: at x = 0 the slope is sigmoid(0) − t, as in Caffe.
        per_item = -(x * (t - positive) - torch.log(1 + torch.exp(x - 2 * x * positive)))
        valid = torch.ones_like(t, dtype=torch.bool) if self.ignore is None else t.trunc() != self.ignore
        total = torch.where(valid, per_item, 0).sum()
        return [total / _normalizer(self.norm, x.shape[0], x[0].numel() if x.shape[0] else 0, valid)]
