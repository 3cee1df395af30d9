"""Cross-channel LRN (caffecam.engine.kernels.lrn): forward against the NumPy reference, gradient by gradcheck and
against Caffe's closed-form formula written out in NumPy, the channel window sum and the fast s^(−0.75)."""

import numpy as np
import pytest
import torch

from caffecam.engine.kernels.lrn import channel_window_sum, lrn_across, negative_power
from tests import numpy_ref as ref


def data(shape, seed=0, scale=2.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


def window_sum_np(a, size):
    """Σ over channels c − size//2 … c + size//2 that exist."""
    half, c = size // 2, a.shape[1]
    out = np.zeros_like(a)
    for ch in range(c):
        for other in range(ch - half, ch + half + 1):
            if 0 <= other < c:
                out[:, ch] += a[:, other]
    return out


def caffe_lrn_backward_np(x, dy, size, alpha, beta, k):
    """lrn_layer.cpp's CrossChannelBackward: dx = dy·s^(−β) − (2αβ/n)·x·Σ_window(dy·y/s)."""
    s = k + alpha / size * window_sum_np(x * x, size)
    y = x * s ** -beta
    return dy * s ** -beta - 2.0 * alpha * beta / size * x * window_sum_np(dy * y / s, size)


PARAMS = [  # size, alpha, beta, k, channels
    (1, 0.5, 0.75, 1.0, 3), (3, 1e-2, 0.75, 1.0, 6), (5, 1e-4, 0.75, 1.0, 8), (5, 0.8, 0.75, 2.0, 9),
    (7, 0.3, 0.5, 1.5, 10), (5, 0.6, 0.5, 1.0, 3), (7, 0.9, 0.75, 0.5, 2), (3, 2.0, 1.3, 3.0, 1),
]


@pytest.mark.parametrize("size,alpha,beta,k,c", PARAMS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_forward_matches_numpy(size, alpha, beta, k, c, layout):
    x = data((2, c, 3, 4), seed=size * 10 + c)
    t = torch.from_numpy(x).float()
    if layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    y = lrn_across(t, size, alpha, beta, k)
    assert y.shape == t.shape and y.dtype == torch.float32
    np.testing.assert_allclose(y.double().numpy(), ref.lrn_across(x, size, alpha, beta, k), rtol=2e-6, atol=1e-7)
    y64 = lrn_across(torch.from_numpy(x), size, alpha, beta, k)
    np.testing.assert_allclose(y64.numpy(), ref.lrn_across(x, size, alpha, beta, k), rtol=1e-12, atol=0)


def test_forward_hand_computed():
    """One pixel, channels (1, 2, 3), size 3, alpha 3, beta 0.5, k 1: s = 1 + (x_{c−1}² + x_c² + x_{c+1}²)."""
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).view(1, 3, 1, 1)
    y = lrn_across(x, 3, 3.0, 0.5, 1.0).flatten().tolist()
    assert y == pytest.approx([1 / 6 ** 0.5, 2 / 15 ** 0.5, 3 / 14 ** 0.5], rel=1e-14)


@pytest.mark.parametrize("size,alpha,beta,k,c", [PARAMS[i] for i in (0, 2, 4, 6, 7)])
def test_gradcheck_float64(size, alpha, beta, k, c):
    x = torch.from_numpy(data((2, c, 2, 3), seed=c)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: lrn_across(t, size, alpha, beta, k), (x,))


@pytest.mark.parametrize("size,alpha,beta,k,c", PARAMS)
def test_gradient_equals_caffe_closed_form(size, alpha, beta, k, c):
    x, dy = data((2, c, 3, 2), seed=c), data((2, c, 3, 2), seed=c + 100, scale=1.0)
    expect = caffe_lrn_backward_np(x, dy, size, alpha, beta, k)
    for dtype, rtol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        t = torch.from_numpy(x).to(dtype).requires_grad_()
        (lrn_across(t, size, alpha, beta, k) * torch.from_numpy(dy).to(dtype)).sum().backward()
        np.testing.assert_allclose(t.grad.double().numpy(), expect, rtol=rtol, atol=rtol * np.abs(expect).max())


def test_gradient_through_channels_last_and_noncontiguous_grad():
    x = data((2, 6, 4, 3), seed=3)
    dy = data((2, 6, 3, 4), seed=4).transpose(0, 1, 3, 2)  # the incoming gradient: a transposed view
    t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = lrn_across(t, 5, 0.4, 0.75, 1.0)
    y.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(t.grad.numpy(), caffe_lrn_backward_np(x, dy, 5, 0.4, 0.75, 1.0), rtol=1e-12,
                               atol=1e-14)


@pytest.mark.parametrize("size", [1, 3, 5, 7, 9])
@pytest.mark.parametrize("c", [1, 2, 4, 7])
def test_channel_window_sum(size, c):
    a = data((2, c, 3, 2), seed=size + c)
    got = channel_window_sum(torch.from_numpy(a), size)
    assert got.shape == a.shape
    np.testing.assert_allclose(got.numpy(), window_sum_np(a, size), rtol=1e-13, atol=1e-13)
    cl = torch.from_numpy(a).contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(channel_window_sum(cl, size).numpy(), window_sum_np(a, size), rtol=1e-13,
                               atol=1e-13)


def test_channel_window_sum_does_not_alias_its_input():
    a = torch.arange(12.0).view(1, 3, 2, 2)
    out = channel_window_sum(a, 1)
    out += 1
    assert torch.equal(a, torch.arange(12.0).view(1, 3, 2, 2))


def test_negative_power_three_quarters():
    s = torch.from_numpy(np.geomspace(1.0, 1e6, 20001)).float()
    s = torch.cat([s, torch.tensor([1.0, 1.5, 2.0, 4.0, 16.0, 1.0001])])
    before = s.clone()
    got = negative_power(s, 0.75)
    assert torch.equal(s, before)  # the input is not overwritten
    truth = s.double().numpy() ** -0.75
    rel = np.abs(got.double().numpy() - truth) / truth
    assert rel.max() < 3e-7
    pow32 = s ** -0.75
    assert (np.abs(got.double().numpy() - pow32.double().numpy()) / truth).max() < 3e-7
    assert negative_power(torch.tensor([16.0]), 0.75).item() == 0.125


@pytest.mark.parametrize("beta", [0.5, 1.0, 0.3])
def test_negative_power_other_betas(beta):
    s = torch.from_numpy(np.geomspace(1.0, 1e4, 101))
    np.testing.assert_allclose(negative_power(s, beta).numpy(), s.numpy() ** -beta, rtol=1e-14)
