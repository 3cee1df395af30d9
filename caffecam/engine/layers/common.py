"""Common layers: InnerProduct, Concat, Eltwise, Softmax, Flatten, Split."""

import math

import torch
import torch.nn.functional as F

from caffecam.engine.layers.base import Layer, canonical_axis, register
from caffecam.proto import caffe_pb2


@register()
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


@register()
class Split(Layer):
    def setup(self, lp, shapes, gen):
        self.need_bottoms(shapes, 1)
        self.n = len(lp.top)
        return [shapes[0]] * self.n

    def forward(self, x):
        return [x] * self.n
