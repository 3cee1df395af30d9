"""Neuron layers whose Caffe backward is not the autograd of their forward: ELU and Power.

ELU (elu_layer.cpp): y = max(x, 0) + alpha · (e^min(x,0) − 1), with e^x − 1 as Caffe writes it (not expm1, whose
    float result differs by up to 1e-3 relative near 0), and e^x rounded once from double as glibc's expf is (torch's
    float exp can be an ulp off, 3e-5 relative on y near x = −1e-3); dx = dy · (x > 0 ? 1 : alpha + y). At x = 0
    that is alpha; for very negative x, alpha + y cancels to 0 in float where alpha · e^x would not.
Power (power_layer.cpp): y = (shift + scale · x)^power, a constant when power · scale = 0 (1 if power is 0, else
    shift^power). Caffe's dx = dy · d, with diff_scale = power · scale and d, by case:
        diff_scale = 0 or power = 1:  diff_scale
        power = 2:                    diff_scale · scale · x + diff_scale · shift
        shift = 0:                    power · y / x                  (0/0 = NaN at x = 0, as in Caffe)
        otherwise:                    diff_scale · y / (scale · x + shift)
"""

import torch


class _ELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha):
        e = torch.exp(torch.clamp(x, max=0).double()).to(x.dtype)
        y = torch.where(x > 0, x, alpha * (e - 1))
        ctx.save_for_backward(x, y)
        ctx.alpha = alpha
        return y

    @staticmethod
    def backward(ctx, dy):
        x, y = ctx.saved_tensors
        return dy * torch.where(x > 0, torch.ones_like(y), ctx.alpha + y), None


def elu(x, alpha):
    return _ELU.apply(x, alpha)


def _power_forward(x, power, scale, shift):
    if power * scale == 0:
        return torch.full_like(x, 1.0) if power == 0 else torch.full_like(x, shift).pow_(power)
    y = x * scale if scale != 1 else x
    y = y + shift if shift != 0 else y
    return torch.pow(y, power) if power != 1 else y.clone()


class _Power(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, power, scale, shift):
        y = _power_forward(x, power, scale, shift)
        ctx.save_for_backward(x, y)
        ctx.args = power, scale, shift
        return y

    @staticmethod
    def backward(ctx, dy):
        x, y = ctx.saved_tensors
        power, scale, shift = ctx.args
        diff_scale = power * scale
        if diff_scale == 0:
            d = torch.zeros_like(x)
        elif power == 1:
            d = torch.full_like(x, diff_scale)
        elif power == 2:
            d = x * (diff_scale * scale) + diff_scale * shift
        elif shift == 0:
            d = y / x * power
        else:
            d = y / (x * scale + shift) * diff_scale
        return dy * d, None, None, None


def power(x, power, scale, shift):
    return _Power.apply(x, power, scale, shift)
