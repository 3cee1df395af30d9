"""Caffe's MVN with its own backward (mvn_layer.cpp), as one autograd Function over rows of a 2-D tensor.

    y  = (x − mean) / (σ + eps)          σ = sqrt(mean((x − mean)²)), the biased deviation of the row
    dx = (dy − mean(dy) − y · mean(dy · y)) / (σ + eps)

That dx is the gradient of (x − mean) / σ' with σ' held at σ + eps in the last term's derivation: the exact
gradient of the forward would carry a factor (σ + eps) / σ on the y · mean(dy · y) term. Caffe's value is the one
to reproduce. Without variance normalization, y = x − mean and dx = dy − mean(dy) (exact; autograd does it).
"""

import torch


class _MVNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, eps):
        centred = x - x.mean(1, keepdim=True)
        scale = (centred * centred).mean(1, keepdim=True).sqrt() + eps
        y = centred / scale
        ctx.save_for_backward(y, scale)
        return y

    @staticmethod
    def backward(ctx, dy):
        y, scale = ctx.saved_tensors
        dx = dy - dy.mean(1, keepdim=True) - y * (dy * y).mean(1, keepdim=True)
        return dx / scale, None


def mvn(rows, normalize_variance, eps):
    """Normalize each row of a 2-D tensor (rows = the samples or sample-channels Caffe normalizes over)."""
    if normalize_variance:
        return _MVNFunction.apply(rows, eps)
    return rows - rows.mean(1, keepdim=True)
