"""Common layers, the ones that compute: InnerProduct, Eltwise, Softmax, Bias, Scale, Embed, Reduction, ArgMax,
Parameter."""

import math

import torch
import torch.nn.functional as F

from caffecam.engine.kernels.eltwise import eltwise_max, eltwise_prod
from caffecam.engine.layers.base import Layer, canonical_axis, register
from caffecam.proto import caffe_pb2


@register()
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


@register()
class Softmax(Layer):
    def setup(self, lp, shapes, gen):
        self.need_bottoms(shapes, 1)
        self.axis = canonical_axis(lp.softmax_param.axis, len(shapes[0]), self)
        return [shapes[0]]

    def forward(self, x):
        return [F.softmax(x, self.axis)]


@register()
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
        self.stable_prod_grad = p.stable_prod_grad
        return [shapes[0]]

    def forward(self, *xs):
        ep = caffe_pb2.EltwiseParameter
        if self.op == ep.PROD:
            return [eltwise_prod(xs, self.stable_prod_grad)]
        if self.op == ep.MAX:
            return [eltwise_max(xs)]
        if all(c == 1 for c in self.coeff):  # one pass, the same sum in float as Caffe's 0 + 1·x0 + 1·x1 …
            out = xs[0] + xs[1]
            for x in xs[2:]:
                out.add_(x)
            return [out]
        return [sum(c * x for c, x in zip(self.coeff, xs))]


def _param_shape(layer, shape, axis, num_axes):
    """The learned blob's shape: bottom[0]'s axes axis … axis+num_axes−1 (num_axes −1: to the end)."""
    axis = canonical_axis(axis, len(shape), layer)
    if num_axes < -1:
        layer.fail(f"num_axes must be -1 or more, got {num_axes}")
    if num_axes >= 0 and axis + num_axes > len(shape):
        layer.fail(f"axis {axis} + num_axes {num_axes} extend past the bottom's {len(shape)} axes")
    return tuple(shape[axis:]) if num_axes == -1 else tuple(shape[axis: axis + num_axes])


def _broadcast_view(layer, shape, axis, pshape):
    """The view that lines a scale/bias of shape `pshape` up with bottom[0]'s axes from `axis` (Caffe's
    outer × scale × inner layout); a scalar (0 axes) ignores axis."""
    if not pshape:
        return (1,) * len(shape)
    axis = canonical_axis(axis, len(shape), layer)
    if tuple(shape[axis: axis + len(pshape)]) != tuple(pshape):
        layer.fail(f"shape {tuple(pshape)} does not match bottom {tuple(shape)} from axis {axis}")
    return (1,) * axis + tuple(pshape) + (1,) * (len(shape) - axis - len(pshape))


class _OverwriteGrad(torch.autograd.Function):
    """Identity whose backward first clears the parameter's accumulated .grad: the parameter then gets this
    backward's gradient alone, as where Caffe's backward writes a parameter diff instead of adding to it."""

    @staticmethod
    def forward(ctx, param):
        ctx.param = param
        return param.view_as(param)

    @staticmethod
    def backward(ctx, grad):
        if ctx.param.grad is not None:
            ctx.param.grad.zero_()
        return grad


@register()
class Bias(Layer):
    """top = bottom[0] + bias, the bias (a learned blob of bottom[0]'s axes axis … axis+num_axes−1, filler
    default 0, or bottom[1]) broadcast over the other axes (Caffe's bias_layer.cpp)."""

    def setup(self, lp, shapes, gen):
        p = lp.bias_param
        if len(shapes) not in (1, 2):
            self.fail(f"expects 1 or 2 bottom blobs, got {len(shapes)}")
        if len(shapes) == 1:
            bshape = _param_shape(self, shapes[0], p.axis, p.num_axes)
            self.add_blob(bshape, p.filler if p.HasField("filler") else None, gen)
        else:
            bshape = shapes[1]
        self.view = _broadcast_view(self, shapes[0], p.axis, bshape)
        return [shapes[0]]

    def forward(self, x, *bias):
        return [x + (bias[0] if bias else self.blobs[0]).reshape(self.view)]


