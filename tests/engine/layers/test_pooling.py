"""Pooling (MAX, AVE, STOCHASTIC) and SPP against the float64 NumPy references in tests/numpy_ref.py."""

import numpy as np
import pytest
import torch

from caffecam.engine.kernels.pool_geometry import caffe_pool_out
from caffecam.errors import CaffeCamError
from tests import numpy_ref as ref
from tests.engine.layers.helpers import ATOL, RTOL, TRAIN, build, close, gradcheck_layer, rand, run

# ---------------------------------------------------------------- Pooling

POOL_CASES = [
    # (pooling_param text without `pool`, input shape, kernel, stride, pad, ceil)
    ("kernel_size: 3 stride: 2 pad: 1", (2, 3, 7, 7), (3, 3), (2, 2), (1, 1), True),
    ("kernel_size: 3 stride: 2", (1, 2, 6, 6), (3, 3), (2, 2), (0, 0), True),
    ("kernel_size: 3 stride: 2", (1, 2, 112, 112), (3, 3), (2, 2), (0, 0), True),
    ("kernel_size: 3 stride: 1 pad: 1", (1, 2, 5, 6), (3, 3), (1, 1), (1, 1), True),
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 1", (1, 2, 5, 7), (3, 2), (2, 3), (1, 1), True),
    ("kernel_h: 2 kernel_w: 4 stride: 2", (2, 1, 5, 7), (2, 4), (2, 2), (0, 0), True),
    ("kernel_size: 3 stride: 2 round_mode: FLOOR", (1, 2, 6, 6), (3, 3), (2, 2), (0, 0), False),
    ("kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR", (1, 2, 8, 7), (3, 3), (2, 2), (1, 1), False),
    ("kernel_size: 3 stride: 1 pad: 2", (1, 2, 5, 5), (3, 3), (1, 1), (2, 2), True),  # pad > k/2: explicit path
    ("kernel_size: 2 stride: 3 pad: 1", (1, 2, 7, 8), (2, 2), (3, 3), (1, 1), True),  # k < s with pad
    ("kernel_size: 4 stride: 3 pad: 2", (1, 1, 10, 9), (4, 4), (3, 3), (2, 2), True),
    ("kernel_size: 1 stride: 2", (1, 1, 5, 5), (1, 1), (2, 2), (0, 0), True),  # k < s, sizes agree with PyTorch
    # pad_h only: Caffe's last-window clip (`if (pad_h_ || pad_w_)`) also trims the unpadded width 3 -> 2.
    ("kernel_h: 3 kernel_w: 1 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 0", (1, 2, 5, 6), (3, 1), (2, 3), (1, 0), True),
    ("kernel_h: 2 kernel_w: 2 stride_h: 3 stride_w: 3 pad_h: 0 pad_w: 1", (1, 2, 6, 5), (2, 2), (3, 3), (0, 1), True),
]


@pytest.mark.parametrize("mode", ["MAX", "AVE"])
@pytest.mark.parametrize("params,shape,kernel,stride,pad,ceil", POOL_CASES)
def test_pooling_matches_reference(mode, params, shape, kernel, stride, pad, ceil):
    layer = build(f"name: 'p' type: 'Pooling' pooling_param {{ pool: {mode} {params} }}", [shape])
    x = rand(*shape, seed=4)
    (y,) = run(layer, x)
    expect = ref.pool2d(x, kernel, stride, pad, mode, ceil)
    assert layer.top_shapes == [expect.shape]
    assert y.shape == expect.shape
    close(y, expect)


@pytest.mark.parametrize("mode", ["MAX", "AVE"])
def test_pooling_kernel_smaller_than_stride_where_pytorch_differs(mode):
    # 6 wide, kernel 1 (or 2), stride 3, no pad: Caffe's ceil gives 3 outputs, PyTorch's ceil_mode gives 2 because
    # the third window starts at the edge. Caffe keeps it: an empty window (MAX: −FLT_MAX, AVE: 0/0).
    for k in (1, 2):
        shape = (1, 2, 6, 7)
        layer = build(f"name: 'p' type: 'Pooling' pooling_param {{ pool: {mode} kernel_size: {k} stride: 3 }}",
                      [shape])
        assert layer.top_shapes == [(1, 2, 3, 3)]
        x = rand(*shape, seed=5)
        (y,) = run(layer, x)
        expect = ref.pool2d(x, (k, k), (3, 3), (0, 0), mode)
        assert y.shape == expect.shape == (1, 2, 3, 3)
        close(y[:, :, :2, :], expect[:, :, :2, :])
        if mode == "MAX":
            close(y, expect)
        else:
            assert np.isnan(y[:, :, 2, :]).all()


