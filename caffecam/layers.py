"""One class per Caffe layer type, each computing exactly what Caffe computes.

A layer is built from its LayerParameter and the shapes of its bottoms; it knows its top shapes and owns its
learnable blobs in Caffe's order (weight, then bias) in `self.blobs`. forward(*bottoms) returns a list of tops.
"""

import math

import torch
import torch.nn.functional as F

from caffecam import winograd
from caffecam.errors import CaffeCamError
from caffecam.layer_base import Layer, canonical_axis, hw_pair
from caffecam.lrn import lrn_across
from caffecam.pool_geometry import caffe_pool_out, explicit_pool, pool_plan  # noqa: F401 (caffe_pool_out re-exported)
from caffecam.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
_LOG_FLT_MIN = math.log(1.1754943508222875e-38)
# Types whose tops are fed from outside the net (by the data pipeline or the caller).
INPUT_TYPES = {"Input", "Data", "ImageData"}


class Convolution(Layer):
    def setup(self, lp, shapes, gen):
        p = lp.convolution_param
        n, c, h, w = self.need_image_bottom(shapes)
        if p.axis not in (1, -3):
            self.fail(f"only axis 1 (channels of an N×C×H×W bottom) is supported, got axis {p.axis}")
        self.need_hw_pairs(p, ("kernel", "stride"))
        self.kernel = hw_pair(p.kernel_size, p.kernel_h, p.kernel_w, p.HasField("kernel_h"), None, "kernel_size", self)
        if self.kernel[0] is None:
            self.fail("kernel_size is required")
        self.pad = hw_pair(p.pad, p.pad_h, p.pad_w, p.HasField("pad_h") or p.HasField("pad_w"), 0, "pad", self)
        self.stride = hw_pair(p.stride, p.stride_h, p.stride_w, p.HasField("stride_h"), 1, "stride", self)
        self.dilation = hw_pair(p.dilation, 0, 0, False, 1, "dilation", self)
        self.group = p.group
        self.need_positive(kernel=self.kernel, stride=self.stride, dilation=self.dilation, group=(self.group,))
        if p.num_output == 0:
            self.fail("num_output is required")
        if c % self.group or p.num_output % self.group:
            self.fail(f"channels ({c}) and num_output ({p.num_output}) must be multiples of group ({self.group})")
        # out = floor((in + 2·pad − (dilation·(k−1)+1)) / stride) + 1
        out = [
            (size + 2 * pd - (dl * (k - 1) + 1)) // st + 1
            for size, pd, dl, k, st in zip((h, w), self.pad, self.dilation, self.kernel, self.stride)
        ]
        if min(out) < 1:
            self.fail(f"kernel {self.kernel} does not fit the {h}×{w} input (with pad {self.pad})")
        self.add_blob((p.num_output, c // self.group) + self.kernel, p.weight_filler if p.HasField("weight_filler")
                      else None, gen)
        self.bias_term = p.bias_term
        # engine CAFFE asks for Caffe's own algorithm (direct convolution); DEFAULT and CUDNN let the engine choose.
        self.winograd_allowed = p.engine != p.CAFFE
        if p.bias_term:
            self.add_blob((p.num_output,), p.bias_filler if p.HasField("bias_filler") else None, gen)
        return [(n, p.num_output, out[0], out[1])]

    def forward(self, x):
        bias = self.blobs[1] if self.bias_term else None
        if self.winograd_allowed and winograd.suits(x, self.blobs[0], self.stride, self.pad, self.dilation,
                                                    self.group):
            return [winograd.conv3x3(x, self.blobs[0], bias, self.group)]
        return [F.conv2d(x, self.blobs[0], bias, self.stride, self.pad, self.dilation, self.group)]


class Pooling(Layer):
    def setup(self, lp, shapes, gen):
        p = lp.pooling_param
        n, c, h, w = self.need_image_bottom(shapes)
        if p.pool == p.STOCHASTIC:
            self.fail("STOCHASTIC pooling is not supported")
        self.max, self.global_pooling = p.pool == p.MAX, p.global_pooling
        for name in ("pad", "stride"):
            if p.HasField(name) and p.HasField(f"{name}_h"):
                self.fail(f"give either {name} or {name}_h/{name}_w, not both")
        if p.global_pooling:
            if any(p.HasField(f) for f in ("kernel_size", "kernel_h", "kernel_w")):
                self.fail("global_pooling sets the kernel to the input size; remove kernel_size")
            if p.pad or p.pad_h or p.pad_w or p.stride != 1 or p.stride_h > 1 or p.stride_w > 1:
                self.fail("global_pooling allows only pad 0 and stride 1")
            self.kernel, self.pad, self.stride = (h, w), (0, 0), (1, 1)
        else:
            self.need_hw_pairs(p, ("kernel", "stride", "pad"))
            has_hw = p.HasField("kernel_h")
            if has_hw != p.HasField("kernel_w") or has_hw == p.HasField("kernel_size"):
                self.fail("give kernel_size, or both kernel_h and kernel_w")
            self.kernel = (p.kernel_h, p.kernel_w) if p.HasField("kernel_h") else (p.kernel_size,) * 2
            self.pad = (p.pad_h, p.pad_w) if p.HasField("pad_h") or p.HasField("pad_w") else (p.pad,) * 2
            self.stride = (p.stride_h, p.stride_w) if p.HasField("stride_h") else (p.stride,) * 2
            self.need_positive(kernel=self.kernel, stride=self.stride)
        if any(pd >= k for pd, k in zip(self.pad, self.kernel)):
            self.fail(f"pad {self.pad} must be smaller than kernel {self.kernel}")
        self.ceil = p.round_mode == p.CEIL
        # Per input size: (output size, whether PyTorch's pooling matches Caffe's); worked out once, not every step.
        self._plans = {(h, w): pool_plan((h, w), self.kernel, self.stride, self.pad, self.ceil)}
        out = self._plans[(h, w)][0]
        if min(out) < 1:
            self.fail(f"kernel {self.kernel} does not fit the {h}×{w} input")
        return [(n, c) + out]

    def forward(self, x):
        if self.global_pooling:
            # The kernel is whatever size the input has now (Caffe reshapes it on every forward).
            return [(F.max_pool2d if self.max else F.avg_pool2d)(x, tuple(x.shape[-2:]))]
        hw = tuple(x.shape[-2:])
        plan = self._plans.get(hw)
        if plan is None:
            plan = self._plans[hw] = pool_plan(hw, self.kernel, self.stride, self.pad, self.ceil)
        out, fast = plan
        if not fast:
            return [explicit_pool(x, out, self.kernel, self.stride, self.pad, self.max)]
        if self.max:
            return [F.max_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil)]
        return [F.avg_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil, count_include_pad=True)]


