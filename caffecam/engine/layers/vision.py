"""Vision layers (Caffe's vision_layers family): Convolution and Pooling."""

import torch.nn.functional as F

from caffecam.engine.kernels import winograd
from caffecam.engine.kernels.pool_geometry import explicit_pool, pool_plan
from caffecam.engine.layers.base import Layer, hw_pair, register


@register()
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


@register()
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
