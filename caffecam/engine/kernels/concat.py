"""Concat whose backward hands each bottom its gradient in that bottom's own memory layout.

torch.cat's backward gives each input a slice of the top's gradient; on a channels_last tensor a slice along the
channels is neither channels_last- nor NCHW-contiguous, and every gradient kernel after it (ReLU's
threshold_backward, the convolution's backward) then takes its slow strided path or copies. Measured on this 2-core
CPU, N=32, 192×28×28: ReLU's backward 12.8 ms on such a gradient against 2.1 ms on a channels_last one, for a 0.8 ms
copy. The values are the same; only the layout of the gradient changes.
"""

import torch

ENABLED = True


def _layout(x):
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class _Concat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, axis, *xs):
        ctx.axis, ctx.sizes, ctx.layouts = axis, [x.shape[axis] for x in xs], [_layout(x) for x in xs]
        return torch.cat(xs, axis)

    @staticmethod
    def backward(ctx, grad):
        parts = grad.split(ctx.sizes, ctx.axis)
        return (None, *(p.contiguous(memory_format=f) for p, f in zip(parts, ctx.layouts)))


def concat(xs, axis):
    """torch.cat(xs, axis), with gradients laid out as each x is when a gradient is recorded."""
    if ENABLED and torch.is_grad_enabled() and any(x.requires_grad for x in xs):
        return _Concat.apply(axis, *xs)
    return torch.cat(xs, axis)