class LRN(Layer):
    def setup(self, lp, shapes, gen):
        p = lp.lrn_param
        self.need_image_bottom(shapes)
        if p.local_size % 2 == 0:
            self.fail(f"local_size must be odd, got {p.local_size}")
        self.size, self.alpha, self.beta, self.k = p.local_size, p.alpha, p.beta, p.k
        self.across = p.norm_region == p.ACROSS_CHANNELS
        return [shapes[0]]

    def forward(self, x):
        if self.across:
            return [lrn_across(x, self.size, self.alpha, self.beta, self.k)]
        # WITHIN_CHANNEL: Caffe composes square → AVE pool (n×n, pad (n−1)/2) → power(shift 1, scale alpha):
        # y = x · (1 + alpha · mean of x² over the n×n window, padding counted)^(−beta); k is not used.
        pad = (self.size - 1) // 2
        mean = F.avg_pool2d(x * x, self.size, 1, pad, count_include_pad=True)
        return [x * (1.0 + self.alpha * mean).pow(-self.beta)]


class ReLU(Layer):
    def setup(self, lp, shapes, gen):
        self.need_bottoms(shapes, 1)
        self.slope = lp.relu_param.negative_slope
        self.inplace = False  # set by Net where Caffe's in-place form is safe for autograd (see Net.__init__)
        return [shapes[0]]

    def forward(self, x):
        if self.slope == 0:
            return [F.relu_(x) if self.inplace else F.relu(x)]
        return [F.leaky_relu(x, self.slope)]


