"""Neuron layers (Caffe's neuron_layers family: element-wise, one bottom, one top of its shape).

Each forward follows the formula in Caffe's <type>_layer.cpp. Backward is autograd where its values equal Caffe's
Backward_cpu, kinks included (ReLU, leaky ReLU and PReLU pass the negative slope at x = 0, AbsVal passes 0, Clip
passes the gradient on the closed interval [min, max], as torch's relu, leaky_relu, prelu, abs and clamp do).
ELU and Power have their own backward (kernels/neuron_grads.py); Threshold has none, as in Caffe.
"""

import math

import torch
import torch.nn.functional as F

from caffecam.engine.kernels.neuron_grads import elu, power
from caffecam.engine.layers.base import Layer, register
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


class Neuron(Layer):
    """One bottom, one top of the same shape; subclasses read their parameters in `configure`."""

    def setup(self, lp, shapes, gen):
        self.need_bottoms(shapes, 1)
        self.configure(lp, shapes[0], gen)
        return [shapes[0]]

    def configure(self, lp, shape, gen):
        pass


@register()
class ReLU(Neuron):
    def configure(self, lp, shape, gen):
        self.slope = lp.relu_param.negative_slope
        self.inplace = False  # set by Net where Caffe's in-place form is safe for autograd (see Net.__init__)
        self.untracked = False  # set by Net for one forward: the MAX pooling after it does this backward (net.py)

    def forward(self, x):
        # y = max(x, 0) + slope · min(x, 0); Caffe's gradient at x = 0 is the slope (its test is x > 0).
        if self.slope == 0:
            untracked, self.untracked = self.untracked, False  # for this call only
            if untracked:
                with torch.no_grad():
                    return [F.relu_(x)]
            return [F.relu_(x) if self.inplace else F.relu(x)]
        return [F.leaky_relu(x, self.slope)]


@register()
class PReLU(Neuron):
    def configure(self, lp, shape, gen):
        p = lp.prelu_param
        if len(shape) < 2:
            self.fail(f"needs a bottom with at least 2 axes, got {shape}")
        # prelu_layer.cpp: one slope per channel (axis 1), or a single 0-D blob when channel_shared;
        # the filler defaults to constant 0.25.
        filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant", value=0.25)
        self.add_blob(() if p.channel_shared else (shape[1],), filler, gen)

    def forward(self, x):
        # y = max(x, 0) + a_c · min(x, 0); da_c = Σ dy · x over x ≤ 0 (torch's prelu computes exactly that).
        return [F.prelu(x, self.blobs[0].reshape(-1))]


@register()
class Dropout(Neuron):
    def configure(self, lp, shape, gen):
        self.ratio = lp.dropout_param.dropout_ratio
        if not 0 <= self.ratio < 1:
            self.fail(f"dropout_ratio must be in [0, 1), got {self.ratio:g}")

    def forward(self, x):
        # TRAIN: kept units scaled by 1/(1 − p); TEST: identity.
        return [F.dropout(x, self.ratio, training=True) if self.phase == TRAIN and self.ratio > 0 else x]


@register()
class AbsVal(Neuron):
    def forward(self, x):
        return [torch.abs(x)]  # gradient sign(x) · dy, 0 at x = 0 (Caffe's caffe_cpu_sign)


@register()
class BNLL(Neuron):
    def forward(self, x):
        # bnll_layer.cpp: y = log(1 + e^x) (as x + log(1 + e^−x) for x > 0); dx = dy · e^min(x,50) / (e^min(x,50) + 1).
        # softplus with threshold 50 returns x above 50, where Caffe's x + log(1 + e^−x) is x in float too.
        return [F.softplus(x, beta=1.0, threshold=50.0)]


@register()
class Clip(Neuron):
    def configure(self, lp, shape, gen):
        self.lo, self.hi = lp.clip_param.min, lp.clip_param.max

    def forward(self, x):
        if self.lo > self.hi:
            # clip_layer.cpp: y = max(min, min(x, max)) is min everywhere, and no x passes its gradient test.
            return [torch.where(torch.zeros_like(x, dtype=torch.bool), x, self.lo)]
        return [torch.clamp(x, self.lo, self.hi)]  # gradient where min ≤ x ≤ max, bounds included, as Caffe


