"""Caffe's cross-channel LRN with its closed-form gradient (lrn_layer.cpp), as one autograd Function.

    scale_c = k + Σ_{c' within local_size/2 of c} (alpha / local_size) · x_c'²
    y_c     = x_c · scale_c^(−beta)
    dx_c    = dy_c · scale_c^(−beta) − (2 · alpha · beta / local_size) · x_c · Σ_{c' near c} dy_c' · y_c' / scale_c'

Autograd through the composed operations takes about twice the memory passes and a second pow; this saves
scale and scale^(−beta) from the forward instead. The channel-window sums are 1×1 convolutions with a fixed banded
weight (measured faster on the CPU than pooling or shifted sums).
"""

import torch
import torch.nn.functional as F


def channel_band(channels, size, dtype=torch.float32, device=None):
    """C×C×1×1 weight with ones where |c − c'| ≤ size // 2: a 1×1 convolution with it sums a channel window."""
    idx = torch.arange(channels, device=device)
    return ((idx[:, None] - idx[None, :]).abs() <= size // 2).to(dtype).reshape(channels, channels, 1, 1)


class _LRNAcross(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, band, size, alpha, beta, k):
        # Caffe adds alpha/size · x² per channel in the window onto k; the band carries alpha/size.
        scale = F.conv2d(x * x, band * (alpha / size), torch.full((x.shape[1],), k, dtype=x.dtype, device=x.device))
        power = scale.pow(-beta)
        ctx.save_for_backward(x, band, scale, power)
        ctx.coeff = -2.0 * alpha * beta / size
        return x * power

    @staticmethod
    def backward(ctx, dy):
        x, band, scale, power = ctx.saved_tensors
        ratio = dy * x  # dy · y / scale, with y = x · power
        ratio.mul_(power).div_(scale)
        grad = dy * power
        grad.addcmul_(x, F.conv2d(ratio, band), value=ctx.coeff)
        return grad, None, None, None, None, None


def lrn_across(x, band, size, alpha, beta, k):
    """Cross-channel LRN of an N×C×H×W x; `band` from channel_band(C, size)."""
    return _LRNAcross.apply(x, band.to(x.dtype), size, alpha, beta, k)
