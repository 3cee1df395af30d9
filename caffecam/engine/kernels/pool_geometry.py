"""Caffe's pooling geometry: output sizes, when PyTorch's pooling matches Caffe's, and the explicit fallback."""

from functools import lru_cache

import torch
import torch.nn.functional as F

from caffecam.engine.kernels import cpu_loops

_FLT_MAX = 3.4028234663852886e38


def caffe_pool_out(size, k, s, p, ceil=True, padded=None):
    """Caffe's pooled size: ceil((H + 2p − k) / s) + 1 (floor for FLOOR), minus one if the last window starts
    in the padding. Caffe checks that in both dimensions when the layer has any padding (`padded`, default p > 0)."""
    num = size + 2 * p - k
    out = (-(-num // s) if ceil else num // s) + 1
    if (p > 0 if padded is None else padded) and (out - 1) * s >= size + p:
        out -= 1
    return out


def _torch_ceil_out(size, k, s):
    # PyTorch's ceil_mode output size with no padding: it also drops a last window starting at or past the edge.
    out = -(-(size - k) // s) + 1
    if (out - 1) * s >= size:
        out -= 1
    return out


@lru_cache(maxsize=1024)
def pool_plan(hw, kernel, stride, pad, ceil):
    """(Caffe's output size (h, w), whether PyTorch's own pooling computes exactly Caffe's result) for input `hw`."""
    padded = any(pad)
    out = tuple(caffe_pool_out(sz, k, s, pd, ceil, padded) for sz, k, s, pd in zip(hw, kernel, stride, pad))
    # FLOOR sizes always agree with PyTorch's (Caffe's last-window check cannot fire when pad < kernel).
    torch_out = out if not ceil else tuple(
        caffe_pool_out(sz, k, s, pd) if pd > 0 else _torch_ceil_out(sz, k, s)
        for sz, k, s, pd in zip(hw, kernel, stride, pad))
    # When the sizes agree, PyTorch uses Caffe's rules exactly: MAX skips padded cells, AVE with count_include_pad
    # divides by the window clipped to the padded extent. PyTorch also requires pad ≤ kernel / 2.
    return out, out == torch_out and all(2 * pd <= k for pd, k in zip(pad, kernel))


def _pad_to_windows(x, out, kernel, stride, pad, value=0.0):
    """x padded by `pad` before and enough after for every one of Caffe's `out` windows to lie inside."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    h, w = x.shape[-2:]
    extra_h = max(0, (out[0] - 1) * sh + kh - h - ph)
    extra_w = max(0, (out[1] - 1) * sw + kw - w - pw)
    return F.pad(x, (pw, extra_w, ph, extra_h), value=value)


def _lowest(dtype):
    # Caffe starts each max at −FLT_MAX: a window lying wholly past the edge (kernel < stride) yields that.
    # bfloat16 rounds −FLT_MAX to −inf: there the lowest finite value of the type stands in for it.
    return -min(_FLT_MAX, torch.finfo(dtype).max)


def explicit_pool(x, out, kernel, stride, pad, is_max):
    """Caffe's pooling where PyTorch's sizes differ: pad by hand to cover every window Caffe computes."""
    if is_max:
        return F.max_pool2d(_pad_to_windows(x, out, kernel, stride, pad, _lowest(x.dtype)), kernel,
                            stride)[..., : out[0], : out[1]]
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    h, w = x.shape[-2:]
    sums = F.avg_pool2d(_pad_to_windows(x, out, kernel, stride, pad), kernel, stride,
                        divisor_override=1)[..., : out[0], : out[1]]

    # AVE divisor: the window clipped to the padded extent [−p, H + p).
    def counts(n, k, s, p, size):
        starts = torch.arange(n) * s - p
        return (torch.clamp(starts + k, max=size + p) - starts).to(x.dtype)

    div = counts(out[0], kh, sh, ph, h)[:, None] * counts(out[1], kw, sw, pw, w)[None, :]
    return sums / div.to(x.device)


class _LoopsMaxPool(torch.autograd.Function):
    """MAX pooling in the compiled loops with a gradient: the forward keeps the int32 index of each maximum, the
    backward gathers each input cell's gradient from it (cpu_loops.max_pool_backward). With after_relu, x is the
    output of a ReLU whose own backward was not recorded (Net folds it in here): a window whose maximum is not above
    0 passes no gradient, which is ReLU's backward (dx = dy where y > 0) on the only cells pooling sends any to."""

    @staticmethod
    def forward(ctx, x, kernel, stride, pad, out, after_relu):
        top, arg = cpu_loops.max_pool(x, kernel, stride, pad, out, with_index=True, positive_only=after_relu)
        ctx.save_for_backward(arg)
        ctx.geometry = (tuple(x.shape[-2:]), kernel, stride, pad, x.dtype)
        return top

    @staticmethod
    def backward(ctx, dy):
        (arg,) = ctx.saved_tensors
        return cpu_loops.max_pool_backward(dy, arg, *ctx.geometry), None, None, None, None, None


def _loops_suit(x, out, stride, pad):
    """Whether MAX pooling of x takes the compiled CPU loops (cpu_loops.py): float32, or bfloat16 in its own bits
    (numba_bf16.py; GoogLeNet-CAM's eight bfloat16 poolings of a training step at batch 32, forward and backward:
    156 ms in PyTorch's kernels). In bfloat16 not where a window lies wholly past the edge: there Caffe's −FLT_MAX
    rounds to −inf, and the PyTorch path keeps the lowest finite."""
    if not cpu_loops.enabled(x):
        return False
    return x.dtype == torch.float32 or all(
        (o - 1) * s - p < size for o, s, p, size in zip(out, stride, pad, x.shape[-2:]))


class _WholeMean(torch.autograd.Function):
    """AVE pooling whose one window is the whole unpadded input (global pooling; CAM_pool's 14/14 over 14×14).
    The backward writes nothing: each cell's gradient is dy / (H·W), Caffe's `bottom_diff += top_diff / pool_size`
    into a zeroed bottom_diff (pooling_layer.cpp), as a broadcast view. PyTorch's avg_pool2d_backward zero-fills,
    adds and then copies to the input's memory format: 11 ms for GoogLeNet-CAM's CAM_pool at batch 32."""

    @staticmethod
    def forward(ctx, x, kernel, stride):
        ctx.shape = x.shape
        return F.avg_pool2d(x, kernel, stride)

    @staticmethod
    def backward(ctx, dy):
        return (dy / (ctx.shape[-2] * ctx.shape[-1])).expand(ctx.shape), None, None


def trains_in_loops(x, kernel, stride, pad, ceil):
    """Whether caffe_pool(x, …, is_max=True) runs the compiled loops with a gradient, so that it can take
    after_relu."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return False
    return _loops_suit(x, pool_plan(tuple(x.shape[-2:]), kernel, stride, pad, ceil)[0], stride, pad)


def caffe_pool(x, kernel, stride, pad, ceil, is_max, after_relu=False):
    """Caffe's MAX or AVE pooling of an N×C×H×W x: PyTorch's own pooling where it computes Caffe's result, the explicit
    form elsewhere; MAX on the CPU in compiled loops that follow pooling_layer.cpp directly (one pass, ×2-×3 faster
    than PyTorch's kernel on GoogLeNet's layers at inference, ×1.4 forward and backward in training). Arguments are
    (h, w) tuples; the plan for each input size is worked out once (cached). after_relu: see _LoopsMaxPool; only
    where trains_in_loops."""
    out, fast = pool_plan(tuple(x.shape[-2:]), kernel, stride, pad, ceil)
    if is_max and _loops_suit(x, out, stride, pad):
        if torch.is_grad_enabled() and x.requires_grad:
            return _LoopsMaxPool.apply(x, kernel, stride, pad, out, after_relu)
        if not after_relu:
            return cpu_loops.max_pool(x, kernel, stride, pad, out)
    if after_relu:
        raise RuntimeError("caffe_pool: after_relu is only for pooling that trains_in_loops")
    if not fast:
        return explicit_pool(x, out, kernel, stride, pad, is_max)
    if not is_max and out == (1, 1) and not any(pad) and tuple(kernel) == tuple(x.shape[-2:]):
        return _WholeMean.apply(x, kernel, stride)
    if is_max:
        return F.max_pool2d(x, kernel, stride, pad, ceil_mode=ceil)
    return F.avg_pool2d(x, kernel, stride, pad, ceil_mode=ceil, count_include_pad=True)


def caffe_max_pool_with_mask(x, kernel, stride, pad, ceil):
    """Caffe's MAX pooling and its second top, the mask: for each output the flat index h·W + w of the maximum in
    its input plane, the first in scan order on ties (pooling_layer.cpp: `if (bottom_data[index] > top_data[pool_
    index])`, as PyTorch's CPU kernel), −1 for a window wholly past the edge; float32, as Caffe stores it."""
    out, fast = pool_plan(tuple(x.shape[-2:]), kernel, stride, pad, ceil)
    h, w = x.shape[-2:]
    if not (torch.is_grad_enabled() and x.requires_grad) and _loops_suit(x, out, stride, pad):
        top, index = cpu_loops.max_pool(x, kernel, stride, pad, out, with_index=True)
        return top, index.to(torch.float32)
    if fast:
        top, idx = F.max_pool2d(x, kernel, stride, pad, ceil_mode=ceil, return_indices=True)
        return top, idx.to(torch.float32)
    xp = _pad_to_windows(x, out, kernel, stride, pad, _lowest(x.dtype))
    top, idx = F.max_pool2d(xp, kernel, stride, return_indices=True)
    top, idx = top[..., : out[0], : out[1]], idx[..., : out[0], : out[1]]
    # indices into the padded plane, back to the input's; a maximum in the padding is Caffe's untouched −1
    wp = xp.shape[-1]
    row, col = idx // wp - pad[0], idx % wp - pad[1]
    inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
    return top, torch.where(inside, row * w + col, -1).to(torch.float32)
