"""Independent float64 NumPy references for Caffe's layers, written from shared/caffe-format.md §2.

Plain loops over output positions: slow but obvious. Used only by the tests, on tiny inputs.
"""

import math

import numpy as np

FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)


def conv_out(size, k, s, p, d=1):
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def conv2d(x, w, b=None, stride=(1, 1), pad=(0, 0), dilation=(1, 1), group=1):
    """x (N,C,H,W), w (M, C/group, kh, kw): cross-correlation, zero padding, per-group channel blocks."""
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    oh, ow = conv_out(h, kh, sh, ph, dh), conv_out(wd, kw, sw, pw, dw)
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    out = np.zeros((n, m, oh, ow))
    mg = m // group
    for o in range(m):
        g = o // mg
        for i in range(oh):
            for j in range(ow):
                rows = slice(i * sh, i * sh + dh * (kh - 1) + 1, dh)
                cols = slice(j * sw, j * sw + dw * (kw - 1) + 1, dw)
                patch = xp[:, g * cg:(g + 1) * cg, rows, cols]
                out[:, o, i, j] = (patch * w[o]).sum(axis=(1, 2, 3))
        if b is not None:
            out[:, o] += b[o]
    return out


def pool_out(size, k, s, p, ceil=True, padded=None):
    """Caffe: ceil((H + 2p − k)/s) + 1 (floor in FLOOR mode); then if the layer has padding and (out−1)·s ≥ H + p,
    out −= 1. Caffe's test is `pad_h || pad_w`: a padded layer clips both dimensions (`padded`, default p > 0)."""
    num = size + 2 * p - k
    out = (math.ceil(num / s) if ceil else math.floor(num / s)) + 1
    if (p > 0 if padded is None else padded) and (out - 1) * s >= size + p:
        out -= 1
    return out


def pool2d(x, kernel, stride, pad, mode="MAX", ceil=True):
    """Caffe pooling. MAX: max over the real cells of the window (an empty window stays at −FLT_MAX, Caffe's
    initial value). AVE: sum over real cells / size of the window clipped to the padded extent [−p, H+p)."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    padded = ph > 0 or pw > 0
    oh, ow = pool_out(h, kh, sh, ph, ceil, padded), pool_out(w, kw, sw, pw, ceil, padded)
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * sh - ph, j * sw - pw
            he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
            area = (he - hs) * (we - ws)
            r0, r1, c0, c1 = max(hs, 0), min(he, h), max(ws, 0), min(we, w)
            win = x[:, :, r0:r1, c0:c1]
            if mode == "MAX":
                out[:, :, i, j] = win.max(axis=(2, 3)) if win.size else -FLT_MAX
            else:
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[:, :, i, j] = win.sum(axis=(2, 3)) / area
    return out


def max_pool_with_mask(x, kernel, stride, pad, ceil=True):
    """pooling_layer.cpp's MAX forward, loop for loop: each window clipped to the input, its max starting at
    −FLT_MAX and replaced only by a strictly larger value (so the first maximum in scan order wins and NaN never
    does); the mask is the winner's flat index h·W + w in its plane, −1 when nothing won. Keeps x's dtype."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    padded = ph > 0 or pw > 0
    oh, ow = pool_out(h, kh, sh, ph, ceil, padded), pool_out(w, kw, sw, pw, ceil, padded)
    top = np.full((n, c, oh, ow), -FLT_MAX, dtype=x.dtype)
    mask = np.full((n, c, oh, ow), -1, dtype=np.int64)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * sh - ph, j * sw - pw
            he, we = min(hs + kh, h), min(ws + kw, w)
            for r in range(max(hs, 0), he):
                for q in range(max(ws, 0), we):
                    v = x[:, :, r, q]
                    take = v > top[:, :, i, j]
                    top[:, :, i, j] = np.where(take, v, top[:, :, i, j])
                    mask[:, :, i, j] = np.where(take, r * w + q, mask[:, :, i, j])
    return top, mask


def max_pool_backward(dy, mask, hw):
    """pooling_layer.cpp's MAX backward, loop for loop: bottom_diff zeroed, then for each output in scan order
    bottom_diff[mask] += top_diff (float32 sums in that order); a −1 mask adds nothing."""
    n, c, oh, ow = dy.shape
    dx = np.zeros((n, c, hw[0] * hw[1]), np.float32)
    nn, cc = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")
    for i in range(oh):
        for j in range(ow):
            m, g = mask[:, :, i, j], dy[:, :, i, j]
            hit = m >= 0  # within one output, each (n, c) plane gets one addition: no repeated index
            dx[nn[hit], cc[hit], m[hit]] += g[hit]
    return dx.reshape(n, c, hw[0], hw[1])


