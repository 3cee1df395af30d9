"""The compiled CPU loops (caffecam.engine.kernels.cpu_loops): MAX pooling, forward and backward, against
pooling_layer.cpp written out in NumPy (values, Caffe's mask, ties, NaN, empty windows, bfloat16, gradients),
cross-channel LRN forward and backward against the float64 reference and Caffe's closed-form gradient, and which
tensors take them."""

import numpy as np
import pytest
import torch

from caffecam.engine.kernels import cpu_loops
from caffecam.engine.kernels.lrn import lrn_across
from caffecam.engine.kernels.pool_geometry import caffe_max_pool_with_mask, caffe_pool, pool_plan
from tests import numpy_ref as ref
from tests.engine.kernels.test_lrn import caffe_lrn_backward_np

pytestmark = pytest.mark.skipif(cpu_loops._load() is False, reason="numba is not installed")

CL = torch.channels_last


@pytest.fixture(autouse=True)
def small_tensors_take_the_loops(monkeypatch):
    """The tests' tensors are small: let them take the loops (the scripts leave tensors under MIN_ELEMENTS to
    PyTorch, so that a small job does not import numba)."""
    monkeypatch.setattr(cpu_loops, "MIN_ELEMENTS", 0)

GEOMETRIES = [  # input (h, w), kernel, stride, pad, ceil
    ((112, 112), (3, 3), (2, 2), (0, 0), True),  # GoogLeNet's pool1
    ((28, 28), (3, 3), (1, 1), (1, 1), True),  # an inception's pool
    ((7, 7), (3, 3), (2, 2), (1, 1), True),
    ((5, 6), (3, 3), (1, 1), (2, 2), True),  # pad beyond kernel / 2: PyTorch's own pooling cannot
    ((7, 8), (2, 2), (3, 3), (1, 1), True),  # kernel < stride with pad
    ((6, 7), (1, 1), (3, 3), (0, 0), True),  # a last window wholly past the edge
    ((5, 7), (3, 2), (2, 3), (1, 1), True),
    ((8, 7), (3, 3), (2, 2), (1, 1), False),
    ((14, 14), (14, 14), (1, 1), (0, 0), True),  # global
    ((5, 6), (3, 1), (2, 3), (1, 0), True),
]


def tied(shape, seed):
    """float32 values from a set of five, so that most windows hold ties."""
    return np.random.default_rng(seed).integers(-2, 3, shape).astype(np.float32)


def channels_last(a):
    return torch.from_numpy(np.ascontiguousarray(a)).contiguous(memory_format=CL)


@pytest.mark.parametrize("hw,kernel,stride,pad,ceil", GEOMETRIES)
@pytest.mark.parametrize("channels", [1, 3, 70])
def test_max_pool_matches_caffe_loop_for_loop(hw, kernel, stride, pad, ceil, channels):
    x = tied((2, channels) + hw, seed=channels + hw[0])
    top_ref, mask_ref = ref.max_pool_with_mask(x, kernel, stride, pad, ceil)
    out = pool_plan(hw, kernel, stride, pad, ceil)[0]
    t = channels_last(x)
    assert cpu_loops.enabled(t)
    top, index = cpu_loops.max_pool(t, kernel, stride, pad, out, with_index=True)
    np.testing.assert_array_equal(top.numpy(), top_ref)
    np.testing.assert_array_equal(index.numpy(), mask_ref)
    # the layer's entry points take the loops at inference and give the same
    with torch.no_grad():
        np.testing.assert_array_equal(caffe_pool(t, kernel, stride, pad, ceil, True).numpy(), top_ref)
        top2, mask = caffe_max_pool_with_mask(t, kernel, stride, pad, ceil)
    np.testing.assert_array_equal(top2.numpy(), top_ref)
    assert mask.dtype == torch.float32
    np.testing.assert_array_equal(mask.numpy(), mask_ref.astype(np.float32))


def test_max_pool_random_geometries():
    rng = np.random.default_rng(7)
    for _ in range(60):
        h, w, kh, kw, sh, sw = (int(v) for v in rng.integers(1, [12, 12, 6, 6, 5, 5]))
        ph, pw = int(rng.integers(0, kh)), int(rng.integers(0, kw))
        if h + 2 * ph < kh or w + 2 * pw < kw:
            continue
        ceil = bool(rng.random() < 0.7)
        x = tied((1, 5, h, w), seed=h * 100 + w)
        top_ref, mask_ref = ref.max_pool_with_mask(x, (kh, kw), (sh, sw), (ph, pw), ceil)
        out = pool_plan((h, w), (kh, kw), (sh, sw), (ph, pw), ceil)[0]
        top, index = cpu_loops.max_pool(channels_last(x), (kh, kw), (sh, sw), (ph, pw), out, with_index=True)
        np.testing.assert_array_equal(top.numpy(), top_ref)
        np.testing.assert_array_equal(index.numpy(), mask_ref)


