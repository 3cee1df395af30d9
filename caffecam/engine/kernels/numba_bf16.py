"""MAX pooling and cross-channel LRN of bfloat16 tensors as numba loops, behind cpu_loops.py: numba_loops.py's
loops on (pixels × channels) uint16 views of bfloat16 channels_last tensors, without a float32 copy of either side.

A bfloat16 is the top half of a float32, so each row of channels is widened exactly (bits << 16) into a small
float32 buffer, and the maximum, its index and the gradient sums follow numba_loops.py's float32 loops (Caffe's
rules: first maximum in scan order, NaN never wins, the windows' gradients added in pooling_layer.cpp's order).
The forward's top is the winning input's bits. The backward's sums are float32, rounded once to the nearest
bfloat16 (ties to even), as torch's `.to(torch.bfloat16)` rounds. LRN runs numba_loops.py's own per-pixel code on
the widened rows and rounds its outputs once the same way: the floats of the float32 loops on `x.float()`, then
`.to(torch.bfloat16)`, without those two passes (its float32 scale is kept for the backward as before).
"""

import numpy as np
from numba import njit, prange

from caffecam.engine.kernels.numba_loops import _LOWEST, BLOCK, _lrn_backward_pixel, _lrn_forward_pixel, _window

_SHIFT = np.uint32(16)


@njit(inline="always")
def _widen(src, row, wide):
    """wide[c] = the bits of bfloat16 src[row, c] as the top half of a uint32 (a float32 view of `wide` reads the
    value exactly)."""
    for c in range(wide.shape[0]):
        wide[c] = np.uint32(src[row, c]) << _SHIFT


@njit(inline="always")
def _narrow(bits, dst, row):
    """dst[row, c] = the float32 with bits[c] rounded to the nearest bfloat16, ties to even (a NaN stays a quiet
    NaN)."""
    for c in range(bits.shape[0]):
        u = np.int64(bits[c])
        if (u & 0x7FFFFFFF) > 0x7F800000:
            dst[row, c] = np.uint16((u >> 16) | 0x40)
        else:
            dst[row, c] = np.uint16((u + 0x7FFF + ((u >> 16) & 1)) >> 16)


@njit(parallel=True, cache=True, nogil=True)
def _max_pool(x, n, h, w, kh, kw, sh, sw, ph, pw, oh, ow, top, arg, want_arg, positive_only):
    """numba_loops._max_pool on uint16 rows; top gets the winning bits (−FLT_MAX cut to bfloat16's lowest finite,
    0xFF7F, for a window with no input)."""
    channels = x.shape[1]
    for task in prange(n * oh):
        image, r = task // oh, task % oh
        h0, h1 = _window(r, sh, ph, kh, h)
        best_bits = np.empty(channels, np.uint32)
        best = best_bits.view(np.float32)
        where = np.empty(channels, np.int32)
        wide = np.empty(channels, np.uint32)
        vals = wide.view(np.float32)
        for q in range(ow):
            w0, w1 = _window(q, sw, pw, kw, w)
            for c in range(channels):
                best[c] = _LOWEST
                where[c] = -1
            for yy in range(h0, h1):
                for xx in range(w0, w1):
                    index = yy * w + xx
                    _widen(x, image * h * w + index, wide)
                    for c in range(channels):
                        v = vals[c]
                        take = v > best[c]
                        best[c] = v if take else best[c]
                        where[c] = index if take else where[c]
            o = (image * oh + r) * ow + q
            for c in range(channels):
                top[o, c] = np.uint16(best_bits[c] >> _SHIFT)
            if want_arg:
                if positive_only:
                    for c in range(channels):
                        arg[o, c] = where[c] if best[c] > 0 else -1
                else:
                    for c in range(channels):
                        arg[o, c] = where[c]