def lrn_across(x, size, alpha, beta, k):
    """y = x · (k + alpha/size · Σ x² over the `size` channels centred on c, zero beyond the edges)^(−beta)."""
    n, c = x.shape[:2]
    half = size // 2
    out = np.empty_like(x, dtype=np.float64)
    for ch in range(c):
        lo, hi = max(0, ch - half), min(c, ch + half + 1)
        s = (x[:, lo:hi] ** 2).sum(axis=1)
        out[:, ch] = x[:, ch] * (k + alpha / size * s) ** (-beta)
    return out


def lrn_within(x, size, alpha, beta):
    """Caffe WITHIN_CHANNEL: y = x · (1 + alpha · mean of x² over the size×size window, zero padding
    counted)^(−beta)."""
    n, c, h, w = x.shape
    half = (size - 1) // 2
    sq = np.zeros((n, c, h + 2 * half, w + 2 * half))
    sq[:, :, half:half + h, half:half + w] = x ** 2
    out = np.empty((n, c, h, w))
    for i in range(h):
        for j in range(w):
            mean = sq[:, :, i:i + size, j:j + size].sum(axis=(2, 3)) / (size * size)
            out[:, :, i, j] = x[:, :, i, j] * (1 + alpha * mean) ** (-beta)
    return out


def relu(x, slope=0.0):
    return np.where(x > 0, x, slope * x)


def inner_product(x, w, b=None, axis=1, transpose=False):
    lead = x.shape[:axis]
    flat = x.reshape(int(np.prod(lead)) if lead else 1, -1)
    y = flat @ (w if transpose else w.T)
    if b is not None:
        y = y + b
    return y.reshape(tuple(lead) + (y.shape[-1],))


