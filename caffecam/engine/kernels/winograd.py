"""3×3 convolution (stride 1, pad 1) by Winograd's minimal filtering F(2×2, 3×3) and F(4×4, 3×3), for the CPU.

Caffe's CPU engine computes a convolution as im2col + GEMM; cuDNN, which Caffe uses on GPUs, picks Winograd for
these layers. F(2×2, 3×3) computes each 2×2 output tile from a 4×4 input tile with 16 multiplications per channel
pair instead of 36: one batched GEMM of 16 (tiles × C) @ (C × K) products, between cheap additions

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A,      d: 4×4 input tile (stride 2), g: 3×3 filter, Y: 2×2 output tile,

so the GEMM work is 16/36 = 0.44 of direct convolution's. Its transforms have coefficients 0, ±1 and ±½, and the
results differ from direct convolution by float32 rounding only (both within a few 1e-7 of the largest output,
tested against a float64 reference). Backward is the adjoint of the same linear maps: the input gradient is this
convolution of the output gradient with the flipped, transposed filters, and the filter gradient is
Gᵀ [Σ_tiles (Bᵀ d B)ᵀ (A gY Aᵀ)] G from the forward's transformed tiles.

F(4×4, 3×3) (BT4, G4, AT4 below) takes a 6×6 input tile (stride 4) to a 4×4 output tile with 36 products: 2.25 per
output against F(2×2)'s 4, and fewer transformed values to write and read. It runs where the compiled loops do
(cpu_loops, numba_winograd4.py) and its tiles need fewer products than 2×2 ones (tile_size): GoogLeNet-CAM's
CAM_conv at batch 32, forward and backward, 365 -> 332 ms; inception_3b/3x3 108 -> 89 ms; a whole training step
×1.03 (15 alternating rounds). Its input gradient is the adjoint of its forward, B (gM Uᵀ) Bᵀ over the overlapping
input patches, from the gM the filter gradient needs too: one transform of dY fewer than the flipped convolution
F(2×2) runs, and no transform of flipped filters (a step ×1.03 again). Its rounding is larger: 5e-6 of the largest
output on 416 random ReLU'd channels, against 7e-7 for F(2×2) and direct convolution; on real nets it stays at
Caffe's level (Places365-VGG16's recorded blobs: conv3_3 3.7e-7 from Caffe's with F(4×4), 6.2e-7 with F(2×2)).
CAFFECAM_WINOGRAD=2 keeps F(2×2).

Tensors run through it as N×H×W×C, which is channels_last memory: a channels_last input costs no copy. The
transformed tiles, filters and products are group-major, (groups, 16 or 36, rows, channels of a group), so that a
grouped layer's GEMMs are one batch of 16·groups contiguous matrices (GoogLeNet-CAM's CAM_conv, group 2: its three
GEMMs 246 -> 219 ms at batch 32, against column slices of one (16, rows, channels) array).
"""

import math
import os
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

from caffecam.engine.kernels import cpu_loops


