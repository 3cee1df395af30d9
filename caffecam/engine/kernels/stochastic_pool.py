"""Caffe's STOCHASTIC pooling (Zeiler & Fergus, 2013) as pooling_layer.cu computes it. Caffe has no CPU version (its
Forward_cpu is NOT_IMPLEMENTED): real Caffe runs it on the GPU only.

Windows start at (i·stride_h, j·stride_w) (Caffe allows no padding with STOCHASTIC) and are clipped at the input's
edge. With s = Σ v over a window:
    TRAIN: draw u ~ U(0, 1] and take the first cell, in raster order, whose running sum reaches u·s: each cell is
           picked with probability v / s. top = that cell's value; the gradient goes to that cell only.
    TEST:  top = Σ v² / s, the probability-weighted average (0 where s ≤ 0); its gradient is autograd's (Caffe's
           backward reuses the TRAIN sample and has no TEST form).
The inputs are meant to be non-negative (after a ReLU); Caffe does not check, nor does this.
"""

import torch
import torch.nn.functional as F


def _windows(x, out, kernel, stride):
    """N×C×(kh·kw)×out_h×out_w: each window's cells in raster order, zero beyond the input's edge (a zero adds
    nothing to the sums, so it is never the first cell to reach the threshold unless the window sums to 0)."""
    (kh, kw), (sh, sw) = kernel, stride
    n, c, h, w = x.shape
    xp = F.pad(x, (0, max(0, (out[1] - 1) * sw + kw - w), 0, max(0, (out[0] - 1) * sh + kh - h)))
    rows, cols = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    win = F.unfold(xp, kernel, stride=stride).reshape(n, c, kh * kw, rows, cols)
    return win[..., :out[0], :out[1]]


def stochastic_pool(x, out, kernel, stride, train, generator=None):
    win = _windows(x, out, kernel, stride)
    total = win.sum(dim=2)
    if not train:
        squares = (win * win).sum(dim=2)
        positive = total > 0
        return torch.where(positive, squares / torch.where(positive, total, torch.ones_like(total)), 0.0)
    running = win.cumsum(dim=2)
    u = 1 - torch.rand(total.shape, dtype=x.dtype, device=x.device, generator=generator)  # (0, 1] as curand's
    reached = running >= (u * running[:, :, -1]).unsqueeze(2)
    pick = reached.to(torch.uint8).argmax(dim=2, keepdim=True)  # the first cell that reaches it
    return win.gather(2, pick).squeeze(2)
