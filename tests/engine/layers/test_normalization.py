"""LRN (both regions), BatchNorm and MVN against float64 NumPy references written from Caffe's formulas."""

import numpy as np
import pytest
import torch

from caffecam.errors import CaffeCamError
from tests import numpy_ref as ref
from tests.engine.layers.helpers import TEST, TRAIN, build, close, gradcheck_layer, rand, run, set_blobs

# ---------------------------------------------------------------- LRN

@pytest.mark.parametrize("size,alpha,beta,k,c",
                         [(5, 0.3, 0.75, 2.0, 7), (3, 1.0, 0.5, 1.0, 2), (5, 1e-4, 0.75, 1.0, 1)])
def test_lrn_across_channels_edges(size, alpha, beta, k, c):
    x = rand(2, c, 3, 4, seed=8) * 2
    layer = build(f"name: 'n' type: 'LRN' lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} k: {k} }}",
                  [x.shape])
    (y,) = run(layer, x)
    close(y, ref.lrn_across(x, size, alpha, beta, k))


def test_lrn_within_channel_ignores_k():
    x = rand(2, 3, 6, 5, seed=9) * 2
    for size in (3, 5):
        layer = build(f"name: 'n' type: 'LRN' lrn_param {{ local_size: {size} alpha: 0.7 beta: 0.6 k: 9 "
                      "norm_region: WITHIN_CHANNEL }", [x.shape])
        (y,) = run(layer, x)
        close(y, ref.lrn_within(x, size, 0.7, 0.6))


def test_lrn_even_size_is_an_error():
    with pytest.raises(CaffeCamError, match="'n'.*odd"):
        build("name: 'n' type: 'LRN' lrn_param { local_size: 4 }", [(1, 3, 2, 2)])


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_gradcheck_lrn(region):
    layer = build(f"name: 'n' type: 'LRN' lrn_param {{ local_size: 3 alpha: 0.5 beta: 0.75 norm_region: {region} }}",
                  [(1, 4, 3, 3)])
    gradcheck_layer(layer, torch.from_numpy(rand(1, 4, 3, 3, seed=42)), with_params=False)


def test_lrn_needs_a_4d_bottom():
    # Caffe: "Input must have 4 axes"; a 2-D bottom used to fail inside conv2d at the first forward.
    with pytest.raises(CaffeCamError, match=r"'n'.*N×C×H×W"):
        build("name: 'n' type: 'LRN'", [(2, 6)])


# ---------------------------------------------------------------- BatchNorm

def bn_blobs(c, factor, seed=30):
    return rand(c, seed=seed), np.abs(rand(c, seed=seed + 1)) + 0.5, np.array([factor])


@pytest.mark.parametrize("factor", [1.0, 2.5, 0.0])
def test_batch_norm_global_stats_divide_by_the_factor(factor):
    x = rand(3, 4, 2, 5, seed=31)
    mean, var, s = bn_blobs(4, factor)
    layer = build("name: 'bn' type: 'BatchNorm' batch_norm_param { eps: 0.01 }", [x.shape], phase=TEST)
    set_blobs(layer, mean, var, s)
    (y,) = run(layer, x)
    expect, _ = ref.batch_norm(x, mean, var, s, eps=0.01)
    close(y, expect)
    if factor == 0:  # s = 0: mean 0, variance 0, y = x / sqrt(eps)
        close(y, x / np.sqrt(0.01))
    assert [b.detach().numpy().tolist() for b in layer.blobs] == [mean.tolist(), var.tolist(), s.tolist()]


@pytest.mark.parametrize("shape", [(4, 3, 2, 3), (5, 2), (2, 3, 2, 2, 2), (1, 3, 1, 1)])
def test_batch_norm_train_batch_stats_and_running_update(shape):
    x = rand(*shape, seed=32) * 3 + 1
    c = shape[1]
    mean, var, s = bn_blobs(c, 1.7)
    layer = build("name: 'bn' type: 'BatchNorm' batch_norm_param { moving_average_fraction: 0.9 }", [x.shape],
                  phase=TRAIN)
    set_blobs(layer, mean, var, s)
    (y,) = run(layer, x)
    expect, blobs = ref.batch_norm(x, mean, var, s, global_stats=False, fraction=0.9)
    close(y, expect)
    for blob, want in zip(layer.blobs, blobs):
        close(blob.detach().numpy(), want)
    m = x.size // c
    if m > 1:  # hand check of the unbiased factor on channel 0
        xc = np.moveaxis(x, 1, 0)[0]
        close(layer.blobs[1].detach().numpy()[0], xc.var() * m / (m - 1) + 0.9 * var[0])


def test_batch_norm_default_by_phase_and_explicit_flag():
    x = rand(4, 2, 3, 3, seed=33)
    text = "name: 'bn' type: 'BatchNorm' {}"
    for phase, flag, global_stats in [(TEST, "", True), (TRAIN, "", False),
                                      (TRAIN, "batch_norm_param { use_global_stats: true }", True),
                                      (TEST, "batch_norm_param { use_global_stats: false }", False)]:
        layer = build(text.format(flag), [x.shape], phase=phase)
        mean, var, s = bn_blobs(2, 1.0)
        set_blobs(layer, mean, var, s)
        (y,) = run(layer, x)
        close(y, ref.batch_norm(x, mean, var, s, global_stats=global_stats)[0])
        assert (layer.blobs[2].item() == 1.0) is global_stats  # batch statistics update the factor to 1.999


