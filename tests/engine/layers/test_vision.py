"""Convolution and Pooling against the float64 NumPy references in tests/numpy_ref.py."""

import numpy as np
import pytest
import torch

from caffecam.engine.kernels.pool_geometry import caffe_pool_out
from caffecam.engine.prototxt import parse_text
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2
from tests import numpy_ref as ref
from tests.engine.layers.helpers import ATOL, RTOL, build, close, gradcheck_layer, rand, run, set_blobs

# ---------------------------------------------------------------- Convolution

CONV_CASES = [
    # (convolution_param text, input shape)
    ("num_output: 4 kernel_size: 3", (2, 3, 6, 5)),
    ("num_output: 4 kernel_size: 3 pad: 1 stride: 2", (2, 3, 7, 7)),
    ("num_output: 6 kernel_size: 3 pad: 2 dilation: 2 group: 2", (1, 4, 8, 7)),
    ("num_output: 4 kernel_size: 3 kernel_size: 2 pad: 1 pad: 0 stride: 2 stride: 1", (1, 2, 7, 6)),
    ("num_output: 3 kernel_h: 3 kernel_w: 1 pad_h: 0 pad_w: 2 stride_h: 2 stride_w: 3", (2, 2, 9, 8)),
    ("num_output: 4 kernel_size: 1 group: 4 bias_term: false", (1, 4, 3, 3)),
    ("num_output: 2 kernel_size: 5 pad: 2 stride: 4", (1, 3, 11, 10)),
]


def conv_geometry(text):
    """(kernel, stride, pad, dilation, group) read independently from the parameter text."""
    p = parse_text(text, caffe_pb2.ConvolutionParameter)

    def pair(rep, h, w, hasf, default):  # dilation has no _h/_w form: pass a field these cases never set
        if p.HasField(hasf):
            return (h, w)
        vals = list(rep) or [default]
        return (vals[0], vals[-1])

    return (pair(p.kernel_size, p.kernel_h, p.kernel_w, "kernel_h", None),
            pair(p.stride, p.stride_h, p.stride_w, "stride_h", 1),
            pair(p.pad, p.pad_h, p.pad_w, "pad_h", 0),
            pair(p.dilation, 0, 0, "bias_filler", 1), p.group, p.num_output, p.bias_term)


@pytest.mark.parametrize("params,shape", CONV_CASES)
def test_convolution_matches_reference(params, shape):
    kernel, stride, pad, dilation, group, m, bias_term = conv_geometry(params)
    layer = build(f"name: 'c' type: 'Convolution' convolution_param {{ {params} }}", [shape])
    n, c, h, w = shape
    wshape = (m, c // group) + kernel
    assert [tuple(b.shape) for b in layer.blobs] == [wshape] + ([(m,)] if bias_term else [])
    weight, bias = rand(*wshape, seed=1), rand(m, seed=2)
    set_blobs(layer, weight, bias)
    x = rand(*shape, seed=3)
    (y,) = run(layer, x)
    expect = ref.conv2d(x, weight, bias if bias_term else None, stride, pad, dilation, group)
    assert layer.top_shapes == [expect.shape]
    close(y, expect)


def test_convolution_output_size_formula():
    # out = floor((in + 2·pad − (dilation·(k−1)+1)) / stride) + 1: conv1/7x7_s2 on 224 gives 112.
    layer = build("name: 'conv1' type: 'Convolution' convolution_param { num_output: 2 kernel_size: 7 pad: 3 "
                  "stride: 2 }", [(1, 3, 224, 224)])
    assert layer.top_shapes == [(1, 2, 112, 112)]
    layer = build("name: 'd' type: 'Convolution' convolution_param { num_output: 1 kernel_size: 3 dilation: 3 "
                  "stride: 2 }", [(1, 1, 20, 11)])
    assert layer.top_shapes == [(1, 1, (20 - 7) // 2 + 1, (11 - 7) // 2 + 1)]


def test_convolution_fillers_applied():
    layer = build("name: 'c' type: 'Convolution' convolution_param { num_output: 8 kernel_size: 3 "
                  "weight_filler { type: 'constant' value: 0.25 } bias_filler { type: 'constant' value: 1 } }",
                  [(1, 2, 5, 5)])
    assert torch.all(layer.blobs[0] == 0.25) and torch.all(layer.blobs[1] == 1)
    plain = build("name: 'c' type: 'Convolution' convolution_param { num_output: 2 kernel_size: 1 }", [(1, 2, 5, 5)])
    assert torch.all(plain.blobs[0] == 0) and torch.all(plain.blobs[1] == 0)


@pytest.mark.parametrize("params,shape,needle", [
    ("num_output: 2 kernel_size: 5", (1, 1, 4, 4), "does not fit"),
    ("num_output: 3 kernel_size: 1 group: 2", (1, 4, 4, 4), "group"),
    ("num_output: 2", (1, 1, 4, 4), "kernel_size"),
    ("kernel_size: 3", (1, 1, 4, 4), "num_output"),
])
def test_convolution_errors_name_layer(params, shape, needle):
    with pytest.raises(CaffeCamError, match=rf"'myconv'.*{needle}"):
        build(f"name: 'myconv' type: 'Convolution' convolution_param {{ {params} }}", [shape])


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


def test_gradcheck_convolution():
    layer = build("name: 'c' type: 'Convolution' convolution_param { num_output: 2 kernel_size: 2 pad: 1 stride: 2 "
                  "dilation: 2 group: 2 weight_filler { type: 'gaussian' std: 0.5 } "
                  "bias_filler { type: 'constant' value: 0.1 } }", [(1, 2, 4, 3)])
    gradcheck_layer(layer, torch.from_numpy(rand(1, 2, 4, 3, seed=40)))


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