def test_max_pool_hand_checked_ties_and_nan():
    """One 3×3 window over a 3×3 plane: the first of the tied 5s wins (index 1); NaN is never taken (Caffe's
    strict >), and a plane of NaN keeps −FLT_MAX with mask −1."""
    plane = np.array([[1, 5, 5], [np.nan, 2, 5], [0, 5, 3]], np.float32)
    x = np.stack([plane, np.full((3, 3), np.nan, np.float32)])[None]
    top, index = cpu_loops.max_pool(channels_last(x), (3, 3), (1, 1), (0, 0), (1, 1), with_index=True)
    assert top.flatten().tolist() == [5.0, -ref.FLT_MAX]
    assert index.flatten().tolist() == [1, -1]


def test_max_pool_bfloat16_is_the_rounded_float32_result():
    x = np.random.default_rng(3).standard_normal((2, 20, 9, 9)).astype(np.float32)
    xb = channels_last(x).to(torch.bfloat16)
    top_ref, _ = ref.max_pool_with_mask(xb.float().numpy(), (3, 3), (2, 2), (0, 0))
    top = cpu_loops.max_pool(xb, (3, 3), (2, 2), (0, 0), (4, 4))
    assert top.dtype == torch.bfloat16
    np.testing.assert_array_equal(top.float().numpy(), top_ref)


@pytest.mark.parametrize("hw,kernel,stride,pad,ceil", GEOMETRIES)
@pytest.mark.parametrize("channels", [3, 70])
def test_max_pool_gradient_matches_caffe_loop_for_loop(hw, kernel, stride, pad, ceil, channels):
    """Training: the top as at inference, and the gradient of pooling_layer.cpp's backward (each top gradient added
    into a zeroed bottom_diff at its mask, outputs in scan order), equal to the last bit; ties in most windows."""
    x = tied((2, channels) + hw, seed=channels + hw[1])
    top_ref, mask_ref = ref.max_pool_with_mask(x, kernel, stride, pad, ceil)
    dy = np.random.default_rng(channels).standard_normal(top_ref.shape).astype(np.float32)
    t = channels_last(x).requires_grad_()
    top = caffe_pool(t, kernel, stride, pad, ceil, True)
    assert type(top.grad_fn).__name__ == "_LoopsMaxPoolBackward"
    np.testing.assert_array_equal(top.detach().numpy(), top_ref)
    top.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(t.grad.numpy(), ref.max_pool_backward(dy, mask_ref, hw))


def test_max_pool_gradient_hand_checked():
    """A 4×4 plane pooled 3×3 stride 1: the 9 at (1, 1) is the maximum of all four windows, so it gathers their
    gradients 1 + 2 + 3 + 4; every other cell gets 0."""
    plane = np.zeros((4, 4), np.float32)
    plane[1, 1] = 9
    t = channels_last(plane[None, None]).requires_grad_()
    top = caffe_pool(t, (3, 3), (1, 1), (0, 0), True, True)
    top.backward(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]))
    expect = np.zeros((4, 4), np.float32)
    expect[1, 1] = 10
    np.testing.assert_array_equal(t.grad[0, 0].numpy(), expect)


def test_which_poolings_with_a_gradient_keep_pytorch():
    """The mask top keeps PyTorch's pooling in training; so does bfloat16 where a window lies wholly past the edge
    (Caffe's −FLT_MAX has no bfloat16: the PyTorch path keeps the type's lowest finite)."""
    x = channels_last(tied((1, 4, 6, 6), seed=1)).requires_grad_()
    y = caffe_pool(x.bfloat16(), (3, 3), (2, 2), (0, 0), True, True)
    assert type(y.grad_fn).__name__ == "_LoopsMaxPoolBackward"
    top, mask = caffe_max_pool_with_mask(x, (3, 3), (2, 2), (0, 0), True)
    assert "MaxPool2DWithIndices" in type(top.grad_fn).__name__
    y = caffe_pool(channels_last(tied((1, 4, 6, 7), seed=2)).bfloat16().requires_grad_(), (1, 1), (3, 3), (0, 0),
                   True, True)
    assert type(y.grad_fn).__name__ != "_LoopsMaxPoolBackward"