@njit(parallel=True, cache=True, nogil=True)
def _max_pool_backward(dy, arg, n, h, w, kh, kw, sh, sw, ph, pw, oh, ow, dx):
    """numba_loops._max_pool_backward on uint16 rows: float32 sums in the same order, each rounded once to the
    nearest bfloat16, ties to even (a NaN stays a quiet NaN)."""
    channels = dy.shape[1]
    for task in prange(n * h):
        image, y = task // h, task % h
        r0, r1 = max(0, (y + ph - kh) // sh + 1), min(oh - 1, (y + ph) // sh)
        acc_bits = np.empty(channels, np.uint32)
        acc = acc_bits.view(np.float32)
        wide = np.empty(channels, np.uint32)
        vals = wide.view(np.float32)
        for x in range(w):
            q0, q1 = max(0, (x + pw - kw) // sw + 1), min(ow - 1, (x + pw) // sw)
            index = np.int32(y * w + x)
            for c in range(channels):
                acc[c] = 0
            for r in range(r0, r1 + 1):
                for q in range(q0, q1 + 1):
                    o = (image * oh + r) * ow + q
                    _widen(dy, o, wide)
                    for c in range(channels):
                        acc[c] = acc[c] + vals[c] if arg[o, c] == index else acc[c]
            _narrow(acc_bits, dx, (image * h + y) * w + x)


@njit(parallel=True, cache=True, nogil=True)
def _lrn_forward(x, size, alpha_n, k, beta, y, scale):
    pixels, channels = x.shape
    r = size // 2
    for b in prange((pixels + BLOCK - 1) // BLOCK):
        squares = np.zeros(channels + 2 * r, np.float32)
        window = np.empty(channels, np.float32)
        power = np.empty(channels, np.float32)
        wide = np.empty(channels, np.uint32)
        out_bits = np.empty(channels, np.uint32)
        out = out_bits.view(np.float32)
        for p in range(b * BLOCK, min(pixels, (b + 1) * BLOCK)):
            _widen(x, p, wide)
            _lrn_forward_pixel(wide.view(np.float32), size, alpha_n, k, beta, squares, window, power, out, scale[p])
            _narrow(out_bits, y, p)


@njit(parallel=True, cache=True, nogil=True)
def _lrn_backward(x, scale, dy, size, beta, coeff, dx):
    pixels, channels = x.shape
    r = size // 2
    for b in prange((pixels + BLOCK - 1) // BLOCK):
        ratio = np.zeros(channels + 2 * r, np.float32)
        power = np.empty(channels, np.float32)
        window = np.empty(channels, np.float32)
        wide_x = np.empty(channels, np.uint32)
        wide_dy = np.empty(channels, np.uint32)
        out_bits = np.empty(channels, np.uint32)
        out = out_bits.view(np.float32)
        for p in range(b * BLOCK, min(pixels, (b + 1) * BLOCK)):
            _widen(x, p, wide_x)
            _widen(dy, p, wide_dy)
            _lrn_backward_pixel(wide_x.view(np.float32), scale[p], wide_dy.view(np.float32), size, beta, coeff,
                                ratio, power, window, out)
            _narrow(out_bits, dx, p)


def lrn_forward(x, size, alpha_n, k, beta, y, scale):
    _lrn_forward(x, size, np.float32(alpha_n), np.float32(k), np.float32(beta), y, scale)


def lrn_backward(x, scale, dy, size, beta, coeff, dx):
    _lrn_backward(x, scale, dy, size, np.float32(beta), np.float32(coeff), dx)


def max_pool(x, n, h, w, kernel, stride, pad, out, top, arg, positive_only=False):
    want = arg is not None
    _max_pool(x, n, h, w, kernel[0], kernel[1], stride[0], stride[1], pad[0], pad[1], out[0], out[1], top,
              arg if want else np.empty((1, 1), np.int32), want, positive_only)


def max_pool_backward(dy, arg, n, h, w, kernel, stride, pad, out, dx):
    _max_pool_backward(dy, arg, n, h, w, kernel[0], kernel[1], stride[0], stride[1], pad[0], pad[1], out[0], out[1],
                       dx)