class Concat(Layer):
    def setup(self, lp, shapes, gen):
        if not shapes:
            self.fail("needs at least one bottom")
        p = lp.concat_param
        if p.HasField("concat_dim") and p.HasField("axis"):
            self.fail("give either axis or concat_dim, not both")
        axis = p.concat_dim if p.HasField("concat_dim") else p.axis
        self.axis = canonical_axis(axis, len(shapes[0]), self)
        for s in shapes[1:]:
            if len(s) != len(shapes[0]) or any(a != b for i, (a, b) in enumerate(zip(s, shapes[0])) if i != self.axis):
                self.fail(f"bottom shapes {shapes} differ outside the concat axis {self.axis}")
        out = list(shapes[0])
        out[self.axis] = sum(s[self.axis] for s in shapes)
        return [tuple(out)]

    def forward(self, *xs):
        return [torch.cat(xs, self.axis)]


class InnerProduct(Layer):
    def setup(self, lp, shapes, gen):
        p = lp.inner_product_param
        self.need_bottoms(shapes, 1)
        self.axis = canonical_axis(p.axis, len(shapes[0]), self)
        k = math.prod(shapes[0][self.axis:])
        if p.num_output == 0:
            self.fail("num_output is required")
        self.transpose, self.bias_term = p.transpose, p.bias_term
        wshape = (k, p.num_output) if p.transpose else (p.num_output, k)
        self.add_blob(wshape, p.weight_filler if p.HasField("weight_filler") else None, gen)
        if p.bias_term:
            self.add_blob((p.num_output,), p.bias_filler if p.HasField("bias_filler") else None, gen)
        return [tuple(shapes[0][: self.axis]) + (p.num_output,)]

    def forward(self, x):
        x = x.flatten(self.axis)
        weight = self.blobs[0].t() if self.transpose else self.blobs[0]
        return [F.linear(x, weight, self.blobs[1] if self.bias_term else None)]


class Dropout(Layer):
    def setup(self, lp, shapes, gen):
        self.need_bottoms(shapes, 1)
        self.ratio = lp.dropout_param.dropout_ratio
        if not 0 <= self.ratio < 1:
            self.fail(f"dropout_ratio must be in [0, 1), got {self.ratio:g}")
        return [shapes[0]]

    def forward(self, x):
        # TRAIN: kept units scaled by 1/(1 − p); TEST: identity.
        return [F.dropout(x, self.ratio, training=True) if self.phase == TRAIN and self.ratio > 0 else x]


class Softmax(Layer):
    def setup(self, lp, shapes, gen):
        self.need_bottoms(shapes, 1)
        self.axis = canonical_axis(lp.softmax_param.axis, len(shapes[0]), self)
        return [shapes[0]]

    def forward(self, x):
        return [F.softmax(x, self.axis)]


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
            denom = valid.sum().clamp(min=1).to(x.dtype)
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
    scores = x.movedim(layer.axis, -1).reshape(-1, classes)
    label = label.reshape(-1).long()
    valid = torch.ones_like(label, dtype=torch.bool) if layer.ignore is None else label != layer.ignore
    # An out-of-range label would be an index error here (a device-side assert on a GPU); Caffe aborts too.
    bad = valid & ((label < 0) | (label >= classes))
    if bool(bad.any()):
        layer.fail(f"label {int(label[bad][0])} is out of range for {classes} classes; the classifier's num_output "
                   "must exceed every label in the data")
    return scores, label, valid