def test_batch_norm_fresh_blobs_are_zero_and_train_twice_accumulates():
    x1, x2 = rand(3, 2, 4, seed=34), rand(3, 2, 4, seed=35) + 2
    layer = build("name: 'bn' type: 'BatchNorm'", [x1.shape], phase=TRAIN)
    assert [tuple(b.shape) for b in layer.blobs] == [(2,), (2,), (1,)]
    assert all(not b.detach().any() for b in layer.blobs)
    blobs = [np.zeros(2), np.zeros(2), np.zeros(1)]
    for x in (x1, x2):
        run(layer, x)
        blobs = ref.batch_norm(x, *blobs, global_stats=False)[1]
    for blob, want in zip(layer.blobs, blobs):
        close(blob.detach().numpy(), want)


@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_gradcheck_batch_norm(phase):
    layer = build("name: 'bn' type: 'BatchNorm' batch_norm_param { moving_average_fraction: 1 }", [(3, 2, 2, 2)],
                  phase=phase)
    set_blobs(layer, *bn_blobs(2, 2.0))
    gradcheck_layer(layer, torch.from_numpy(rand(3, 2, 2, 2, seed=36)), with_params=False)


def test_batch_norm_train_gradient_is_caffes_formula_and_blobs_get_none():
    x = torch.from_numpy(rand(4, 3, 2, 2, seed=37)).requires_grad_(True)
    dy = rand(4, 3, 2, 2, seed=38)
    layer = build("name: 'bn' type: 'BatchNorm' batch_norm_param { eps: 0.1 }", [x.shape], phase=TRAIN)
    (y,) = layer(x)
    y.backward(torch.from_numpy(dy))
    yn, xn = y.detach().numpy(), x.detach().numpy()
    axes = (0, 2, 3)
    # Caffe: dx = (dy − mean(dy) − mean(dy·y)·y) / sqrt(var + eps)
    expect = (dy - dy.mean(axis=axes, keepdims=True) - (dy * yn).mean(axis=axes, keepdims=True) * yn) / np.sqrt(
        xn.var(axis=axes, keepdims=True) + 0.1)
    close(x.grad.numpy(), expect)
    assert all(b.grad is None for b in layer.blobs)


@pytest.mark.parametrize("text,needle", [
    ("param { lr_mult: 1 }", "lr_mult 1"),
    ("param { lr_mult: 0 } param { decay_mult: 0 }", "param 1 has lr_mult 1"),
])
def test_batch_norm_statistics_cannot_learn(text, needle):
    with pytest.raises(CaffeCamError, match=rf"'bn'.*{needle}"):
        build(f"name: 'bn' type: 'BatchNorm' {text}", [(2, 3, 4, 4)])


def test_batch_norm_needs_a_channel_axis():
    with pytest.raises(CaffeCamError, match="'bn'.*channel"):
        build("name: 'bn' type: 'BatchNorm'", [(5,)])


# ---------------------------------------------------------------- MVN

@pytest.mark.parametrize("text,across,normalize,eps", [
    ("", False, True, 1e-9), ("mvn_param { across_channels: true eps: 0.01 }", True, True, 0.01),
    ("mvn_param { normalize_variance: false }", False, False, 1e-9),
    ("mvn_param { normalize_variance: false across_channels: true }", True, False, 1e-9),
])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 6), (2, 3, 5)])
def test_mvn_forward_and_4d_top(text, across, normalize, eps, shape):
    x = rand(*shape, seed=60) * 2 + 1
    layer = build(f"name: 'm' type: 'MVN' {text}", [shape])
    (y,) = run(layer, x)
    assert layer.top_shapes == [shape + (1,) * (4 - len(shape))] and y.shape == layer.top_shapes[0]
    close(y, ref.mvn(x, normalize, across, eps))


@pytest.mark.parametrize("across", [False, True])
def test_mvn_backward_is_caffes_formula_not_the_exact_gradient(across):
    x = torch.from_numpy(rand(2, 3, 2, 3, seed=61)).requires_grad_(True)
    dy = rand(2, 3, 2, 3, seed=62)
    eps = 0.3  # large, so that Caffe's formula and the exact gradient differ clearly
    layer = build(f"name: 'm' type: 'MVN' mvn_param {{ across_channels: {str(across).lower()} eps: {eps} }}",
                  [x.shape])
    layer(x)[0].backward(torch.from_numpy(dy))
    caffe = ref.mvn_caffe_grad(x.detach().numpy(), dy, across, eps)
    close(x.grad.numpy(), caffe)
    exact = torch.autograd.functional.vjp(
        lambda t: (t - t.mean((2, 3) if not across else (1, 2, 3), keepdim=True)) / (
            t.var((2, 3) if not across else (1, 2, 3), unbiased=False, keepdim=True).sqrt() + eps),
        x.detach(), torch.from_numpy(dy))[1]
    assert np.abs(exact.numpy() - caffe).max() > 1e-3


def test_gradcheck_mvn_mean_only():
    layer = build("name: 'm' type: 'MVN' mvn_param { normalize_variance: false }", [(2, 3, 2, 2)])
    gradcheck_layer(layer, torch.from_numpy(rand(2, 3, 2, 2, seed=63)), with_params=False)


def test_mvn_needs_at_most_4_axes():
    with pytest.raises(CaffeCamError, match="'m'.*at most 4 axes"):
        build("name: 'm' type: 'MVN'", [(2, 3, 2, 2, 2)])
