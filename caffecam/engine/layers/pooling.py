"""Vision layers (Caffe's vision_layers family), pooling side: Pooling (MAX, AVE, STOCHASTIC) and SPP."""

import torch

from caffecam.engine.kernels.pool_geometry import caffe_max_pool_with_mask, caffe_pool, pool_plan, trains_in_loops
from caffecam.engine.kernels.stochastic_pool import stochastic_pool
from caffecam.engine.layers.base import Layer, register
from caffecam.proto import caffe_pb2

P = caffe_pb2.PoolingParameter
MODES = {P.MAX: "MAX", P.AVE: "AVE", P.STOCHASTIC: "STOCHASTIC"}


class PoolingBase(Layer):
    def check_geometry(self, mode, kernel, stride, pad, hw, what=""):
        """pooling_layer.cpp's set-up checks; returns the pooled size (h, w) for input size hw."""
        if mode == "STOCHASTIC" and any(pad):
            self.fail(f"{what}padding {pad} is implemented only for MAX and AVE pooling (as in Caffe)")
        if any(pd >= k for pd, k in zip(pad, kernel)):
            self.fail(f"{what}pad {pad} must be smaller than kernel {kernel}")
        out = pool_plan(hw, kernel, stride, pad, self.ceil)[0]
        if min(out) < 1:
            self.fail(f"{what}kernel {kernel} does not fit the {hw[0]}×{hw[1]} input")
        return out

    def pool(self, x, mode, kernel, stride, pad, after_relu=False):
        if mode == "STOCHASTIC":
            out = pool_plan(tuple(x.shape[-2:]), kernel, stride, pad, self.ceil)[0]
            return stochastic_pool(x, out, kernel, stride, train=self.phase == caffe_pb2.TRAIN)
        return caffe_pool(x, kernel, stride, pad, self.ceil, mode == "MAX", after_relu)


@register()
class Pooling(PoolingBase):
    def setup(self, lp, shapes, gen):
        p = lp.pooling_param
        n, c, h, w = self.need_image_bottom(shapes)
        self.mode, self.global_pooling = MODES[p.pool], p.global_pooling
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
        self.ceil = p.round_mode == p.CEIL
        # MAX pooling may have a second top, the mask of where each maximum came from (pooling_layer.hpp:
        # MaxTopBlobs is 2 for MAX, 1 otherwise).
        self.with_mask = len(lp.top) == 2
        if len(lp.top) > (2 if self.mode == "MAX" else 1):
            self.fail(f"{len(lp.top)} tops: {self.mode} pooling has one"
                      + (" (or two: the pooled values and the mask of their positions)" if self.mode == "MAX" else ""))
        top = (n, c) + self.check_geometry(self.mode, self.kernel, self.stride, self.pad, (h, w))
        self.after_relu = False  # set by Net for one forward: x comes from a ReLU it folds in here (net.py)
        return [top, top] if self.with_mask else [top]

    def _geometry(self, x):
        # global_pooling: the kernel is whatever size the input has now (Caffe reshapes it on every forward)
        if self.global_pooling:
            return tuple(x.shape[-2:]), (1, 1), (0, 0)
        return self.kernel, self.stride, self.pad

    def trains_after_relu(self, x):
        """Whether this layer can fold in the backward of the ReLU that wrote x (MAX, one top, the loops' path)."""
        return self.mode == "MAX" and not self.with_mask and trains_in_loops(x, *self._geometry(x), self.ceil)

    def forward(self, x):
        if self.with_mask:
            top, mask = caffe_max_pool_with_mask(x, *self._geometry(x), self.ceil)
            return [top, mask]
        after_relu, self.after_relu = self.after_relu, False  # for this call only
        return [self.pool(x, self.mode, *self._geometry(x), after_relu)]


def spp_level(level, h, w):
    """spp_layer.cpp's GetPoolingParam for pyramid level i (2^i bins a side): kernel = ceil(size / bins),
    pad = (kernel·bins − size + 1) // 2, stride = kernel. Returns (kernel, stride, pad) as (h, w) pairs."""
    bins = 2 ** level
    kernel = (-(-h // bins), -(-w // bins))
    pad = tuple((k * bins - size + 1) // 2 for k, size in zip(kernel, (h, w)))
    return kernel, kernel, pad


@register()
class SPP(PoolingBase):
    """Spatial pyramid pooling: for levels 0 … pyramid_height − 1, a pooling (CEIL rounding) whose windows tile the
    input in 2^i × 2^i bins; each level flattened and all concatenated along axis 1. With pyramid_height 1, the one
    pooling's N×C×h×w top as it is. The geometry follows each input size, as Caffe's Reshape does."""

    def setup(self, lp, shapes, gen):
        p = lp.spp_param
        n, c, h, w = self.need_image_bottom(shapes)
        self.mode, self.height, self.ceil = MODES[p.pool], p.pyramid_height, True
        if self.height < 1:
            self.fail("pyramid_height must be at least 1")
        outs = []
        for i in range(self.height):
            kernel, stride, pad = spp_level(i, h, w)
            outs.append(self.check_geometry(self.mode, kernel, stride, pad, (h, w), f"pyramid level {i}: "))
        if self.height == 1:
            return [(n, c) + outs[0]]
        return [(n, sum(c * oh * ow for oh, ow in outs))]

    def forward(self, x):
        h, w = x.shape[-2:]
        tops = [self.pool(x, self.mode, *spp_level(i, h, w)) for i in range(self.height)]
        if self.height == 1:
            return tops
        return [torch.cat([t.flatten(1) for t in tops], dim=1)]