@register()
class Scale(Layer):
    """top = bottom[0] · scale (+ bias), broadcast as in Bias (Caffe's scale_layer.cpp). The scale is a learned
    blob (filler default 1) or bottom[1]; bias_term adds a learned bias (bias_filler, default 0) of the scale's
    axes (of bottom[1]'s axis count with two bottoms). Blobs: [scale, bias] or, with two bottoms, [bias].

    Caffe quirk: when the scale has as many values as bottom[0], or the outer count (bottom[0]'s axes before
    `axis`, the batch) is 1 with more than one scale value and inner values, Caffe's backward writes the scale's
    diff instead of adding to it: with iter_size > 1 (or a shared scale) only the last backward's gradient is kept.
    """

    def setup(self, lp, shapes, gen):
        p = lp.scale_param
        if len(shapes) not in (1, 2):
            self.fail(f"expects 1 or 2 bottom blobs, got {len(shapes)}")
        self.axis = p.axis
        if len(shapes) == 1:
            sshape = _param_shape(self, shapes[0], p.axis, p.num_axes)
            filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant", value=1)
            self.add_blob(sshape, filler, gen)
        else:
            sshape = shapes[1]
        self.view = _broadcast_view(self, shapes[0], p.axis, sshape)
        self.bias_term = p.bias_term
        if p.bias_term:
            bshape = _param_shape(self, shapes[0], p.axis, len(shapes[1]) if len(shapes) == 2 else p.num_axes)
            self.add_blob(bshape, p.bias_filler if p.HasField("bias_filler") else None, gen)
            self.bias_view = _broadcast_view(self, shapes[0], p.axis, bshape)
        return [shapes[0]]

    def _writes_diff(self, x):
        scale_dim = math.prod(self.blobs[0].shape)
        if scale_dim == x.numel():
            return True
        axis = 0 if self.blobs[0].dim() == 0 else self.axis % x.dim()
        outer, inner = math.prod(x.shape[:axis]), math.prod(x.shape[axis + self.blobs[0].dim():])
        return outer == 1 and inner > 1 and scale_dim > 1

    def forward(self, x, *scale):
        if scale:
            s = scale[0]
        else:
            s = self.blobs[0]
            if s.requires_grad and torch.is_grad_enabled() and self._writes_diff(x):
                s = _OverwriteGrad.apply(s)
        y = x * s.reshape(self.view)
        if self.bias_term:
            y = y + self.blobs[-1].reshape(self.bias_view)
        return [y]


@register()
class Embed(Layer):
    """top[..., :] = weight[index] (+ bias): weight is input_dim × num_output (InnerProduct's transpose), the
    index the bottom's value truncated to an integer (Caffe's static_cast<int>). No gradient to the bottom."""

    def setup(self, lp, shapes, gen):
        p = lp.embed_param
        self.need_bottoms(shapes, 1)
        if p.num_output <= 0 or p.input_dim <= 0:
            self.fail(f"num_output ({p.num_output}) and input_dim ({p.input_dim}) must be positive")
        self.input_dim, self.bias_term = p.input_dim, p.bias_term
        self.add_blob((p.input_dim, p.num_output), p.weight_filler if p.HasField("weight_filler") else None, gen)
        if p.bias_term:
            self.add_blob((p.num_output,), p.bias_filler if p.HasField("bias_filler") else None, gen)
        return [tuple(shapes[0]) + (p.num_output,)]

    def forward(self, x):
        index = x.detach().long()
        if index.numel() and (index.min() < 0 or index.max() >= self.input_dim):
            bad = index[(index < 0) | (index >= self.input_dim)][0].item()
            self.fail(f"index {bad} outside [0, {self.input_dim}) (input_dim)")
        y = F.embedding(index, self.blobs[0])
        return [y + self.blobs[1] if self.bias_term else y]