def test_pooling_global():
    x = rand(2, 3, 5, 7, seed=6)
    for mode, fn in (("MAX", np.max), ("AVE", np.mean)):
        layer = build(f"name: 'g' type: 'Pooling' pooling_param {{ pool: {mode} global_pooling: true }}",
                      [x.shape])
        assert layer.top_shapes == [(2, 3, 1, 1)]
        (y,) = run(layer, x)
        close(y, fn(x, axis=(2, 3), keepdims=True))
        # Another input size (a fully convolutional net fed a bigger image): the kernel follows it, as in Caffe.
        x2 = rand(2, 3, 9, 4, seed=7)
        (y2,) = run(layer, x2)
        close(y2, fn(x2, axis=(2, 3), keepdims=True))


@pytest.mark.parametrize("param", ["global_pooling: true", "kernel_h: 6 kernel_w: 5 stride: 6",
                                   "kernel_h: 6 kernel_w: 5"])
def test_whole_input_average_gradient_is_dy_over_the_area(param):
    """An AVE window over the whole input (global pooling, CAM_pool's 14/14): every cell's gradient is dy / (H·W),
    float32 division (Caffe's top_diff / pool_size); the same floats as PyTorch's avg_pool2d backward gives, in
    channels_last and contiguous memory."""
    x = torch.from_numpy(rand(3, 4, 6, 5, seed=8).astype(np.float32))
    dy = torch.from_numpy(rand(3, 4, 1, 1, seed=9).astype(np.float32))
    layer = build(f"name: 'g' type: 'Pooling' pooling_param {{ pool: AVE {param} }}", [tuple(x.shape)])
    for xx in (x, x.contiguous(memory_format=torch.channels_last)):
        xx = xx.clone().requires_grad_()
        (y,) = layer(xx)
        assert type(y.grad_fn).__name__ == "_WholeMeanBackward"
        y.backward(dy)
        expect = np.broadcast_to(dy.numpy() / np.float32(30), (3, 4, 6, 5))
        np.testing.assert_array_equal(xx.grad.numpy(), expect)
        yy = torch.nn.functional.avg_pool2d(xx.detach().requires_grad_(), (6, 5))
        yy.backward(dy)
        assert torch.equal(y, yy)


def test_pooling_never_picks_padding():
    x = -np.abs(rand(1, 1, 5, 5, seed=7)) - 1.0  # all negative: a padded zero would win a MAX
    layer = build("name: 'p' type: 'Pooling' pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }", [x.shape])
    (y,) = run(layer, x)
    assert (y < 0).all()
    close(y, ref.pool2d(x, (3, 3), (2, 2), (1, 1)))


def test_caffe_pool_out_sweep_and_googlenet_sizes():
    for size in range(1, 16):
        for k in range(1, 6):
            for s in range(1, 5):
                for p in range(0, k):
                    if size + 2 * p < k:
                        continue
                    for ceil in (True, False):
                        assert caffe_pool_out(size, k, s, p, ceil) == ref.pool_out(size, k, s, p, ceil)
    # GoogLeNet at 224: pool1 112 -> 56, pool2 56 -> 28, pool3 28 -> 14, CAM_pool 14 -> 1.
    assert [caffe_pool_out(n, 3, 2, 0) for n in (112, 56, 28)] == [56, 28, 14]
    assert caffe_pool_out(14, 14, 14, 0) == 1
    # Width 6, kernel 1, stride 3, pad 0: 3 windows alone, 2 in a layer padded along the other dimension.
    assert caffe_pool_out(6, 1, 3, 0) == 3 and caffe_pool_out(6, 1, 3, 0, padded=True) == 2


def test_pooling_pad_not_below_kernel_is_an_error():
    with pytest.raises(CaffeCamError, match="'pp'"):
        build("name: 'pp' type: 'Pooling' pooling_param { kernel_size: 2 pad: 2 }", [(1, 1, 5, 5)])


@pytest.mark.parametrize("params,shape", [
    ("pool: MAX kernel_size: 3 stride: 2 pad: 1", (1, 2, 5, 5)),
    ("pool: MAX kernel_size: 3 stride: 1 pad: 2", (1, 1, 4, 4)),
    ("pool: AVE kernel_size: 3 stride: 2 pad: 1", (1, 2, 5, 5)),
    ("pool: AVE kernel_size: 3 stride: 1 pad: 2", (1, 1, 4, 4)),
    ("pool: AVE kernel_size: 3 stride: 2 round_mode: FLOOR", (1, 1, 6, 6)),
])
def test_gradcheck_pooling(params, shape):
    layer = build(f"name: 'p' type: 'Pooling' pooling_param {{ {params} }}", [shape])
    gradcheck_layer(layer, torch.from_numpy(rand(*shape, seed=41)), with_params=False)