def softmax(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_loss(x, label, ignore_label=None, normalization="VALID", axis=1):
    """Σ −log p(label) over non-ignored positions / normalizer (FULL: all, VALID: non-ignored, BATCH_SIZE: outer
    count, NONE: 1), the normalizer at least 1."""
    p = np.moveaxis(softmax(x, axis), axis, -1).reshape(-1, x.shape[axis])
    label = label.reshape(-1).astype(int)
    total, valid = 0.0, 0
    for row, lab in zip(p, label):
        if ignore_label is not None and lab == ignore_label:
            continue
        total -= math.log(max(row[lab], FLT_MIN))  # Caffe clamps p at FLT_MIN
        valid += 1
    denom = {"FULL": label.size, "VALID": valid, "BATCH_SIZE": int(np.prod(x.shape[:axis])), "NONE": 1}[normalization]
    return total / max(1, denom)


def accuracy(x, label, top_k=1, ignore_label=None, axis=1):
    """Fraction of non-ignored positions where fewer than top_k other classes score >= the true class (Caffe's
    count starts at −1 for the true class itself, so ties count against it)."""
    s = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
    label = label.reshape(-1).astype(int)
    hits, count = 0, 0
    for row, lab in zip(s, label):
        if ignore_label is not None and lab == ignore_label:
            continue
        count += 1
        hits += int((row >= row[lab]).sum() - 1 < top_k)
    return hits / count if count else 0.0


def eltwise(xs, op="SUM", coeff=None):
    if op == "PROD":
        out = np.ones_like(xs[0])
        for x in xs:
            out = out * x
        return out
    if op == "MAX":
        return np.maximum.reduce(xs)
    coeff = coeff or [1.0] * len(xs)
    return sum(c * x for c, x in zip(coeff, xs))


# ---------------------------------------------------------------- normalization (batch_norm, mvn layers)

def batch_norm(x, mean_sum, var_sum, factor, eps=1e-5, global_stats=True, fraction=0.999):
    """Caffe's BatchNorm: returns (y, new blobs). Stored statistics are blob / factor (factor 0: 0); batch
    statistics use the biased variance and update the blobs with m/(m−1) for the variance."""
    axes = (0,) + tuple(range(2, x.ndim))
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    blobs = (mean_sum, var_sum, factor)
    if global_stats:
        f = 0.0 if factor[0] == 0 else 1.0 / factor[0]
        mean, var = mean_sum * f, var_sum * f
    else:
        mean = x.mean(axis=axes)
        var = ((x - mean.reshape(bshape)) ** 2).mean(axis=axes)
        m = x.size // x.shape[1]
        blobs = (mean + fraction * mean_sum, var * (m / (m - 1) if m > 1 else 1.0) + fraction * var_sum,
                 factor * fraction + 1)
    return (x - mean.reshape(bshape)) / np.sqrt(var.reshape(bshape) + eps), blobs


def mvn(x, normalize_variance=True, across_channels=False, eps=1e-9):
    """Caffe's MVN on a ≤4-D blob (top padded to 4-D): per (n, c), or per n across channels."""
    x = x.reshape(x.shape + (1,) * (4 - x.ndim))
    axes = (1, 2, 3) if across_channels else (2, 3)
    c = x - x.mean(axis=axes, keepdims=True)
    if not normalize_variance:
        return c
    return c / (np.sqrt((c ** 2).mean(axis=axes, keepdims=True)) + eps)


def mvn_caffe_grad(x, dy, across_channels=False, eps=1e-9):
    """Caffe's MVN backward (normalize_variance): (dy − mean(dy) − y · mean(dy · y)) / (σ + eps)."""
    x = x.reshape(x.shape + (1,) * (4 - x.ndim))
    axes = (1, 2, 3) if across_channels else (2, 3)
    y = mvn(x, True, across_channels, eps)
    sigma = np.sqrt(((x - x.mean(axis=axes, keepdims=True)) ** 2).mean(axis=axes, keepdims=True))
    return (dy - dy.mean(axis=axes, keepdims=True) - y * (dy * y).mean(axis=axes, keepdims=True)) / (sigma + eps)


def scale_bias(x, scale=None, bias=None, axis=1):
    """Caffe's Scale/Bias: the (scale, bias) blob laid over x's axes axis … axis+ndim−1, by explicit loops over the
    outer × scale × inner layout."""
    p = scale if scale is not None else bias
    axis = 0 if p.ndim == 0 else axis % x.ndim
    outer, dim = int(np.prod(x.shape[:axis])), p.size
    flat = x.reshape(outer, dim, -1).copy()
    for n in range(outer):
        for d in range(dim):
            if scale is not None:
                flat[n, d] *= scale.reshape(-1)[d]
            if bias is not None:
                flat[n, d] += bias.reshape(-1)[d]
    return flat.reshape(x.shape)


# ---------------------------------------------------------------- common (reduction, argmax, eltwise max layers)

def reduction(x, op="SUM", axis=0, coeff=1.0):
    rows = x.reshape(x.shape[:axis] + (-1,))
    y = {"SUM": rows.sum(-1), "ASUM": np.abs(rows).sum(-1), "SUMSQ": (rows ** 2).sum(-1),
         "MEAN": rows.mean(-1)}[op]
    return y * coeff


def argmax(x, top_k=1, out_max_val=False, axis=None):
    """Caffe's ArgMax by loops: per item (or per position along `axis`), the top_k (value, index) pairs in
    descending order of value, then of index (equal values: the larger index first)."""
    if axis is None:
        rows = x.reshape(x.shape[0], -1)
        out = np.zeros((x.shape[0], 2 if out_max_val else 1, top_k))
        for n, row in enumerate(rows):
            pairs = sorted(((v, j) for j, v in enumerate(row)), reverse=True)[:top_k]
            out[n, 0] = [j for _, j in pairs]
            if out_max_val:
                out[n, 1] = [v for v, _ in pairs]
        return out.reshape(out.shape + (1,) * max(0, x.ndim - 3))
    moved = np.moveaxis(x, axis, -1)
    out = np.zeros(moved.shape[:-1] + (top_k,))
    for pos in np.ndindex(moved.shape[:-1]):
        pairs = sorted(((v, j) for j, v in enumerate(moved[pos])), reverse=True)[:top_k]
        out[pos] = [v if out_max_val else j for v, j in pairs]
    return np.moveaxis(out, -1, axis)


def eltwise_max_index(xs):
    """Caffe's winner per element: bottom 1 on a tie with bottom 0; later bottoms only when strictly greater."""
    index = np.where(xs[0] > xs[1], 0, 1)
    best = np.where(index == 0, xs[0], xs[1])
    for k, x in enumerate(xs[2:], start=2):
        index = np.where(x > best, k, index)
        best = np.maximum(best, x)
    return index


# ---------------------------------------------------------------- vision: N-D convolution, deconvolution, im2col, SPP

def _padded(x, pad):
    """x (N, C, *spatial) with `pad` zeros on both sides of every spatial axis."""
    return np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pad])