@register()
class Reduction(Layer):
    """Reduces all axes from `axis` on: SUM, ASUM (Σ|x|), SUMSQ (Σx²) or MEAN, times coeff (Caffe's
    reduction_layer.cpp; MEAN's coeff is coeff / count). The top keeps the axes before `axis` (axis 0: a scalar)."""

    def setup(self, lp, shapes, gen):
        p = lp.reduction_param
        self.need_bottoms(shapes, 1)
        self.axis = canonical_axis(p.axis, len(shapes[0]), self)
        self.op, self.coeff = p.operation, p.coeff
        return [tuple(shapes[0][: self.axis])]

    def forward(self, x):
        rows = x.reshape(tuple(x.shape[: self.axis]) + (-1,))
        rp = caffe_pb2.ReductionParameter
        coeff = self.coeff
        if self.op == rp.ASUM:
            y = rows.abs().sum(-1)
        elif self.op == rp.SUMSQ:
            y = (rows * rows).sum(-1)
        else:
            y = rows.sum(-1)
            if self.op == rp.MEAN:
                coeff = coeff / rows.shape[-1]
        return [y if coeff == 1 else y * coeff]


@register()
class ArgMax(Layer):
    """The top_k largest values' indices (or, with out_max_val, values) along `axis`; without axis, over each
    item's flattened values, giving N×1×top_k (N×2×top_k with out_max_val: indices then values), padded to the
    bottom's axis count. Ties go to the larger index (Caffe sorts (value, index) pairs descending). No backward."""

    def setup(self, lp, shapes, gen):
        p = lp.argmax_param
        self.need_bottoms(shapes, 1)
        shape = shapes[0]
        self.top_k, self.out_max_val = p.top_k, p.out_max_val
        self.axis = canonical_axis(p.axis, len(shape), self) if p.HasField("axis") else None
        size = shape[self.axis] if self.axis is not None else math.prod(shape[1:])
        if not 1 <= self.top_k <= size:
            self.fail(f"top_k {self.top_k} must be between 1 and {size}")
        if self.axis is not None:
            return [tuple(shape[: self.axis]) + (self.top_k,) + tuple(shape[self.axis + 1:])]
        self.out_shape = (shape[0], 2 if self.out_max_val else 1, self.top_k) + (1,) * max(0, len(shape) - 3)
        return [self.out_shape]

    def forward(self, x):
        x = x.detach()
        axis = self.axis if self.axis is not None else 1
        values = x if self.axis is not None else x.reshape(x.shape[0], -1)
        n = values.shape[axis]
        # Stable descending sort of the reversed axis: equal values keep the larger original index first.
        top, index = values.flip(axis).sort(dim=axis, descending=True, stable=True)
        top, index = top.narrow(axis, 0, self.top_k), (n - 1 - index).narrow(axis, 0, self.top_k).to(x.dtype)
        if self.axis is not None:
            return [top if self.out_max_val else index]
        out = torch.cat([index, top], 1) if self.out_max_val else index
        return [out.reshape((x.shape[0],) + self.out_shape[1:])]


@register()
class Parameter(Layer):
    """No bottom; its top is its one blob (parameter_param.shape, zeros: Caffe gives it no filler), diff included.
    Caffe quirk: the top shares the blob's diff, which the consumer's backward writes rather than adds to, so with
    iter_size > 1 the blob keeps the last backward's gradient only (parameter_layer.hpp)."""

    def setup(self, lp, shapes, gen):
        self.need_bottoms(shapes, 0)
        shape = tuple(lp.parameter_param.shape.dim)
        self.add_blob(shape, None, gen)
        return [shape]

    def forward(self):
        blob = self.blobs[0]
        return [_OverwriteGrad.apply(blob) if blob.requires_grad and torch.is_grad_enabled() else blob]