def test_pooling_random_geometries_match_reference():
    # 200 seeded random geometries: rectangular kernels, per-dimension stride/pad, CEIL and FLOOR, both modes.
    rng = np.random.default_rng(123)
    checked = 0
    while checked < 200:
        h, w, kh, kw, sh, sw = (int(v) for v in rng.integers(1, [10, 10, 6, 6, 5, 5]))
        ph, pw = int(rng.integers(0, kh)), int(rng.integers(0, kw))
        if h + 2 * ph < kh or w + 2 * pw < kw:
            continue
        mode, ceil = ("MAX", "AVE")[checked % 2], bool(rng.random() < 0.7)
        layer = build(f"name: 'p' type: 'Pooling' pooling_param {{ pool: {mode} kernel_h: {kh} kernel_w: {kw} "
                      f"stride_h: {sh} stride_w: {sw} pad_h: {ph} pad_w: {pw} "
                      f"round_mode: {'CEIL' if ceil else 'FLOOR'} }}", [(1, 2, h, w)])
        x = rng.standard_normal((1, 2, h, w))
        (y,) = run(layer, x)
        expect = ref.pool2d(x, (kh, kw), (sh, sw), (ph, pw), mode, ceil)
        assert layer.top_shapes == [expect.shape] and y.shape == expect.shape, (kh, kw, sh, sw, ph, pw, h, w)
        np.testing.assert_allclose(y, expect, rtol=RTOL, atol=ATOL, equal_nan=True)
        checked += 1


# ---------------------------------------------------------------- STOCHASTIC (pooling_layer.cu; GPU-only in Caffe)

STOCHASTIC_CASES = [
    ("kernel_size: 3 stride: 2", (2, 3, 7, 6), (3, 3), (2, 2)),
    ("kernel_size: 2 stride: 2", (1, 2, 5, 5), (2, 2), (2, 2)),  # CEIL: the last window is clipped to one row/column
    ("kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 3", (1, 2, 4, 7), (3, 2), (1, 3)),
]


@pytest.mark.parametrize("params,shape,kernel,stride", STOCHASTIC_CASES)
def test_stochastic_pooling_test_phase_is_the_probability_weighted_mean(params, shape, kernel, stride):
    x = np.abs(rand(*shape, seed=70))
    x[0, 0, :3, :3] = 0  # a window summing to 0 gives 0
    layer = build(f"name: 'p' type: 'Pooling' pooling_param {{ pool: STOCHASTIC {params} }}", [shape])
    (y,) = run(layer, x)
    expect = ref.stochastic_pool_test(x, kernel, stride)
    assert layer.top_shapes == [expect.shape]
    close(y, expect)


@pytest.mark.parametrize("params,shape,kernel,stride", STOCHASTIC_CASES)
def test_stochastic_pooling_train_picks_a_window_cell_and_routes_its_gradient(params, shape, kernel, stride):
    torch.manual_seed(1)
    x = np.abs(rand(*shape, seed=71)) + 0.01
    layer = build(f"name: 'p' type: 'Pooling' pooling_param {{ pool: STOCHASTIC {params} }}", [shape], phase=TRAIN)
    xt = torch.from_numpy(x).requires_grad_(True)
    (y,) = layer(xt)
    dy = rand(*y.shape, seed=72)
    y.backward(torch.from_numpy(dy))
    (kh, kw), (sh, sw) = kernel, stride
    expect_grad = np.zeros(shape)
    for n, c, i, j in np.ndindex(*y.shape):
        win = x[n, c, i * sh:i * sh + kh, j * sw:j * sw + kw]
        hits = np.argwhere(win == y[n, c, i, j].item())
        assert len(hits) == 1  # the top is one of the window's own values
        r, s = hits[0]
        expect_grad[n, c, i * sh + r, j * sw + s] += dy[n, c, i, j]
    close(xt.grad.numpy(), expect_grad)


def test_stochastic_pooling_samples_in_proportion_to_the_values():
    # One 2×2 window with values 1, 2, 3, 4: each is picked with probability v / 10 (40000 draws: sd ≤ 0.0025).
    torch.manual_seed(2)
    x = np.tile(np.array([[1.0, 2.0], [3.0, 4.0]]), (1, 40000, 1, 1))
    layer = build("name: 'p' type: 'Pooling' pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }",
                  [x.shape], phase=TRAIN)
    (y,) = run(layer, x)
    freq = [(y == v).mean() for v in (1.0, 2.0, 3.0, 4.0)]
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.012)


