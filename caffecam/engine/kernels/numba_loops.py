"""The numba loops behind cpu_loops.py (imported only there, so that numba loads when a layer first needs it).

Arrays are (pixels × channels) float32 views of channels_last tensors. Each parallel task takes a block of pixels;
within a pixel the channel loops are written with the window offset outside and the channel inside, so that they
vectorize. Every scalar is a float32, so the arithmetic stays in float32 as in the PyTorch path.
"""

import numba
import numpy as np
from numba import njit, prange

# GNU OpenMP first: after a parallel loop TBB's workers spin long enough to slow PyTorch's next operation (its own
# OpenMP threads then share the cores with them): a 103 MB fill right after an LRN backward took 13 ms under TBB,
# 6 under OpenMP, 3 alone, and a GoogLeNet-CAM training step ran ×1.05-×1.1 faster. Read at the first parallel call.
numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]

BLOCK = 256  # pixels per parallel task
_F32 = np.float32


def set_threads(n):
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


@njit(inline="always")
def _negative_power(s, beta, out):
    """out[c] = s[c]^(−beta); for beta = 0.75 as 1/sqrt(s·sqrt(s)), where the PyTorch path takes rsqrt(s·√s) (they
    differ in the last bit now and then: PyTorch's vectorized sqrt is not correctly rounded). The branch stays
    outside the loops: a branch inside one keeps it from vectorizing."""
    if beta == _F32(0.75):
        for c in range(out.shape[0]):
            out[c] = _F32(1) / np.sqrt(s[c] * np.sqrt(s[c]))
    else:
        for c in range(out.shape[0]):
            out[c] = s[c] ** -beta


@njit(inline="always")
def _window_sum(padded, size, out):
    """out[c] = Σ_{j<size} padded[c + j]: the sum over the channels within size // 2 of c (padded holds zeros
    beyond the edges), added in the order of the PyTorch path's shifted slices."""
    channels = out.shape[0]
    for c in range(channels):
        out[c] = padded[c]
    for j in range(1, size):
        for c in range(channels):
            out[c] += padded[c + j]


@njit(inline="always")
def _sum5(a, c):
    """a[c] + … + a[c + 4], added in _window_sum's order: GoogLeNet's and AlexNet's window, unrolled."""
    s = a[c] + a[c + 1]
    s += a[c + 2]
    s += a[c + 3]
    s += a[c + 4]
    return s


