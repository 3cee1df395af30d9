"""Layers that route values without arithmetic: Concat, Split, Flatten, Silence."""

import math

import torch

from caffecam.engine.layers.base import Layer, canonical_axis, register


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
class Split(Layer):
    def setup(self, lp, shapes, gen):
        self.need_bottoms(shapes, 1)
        self.n = len(lp.top)
        return [shapes[0]] * self.n

    def forward(self, x):
        return [x] * self.n


@register()
class Silence(Layer):
    """Consumes its bottoms and has no top (Caffe's backward writes zero diffs: no gradient flows)."""

    def setup(self, lp, shapes, gen):
        if not shapes:
            self.fail("needs at least one bottom")
        return []

    def forward(self, *xs):
        return []