@pytest.mark.parametrize("hw,kernel,stride,pad,ceil", GEOMETRIES[:5] + GEOMETRIES[6:])
def test_max_pool_bfloat16_training_is_caffes_float32_loop_rounded_once(hw, kernel, stride, pad, ceil):
    """bfloat16 in its own bits (numba_bf16.py): the top and mask of pooling_layer.cpp on the bfloat16 values, and
    its float32 backward sums of the bfloat16 gradients, each rounded once to bfloat16 by torch (ties to even)."""
    x = np.random.default_rng(hw[0]).standard_normal((2, 19) + hw).astype(np.float32)
    xb = channels_last(x).to(torch.bfloat16)
    top_ref, mask_ref = ref.max_pool_with_mask(xb.float().numpy(), kernel, stride, pad, ceil)
    dy = torch.randn(top_ref.shape, generator=torch.Generator().manual_seed(hw[1])).to(torch.bfloat16)
    t = xb.clone().requires_grad_()
    top = caffe_pool(t, kernel, stride, pad, ceil, True)
    assert type(top.grad_fn).__name__ == "_LoopsMaxPoolBackward" and top.dtype == torch.bfloat16
    np.testing.assert_array_equal(top.detach().float().numpy(), top_ref)
    top.backward(dy)
    assert t.grad.dtype == torch.bfloat16
    expect = torch.from_numpy(ref.max_pool_backward(dy.float().numpy(), mask_ref, hw)).to(torch.bfloat16)
    assert torch.equal(t.grad, expect)


def test_max_pool_bfloat16_ties_signed_zeros_and_nan_follow_caffe():
    """Ties in most windows, −0 before +0 (equal: the first stays), NaN (never wins): the mask and top of
    pooling_layer.cpp on the same values, in bfloat16 as in float32."""
    x = tied((2, 6, 9, 9), seed=4)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = -0.0, 0.0
    x[0, 0, :3, :3] = np.where(x[0, 0, :3, :3] > 0, -1.0, x[0, 0, :3, :3])  # the first window's maximum is a zero
    x[1, 2, 4, 4] = np.nan
    x[1, 3] = np.nan
    top_ref, mask_ref = ref.max_pool_with_mask(x, (3, 3), (2, 2), (0, 0))
    top, index = cpu_loops.max_pool(channels_last(x).to(torch.bfloat16), (3, 3), (2, 2), (0, 0), (4, 4),
                                    with_index=True)
    np.testing.assert_array_equal(index.numpy(), mask_ref)
    assert index[0, 0, 0, 0].item() == 0 and np.signbit(top[0, 0, 0, 0].float().item())  # the −0 at (0, 0)
    np.testing.assert_array_equal(top.float().numpy()[1, :3], top_ref[1, :3])
    assert (top[1, 3].float() == torch.tensor(-3.3895313892515355e38)).all()  # bfloat16's lowest finite


def test_max_pool_bfloat16_gradient_rounds_ties_to_even_and_keeps_nan():
    """A 3×3 plane pooled 2×2 stride 1 with its maximum at the centre, which gathers all four gradients. bfloat16
    has 8 significant bits: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7 and rounds to the even 1; 1 + 3·2^-8 lies
    halfway between 1 + 2^-7 and 1 + 2^-6 and rounds to the even 1 + 2^-6. A NaN gradient stays NaN."""
    plane = np.zeros((3, 3), np.float32)
    plane[1, 1] = 1
    x = channels_last(np.stack([plane] * 3)[None]).to(torch.bfloat16).requires_grad_()
    top = caffe_pool(x, (2, 2), (1, 1), (0, 0), True, True)
    dy = torch.tensor([[[[1.0, 2.0 ** -8], [0.0, 0.0]], [[1.0, 2.0 ** -8], [2.0 ** -7, 0.0]],
                        [[1.0, float("nan")], [0.0, 0.0]]]]).to(torch.bfloat16)
    top.backward(dy)
    centre = x.grad[0, :, 1, 1].float()
    assert centre[0].item() == 1.0 and centre[1].item() == 1 + 2.0 ** -6 and np.isnan(centre[2].item())
    assert x.grad.float().abs().nansum().item() == centre[:2].sum().item()


@pytest.mark.parametrize("channels,size,alpha,beta,k", [(200, 5, 1e-4, 0.75, 1.0), (64, 5, 0.8, 0.75, 2.0),
                                                       (9, 3, 0.3, 0.5, 1.5), (5, 7, 0.9, 0.75, 0.5),
                                                       (3, 1, 0.5, 1.3, 1.0)])