@register()
class ELU(Neuron):
    def configure(self, lp, shape, gen):
        self.alpha = lp.elu_param.alpha

    def forward(self, x):
        return [elu(x, self.alpha)]


@register()
class Sigmoid(Neuron):
    def forward(self, x):
        # sigmoid_layer.cpp computes 0.5·tanh(0.5·x) + 0.5 in double precision, which is 1/(1 + e^−x) correctly
        # rounded (Caffe gives 0 below about x = −37, where this gives the tiny true value); dx = dy · y · (1 − y).
        return [torch.sigmoid(x)]


@register()
class Swish(Neuron):
    def configure(self, lp, shape, gen):
        self.beta = lp.swish_param.beta

    def forward(self, x):
        # swish_layer.cpp: y = x · σ(beta·x); dx = dy · (beta·y + σ(beta·x) · (1 − beta·y)), autograd's value.
        return [x * torch.sigmoid(self.beta * x)]


@register()
class TanH(Neuron):
    def forward(self, x):
        return [torch.tanh(x)]  # dx = dy · (1 − y²)


class _NoBackward(torch.autograd.Function):
    """threshold_layer.hpp: y = 1 where x > threshold, else 0. Caffe's Backward_cpu is NOT_IMPLEMENTED, so a net that
    needs a gradient through it aborts; here the backward raises one CaffeCamError line naming the layer."""

    @staticmethod
    def forward(ctx, x, value, where):
        ctx.where = where
        return (x > value).to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        raise CaffeCamError(f"{ctx.where}: Caffe has no backward for Threshold: give the layers below it lr_mult 0, "
                            "so that no gradient has to pass through it")


@register()
class Threshold(Neuron):
    def configure(self, lp, shape, gen):
        self.threshold = lp.threshold_param.threshold

    def forward(self, x):
        return [_NoBackward.apply(x, self.threshold, f"layer '{self.name}' (Threshold)")]


@register()
class Exp(Neuron):
    def configure(self, lp, shape, gen):
        p = lp.exp_param
        log_base = self.log_base(p.base)
        # exp_layer.cpp: y = base^(shift + scale·x) = outer · e^(inner·x), inner = ln(base)·scale,
        # outer = base^shift (e^shift for the default base −1, which means e); dx = dy · inner · y (autograd's value).
        self.inner = log_base * p.scale
        self.outer = 1.0 if p.shift == 0 else math.exp(p.shift) if p.base == -1 else p.base ** p.shift

    def log_base(self, base):
        if base == -1:
            return 1.0
        if not base > 0:
            self.fail(f"base must be strictly positive (or -1 for e), got {base:g}")
        return math.log(base)

    def forward(self, x):
        y = torch.exp(x if self.inner == 1 else x * self.inner)
        return [y if self.outer == 1 else y * self.outer]


@register()
class Log(Exp):
    def configure(self, lp, shape, gen):
        p = lp.log_param
        log_base = self.log_base(p.base)
        if log_base == 0:
            self.fail("base 1 has no logarithm (1/ln(1) is infinite)")
        # log_layer.cpp: y = log_base(shift + scale·x) = ln(shift + scale·x) / ln(base);
        # dx = dy · (scale / ln(base)) / (shift + scale·x), autograd's value.
        self.scale, self.shift, self.base_scale = p.scale, p.shift, 1.0 / log_base

    def forward(self, x):
        if self.scale != 1:
            x = x * self.scale
        if self.shift != 0:
            x = x + self.shift
        y = torch.log(x)
        return [y if self.base_scale == 1 else y * self.base_scale]


@register()
class Power(Neuron):
    def configure(self, lp, shape, gen):
        p = lp.power_param
        self.power, self.scale, self.shift = p.power, p.scale, p.shift

    def forward(self, x):
        return [power(x, self.power, self.scale, self.shift)]