def _group_major(t, groups):
    """(16, rows, C) -> (groups, 16, rows, C/groups), the layout of every transformed array (a copy for groups > 1)."""
    r, c = t.shape[1], t.shape[2]
    if groups == 1:
        return t.view(1, 16, r, c)
    return t.view(16, r, groups, c // groups).permute(2, 0, 1, 3).contiguous()


def _ungrouped(t):
    """(groups, 16, rows, C/groups) -> (16, rows, C), as the PyTorch composition computes."""
    g, _, r, cg = t.shape
    return t.view(16, r, cg) if g == 1 else t.permute(1, 2, 0, 3).reshape(16, r, g * cg)


def _input_transform(xh, th, tw, groups=1, tile=2):
    """N×H×W×C -> (groups, 16, N·th·tw, C/groups): Bᵀ d B for each 4×4 tile d of the input padded by 1 (tiles 2
    apart). tile 4: F(4×4)'s, (groups, 36, ...), compiled loops only."""
    if tile == 4:
        return cpu_loops.winograd_input(xh, th, tw, groups, BT4)
    if cpu_loops.winograd_ready(xh):
        return cpu_loops.winograd_input(xh, th, tw, groups)
    n, h, w, c = xh.shape
    xp = F.pad(xh, (0, 0, 1, 1 + 2 * tw - w, 1, 1 + 2 * th - h))
    # Bᵀ rows: (d0 − d2, d1 + d2, d2 − d1, d1 − d3), applied to the rows of every tile, then to the columns.
    r0, r1, r2, r3 = (xp[:, j:j + 2 * th:2] for j in range(4))
    rows = xh.new_empty((4, n, th, 2 * tw + 2, c))
    torch.sub(r0, r2, out=rows[0])
    torch.add(r1, r2, out=rows[1])
    torch.sub(r2, r1, out=rows[2])
    torch.sub(r1, r3, out=rows[3])
    c0, c1, c2, c3 = (rows[:, :, :, j:j + 2 * tw:2] for j in range(4))
    v = xh.new_empty((4, 4, n, th, tw, c))
    torch.sub(c0, c2, out=v[:, 0])
    torch.add(c1, c2, out=v[:, 1])
    torch.sub(c2, c1, out=v[:, 2])
    torch.sub(c1, c3, out=v[:, 3])
    return _group_major(v.view(16, n * th * tw, c), groups)


def _filter_transform(w, groups=1, tile=2):
    """K×C/groups×3×3 -> (groups, 16, K/groups, C/groups): G g Gᵀ for every filter, G rows (g0, (g0+g1+g2)/2,
    (g0−g1+g2)/2, g2). tile 4: F(4×4)'s, (groups, 36, ...)."""
    if tile == 4:
        return cpu_loops.winograd_filter(w, groups, G4)
    if cpu_loops.winograd_ready(w):
        return cpu_loops.winograd_filter(w, groups)
    g = w.permute(0, 2, 3, 1)  # K×3×3×C: contiguous for channels_last weights
    k, c = g.shape[0], g.shape[3]
    rows = w.new_empty((4, k, 3, c))
    rows[0] = g[:, 0]
    half = 0.5 * (g[:, 0] + g[:, 2])
    torch.add(half, g[:, 1], alpha=0.5, out=rows[1])
    torch.sub(half, g[:, 1], alpha=0.5, out=rows[2])
    rows[3] = g[:, 2]
    u = w.new_empty((4, 4, k, c))
    u[:, 0] = rows[:, :, 0]
    half = 0.5 * (rows[:, :, 0] + rows[:, :, 2])
    torch.add(half, rows[:, :, 1], alpha=0.5, out=u[:, 1])
    torch.sub(half, rows[:, :, 1], alpha=0.5, out=u[:, 2])
    u[:, 3] = rows[:, :, 2]
    return _group_major(u.view(16, k, c).transpose(1, 2), groups).transpose(2, 3)


def _filter_transform_adjoint(gu):
    """(groups, 16, K/groups, C/groups) -> K×C/groups×3×3 (channels_last memory): Gᵀ gU G, the filter gradient from
    the gradient of the transformed filters. Gᵀ rows: (u0 + (u1+u2)/2, (u1−u2)/2, (u1+u2)/2 + u3)."""
    if gu.shape[1] == 36:
        return cpu_loops.winograd_filter_adjoint(gu, G4)
    if cpu_loops.winograd_ready(gu):
        return cpu_loops.winograd_filter_adjoint(gu)
    gu = gu.transpose(0, 1).reshape(16, gu.shape[0] * gu.shape[2], gu.shape[3])  # (16, K, C/groups)
    gu = gu.view((4, 4) + gu.shape[1:])
    k, c = gu.shape[2:]
    rows = gu.new_empty((3, 4, k, c))
    half = 0.5 * (gu[1] + gu[2])
    torch.add(half, gu[0], out=rows[0])
    torch.sub(gu[1], gu[2], out=rows[1]).mul_(0.5)
    torch.add(half, gu[3], out=rows[2])
    g = gu.new_empty((k, 3, 3, c))
    half = 0.5 * (rows[:, 1] + rows[:, 2])
    torch.add(half, rows[:, 0], out=g[:, :, 0].transpose(0, 1))
    torch.sub(rows[:, 1], rows[:, 2], out=g[:, :, 1].transpose(0, 1)).mul_(0.5)
    torch.add(half, rows[:, 3], out=g[:, :, 2].transpose(0, 1))
    return g.permute(0, 3, 1, 2)


def _output_transform(m, n, th, tw, h, w, bias=None, relu=False):
    """(groups, 16, N·th·tw, K/groups) -> N×K×H×W in channels_last memory (a tensor of its own, not a view, so that
    an in-place ReLU may follow): Aᵀ m A per tile, Aᵀ rows (m0 + m1 + m2, m1 − m2 − m3), plus the bias, then
    max(·, 0) with `relu` (inside the compiled loop's pass). 36 products a tile: F(4×4)'s."""
    if m.shape[1] == 36:
        return cpu_loops.winograd_output(m, n, th, tw, h, w, bias, relu, AT4)
    if cpu_loops.winograd_ready(m):
        return cpu_loops.winograd_output(m, n, th, tw, h, w, bias, relu)
    m = _ungrouped(m)
    k = m.shape[-1]
    m = m.view(4, 4, n, th, tw, k)
    rows = m.new_empty((2, 4, n, th, tw, k))
    torch.add(m[0], m[1], out=rows[0]).add_(m[2])
    torch.sub(m[1], m[2], out=rows[1]).sub_(m[3])
    out = torch.empty((n, k, 2 * th, 2 * tw), dtype=m.dtype, device=m.device, memory_format=torch.channels_last)
    y = out.permute(0, 2, 3, 1).view(n, th, 2, tw, 2, k)
    for i in range(2):
        torch.add(rows[i, 0], rows[i, 1], out=y[:, :, i, :, 0]).add_(rows[i, 2])
        torch.sub(rows[i, 1], rows[i, 2], out=y[:, :, i, :, 1]).sub_(rows[i, 3])
    if bias is not None:
        y += bias
    if relu:
        out.relu_()
    # clone: a crop that happens to be channels_last-contiguous would come back from .contiguous() as a view
    return out if (h, w) == out.shape[2:] else out[:, :, :h, :w].clone(memory_format=torch.channels_last)


def _output_transform_adjoint(gy, th, tw, groups=1, tile=2):
    """N×H×W×K output gradient -> (groups, 16, N·th·tw, K/groups): A gY Aᵀ per 2×2 tile, A rows (y0, y0 + y1,
    y0 − y1, −y1). tile 4: F(4×4)'s, (groups, 36, ...)."""
    if tile == 4:
        return cpu_loops.winograd_output_adjoint(gy, th, tw, groups, AT4)
    if cpu_loops.winograd_ready(gy):
        return cpu_loops.winograd_output_adjoint(gy, th, tw, groups)
    n, h, w, k = gy.shape
    gp = F.pad(gy, (0, 0, 0, 2 * tw - w, 0, 2 * th - h))
    rows = gy.new_empty((4, 2, n, th, tw, k))
    for j in range(2):
        y0, y1 = gp[:, 0::2, j::2], gp[:, 1::2, j::2]
        rows[0, j] = y0
        torch.add(y0, y1, out=rows[1, j])
        torch.sub(y0, y1, out=rows[2, j])
        torch.neg(y1, out=rows[3, j])
    gm = gy.new_empty((4, 4, n, th, tw, k))
    gm[:, 0] = rows[:, 0]
    torch.add(rows[:, 0], rows[:, 1], out=gm[:, 1])
    torch.sub(rows[:, 0], rows[:, 1], out=gm[:, 2])
    torch.neg(rows[:, 1], out=gm[:, 3])
    return _group_major(gm.view(16, n * th * tw, k), groups)


def _batched(t):
    """(groups, 16, a, b) -> (16·groups, a, b): one batch of matrices for bmm."""
    return t.view(-1, t.shape[2], t.shape[3])


def _conv_nhwc(xh, u, bias=None, relu=False):
    """N×H×W×C input, transformed filters (groups, 16, K/groups, C/groups) -> (N×K×H×W output, transformed input
    tiles)."""
    n, h, w, c = xh.shape
    groups, values, kg, _ = u.shape
    tile = 2 if values == 16 else 4
    th, tw = -(-h // tile), -(-w // tile)
    v = _input_transform(xh, th, tw, groups, tile)
    m = torch.bmm(_batched(v), _batched(u).transpose(1, 2)).view(groups, values, -1, kg)
    return _output_transform(m, n, th, tw, h, w, bias, relu), v


def _filter_grad_products(gm, v):
    """(G, 16, P, K/G) tile gradients, (G, 16, P, C/G) input tiles -> (G, 16, K/G, C/G): gMᵀ V within each
    group."""
    return torch.bmm(_batched(gm).transpose(1, 2), _batched(v)).view(gm.shape[:2] + (gm.shape[3], v.shape[3]))


def _nhwc(x):
    return x.permute(0, 2, 3, 1).contiguous()


class _Winograd3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, groups, tile):
        u = _filter_transform(weight, groups, tile)
        y, v = _conv_nhwc(_nhwc(x), u, bias)
        # F(4×4) keeps its transformed filters: its input gradient comes from them (backward)
        ctx.save_for_backward(v, weight, u if tile == 4 else None)
        ctx.has_bias, ctx.groups, ctx.tile = bias is not None, groups, tile
        return y

    @staticmethod
    def backward(ctx, grad):
        v, weight, u = ctx.saved_tensors
        groups, tile = ctx.groups, ctx.tile
        gh = _nhwc(grad)
        n, h, w, _ = gh.shape
        th, tw = -(-h // tile), -(-w // tile)
        gx = gw = gb = None
        gm = None
        if ctx.needs_input_grad[1] or (tile == 4 and ctx.needs_input_grad[0]):
            gm = _output_transform_adjoint(gh, th, tw, groups, tile)
        if ctx.needs_input_grad[0] and tile == 4:
            # the adjoint of the forward's maps: gV = gM Uᵀ per tile value, then B gV Bᵀ added over the
            # overlapping 6×6 patches (cpu_loops.winograd_input_adjoint); it reuses gM, which the filter gradient
            # needs too, in place of a transform of dY for the flipped convolution below
            gv = torch.bmm(_batched(gm), _batched(u)).view(groups, 36, -1, u.shape[3])
            gx = cpu_loops.winograd_input_adjoint(gv, n, h, w, th, tw, BT4)
        elif ctx.needs_input_grad[0]:
            # d/dx of a 'same' 3×3 convolution: the same convolution of dY with each group's filters transposed
            # (K/g×C/g -> C/g×K/g) and flipped.
            k, cg = weight.shape[:2]
            flipped = weight.view(groups, k // groups, cg, 3, 3).transpose(1, 2).reshape(cg * groups, k // groups, 3, 3)
            gx = _conv_nhwc(gh, _filter_transform(flipped.flip(2, 3), groups, tile))[0]
        if ctx.needs_input_grad[1]:
            gw = _filter_transform_adjoint(_filter_grad_products(gm, v))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gh.sum((0, 1, 2))
        return gx, gw, gb, None, None


def tile_size(x):
    """4 (F(4×4, 3×3)) where the compiled loops take x (float32 on the CPU, numba present), x has at least
    MIN_ELEMENTS_4 values, and 4×4 tiles need fewer products than 2×2 ones for its height and width (36 a tile
    against 16: at 14×14, 16 tiles against 49; at 6×6, 4 against 9 is a tie, so 2); else 2. CAFFECAM_WINOGRAD=2
    keeps 2×2 tiles everywhere."""
    return tile_for_shape(tuple(x.shape), cpu_loops.winograd_ready(x))


def tile_for_shape(shape, loops):
    """tile_size for an input of this shape, `loops`: whether the compiled loops can run (cpu_loops.winograd_ready)."""
    h, w = shape[-2:]
    if (TILE4 and loops and math.prod(shape) >= MIN_ELEMENTS_4
            and 36 * -(-h // 4) * -(-w // 4) < 16 * -(-h // 2) * -(-w // 2)):
        return 4
    return 2


def conv3x3(x, weight, bias=None, groups=1, tile=None):
    """Same as F.conv2d(x, weight, bias, stride=1, padding=1, groups=groups) for N×C×H×W x, K×C/groups×3×3 weight.
    tile: 2 or 4 (F(2×2) or F(4×4); 4 only where the compiled loops take x, else 2); None: tile_size(x)."""
    tile = tile_size(x) if tile is None or not cpu_loops.winograd_ready(x) else tile
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or
                                    (bias is not None and bias.requires_grad)):
        return _Winograd3x3.apply(x, weight, bias, groups, tile)
    return _conv_nhwc(_nhwc(x), _filter_transform(weight, groups, tile), bias)[0]


def conv3x3_inference(x, weight, bias, groups, relu, holder):
    """conv3x3 where no gradient is recorded, and max(·, 0) after it with `relu`: the transformed filters are kept
    on `holder` (the layer) while `weight` stays the same tensor, unwritten. Only with the compiled transforms
    (cpu_loops.winograd_ready): the PyTorch composition is slower than direct convolution for a forward alone."""
    tile = tile_size(x)
    if weight.is_inference():  # no version counter to tell a write: transformed on every call
        return _conv_nhwc(_nhwc(x), _filter_transform(weight, groups, tile), bias, relu)[0]
    cached = getattr(holder, "_winograd_filters", None)
    # the weight itself is held, so no other tensor can take its address while the filters are kept
    if cached is None or cached[0] is not weight or cached[1] != (weight._version, tile):
        cached = (weight, (weight._version, tile), _filter_transform(weight.detach(), groups, tile))
        holder._winograd_filters = cached
    return _conv_nhwc(_nhwc(x), cached[2], bias, relu)[0]


def pays_at_inference(x):
    """Whether a layer that suits() also takes Winograd in a forward alone: only with the compiled transforms."""
    return cpu_loops.winograd_ready(x)


def suits(x, weight, stride, pad, dilation, group):
    """Whether conv3x3 computes this convolution and pays off on this CPU: see suits_shapes; float32 on the CPU,
    not under bfloat16 autocast (its GEMMs would round the transformed tiles; oneDNN's bfloat16 convolution is
    faster there anyway)."""
    if not ENABLED or x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4:
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    return suits_shapes(x.shape, weight.shape, stride, pad, dilation, group, tile_size(x))


def suits_shapes(x_shape, weight_shape, stride, pad, dilation, group, tile=2):
    """A 3×3, stride 1, pad 1 layer with channels per group wide enough for its tile size (MIN_CHANNELS for 2×2,
    MIN_CHANNELS_4 for 4×4), and enough 2×2 tiles in the batch, for the saved GEMM work to outweigh the transforms'
    memory traffic (thresholds from timing GoogLeNet's 3×3 layers both ways in whole training steps; `make bench`
    reports the gain)."""
    k, c = weight_shape[0] // group, weight_shape[1]
    n, _, h, w = x_shape
    return (tuple(weight_shape[2:]) == (3, 3) and tuple(stride) == (1, 1) and tuple(pad) == (1, 1)
            and tuple(dilation) == (1, 1) and min(c, k) >= (MIN_CHANNELS_4 if tile == 4 else MIN_CHANNELS)
            and n * ((h + 1) // 2) * ((w + 1) // 2) >= MIN_TILES)


# F(4×4) from 64 channels: conv2/3x3 (64 -> 192 at 56×56) and inception_3a, 4a, 4b's 3×3 (96 to 112 channels in)
# join; a GoogLeNet-CAM training step ×1.04 against 128 (11 alternating rounds). Only for inputs of at least
# 256 Ki values: GoogLeNet-CAM's 3×3 inputs at batch 32 have 0.6-6.4 M, while conv2/3x3's at batch 1 (200 K) stays
# direct, so that a one-photo job does not load numba for it (cpu_loops.MIN_ELEMENTS).
MIN_CHANNELS_4, MIN_ELEMENTS_4 = 64, 1 << 18
MIN_CHANNELS, MIN_TILES = 128, 384
# CAFFECAM_WINOGRAD=0 turns it off everywhere (a layer's `engine: CAFFE` turns it off for that layer); =2 keeps
# F(2×2) tiles everywhere.
ENABLED = os.environ.get("CAFFECAM_WINOGRAD", "1") != "0"
TILE4 = os.environ.get("CAFFECAM_WINOGRAD", "1") != "2"

# F(4×4, 3×3) by Toom-Cook at the points 0, −1, 1, −1/2, 2 and ∞: Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A for a 6×6 input
# tile d (stride 4) and a 4×4 output tile. Of the point sets tried, this one gave the smallest float32 error
# (5e-6 of the largest output against 1.5e-5 for 0, ±1, ±2 and 7e-7 for F(2×2), on 416 ReLU'd channels).
_F = [[float(Fraction(v)) for v in row.split()] for row in """
1 3/2 -2 -3/2 1 0 | 0 1 1/2 -5/2 1 0 | 0 -1 -5/2 -1/2 1 0 | 0 2 -1 -2 1 0 | 0 -1/2 -1 1/2 1 0 | 0 1 3/2 -2 -3/2 1
| 1 0 0 | 1/3 -1/3 1/3 | -1/3 -1/3 -1/3 | -16/15 8/15 -4/15 | 1/15 2/15 4/15 | 0 0 1
| 1 1 1 1 1 0 | 0 -1 1 -1/2 2 0 | 0 1 1 1/4 4 0 | 0 -1 1 -1/8 8 1""".split("|")]
BT4 = np.array(_F[:6], np.float32)   # exact in float32
G4 = np.array(_F[6:12], np.float64)  # thirds and fifteenths: the filter transforms sum in float64
AT4 = np.array(_F[12:], np.float32)  # exact in float32