class Accuracy(Layer):
    def setup(self, lp, shapes, gen):
        self.need_bottoms(shapes, 2)
        p = lp.accuracy_param
        self.top_k, self.axis = p.top_k, canonical_axis(p.axis, len(shapes[0]), self)
        self.ignore = p.ignore_label if p.HasField("ignore_label") else None
        if self.top_k > shapes[0][self.axis]:
            self.fail(f"top_k {self.top_k} exceeds the {shapes[0][self.axis]} classes")
        _need_one_label_per_prediction(self, shapes)
        return [()]

    def forward(self, x, label):
        with torch.no_grad():
            scores, label, valid = _scores_and_labels(self, x, label)
            true_score = scores.gather(1, torch.where(valid, label, 0)[:, None])
            # Caffe: correct when fewer than top_k other classes score >= the true class (a tie counts against it;
            # all scores equal is wrong at any top_k < classes).
            correct = ((scores >= true_score).sum(1) - 1 < self.top_k) & valid
            return [correct.sum().to(x.dtype) / valid.sum().clamp(min=1).to(x.dtype)]


class Flatten(Layer):
    def setup(self, lp, shapes, gen):
        self.need_bottoms(shapes, 1)
        nd = len(shapes[0])
        self.start = canonical_axis(lp.flatten_param.axis, nd, self)
        self.end = canonical_axis(lp.flatten_param.end_axis, nd, self)
        if self.end < self.start:
            self.fail(f"end_axis {self.end} comes before axis {self.start}")
        s = shapes[0]
        return [tuple(s[: self.start]) + (math.prod(s[self.start: self.end + 1]),) + tuple(s[self.end + 1:])]

    def forward(self, x):
        return [x.flatten(self.start, self.end)]


class Eltwise(Layer):
    def setup(self, lp, shapes, gen):
        p = lp.eltwise_param
        if len(shapes) < 2:
            self.fail("needs at least two bottoms")
        if any(s != shapes[0] for s in shapes):
            self.fail(f"bottom shapes differ: {shapes}")
        if len(p.coeff) not in (0, len(shapes)):
            self.fail(f"{len(p.coeff)} coeff values for {len(shapes)} bottoms")
        if len(p.coeff) and p.operation != p.SUM:
            self.fail("coeff is only allowed with operation SUM")
        self.op, self.coeff = p.operation, list(p.coeff) or [1.0] * len(shapes)
        return [shapes[0]]

    def forward(self, *xs):
        ep = caffe_pb2.EltwiseParameter
        if self.op == ep.PROD:
            return [math.prod(xs[1:], start=xs[0])]
        if self.op == ep.MAX:
            out = xs[0]
            for x in xs[1:]:
                out = torch.maximum(out, x)
            return [out]
        return [sum(c * x for c, x in zip(self.coeff, xs))]


class Split(Layer):
    def setup(self, lp, shapes, gen):
        self.need_bottoms(shapes, 1)
        self.n = len(lp.top)
        return [shapes[0]] * self.n

    def forward(self, x):
        return [x] * self.n


class Input(Layer):
    """Input, Data and ImageData: their tops are handed in by the caller; shapes come from the net builder."""

    def setup(self, lp, shapes, gen):
        return list(shapes)

    def forward(self, *xs):
        return list(xs)


LAYER_TYPES = {
    cls.__name__: cls
    for cls in (Convolution, Pooling, LRN, ReLU, Concat, InnerProduct, Dropout, Softmax, SoftmaxWithLoss, Accuracy,
                Flatten, Eltwise, Split, Input)
}
for _name in INPUT_TYPES:
    LAYER_TYPES[_name] = Input


def make_layer(lp, bottom_shapes, phase, generator=None):
    cls = LAYER_TYPES.get(lp.type)
    if cls is None:
        raise CaffeCamError(
            f"layer '{lp.name}': unknown type '{lp.type}' (supported: {', '.join(sorted(LAYER_TYPES))})"
        )
    return cls(lp, bottom_shapes, phase, generator)
