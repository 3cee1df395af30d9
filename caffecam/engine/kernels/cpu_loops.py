"""Compiled CPU loops (numba) for the memory-bound work whose PyTorch composition makes many passes over the data:
cross-channel LRN, MAX pooling (forward and backward), and Winograd's tile transforms (winograd.py).

PyTorch composes cross-channel LRN from about ten elementwise operations, each a full pass over a tensor that does
not fit in cache (GoogLeNet's norm2 at batch 32 is 77 MB): measured on a 2-core Xeon, 64 ms forward and 72 ms
backward, where one compiled pass per direction takes 13 and 10 ms. The loops here run over channels_last
tensors seen as (pixels × channels) arrays, split across the same number of threads as PyTorch's, and compute
exactly the operations of the PyTorch path in the same order (float32, no fast-math: no reassociation, no fused
multiply-add), so the two paths agree to float32 rounding of sqrt and division (LRN: 2e-7), or bit for bit where
there are only additions (Winograd's transforms).

`enabled(x)` says whether a tensor can take them: on the CPU, float32 or bfloat16, channels_last, at least
MIN_ELEMENTS values; not when CAFFECAM_LOOPS=0 (the PyTorch path everywhere, for comparison) or where numba cannot
be imported.
The first call compiles each loop (about a second), then numba's cache under __pycache__ keeps it.
"""

import os

import torch

ENABLED = os.environ.get("CAFFECAM_LOOPS", "1") != "0"
_numba = _numba_winograd = _numba_winograd4 = _numba_bf16 = None


def _load():
    """The compiled pooling and LRN module (numba_winograd loaded beside it), or False where numba is missing (the
    PyTorch path is used then)."""
    global _numba, _numba_winograd, _numba_winograd4, _numba_bf16
    if _numba is None:
        try:
            from caffecam.engine.kernels import numba_bf16, numba_loops, numba_winograd, numba_winograd4
            _numba, _numba_winograd, _numba_winograd4, _numba_bf16 = (numba_loops, numba_winograd, numba_winograd4,
                                                                      numba_bf16)
        except Exception:  # no numba, or no place numba can keep its compiled cache: the PyTorch path, same values
            _numba = False
    return _numba


# Tensors smaller than this take the PyTorch path: importing numba and loading its cached loops costs a process
# about 0.5 s, more than the loops save on small work (cam.py on one photo: 2.05 s with them, 1.5 s without).
# GoogLeNet's norm2 at batch 1 has 0.6 M values; at batch 16, 9.6 M.
MIN_ELEMENTS = 1 << 20


def _usable(t, dtypes):
    return ENABLED and t.device.type == "cpu" and t.dtype in dtypes and _load() is not False


def enabled(x):
    return (x.dim() == 4 and x.numel() >= MIN_ELEMENTS and x.is_contiguous(memory_format=torch.channels_last)
            and _usable(x, (torch.float32, torch.bfloat16)))


def _rows(t):
    """N×C×H×W channels_last tensor -> its (N·H·W)×C NumPy view (no copy); bfloat16 as uint16 bits."""
    rows = t.detach().permute(0, 2, 3, 1).reshape(-1, t.shape[1])
    return (rows.view(torch.uint16) if rows.dtype == torch.bfloat16 else rows).numpy()


def _threads():
    loops = _load()
    loops.set_threads(torch.get_num_threads())
    return loops


def _bf16():
    _threads()
    return _numba_bf16


def _winograd(tile=2):
    _threads()
    return _numba_winograd if tile == 2 else _numba_winograd4


def lrn_forward(x, size, alpha, beta, k):
    """(y, scale) of cross-channel LRN for a float32 or bfloat16 channels_last x (see lrn.py for the formulas):
    y in x's type, the scale in float32."""
    loops = _bf16() if x.dtype == torch.bfloat16 else _threads()
    y = torch.empty_like(x, memory_format=torch.channels_last)
    scale = torch.empty(x.shape, memory_format=torch.channels_last)
    loops.lrn_forward(_rows(x), size, alpha / size, k, beta, _rows(y), _rows(scale))
    return y, scale


def lrn_backward(x, scale, dy, size, alpha, beta):
    """dx of cross-channel LRN, in x's type, from x, the forward's float32 scale and dy (channels_last)."""
    loops = _bf16() if x.dtype == torch.bfloat16 else _threads()
    dx = torch.empty_like(x, memory_format=torch.channels_last)
    dy = dy.to(x.dtype).contiguous(memory_format=torch.channels_last)
    loops.lrn_backward(_rows(x), _rows(scale), _rows(dy), size, beta, -2.0 * alpha * beta / size, _rows(dx))
    return dx


