"""Caffe's cross-channel LRN with its closed-form gradient (lrn_layer.cpp), as one autograd Function.

    scale_c = k + (alpha / n) · Σ_{c'∈W(c)} x_c'²          n = local_size, W(c) = channels within n // 2 of c
    y_c     = x_c · scale_c^(−beta)
    dx_c    = dy_c · scale_c^(−beta) − (2 · alpha · beta / n) · x_c · Σ_{c'∈W(c)} dy_c' · y_c' / scale_c'

Autograd through the composed operations takes about twice the memory passes and a second pow; this saves
scale and scale^(−beta) from the forward instead. Measured on the CPU (GoogLeNet's norm2, 192 channels at 56×56):
the window sum as shifted slices of the channels_last tensor is ×2 faster than a 1×1 convolution with a banded
weight, and for beta = 0.75 rsqrt(s·√s) is ×2.5 faster than pow(s, −0.75) (within 1.5e-7 of it; Caffe itself
sums the window as a running sum, adding the head channel and subtracting the tail). On the CPU, float32 and
bfloat16 channels_last tensors take compiled loops instead (cpu_loops.py: one pass each way, the same operations).
"""

import torch
import torch.nn.functional as F

from caffecam.engine.kernels import cpu_loops


def channel_window_sum(x, size):
    """Σ over the `size` channels centred on each channel (zeros beyond the edges) of an N×C×H×W tensor."""
    r = size // 2
    h = x.permute(0, 2, 3, 1)  # N×H×W×C: contiguous for channels_last tensors
    c = h.shape[-1]
    padded = F.pad(h, (r, r))
    out = padded[..., :c] + padded[..., 1:1 + c] if size > 1 else padded[..., :c].clone()
    for j in range(2, size):
        out += padded[..., j:j + c]
    return out.permute(0, 3, 1, 2)


def negative_power(s, beta):
    """s^(−beta) for s > 0."""
    if beta == 0.75:
        out = s.sqrt()
        return out.mul_(s).rsqrt_()
    return s.pow(-beta)


class _LRNAcross(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        ctx.size, ctx.coeff, ctx.loops = size, -2.0 * alpha * beta / size, cpu_loops.enabled(x)
        if ctx.loops:  # bfloat16 is computed in float32 inside the loops and rounded once at the end
            y, scale = cpu_loops.lrn_forward(x, size, alpha, beta, k)
            ctx.save_for_backward(x, scale)
            ctx.alpha, ctx.beta = alpha, beta
            return y
        scale = channel_window_sum(x * x, size).mul_(alpha / size).add_(k)
        power = negative_power(scale, beta)
        ctx.save_for_backward(x, scale, power)
        return x * power

    @staticmethod
    def backward(ctx, dy):
        if ctx.loops:
            x, scale = ctx.saved_tensors
            return cpu_loops.lrn_backward(x, scale, dy, ctx.size, ctx.alpha, ctx.beta), None, None, None, None
        x, scale, power = ctx.saved_tensors
        ratio = dy * x  # dy · y / scale, with y = x · power
        ratio.mul_(power).div_(scale)
        grad = dy * power
        grad.addcmul_(x, channel_window_sum(ratio, ctx.size), value=ctx.coeff)
        return grad, None, None, None, None


def lrn_across(x, size, alpha, beta, k):
    """Cross-channel LRN of an N×C×H×W x (Caffe's ACROSS_CHANNELS norm_region)."""
    return _LRNAcross.apply(x, size, alpha, beta, k)
