"""Loss layers and Accuracy, as Caffe's loss_layers family: SoftmaxWithLoss, Accuracy."""

import math

import torch
import torch.nn.functional as F

from caffecam.engine.layers.base import Layer, canonical_axis, register
from caffecam.proto import caffe_pb2

_LOG_FLT_MIN = math.log(1.1754943508222875e-38)


@register()
class SoftmaxWithLoss(Layer):
    def setup(self, lp, shapes, gen):
        self.need_bottoms(shapes, 2)
        self.axis = canonical_axis(lp.softmax_param.axis, len(shapes[0]), self)
        lossp = lp.loss_param
        self.ignore = lossp.ignore_label if lossp.HasField("ignore_label") else None
        self.norm = lossp.normalization
        if lossp.HasField("normalize") and not lossp.HasField("normalization"):
            self.norm = lossp.VALID if lossp.normalize else lossp.BATCH_SIZE
        _need_one_label_per_prediction(self, shapes)
        self.ntops = len(lp.top)
        return [()] + ([shapes[0]] if self.ntops > 1 else [])

    def forward(self, x, label):
        scores, label, valid = _scores_and_labels(self, x, label)
        picked = F.log_softmax(scores, 1).gather(1, torch.where(valid, label, 0)[:, None])[:, 0]
        # Caffe takes −log(max(p, FLT_MIN)): a sample's loss tops out at 87.3365 (its gradient stays p − 1).
        picked = picked + (picked.clamp(min=_LOG_FLT_MIN) - picked).detach()
        total = -(picked * valid).sum()
        # Normalization: FULL = all predictions, VALID = non-ignored ones, BATCH_SIZE = outer count, NONE = 1.
        lp = caffe_pb2.LossParameter
        if self.norm == lp.FULL:
            denom = float(label.numel())
        elif self.norm == lp.VALID:
            denom = valid.sum().clamp(min=1).to(scores.dtype)
        elif self.norm == lp.BATCH_SIZE:
            denom = float(math.prod(x.shape[: self.axis]))
        else:
            denom = 1.0
        tops = [total / denom]
        if self.ntops > 1:
            tops.append(F.softmax(x, self.axis))
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