def test_lrn_loops_forward_and_gradient(channels, size, alpha, beta, k):
    # 300 pixels: more than one block of 256, and a partial one
    x = np.random.default_rng(channels).standard_normal((3, channels, 10, 10)) * 3
    dy = np.random.default_rng(channels + 1).standard_normal(x.shape)
    t = channels_last(x.astype(np.float32)).requires_grad_()
    assert cpu_loops.enabled(t)
    y = lrn_across(t, size, alpha, beta, k)
    assert y.is_contiguous(memory_format=CL)
    expect = ref.lrn_across(x.astype(np.float32).astype(np.float64), size, alpha, beta, k)
    np.testing.assert_allclose(y.detach().double().numpy(), expect, rtol=2e-6, atol=1e-7)
    y.backward(torch.from_numpy(dy.astype(np.float32)))
    grad = caffe_lrn_backward_np(x.astype(np.float32).astype(np.float64), dy.astype(np.float32), size, alpha,
                                 beta, k)
    np.testing.assert_allclose(t.grad.double().numpy(), grad, rtol=1e-5, atol=1e-5 * np.abs(grad).max())


def test_lrn_loops_agree_with_the_pytorch_path():
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((2, 40, 7, 7)).astype(np.float32) * 4)
    fast, slow = x.contiguous(memory_format=CL), x.contiguous()
    assert cpu_loops.enabled(fast) and not cpu_loops.enabled(slow)
    a, b = lrn_across(fast, 5, 1e-2, 0.75, 1.0), lrn_across(slow, 5, 1e-2, 0.75, 1.0)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=3e-7, atol=0)


@pytest.mark.parametrize("size,beta", [(5, 0.75), (3, 0.6)])
def test_lrn_loops_in_bfloat16_round_once(size, beta):
    """bfloat16 read and written in its own bits (numba_bf16.py): the output and the input gradient are the float32
    loops' on the widened values, each rounded once by torch; and near the float64 reference."""
    x = np.random.default_rng(9).standard_normal((2, 16, 5, 5)).astype(np.float32) * 3
    xb = channels_last(x).to(torch.bfloat16).requires_grad_()
    y = lrn_across(xb, size, 0.5, beta, 1.0)
    assert y.dtype == torch.bfloat16
    expect = ref.lrn_across(xb.detach().double().numpy(), size, 0.5, beta, 1.0)
    np.testing.assert_allclose(y.detach().double().numpy(), expect, rtol=2 ** -8, atol=0)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    y.backward(dy)
    assert xb.grad.dtype == torch.bfloat16
    xf = xb.detach().float().requires_grad_()
    yf = lrn_across(xf, size, 0.5, beta, 1.0)
    yf.backward(dy.float())
    assert torch.equal(y.detach(), yf.detach().to(torch.bfloat16))
    assert torch.equal(xb.grad, xf.grad.to(torch.bfloat16))


def test_which_tensors_take_the_loops(monkeypatch):
    monkeypatch.setattr(cpu_loops, "MIN_ELEMENTS", 36)
    assert not cpu_loops.enabled(torch.zeros(1, 4, 3, 2).contiguous(memory_format=CL))  # 24 values
    x = torch.zeros(1, 4, 3, 3)
    assert cpu_loops.enabled(x.contiguous(memory_format=CL))
    assert not cpu_loops.enabled(x)  # NCHW
    assert not cpu_loops.enabled(x.double().contiguous(memory_format=CL))
    assert not cpu_loops.enabled(torch.zeros(2, 3))
    monkeypatch.setattr(cpu_loops, "ENABLED", False)  # CAFFECAM_LOOPS=0
    assert not cpu_loops.enabled(x.contiguous(memory_format=CL))


def test_a_small_net_never_imports_numba():
    """A forward whose tensors are all under MIN_ELEMENTS (one small image) runs without importing numba."""
    import subprocess
    import sys
    code = ("import sys, torch\n"
            "from caffecam.engine.kernels.lrn import lrn_across\n"
            "from caffecam.engine.kernels.pool_geometry import caffe_pool\n"
            "x = torch.rand(1, 64, 56, 56).contiguous(memory_format=torch.channels_last)\n"
            "with torch.inference_mode():\n"
            "    caffe_pool(lrn_across(x, 5, 1e-4, 0.75, 1.0), (3, 3), (2, 2), (0, 0), True, True)\n"
            "print('numba' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
