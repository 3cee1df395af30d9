"""Winograd F(4×4, 3×3)'s tile transforms as numba loops, behind cpu_loops.py for winograd.py (which has the
matrices, BT, G and AT, and the error figures). Each transform is a product of a small constant matrix with the tile
on each side, Y[i, j] = Σ_k Σ_l L[i, k] T[k, l] L[j, l]: along the tile's rows first, then its columns, each sum in
k order, terms with a zero coefficient left out (the branch sits outside the loop over channels, which vectorizes).

The transformed arrays are group-major, (groups, 36, rows, channels of a group), as in numba_winograd.py.
"""

import numpy as np
from numba import njit, prange


@njit(inline="always")
def _combine(mat, i, src, stride, offset, out):
    """out[:] = Σ_k mat[i, k] · src[k·stride + offset, :], in k order, zero coefficients skipped."""
    first = True
    for k in range(mat.shape[1]):
        coef = mat[i, k]
        if coef == 0:
            continue
        s = k * stride + offset
        if first:
            for ch in range(out.shape[0]):
                out[ch] = coef * src[s, ch]
            first = False
        else:
            for ch in range(out.shape[0]):
                out[ch] += coef * src[s, ch]
    if first:
        out[:] = 0


@njit(parallel=True, cache=True, nogil=True)
def _to_tiles(x, n, h, w, th, tw, offset, mat, v):
    """x: (N·H·W, C) rows -> v (G, 36, N·th·tw, C/G): L d Lᵀ (L = mat, a×s) of each s×s patch d at rows and columns
    4·t + offset … 4·t + offset + s − 1, zero outside the input. The input transform: L = Bᵀ, s = 6, offset −1; the
    output gradient's: L = A, s = 4, offset 0."""
    c, groups, cg = x.shape[1], v.shape[0], v.shape[3]
    a, s = mat.shape
    e = a - 2
    for task in prange(n * th):
        image, ty = task // th, task % th
        d = np.empty((s * s, c), np.float32)
        rows = np.empty((a * s, c), np.float32)
        acc = np.empty(c, np.float32)
        for tx in range(tw):
            for i in range(s):
                yy = e * ty + offset + i
                for j in range(s):
                    xx = e * tx + offset + j
                    if 0 <= yy < h and 0 <= xx < w:
                        src = (image * h + yy) * w + xx
                        for ch in range(c):
                            d[i * s + j, ch] = x[src, ch]
                    else:
                        for ch in range(c):
                            d[i * s + j, ch] = 0
            for i in range(a):  # rows[i·s + j] = Σ_k mat[i, k] d[k·s + j]
                for j in range(s):
                    _combine(mat, i, d, s, j, rows[i * s + j])
            p = (image * th + ty) * tw + tx
            for i in range(a):  # v[i·a + j] = Σ_l mat[j, l] rows[i·s + l]
                for j in range(a):
                    _combine(mat, j, rows, 1, i * s, acc)
                    for grp in range(groups):
                        for cc in range(cg):
                            v[grp, i * a + j, p, cc] = acc[grp * cg + cc]


@njit(parallel=True, cache=True, nogil=True)
def _output(m, n, h, w, th, tw, at, bias, has_bias, relu, y):
    """m (G, 36, N·th·tw, K/G) -> y (N·H·W, K) rows: Aᵀ m A of each tile, then + bias, then max(·, 0) when relu;
    the part of a tile past the edge is dropped."""
    groups, kg = m.shape[0], m.shape[3]
    k = groups * kg
    e, a = at.shape
    for task in prange(n * th):
        image, ty = task // th, task % th
        t = np.empty((a * a, k), np.float32)
        rows = np.empty((e * a, k), np.float32)
        out = np.empty(k, np.float32)
        for tx in range(tw):
            p = (image * th + ty) * tw + tx
            for q in range(a * a):
                for grp in range(groups):
                    for kk in range(kg):
                        t[q, grp * kg + kk] = m[grp, q, p, kk]
            for i in range(e):  # rows[i·a + j] = Σ_k at[i, k] t[k·a + j]
                for j in range(a):
                    _combine(at, i, t, a, j, rows[i * a + j])
            for i in range(e):
                yy = e * ty + i
                if yy >= h:
                    break
                for j in range(e):
                    xx = e * tx + j
                    if xx >= w:
                        break
                    _combine(at, j, rows, 1, i * a, out)
                    if has_bias:
                        for ch in range(k):
                            out[ch] += bias[ch]
                    if relu:
                        for ch in range(k):
                            out[ch] = max(out[ch], np.float32(0))
                    dst = (image * h + yy) * w + xx
                    for ch in range(k):
                        y[dst, ch] = out[ch]