def test_stochastic_pooling_with_pad_is_an_error():
    # pooling_layer.cpp: "Padding implemented only for average and max pooling."
    with pytest.raises(CaffeCamError, match="'sp'.*only for MAX and AVE"):
        build("name: 'sp' type: 'Pooling' pooling_param { pool: STOCHASTIC kernel_size: 3 pad: 1 }", [(1, 1, 5, 5)])


def test_stochastic_global_pooling():
    x = np.abs(rand(2, 3, 4, 5, seed=73))
    layer = build("name: 'g' type: 'Pooling' pooling_param { pool: STOCHASTIC global_pooling: true }", [x.shape])
    (y,) = run(layer, x)
    close(y, ((x ** 2).sum(axis=(2, 3)) / x.sum(axis=(2, 3)))[:, :, None, None])


# ---------------------------------------------------------------- SPP

@pytest.mark.parametrize("height,mode,shape", [
    (3, "MAX", (2, 3, 9, 7)), (2, "AVE", (2, 2, 5, 6)), (1, "MAX", (1, 3, 4, 5)), (3, "AVE", (1, 2, 13, 8)),
    (2, "MAX", (1, 1, 2, 3)),
])
def test_spp_matches_reference(height, mode, shape):
    layer = build(f"name: 's' type: 'SPP' spp_param {{ pyramid_height: {height} pool: {mode} }}", [shape])
    x = rand(*shape, seed=74)
    (y,) = run(layer, x)
    expect = ref.spp(x, height, mode)
    assert layer.top_shapes == [expect.shape]
    close(y, expect)
    # Another input size: the pyramid follows it (Caffe's Reshape recomputes every level).
    x2 = rand(shape[0], shape[1], shape[2] + 3, shape[3] + 1, seed=75)
    close(run(layer, x2)[0], ref.spp(x2, height, mode))


def test_spp_sizes_and_errors():
    # Levels of 1, 4 and 16 bins per channel: 3 channels give 3·21 = 63 features.
    assert build("name: 's' type: 'SPP' spp_param { pyramid_height: 3 }", [(2, 3, 9, 7)]).top_shapes == [(2, 63)]
    # A 1-pixel-high input at level 1 (2 bins): kernel 1, pad (1 + 1) // 2 = 1 ≥ kernel, which Caffe's pooling rejects.
    with pytest.raises(CaffeCamError, match="'sp'.*pyramid level 1: pad"):
        build("name: 'sp' type: 'SPP' spp_param { pyramid_height: 3 }", [(1, 1, 1, 8)])


def test_gradcheck_spp():
    layer = build("name: 's' type: 'SPP' spp_param { pyramid_height: 2 pool: AVE }", [(1, 2, 5, 3)])
    gradcheck_layer(layer, torch.from_numpy(rand(1, 2, 5, 3, seed=76)), with_params=False)


def test_max_mask_of_a_window_past_the_edge_is_minus_one():
    # kernel 2, stride 3 on a width of 6, rounding up: windows start at 0, 3 and 6; the last covers columns 6-7, past
    # the edge: Caffe leaves its value at −FLT_MAX and its mask at −1. Rows the same.
    layer = build("name: 'p' type: 'Pooling' top: 'v' top: 'm' pooling_param { pool: MAX kernel_size: 2 stride: 3 }",
                  [(1, 1, 6, 6)])
    x = np.arange(36, dtype=np.float64).reshape(1, 1, 6, 6)
    value, mask = run(layer, x)
    assert value.shape == mask.shape == (1, 1, 3, 3) and mask.dtype == np.float32
    # window (i, j) starts at (3i, 3j): its maximum is its bottom-right cell, (3i + 1)·6 + 3j + 1
    expected = np.array([[(3 * i + 1) * 6 + 3 * j + 1 for j in range(2)] + [-1] for i in range(2)] + [[-1] * 3])
    np.testing.assert_array_equal(mask[0, 0], expected)
    np.testing.assert_array_equal(value[0, 0][:2, :2], expected[:2, :2])
    assert value[0, 0, 2, 2] == -np.finfo(np.float32).max


def test_mask_top_only_for_max():
    with pytest.raises(CaffeCamError, match=r"2 tops: AVE pooling has one$"):
        build("name: 'p' type: 'Pooling' top: 'v' top: 'm' pooling_param { pool: AVE kernel_size: 2 }", [(1, 1, 4, 4)])
    with pytest.raises(CaffeCamError, match="3 tops: MAX pooling has one .or two"):
        build("name: 'p' type: 'Pooling' top: 'a' top: 'b' top: 'c' pooling_param { pool: MAX kernel_size: 2 }",
              [(1, 1, 4, 4)])