def conv_nd(x, w, b=None, stride=None, pad=None, dilation=None, group=1):
    """Any number of spatial axes: out[n, o, i…] = Σ_{c, k…} xpad[n, g·C/group + c, i·s + k·d] · w[o, c, k…] + b[o]."""
    nsp = x.ndim - 2
    stride, pad, dilation = stride or (1,) * nsp, pad or (0,) * nsp, dilation or (1,) * nsp
    xp = _padded(x, pad)
    m, cg = w.shape[:2]
    out_sp = [conv_out(x.shape[2 + a], w.shape[2 + a], stride[a], pad[a], dilation[a]) for a in range(nsp)]
    out = np.zeros((x.shape[0], m) + tuple(out_sp))
    for o in range(m):
        g = o // (m // group)
        for pos in np.ndindex(*out_sp):
            idx = tuple(slice(p * s, p * s + d * (k - 1) + 1, d)
                        for p, s, d, k in zip(pos, stride, dilation, w.shape[2:]))
            patch = xp[(slice(None), slice(g * cg, (g + 1) * cg)) + idx]
            out[(slice(None), o) + pos] = (patch * w[o]).reshape(x.shape[0], -1).sum(axis=1)
        if b is not None:
            out[:, o] += b[o]
    return out


def deconv_nd(x, w, b=None, stride=None, pad=None, dilation=None, group=1):
    """Caffe's Deconvolution (the transpose of convolution): each input cell scatters x[n, c, i…] · w[c, o', k…] to
    out[n, g·M/group + o', i·s + k·d − pad]; out size = s·(in − 1) + d·(k − 1) + 1 − 2·pad; w is (C, M/group, k…)."""
    nsp = x.ndim - 2
    stride, pad, dilation = stride or (1,) * nsp, pad or (0,) * nsp, dilation or (1,) * nsp
    c, mg = w.shape[:2]
    kernel = w.shape[2:]
    full = [s * (n - 1) + d * (k - 1) + 1 for s, n, d, k in zip(stride, x.shape[2:], dilation, kernel)]
    out = np.zeros((x.shape[0], mg * group) + tuple(full))
    cg = c // group
    for ch in range(c):
        g = ch // cg
        for pos in np.ndindex(*x.shape[2:]):
            for k in np.ndindex(*kernel):
                at = tuple(p * s + kk * d for p, s, kk, d in zip(pos, stride, k, dilation))
                for o in range(mg):
                    out[(slice(None), g * mg + o) + at] += x[(slice(None), ch) + pos] * w[(ch, o) + k]
    out = out[(slice(None), slice(None)) + tuple(slice(p, f - p) for p, f in zip(pad, full))]
    if b is not None:
        out += b.reshape((1, -1) + (1,) * nsp)
    return out


def im2col(x, kernel, stride, pad, dilation):
    """Caffe's column buffer of an (N, C, *spatial) x: row (c, k…) in channel-major, then kernel raster order; each
    column one output position: col[n, c·∏k + flat(k), i…] = xpad[n, c, i·s + k·d]."""
    xp = _padded(x, pad)
    out_sp = [conv_out(n, k, s, p, d) for n, k, s, p, d in zip(x.shape[2:], kernel, stride, pad, dilation)]
    rows = []
    for c in range(x.shape[1]):
        for k in np.ndindex(*kernel):
            idx = tuple(slice(kk * d, kk * d + (o - 1) * s + 1, s) for kk, d, o, s in zip(k, dilation, out_sp, stride))
            rows.append(xp[(slice(None), c) + idx])
    return np.stack(rows, axis=1)


def spp(x, height, mode="MAX"):
    """Caffe's SPP: level i pools with kernel = ceil(size / 2^i), pad = (kernel·2^i − size + 1) // 2, stride = kernel
    (CEIL rounding); levels flattened and concatenated (height 1: the pooled 4-D top itself)."""
    h, w = x.shape[2:]
    tops = []
    for level in range(height):
        bins = 2 ** level
        kh, kw = math.ceil(h / bins), math.ceil(w / bins)
        ph, pw = (kh * bins - h + 1) // 2, (kw * bins - w + 1) // 2
        tops.append(pool2d(x, (kh, kw), (kh, kw), (ph, pw), mode))
    if height == 1:
        return tops[0]
    return np.concatenate([t.reshape(x.shape[0], -1) for t in tops], axis=1)


def stochastic_pool_test(x, kernel, stride, ceil=True):
    """Caffe's STOCHASTIC pooling at TEST (pooling_layer.cu): windows from (i·s) clipped at the edge, no padding;
    top = Σ v² / Σ v over the window, 0 where Σ v ≤ 0."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw) = kernel, stride
    oh, ow = pool_out(h, kh, sh, 0, ceil), pool_out(w, kw, sw, 0, ceil)
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = x[:, :, i * sh:min(i * sh + kh, h), j * sw:min(j * sw + kw, w)].reshape(n, c, -1)
            total, squares = win.sum(axis=2), (win ** 2).sum(axis=2)
            out[:, :, i, j] = np.where(total > 0, squares / np.where(total > 0, total, 1), 0)
    return out