@njit(parallel=True, cache=True, nogil=True)
def _input_adjoint(gv, n, h, w, th, tw, bt, gx, phase):
    """gv (G, 36, N·th·tw, C/G) -> gx (N·H·W, C) rows: B gV Bᵀ of each tile added at its 6×6 input patch (the part
    in the padding dropped). Tiles 4 apart overlap by 2 rows and columns: a task sums one tile row into a strip of
    its own, and the tile rows of parity `phase` run together (0 first, writing; then 1, adding where the rows are
    shared with a row of phase 0), so that no two tasks write the same row at once."""
    groups, cg = gv.shape[0], gv.shape[3]
    c = groups * cg
    a = bt.shape[0]
    e = a - 2
    b_mat = np.ascontiguousarray(bt.T)
    count = (th - phase + 1) // 2
    for task in prange(n * count):
        image, ty = task // count, 2 * (task % count) + phase
        t = np.empty((a * a, c), np.float32)
        rows = np.empty((a * a, c), np.float32)
        acc = np.empty(c, np.float32)
        strip = np.zeros((a, e * tw + 2, c), np.float32)
        for tx in range(tw):
            p = (image * th + ty) * tw + tx
            for q in range(a * a):
                for grp in range(groups):
                    for cc in range(cg):
                        t[q, grp * cg + cc] = gv[grp, q, p, cc]
            for i in range(a):  # rows[i·a + l] = Σ_k bt[k, i] t[k·a + l]
                for j in range(a):
                    _combine(b_mat, i, t, a, j, rows[i * a + j])
            for i in range(a):  # the patch's (i, j) = Σ_l bt[l, j] rows[i·a + l]
                for j in range(a):
                    _combine(b_mat, j, rows, 1, i * a, acc)
                    for ch in range(c):
                        strip[i, e * tx + j, ch] += acc[ch]
        for i in range(a):
            yy = e * ty - 1 + i
            if yy < 0 or yy >= h:
                continue
            shared = phase == 1 and (i < 2 or (i >= a - 2 and ty + 1 < th))
            for xx in range(w):
                dst = (image * h + yy) * w + xx
                if shared:
                    for ch in range(c):
                        gx[dst, ch] += strip[i, xx + 1, ch]
                else:
                    for ch in range(c):
                        gx[dst, ch] = strip[i, xx + 1, ch]


@njit(parallel=True, cache=True, nogil=True)
def _filter(g, gmat, u):
    """g (K, 3, 3, C/G) float32 filters -> u (G, 36, K/G, C/G): G g Gᵀ, summed in float64 (G has thirds and
    fifteenths), rounded once."""
    k, c, kg = g.shape[0], g.shape[3], u.shape[2]
    a, r = gmat.shape
    for f in prange(k):
        grp, ff = f // kg, f % kg
        src = np.empty((r * r, c), np.float64)
        for i in range(r):
            for j in range(r):
                for ch in range(c):
                    src[i * r + j, ch] = g[f, i, j, ch]
        rows = np.empty((a * r, c), np.float64)
        acc = np.empty(c, np.float64)
        for i in range(a):
            for j in range(r):
                _combine(gmat, i, src, r, j, rows[i * r + j])
        for i in range(a):
            for j in range(a):
                _combine(gmat, j, rows, 1, i * r, acc)
                for ch in range(c):
                    u[grp, i * a + j, ff, ch] = np.float32(acc[ch])


@njit(parallel=True, cache=True, nogil=True)
def _filter_adjoint(gu, gmat, g):
    """gu (G, 36, K/G, C/G) -> g (K, 3, 3, C/G): Gᵀ gU G, summed in float64, rounded once."""
    kg, c = gu.shape[2], gu.shape[3]
    k = gu.shape[0] * kg
    a, r = gmat.shape
    gt = np.ascontiguousarray(gmat.T)
    for f in prange(k):
        grp, ff = f // kg, f % kg
        src = np.empty((a * a, c), np.float64)
        for q in range(a * a):
            for ch in range(c):
                src[q, ch] = gu[grp, q, ff, ch]
        rows = np.empty((r * a, c), np.float64)
        acc = np.empty(c, np.float64)
        for i in range(r):
            for j in range(a):
                _combine(gt, i, src, a, j, rows[i * a + j])
        for i in range(r):
            for j in range(r):
                _combine(gt, j, rows, 1, i * a, acc)
                for ch in range(c):
                    g[f, i, j, ch] = np.float32(acc[ch])


# The entry points take F(4×4)'s matrix last, after numba_winograd.py's arguments (cpu_loops._transform).

def winograd_input(x, n, h, w, th, tw, v, bt):
    _to_tiles(x, n, h, w, th, tw, -1, bt, v)


def winograd_output(m, n, h, w, th, tw, bias, relu, y, at):
    has_bias = bias is not None
    _output(m, n, h, w, th, tw, at, bias if has_bias else np.zeros(1, np.float32), has_bias, relu, y)


def winograd_input_adjoint(gv, n, h, w, th, tw, gx, bt):
    _input_adjoint(gv, n, h, w, th, tw, bt, gx, 0)
    _input_adjoint(gv, n, h, w, th, tw, bt, gx, 1)


def winograd_output_adjoint(gy, n, h, w, th, tw, gm, at):
    _to_tiles(gy, n, h, w, th, tw, 0, np.ascontiguousarray(at.T), gm)


def winograd_filter(g, u, gmat):
    _filter(g, gmat, u)


def winograd_filter_adjoint(gu, g, gmat):
    _filter_adjoint(gu, gmat, g)
