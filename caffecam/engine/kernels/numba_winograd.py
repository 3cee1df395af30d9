"""Winograd F(2×2, 3×3)'s tile transforms as numba loops, behind cpu_loops.py for winograd.py (which has the
formulas; these compute the same operations in the same order). cpu_loops imports numba_loops first, which chooses
numba's threading layer.
"""

import numpy as np
from numba import njit, prange

# ---- Winograd F(2×2, 3×3) transforms (winograd.py has the formulas; the same operations in the same order) ----
# The transformed arrays are group-major, (groups, 16, rows, channels of a group): channel ch of the layer is
# channel ch % cg of group ch // cg, so that each group's 16 products are one contiguous batch of matrices.

@njit(parallel=True, cache=True, nogil=True)
def _winograd_input(x, n, h, w, th, tw, v):
    """x: (N·H·W, C) rows -> v (G, 16, N·th·tw, C/G): Bᵀ d B of each 4×4 tile d (rows and columns 2·t − 1 … 2·t + 2,
    zero outside the input), Bᵀ rows (d0 − d2, d1 + d2, d2 − d1, d1 − d3) along the rows, then the columns."""
    c, groups, cg = x.shape[1], v.shape[0], v.shape[3]
    for task in prange(n * th):
        image, ty = task // th, task % th
        d = np.empty((16, c), np.float32)
        rows = np.empty((16, c), np.float32)
        for tx in range(tw):
            for i in range(4):
                yy = 2 * ty - 1 + i
                for j in range(4):
                    xx = 2 * tx - 1 + j
                    if 0 <= yy < h and 0 <= xx < w:
                        src = (image * h + yy) * w + xx
                        for ch in range(c):
                            d[i * 4 + j, ch] = x[src, ch]
                    else:
                        for ch in range(c):
                            d[i * 4 + j, ch] = 0
            for j in range(4):
                for ch in range(c):
                    r0, r1, r2, r3 = d[j, ch], d[4 + j, ch], d[8 + j, ch], d[12 + j, ch]
                    rows[j, ch] = r0 - r2
                    rows[4 + j, ch] = r1 + r2
                    rows[8 + j, ch] = r2 - r1
                    rows[12 + j, ch] = r1 - r3
            p = (image * th + ty) * tw + tx
            for i in range(4):
                for grp in range(groups):
                    for cc in range(cg):
                        ch = grp * cg + cc
                        c0, c1, c2, c3 = rows[4 * i, ch], rows[4 * i + 1, ch], rows[4 * i + 2, ch], rows[4 * i + 3, ch]
                        v[grp, 4 * i, p, cc] = c0 - c2
                        v[grp, 4 * i + 1, p, cc] = c1 + c2
                        v[grp, 4 * i + 2, p, cc] = c2 - c1
                        v[grp, 4 * i + 3, p, cc] = c1 - c3


@njit(parallel=True, cache=True, nogil=True)
def _winograd_output(m, n, h, w, th, tw, bias, has_bias, relu, y):
    """m (G, 16, N·th·tw, K/G) -> y (N·H·W, K) rows: Aᵀ m A of each tile, Aᵀ rows (m0 + m1 + m2, m1 − m2 − m3),
    then + bias, then max(·, 0) when relu; the part of a tile past the edge is dropped."""
    groups, kg = m.shape[0], m.shape[3]
    k = groups * kg
    for task in prange(n * th):
        image, ty = task // th, task % th
        rows = np.empty((8, k), np.float32)
        out = np.empty(k, np.float32)
        for tx in range(tw):
            p = (image * th + ty) * tw + tx
            for j in range(4):
                for grp in range(groups):
                    for kk in range(kg):
                        m0, m1, m2, m3 = m[grp, j, p, kk], m[grp, 4 + j, p, kk], m[grp, 8 + j, p, kk], \
                            m[grp, 12 + j, p, kk]
                        ch = grp * kg + kk
                        rows[j, ch] = m0 + m1 + m2
                        rows[4 + j, ch] = m1 - m2 - m3
            for i in range(2):
                yy = 2 * ty + i
                for jj in range(2):
                    xx = 2 * tx + jj
                    if yy >= h or xx >= w:
                        continue
                    if jj == 0:
                        for ch in range(k):
                            out[ch] = rows[4 * i, ch] + rows[4 * i + 1, ch] + rows[4 * i + 2, ch]
                    else:
                        for ch in range(k):
                            out[ch] = rows[4 * i + 1, ch] - rows[4 * i + 2, ch] - rows[4 * i + 3, ch]
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
def _winograd_output_adjoint(gy, n, h, w, th, tw, gm):
    """gy (N·H·W, K) rows -> gm (G, 16, N·th·tw, K/G): A gY Aᵀ of each 2×2 tile (zero past the edge), A rows
    (y0, y0 + y1, y0 − y1, −y1) along the rows, then the columns."""
    k, groups, kg = gy.shape[1], gm.shape[0], gm.shape[3]
    for task in prange(n * th):
        image, ty = task // th, task % th
        g = np.empty((4, k), np.float32)
        rows = np.empty((8, k), np.float32)
        for tx in range(tw):
            for i in range(2):
                yy = 2 * ty + i
                for j in range(2):
                    xx = 2 * tx + j
                    if yy < h and xx < w:
                        src = (image * h + yy) * w + xx
                        for ch in range(k):
                            g[2 * i + j, ch] = gy[src, ch]
                    else:
                        for ch in range(k):
                            g[2 * i + j, ch] = 0
            # rows[r, j] (r = 0..3, j = 0..1) stored at rows[2 * r + j]
            for j in range(2):
                for ch in range(k):
                    y0, y1 = g[j, ch], g[2 + j, ch]
                    rows[j, ch] = y0
                    rows[2 + j, ch] = y0 + y1
                    rows[4 + j, ch] = y0 - y1
                    rows[6 + j, ch] = -y1
            p = (image * th + ty) * tw + tx
            for r in range(4):
                for grp in range(groups):
                    for kk in range(kg):
                        ch = grp * kg + kk
                        r0, r1 = rows[2 * r, ch], rows[2 * r + 1, ch]
                        gm[grp, 4 * r, p, kk] = r0
                        gm[grp, 4 * r + 1, p, kk] = r0 + r1
                        gm[grp, 4 * r + 2, p, kk] = r0 - r1
                        gm[grp, 4 * r + 3, p, kk] = -r1


