"""Layers that route values without arithmetic: Concat, Split, Flatten, Silence, Slice, Reshape, Tile, Filter,
BatchReindex."""

import math

import torch

from caffecam.engine.kernels.concat import concat
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
        return [concat(xs, self.axis)]


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


@register()
class Slice(Layer):
    """Cuts bottom[0] along `axis` (or the legacy slice_dim) at slice_point, or into as many equal parts as tops."""

    def setup(self, lp, shapes, gen):
        p = lp.slice_param
        self.need_bottoms(shapes, 1)
        if p.HasField("axis") and p.HasField("slice_dim"):
            self.fail("give either axis or slice_dim, not both")
        shape, tops = shapes[0], len(lp.top)
        if p.HasField("slice_dim") and p.slice_dim >= len(shape):
            self.fail(f"slice_dim {p.slice_dim} out of range for a {len(shape)}-D blob")
        self.axis = p.slice_dim if p.HasField("slice_dim") else canonical_axis(p.axis, len(shape), self)
        dim = shape[self.axis]
        if tops < 1:
            self.fail("needs at least one top")
        if len(p.slice_point):
            if len(p.slice_point) != tops - 1:
                self.fail(f"{len(p.slice_point)} slice_point values for {tops} tops (give tops − 1)")
            points = [0] + list(p.slice_point) + [dim]
            if any(b <= a for a, b in zip(points, points[1:])):
                self.fail(f"slice_point {list(p.slice_point)} must increase strictly within (0, {dim})")
            self.sizes = [b - a for a, b in zip(points, points[1:])]
        else:
            if dim % tops:
                self.fail(f"{tops} tops do not divide axis {self.axis} of size {dim} evenly")
            self.sizes = [dim // tops] * tops
        return [tuple(shape[: self.axis]) + (s,) + tuple(shape[self.axis + 1:]) for s in self.sizes]

    def forward(self, x):
        return list(torch.split(x, self.sizes, self.axis))


@register()
class Reshape(Layer):
    """reshape_param.shape replaces bottom axes axis … axis+num_axes−1 (num_axes −1: to the end; a negative axis
    counts from the end, −1 meaning after the last): 0 copies the bottom's dim at that position, one −1 is
    inferred from the count (Caffe's reshape_layer.cpp). It shares the bottom's data and cannot work in place."""

    def setup(self, lp, shapes, gen):
        p = lp.reshape_param
        self.need_bottoms(shapes, 1)
        if len(lp.top) and len(lp.bottom) and lp.top[0] == lp.bottom[0]:
            self.fail("cannot work in place; give the top another name")
        self.dims, self.start, self.num_axes = list(p.shape.dim), p.axis, p.num_axes
        if sum(d == -1 for d in self.dims) > 1:
            self.fail(f"shape {self.dims} has more than one -1")
        if any(d < -1 for d in self.dims):
            self.fail(f"shape {self.dims} has a dim below -1")
        return [self._top_shape(tuple(shapes[0]))]

    def _top_shape(self, shape):
        nd = len(shape)
        start = self.start if self.start >= 0 else nd + self.start + 1
        if not 0 <= start <= nd:
            self.fail(f"axis {self.start} out of range for a {nd}-D bottom")
        if self.num_axes < -1:
            self.fail(f"num_axes must be -1 or more, got {self.num_axes}")
        end = nd if self.num_axes == -1 else start + self.num_axes
        if end > nd:
            self.fail(f"axis {start} + num_axes {self.num_axes} extend past the bottom's {nd} axes")
        new = []
        for i, d in enumerate(self.dims):
            if d == 0:
                if start + i >= nd:
                    self.fail(f"shape has a 0 at position {i}, but the bottom has no axis {start + i} to copy")
                d = shape[start + i]
            new.append(d)
        top = list(shape[:start]) + new + list(shape[end:])
        count = math.prod(shape)
        if -1 in new:
            known = math.prod(d for d in top if d != -1)
            if known == 0 or count % known:
                self.fail(f"bottom count {count} is not divisible by the given dims' product {known}")
            top[start + new.index(-1)] = count // known
        if math.prod(top) != count:
            self.fail(f"top shape {tuple(top)} does not hold the bottom's {count} values {tuple(shape)}")
        return tuple(top)

    def forward(self, x):
        return [x.reshape(self._top_shape(tuple(x.shape)))]


@register()
class Tile(Layer):
    """Repeats the block of axes from `axis` on `tiles` times along `axis` (Caffe's tile_layer.cpp)."""

    def setup(self, lp, shapes, gen):
        p = lp.tile_param
        self.need_bottoms(shapes, 1)
        self.axis = canonical_axis(p.axis, len(shapes[0]), self)
        if not p.HasField("tiles") or p.tiles < 1:
            self.fail("tiles must be given and positive")
        self.tiles = p.tiles
        shape = list(shapes[0])
        shape[self.axis] *= self.tiles
        return [tuple(shape)]

    def forward(self, x):
        return [torch.cat([x] * self.tiles, self.axis)]


@register()
class Filter(Layer):
    """Keeps the items (first-axis entries) of bottoms 0 … k−1 whose selector (the last bottom, N×1…) is non-zero.
    The top's first axis therefore depends on the data; set-up reports the full batch, as Caffe's first Reshape
    does. No gradient to the selector; dropped items get zero diffs."""

    def setup(self, lp, shapes, gen):
        if len(shapes) < 2:
            self.fail("needs at least two bottoms (the blobs to filter, then the selector)")
        selector = shapes[-1]
        if any(d != 1 for d in selector[1:]):
            self.fail(f"selector shape {selector}: every axis but the first must be 1")
        if any(s[0] != selector[0] for s in shapes[:-1]):
            self.fail(f"bottoms {shapes[:-1]} must have the selector's first dim {selector[0]}")
        return [tuple(s) for s in shapes[:-1]]

    def forward(self, *xs):
        keep = (xs[-1].detach().reshape(-1) != 0).nonzero().reshape(-1)
        return [x.index_select(0, keep) for x in xs[:-1]]


@register()
class BatchReindex(Layer):
    """top[i] = bottom[0][index[i]], the index (bottom[1], 1-D) truncated to integers; gradients add up per source
    item (Caffe's batch_reindex_layer.cpp). No gradient to the index."""

    def setup(self, lp, shapes, gen):
        self.need_bottoms(shapes, 2)
        if len(shapes[1]) != 1:
            self.fail(f"the index (bottom 1) must be 1-D, got {shapes[1]}")
        return [(shapes[1][0],) + tuple(shapes[0][1:])]

    def forward(self, x, index):
        index = index.detach().long()
        if index.numel() and (index.min() < 0 or index.max() >= x.shape[0]):
            bad = index[(index < 0) | (index >= x.shape[0])][0].item()
            self.fail(f"index {bad} outside the batch of {x.shape[0]}")
        return [x.index_select(0, index)]