def max_pool(x, kernel, stride, pad, out, with_index=False, positive_only=False):
    """Caffe's MAX pooling of a channels_last x, into `out` (h, w) windows (any geometry pool_geometry accepts):
    the top, and with with_index also Caffe's mask (the flat index in the input plane, −1 for an empty window) as
    int32. No gradient is recorded here (pool_geometry's autograd function pairs it with max_pool_backward).
    GoogLeNet-CAM's poolings at batch 32, forward and backward: 92 ms against 130 for PyTorch's with indices.
    positive_only: the index is −1 also where the maximum is not above 0 (a ReLU's gradient folded in).
    float32, or bfloat16 read and written as such (numba_bf16.py)."""
    n, c, h, w = x.shape
    bf16 = x.dtype == torch.bfloat16
    src = x if bf16 else x.float()
    top = torch.empty((n, c) + tuple(out), dtype=src.dtype, memory_format=torch.channels_last)
    arg = torch.empty((n, c) + tuple(out), dtype=torch.int32, memory_format=torch.channels_last) if with_index \
        else None
    (_bf16() if bf16 else _threads()).max_pool(_rows(src), n, h, w, kernel, stride, pad, out, _rows(top),
                                               _rows(arg) if with_index else None, positive_only)
    top = top.to(x.dtype)
    return (top, arg) if with_index else top


def max_pool_backward(dy, arg, in_hw, kernel, stride, pad, dtype=torch.float32):
    """dx of max_pool from its output gradient dy and the index it returned (channels_last), in `dtype`: float32,
    or bfloat16 (the sums in float32, rounded once)."""
    n, c, oh, ow = dy.shape
    dx = torch.empty((n, c) + tuple(in_hw), dtype=dtype, memory_format=torch.channels_last)
    dy = dy.to(dtype).contiguous(memory_format=torch.channels_last)
    loops = _bf16() if dtype == torch.bfloat16 else _threads()
    loops.max_pool_backward(_rows(dy), _rows(arg), n, in_hw[0], in_hw[1], kernel, stride, pad, (oh, ow), _rows(dx))
    return dx


# ---- Winograd F(2×2, 3×3) and F(4×4, 3×3) transforms for winograd.py (float32 on the CPU) -------------------------
# `mat` is None for F(2×2) (its coefficients are written into numba_winograd.py's loops), else F(4×4)'s matrix
# (winograd.BT4, AT4 or G4; numba_winograd4.py's loops take it as their last argument).

def winograd_ready(t):
    """Whether winograd.py's transforms of t run as compiled loops (one pass each; the PyTorch composition makes
    about 20 and took 30-45% of a GoogLeNet-CAM training step)."""
    return _usable(t, (torch.float32,))


def _tile_values(mat):
    return 16 if mat is None else mat.shape[1] ** 2


def _transform(name, mat, *args):
    """numba_winograd's loop `name` on args (F(2×2)), or numba_winograd4's with F(4×4)'s matrix after them."""
    if mat is None:
        return getattr(_winograd(2), name)(*args)
    return getattr(_winograd(4), name)(*args, mat)


def winograd_input(xh, th, tw, groups=1, mat=None):
    """N×H×W×C (contiguous) -> (groups, 16 or 36, N·th·tw, C/groups) transformed tiles."""
    n, h, w, c = xh.shape
    v = torch.empty((groups, _tile_values(mat), n * th * tw, c // groups))
    _transform("winograd_input", mat, xh.detach().reshape(-1, c).numpy(), n, h, w, th, tw, v.numpy())
    return v


def winograd_output(m, n, th, tw, h, w, bias=None, relu=False, mat=None):
    """(G, 16 or 36, N·th·tw, K/G) tile products -> N×K×H×W channels_last output (+ bias, then ReLU when asked)."""
    k = m.shape[0] * m.shape[-1]
    out = torch.empty((n, k, h, w), memory_format=torch.channels_last)
    b = None if bias is None else bias.detach().float().contiguous().numpy()
    _transform("winograd_output", mat, m.detach().contiguous().numpy(), n, h, w, th, tw, b, relu, _rows(out))
    return out


def winograd_input_adjoint(gv, n, h, w, th, tw, mat):
    """(G, 36, N·th·tw, C/G) gradient of F(4×4)'s transformed tiles -> N×C×H×W channels_last input gradient."""
    out = torch.empty((n, gv.shape[0] * gv.shape[3], h, w), memory_format=torch.channels_last)
    _transform("winograd_input_adjoint", mat, gv.detach().contiguous().numpy(), n, h, w, th, tw, _rows(out))
    return out


def winograd_output_adjoint(gy, th, tw, groups=1, mat=None):
    """N×H×W×K (contiguous) output gradient -> (groups, 16 or 36, N·th·tw, K/groups)."""
    n, h, w, k = gy.shape
    gm = torch.empty((groups, _tile_values(mat), n * th * tw, k // groups))
    _transform("winograd_output_adjoint", mat, gy.detach().reshape(-1, k).numpy(), n, h, w, th, tw, gm.numpy())
    return gm


def winograd_filter(w, groups=1, mat=None):
    """K×C/groups×3×3 filters -> (groups, 16 or 36, K/groups, C/groups) transformed ones."""
    g = w.detach().permute(0, 2, 3, 1).contiguous()
    u = torch.empty((groups, 16 if mat is None else mat.shape[0] ** 2, g.shape[0] // groups, g.shape[3]))
    _transform("winograd_filter", mat, g.numpy(), u.numpy())
    return u


def winograd_filter_adjoint(gu, mat=None):
    """(G, 16 or 36, K/G, C/G) gradient of the transformed filters -> K×C/G×3×3 (channels_last memory) filter
    gradient."""
    g = torch.empty((gu.shape[0] * gu.shape[2], 3, 3, gu.shape[3]))
    _transform("winograd_filter_adjoint", mat, gu.detach().contiguous().numpy(), g.numpy())
    return g.permute(0, 3, 1, 2)