def winograd_input(x, n, h, w, th, tw, v):
    _winograd_input(x, n, h, w, th, tw, v)


def winograd_output(m, n, h, w, th, tw, bias, relu, y):
    has_bias = bias is not None
    _winograd_output(m, n, h, w, th, tw, bias if has_bias else np.zeros(1, np.float32), has_bias, relu, y)


def winograd_output_adjoint(gy, n, h, w, th, tw, gm):
    _winograd_output_adjoint(gy, n, h, w, th, tw, gm)


@njit(parallel=True, cache=True, nogil=True)
def _winograd_filter(g, u):
    """g (K, 3, 3, C/G) filters -> u (G, 16, K/G, C/G): G g Gᵀ, G rows (g0, (g0+g1+g2)/2, (g0−g1+g2)/2, g2), along
    the kernel's rows, then its columns."""
    k, c, kg = g.shape[0], g.shape[3], u.shape[2]
    half = np.float32(0.5)
    for f in prange(k):
        grp, ff = f // kg, f % kg
        rows = np.empty((4, 3, c), np.float32)
        for j in range(3):
            for ch in range(c):
                g0, g1, g2 = g[f, 0, j, ch], g[f, 1, j, ch], g[f, 2, j, ch]
                h = half * (g0 + g2)
                rows[0, j, ch] = g0
                rows[1, j, ch] = h + half * g1
                rows[2, j, ch] = h - half * g1
                rows[3, j, ch] = g2
        for i in range(4):
            for ch in range(c):
                r0, r1, r2 = rows[i, 0, ch], rows[i, 1, ch], rows[i, 2, ch]
                h = half * (r0 + r2)
                u[grp, 4 * i, ff, ch] = r0
                u[grp, 4 * i + 1, ff, ch] = h + half * r1
                u[grp, 4 * i + 2, ff, ch] = h - half * r1
                u[grp, 4 * i + 3, ff, ch] = r2


@njit(parallel=True, cache=True, nogil=True)
def _winograd_filter_adjoint(gu, g):
    """gu (G, 16, K/G, C/G) -> g (K, 3, 3, C/G): Gᵀ gU G, Gᵀ rows (u0 + (u1+u2)/2, (u1−u2)/2, (u1+u2)/2 + u3)."""
    kg, c = gu.shape[2], gu.shape[3]
    k = gu.shape[0] * kg
    half = np.float32(0.5)
    for f in prange(k):
        grp, ff = f // kg, f % kg
        rows = np.empty((3, 4, c), np.float32)
        for j in range(4):
            for ch in range(c):
                u0, u1 = gu[grp, j, ff, ch], gu[grp, 4 + j, ff, ch]
                u2, u3 = gu[grp, 8 + j, ff, ch], gu[grp, 12 + j, ff, ch]
                h = half * (u1 + u2)
                rows[0, j, ch] = h + u0
                rows[1, j, ch] = (u1 - u2) * half
                rows[2, j, ch] = h + u3
        for i in range(3):
            for ch in range(c):
                r0, r1, r2, r3 = rows[i, 0, ch], rows[i, 1, ch], rows[i, 2, ch], rows[i, 3, ch]
                h = half * (r1 + r2)
                g[f, i, 0, ch] = h + r0
                g[f, i, 1, ch] = (r1 - r2) * half
                g[f, i, 2, ch] = h + r3


def winograd_filter(g, u):
    _winograd_filter(g, u)


def winograd_filter_adjoint(gu, g):
    _winograd_filter_adjoint(gu, g)