@njit(inline="always")
def _lrn_forward_pixel(x, size, alpha_n, k, beta, squares, window, power, y, scale):
    """One pixel's channels: x -> y, scale (numba_bf16.py runs it on widened bfloat16 rows)."""
    channels = x.shape[0]
    for c in range(channels):
        squares[c + size // 2] = x[c] * x[c]
    if size == 5 and beta == _F32(0.75):  # GoogLeNet's and AlexNet's LRN in one loop: ×1.5 faster
        for c in range(channels):
            s = _sum5(squares, c) * alpha_n + k
            scale[c] = s
            y[c] = x[c] * (_F32(1) / np.sqrt(s * np.sqrt(s)))
        return
    _window_sum(squares, size, window)
    for c in range(channels):
        window[c] = window[c] * alpha_n + k
        scale[c] = window[c]
    _negative_power(window, beta, power)
    for c in range(channels):
        y[c] = x[c] * power[c]


@njit(parallel=True, cache=True, nogil=True)
def _lrn_forward(x, size, alpha_n, k, beta, y, scale):
    pixels, channels = x.shape
    r = size // 2
    for b in prange((pixels + BLOCK - 1) // BLOCK):
        squares = np.zeros(channels + 2 * r, np.float32)
        window = np.empty(channels, np.float32)
        power = np.empty(channels, np.float32)
        for p in range(b * BLOCK, min(pixels, (b + 1) * BLOCK)):
            _lrn_forward_pixel(x[p], size, alpha_n, k, beta, squares, window, power, y[p], scale[p])


@njit(inline="always")
def _lrn_backward_pixel(x, scale, dy, size, beta, coeff, ratio, power, window, dx):
    """One pixel's channels: dx from x, scale, dy (numba_bf16.py runs it on widened bfloat16 rows)."""
    channels = x.shape[0]
    if size == 5 and beta == _F32(0.75):
        for c in range(channels):
            s = scale[c]
            power[c] = _F32(1) / np.sqrt(s * np.sqrt(s))
            ratio[c + 2] = dy[c] * x[c] * power[c] / s
        for c in range(channels):
            dx[c] = dy[c] * power[c] + coeff * x[c] * _sum5(ratio, c)
        return
    _negative_power(scale, beta, power)
    for c in range(channels):
        ratio[c + size // 2] = dy[c] * x[c] * power[c] / scale[c]  # dy · y / scale, y = x · power
    _window_sum(ratio, size, window)
    for c in range(channels):
        dx[c] = dy[c] * power[c] + coeff * x[c] * window[c]


@njit(parallel=True, cache=True, nogil=True)
def _lrn_backward(x, scale, dy, size, beta, coeff, dx):
    pixels, channels = x.shape
    r = size // 2
    for b in prange((pixels + BLOCK - 1) // BLOCK):
        ratio = np.zeros(channels + 2 * r, np.float32)
        power = np.empty(channels, np.float32)
        window = np.empty(channels, np.float32)
        for p in range(b * BLOCK, min(pixels, (b + 1) * BLOCK)):
            _lrn_backward_pixel(x[p], scale[p], dy[p], size, beta, coeff, ratio, power, window, dx[p])


def lrn_forward(x, size, alpha_n, k, beta, y, scale):
    _lrn_forward(x, size, _F32(alpha_n), _F32(k), _F32(beta), y, scale)


def lrn_backward(x, scale, dy, size, beta, coeff, dx):
    _lrn_backward(x, scale, dy, size, _F32(beta), _F32(coeff), dx)


_LOWEST = np.float32(-3.4028234663852886e38)  # Caffe starts every max at −FLT_MAX


@njit(inline="always")
def _window(o, stride, pad, kernel, size):
    """pooling_layer.cpp's window [start, end) of output o along one axis, clipped to the input."""
    start = o * stride - pad
    return max(start, 0), min(start + kernel, size)


@njit(parallel=True, cache=True, nogil=True)
def _max_pool(x, n, h, w, kh, kw, sh, sw, ph, pw, oh, ow, top, arg, want_arg, positive_only):
    """Caffe's MAX pooling: the first maximum in scan order wins (a strict >, so NaN never does); arg gets its flat
    index y·W + x in the input plane, −1 for a window with no input (the top keeps −FLT_MAX there), and with
    positive_only also −1 where the maximum is not above 0 (the backward then passes that window nothing)."""
    channels = x.shape[1]
    for task in prange(n * oh):
        image, r = task // oh, task % oh
        h0, h1 = _window(r, sh, ph, kh, h)
        best = np.empty(channels, np.float32)
        where = np.empty(channels, np.int32)
        for q in range(ow):
            w0, w1 = _window(q, sw, pw, kw, w)
            for c in range(channels):
                best[c] = _LOWEST
                where[c] = -1
            for yy in range(h0, h1):
                for xx in range(w0, w1):
                    index = yy * w + xx
                    row = image * h * w + index
                    if want_arg:
                        for c in range(channels):
                            v = x[row, c]
                            take = v > best[c]
                            best[c] = v if take else best[c]
                            where[c] = index if take else where[c]
                    else:
                        for c in range(channels):
                            v = x[row, c]
                            best[c] = v if v > best[c] else best[c]
            o = (image * oh + r) * ow + q
            for c in range(channels):
                top[o, c] = best[c]
            if want_arg:
                if positive_only:
                    for c in range(channels):
                        arg[o, c] = where[c] if best[c] > 0 else -1
                else:
                    for c in range(channels):
                        arg[o, c] = where[c]


def max_pool(x, n, h, w, kernel, stride, pad, out, top, arg, positive_only=False):
    want = arg is not None
    _max_pool(x, n, h, w, kernel[0], kernel[1], stride[0], stride[1], pad[0], pad[1], out[0], out[1], top,
              arg if want else np.empty((1, 1), np.int32), want, positive_only)


@njit(parallel=True, cache=True, nogil=True)
def _max_pool_backward(dy, arg, n, h, w, kh, kw, sh, sw, ph, pw, oh, ow, dx):
    """dx (N·H·W, C) rows: each input cell gathers the gradients of the windows whose maximum it was (arg), taking
    the windows in scan order. That is the order in which pooling_layer.cpp's backward adds them (`bottom_diff[
    mask[index]] += top_diff[index]` over ph, then pw, into a zeroed bottom_diff), so the sums are the same floats,
    without the zero fill and the scatter. Output row r's window holds input row y when r·sh − ph ≤ y < r·sh − ph
    + kh; a window with no input (arg −1) matches no cell."""
    channels = dy.shape[1]
    for task in prange(n * h):
        image, y = task // h, task % h
        r0, r1 = max(0, (y + ph - kh) // sh + 1), min(oh - 1, (y + ph) // sh)
        acc = np.empty(channels, np.float32)
        for x in range(w):
            q0, q1 = max(0, (x + pw - kw) // sw + 1), min(ow - 1, (x + pw) // sw)
            index = np.int32(y * w + x)
            for c in range(channels):
                acc[c] = 0
            for r in range(r0, r1 + 1):
                for q in range(q0, q1 + 1):
                    o = (image * oh + r) * ow + q
                    for c in range(channels):
                        g = dy[o, c]
                        acc[c] = acc[c] + g if arg[o, c] == index else acc[c]
            row = (image * h + y) * w + x
            for c in range(channels):
                dx[row, c] = acc[c]


def max_pool_backward(dy, arg, n, h, w, kernel, stride, pad, out, dx):
    _max_pool_backward(dy, arg, n, h, w, kernel[0], kernel[1], stride[0], stride[1], pad[0], pad[1], out[0], out[1],
                       dx)
