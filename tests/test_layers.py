"""Every layer of caffecam.layers against the float64 NumPy references in tests/numpy_ref.py."""

import numpy as np
import pytest
import torch

from caffecam.errors import CaffeCamError
from caffecam.layers import caffe_pool_out, make_layer
from caffecam.proto import caffe_pb2
from caffecam.prototxt import parse_text
from tests import numpy_ref as ref

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
RTOL, ATOL = 1e-5, 1e-8


def build(text, shapes, phase=TEST, seed=0):
    lp = parse_text(text, caffe_pb2.LayerParameter)
    return make_layer(lp, shapes, phase, torch.Generator().manual_seed(seed)).double()


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def run(layer, *arrays):
    with torch.no_grad():
        return [t.numpy() for t in layer(*[torch.from_numpy(np.asarray(a, dtype=np.float64)) for a in arrays])]


def set_blobs(layer, *arrays):
    with torch.no_grad():
        for blob, a in zip(layer.blobs, arrays):
            blob.copy_(torch.from_numpy(a))


def close(a, b, **kw):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, **kw)


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


# ---------------------------------------------------------------- element-wise and shape layers

@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_relu(slope):
    x = rand(2, 3, 4, 5, seed=10)
    layer = build(f"name: 'r' type: 'ReLU' relu_param {{ negative_slope: {slope} }}", [x.shape])
    (y,) = run(layer, x)
    close(y, ref.relu(x, slope))


@pytest.mark.parametrize("axis_text,axis", [("", 1), ("concat_param { axis: 2 }", 2),
                                            ("concat_param { axis: -1 }", 3), ("concat_param { concat_dim: 0 }", 0)])
def test_concat(axis_text, axis):
    shapes = []
    for i in range(3):
        s = [2, 3, 4, 5]
        s[axis] = i + 1
        shapes.append(tuple(s))
    xs = [rand(*s, seed=20 + i) for i, s in enumerate(shapes)]
    layer = build(f"name: 'cat' type: 'Concat' {axis_text}", shapes)
    (y,) = run(layer, *xs)
    expect = np.concatenate(xs, axis=axis)
    assert layer.top_shapes == [expect.shape]
    close(y, expect)


def test_concat_mismatch_names_layer():
    with pytest.raises(CaffeCamError, match="'cat'"):
        build("name: 'cat' type: 'Concat'", [(1, 2, 4, 4), (1, 2, 5, 4)])


@pytest.mark.parametrize("text,shape", [
    ("num_output: 5", (3, 2, 3, 2)),
    ("num_output: 4 axis: 2", (2, 3, 6)),
    ("num_output: 3 transpose: true", (2, 7)),
    ("num_output: 3 bias_term: false axis: -1", (2, 2, 5)),
])
def test_inner_product(text, shape):
    p = parse_text(text, caffe_pb2.InnerProductParameter)
    axis = p.axis % len(shape)
    k = int(np.prod(shape[axis:]))
    layer = build(f"name: 'fc' type: 'InnerProduct' inner_product_param {{ {text} }}", [shape])
    wshape = (k, p.num_output) if p.transpose else (p.num_output, k)
    assert tuple(layer.blobs[0].shape) == wshape and len(layer.blobs) == (2 if p.bias_term else 1)
    w, b = rand(*wshape, seed=11), rand(p.num_output, seed=12)
    set_blobs(layer, w, b)
    x = rand(*shape, seed=13)
    (y,) = run(layer, x)
    expect = ref.inner_product(x, w, b if p.bias_term else None, axis, p.transpose)
    assert layer.top_shapes == [expect.shape]
    close(y, expect)


def test_dropout_train_statistics_and_test_identity():
    torch.manual_seed(0)
    x = np.full((200, 500), 2.0)
    layer = build("name: 'd' type: 'Dropout' dropout_param { dropout_ratio: 0.3 }", [x.shape], phase=TRAIN)
    (y,) = run(layer, x)
    kept = y != 0
    # Kept units are scaled by 1/(1 − p); the kept fraction is 1 − p (100000 draws: sd 0.0014).
    close(y[kept], np.full(kept.sum(), 2.0 / 0.7))
    assert abs(kept.mean() - 0.7) < 0.01
    assert abs(y.mean() - 2.0) < 0.03
    layer = build("name: 'd' type: 'Dropout' dropout_param { dropout_ratio: 0.3 }", [x.shape], phase=TEST)
    (y,) = run(layer, x)
    close(y, x)


def test_softmax():
    x = rand(2, 5, 3, 2, seed=14) * 3
    (y,) = run(build("name: 's' type: 'Softmax'", [x.shape]), x)
    close(y, ref.softmax(x, 1))
    (y,) = run(build("name: 's' type: 'Softmax' softmax_param { axis: -1 }", [x.shape]), x)
    close(y, ref.softmax(x, 3))


@pytest.mark.parametrize("loss_text,ignore,norm", [
    ("", None, "VALID"),
    ("loss_param { ignore_label: 2 }", 2, "VALID"),
    ("loss_param { ignore_label: 2 normalization: FULL }", 2, "FULL"),
    ("loss_param { ignore_label: 2 normalization: BATCH_SIZE }", 2, "BATCH_SIZE"),
    ("loss_param { ignore_label: 2 normalization: NONE }", 2, "NONE"),
    ("loss_param { ignore_label: 2 normalize: false }", 2, "BATCH_SIZE"),
    ("loss_param { ignore_label: 2 normalize: true }", 2, "VALID"),
])
def test_softmax_with_loss(loss_text, ignore, norm):
    x = rand(4, 5, seed=15) * 2
    label = np.array([2, 0, 4, 2])
    layer = build(f"name: 'loss' type: 'SoftmaxWithLoss' bottom: 'a' bottom: 'b' top: 'l' {loss_text}",
                  [x.shape, label.shape])
    (y,) = run(layer, x, label)
    assert layer.top_shapes == [()] and y.shape == ()
    close(y, ref.softmax_loss(x, label, ignore, norm))


def test_softmax_with_loss_spatial_and_prob_top():
    x = rand(2, 3, 2, 2, seed=16)
    label = np.random.default_rng(1).integers(0, 3, size=(2, 1, 2, 2))
    layer = build("name: 'loss' type: 'SoftmaxWithLoss' bottom: 'a' bottom: 'b' top: 'l' top: 'p'",
                  [x.shape, label.shape])
    loss, prob = run(layer, x, label)
    close(loss, ref.softmax_loss(x, label))
    close(prob, ref.softmax(x, 1))
    with pytest.raises(CaffeCamError, match="'loss'"):
        build("name: 'loss' type: 'SoftmaxWithLoss' bottom: 'a' bottom: 'b' top: 'l'", [(2, 3), (3,)])


def test_accuracy_top_k_ties_and_ignore():
    # Caffe (accuracy_layer.cpp/.cu): num_better = −1 + #classes scoring >= the true one; correct if < top_k.
    x = np.array([[1.0, 2.0, 2.0, 0.0],    # label 1: tied with class 2 -> wrong at top-1, correct at top-2
                  [1.0, 2.0, 2.0, 0.0],    # label 0: two higher -> correct only at top-3
                  [0.5, 0.1, 0.2, 0.9],    # label 3: correct
                  [0.5, 0.5, 0.5, 0.5],    # label 2: all tied -> wrong even at top-3
                  [3.0, 1.0, 2.0, 0.0]])   # label 3: three higher -> wrong even at top-3
    label = np.array([1, 0, 3, 2, 3])
    for k, expect in ((1, 1 / 5), (2, 2 / 5), (3, 3 / 5), (4, 1.0)):
        layer = build(f"name: 'acc' type: 'Accuracy' accuracy_param {{ top_k: {k} }}", [x.shape, label.shape])
        (y,) = run(layer, x, label)
        close(y, expect)
        close(y, ref.accuracy(x, label, k))
    layer = build("name: 'acc' type: 'Accuracy' accuracy_param { top_k: 1 ignore_label: 0 }", [x.shape, label.shape])
    (y,) = run(layer, x, label)
    close(y, 1 / 4)
    xr, lr = rand(30, 6, seed=17), np.random.default_rng(2).integers(0, 6, 30)
    for k in (1, 2, 5):
        (y,) = run(build(f"name: 'acc' type: 'Accuracy' accuracy_param {{ top_k: {k} }}", [xr.shape, lr.shape]), xr, lr)
        close(y, ref.accuracy(xr, lr, k))
    with pytest.raises(CaffeCamError, match="'acc'"):
        build("name: 'acc' type: 'Accuracy' accuracy_param { top_k: 5 }", [(2, 4), (2,)])


def test_flatten():
    x = rand(2, 3, 4, 5, seed=18)
    layer = build("name: 'f' type: 'Flatten'", [x.shape])
    (y,) = run(layer, x)
    assert layer.top_shapes == [(2, 60)]
    close(y, x.reshape(2, 60))
    layer = build("name: 'f' type: 'Flatten' flatten_param { axis: 1 end_axis: 2 }", [x.shape])
    (y,) = run(layer, x)
    assert layer.top_shapes == [(2, 12, 5)]
    close(y, x.reshape(2, 12, 5))


@pytest.mark.parametrize("text,op,coeff", [
    ("", "SUM", None),
    ("eltwise_param { operation: SUM coeff: 0.5 coeff: -2 coeff: 3 }", "SUM", [0.5, -2, 3]),
    ("eltwise_param { operation: PROD }", "PROD", None),
    ("eltwise_param { operation: MAX }", "MAX", None),
])
def test_eltwise(text, op, coeff):
    xs = [rand(2, 3, 4, seed=30 + i) for i in range(3)]
    layer = build(f"name: 'e' type: 'Eltwise' {text}", [x.shape for x in xs])
    (y,) = run(layer, *xs)
    close(y, ref.eltwise(xs, op, coeff))


def test_eltwise_errors():
    with pytest.raises(CaffeCamError, match="'e'"):
        build("name: 'e' type: 'Eltwise' eltwise_param { operation: PROD coeff: 1 coeff: 2 }", [(2,), (2,)])
    with pytest.raises(CaffeCamError, match="'e'"):
        build("name: 'e' type: 'Eltwise'", [(2, 3), (3, 2)])


def test_split():
    x = rand(2, 3, seed=19)
    layer = build("name: 's' type: 'Split' bottom: 'x' top: 'a' top: 'b' top: 'c'", [x.shape])
    ys = run(layer, x)
    assert layer.top_shapes == [(2, 3)] * 3 and len(ys) == 3
    for y in ys:
        close(y, x)


def test_unknown_type_names_layer():
    with pytest.raises(CaffeCamError, match="'weird'.*'Frobnicate'"):
        make_layer(parse_text("name: 'weird' type: 'Frobnicate'", caffe_pb2.LayerParameter), [(1,)], TEST)


# ---------------------------------------------------------------- gradients (float64 gradcheck, tiny inputs)

def _gradcheck_layer(layer, x, with_params=True):
    names = [f"blobs.{i}" for i in range(len(layer.blobs))] if with_params else []
    params = [layer.blobs[i].detach().clone().requires_grad_(True) for i in range(len(names))]

    def f(inp, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (inp,))[0]

    assert torch.autograd.gradcheck(f, (x.requires_grad_(True), *params), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradcheck_convolution():
    layer = build("name: 'c' type: 'Convolution' convolution_param { num_output: 2 kernel_size: 2 pad: 1 stride: 2 "
                  "dilation: 2 group: 2 weight_filler { type: 'gaussian' std: 0.5 } "
                  "bias_filler { type: 'constant' value: 0.1 } }", [(1, 2, 4, 3)])
    _gradcheck_layer(layer, torch.from_numpy(rand(1, 2, 4, 3, seed=40)))


@pytest.mark.parametrize("params,shape", [
    ("pool: MAX kernel_size: 3 stride: 2 pad: 1", (1, 2, 5, 5)),
    ("pool: MAX kernel_size: 3 stride: 1 pad: 2", (1, 1, 4, 4)),
    ("pool: AVE kernel_size: 3 stride: 2 pad: 1", (1, 2, 5, 5)),
    ("pool: AVE kernel_size: 3 stride: 1 pad: 2", (1, 1, 4, 4)),
    ("pool: AVE kernel_size: 3 stride: 2 round_mode: FLOOR", (1, 1, 6, 6)),
])
def test_gradcheck_pooling(params, shape):
    layer = build(f"name: 'p' type: 'Pooling' pooling_param {{ {params} }}", [shape])
    _gradcheck_layer(layer, torch.from_numpy(rand(*shape, seed=41)), with_params=False)


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_gradcheck_lrn(region):
    layer = build(f"name: 'n' type: 'LRN' lrn_param {{ local_size: 3 alpha: 0.5 beta: 0.75 norm_region: {region} }}",
                  [(1, 4, 3, 3)])
    _gradcheck_layer(layer, torch.from_numpy(rand(1, 4, 3, 3, seed=42)), with_params=False)


@pytest.mark.parametrize("kind", ["SoftmaxWithLoss", "Accuracy"])
def test_out_of_range_label_is_an_error(kind):
    layer = build(f"name: 'lab' type: '{kind}' bottom: 'a' bottom: 'b' top: 'l'", [(2, 3), (2,)])
    for bad in (5, -1):
        with pytest.raises(CaffeCamError, match=rf"'lab'.*label {bad}.*3 classes"):
            run(layer, rand(2, 3, seed=50), np.array([0, bad]))
    ignoring = build(f"name: 'lab' type: '{kind}' bottom: 'a' bottom: 'b' top: 'l' "
                     + ("loss_param" if kind == "SoftmaxWithLoss" else "accuracy_param") + " { ignore_label: -1 }",
                     [(2, 3), (2,)])
    (y,) = run(ignoring, rand(2, 3, seed=50), np.array([0, -1]))  # an ignored label may be out of range
    assert np.isfinite(y)


@pytest.mark.parametrize("text", [
    "type: 'Convolution' convolution_param { num_output: 2 kernel_h: 3 }",
    "type: 'Convolution' convolution_param { num_output: 2 kernel_size: 3 stride_w: 2 }",
    "type: 'Pooling' pooling_param { kernel_size: 3 stride_w: 2 }",
    "type: 'Pooling' pooling_param { kernel_size: 3 pad_h: 1 }",
])
def test_lone_h_or_w_field_is_an_error(text):
    with pytest.raises(CaffeCamError, match=r"'hw'.*_h and .*_w"):
        build(f"name: 'hw' {text}", [(1, 1, 7, 7)])


def test_softmax_loss_clamps_at_flt_min_like_caffe():
    # The true class 200 below the best: p ≈ e^−200 < FLT_MIN, so Caffe's loss is −log(FLT_MIN) = 87.3365.
    x = np.array([[200.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    label = np.array([1, 2])
    layer = build("name: 'loss' type: 'SoftmaxWithLoss' bottom: 'a' bottom: 'b' top: 'l' "
                  "loss_param { normalization: NONE }", [x.shape, label.shape])
    (y,) = run(layer, x, label)
    close(y, ref.softmax_loss(x, label, normalization="NONE"))
    close(y, -np.log(np.finfo(np.float32).tiny) - np.log(ref.softmax(x[1:])[0, 2]))
    # The gradient is Caffe's (p − onehot), not cut by the clamp.
    xt = torch.from_numpy(x).requires_grad_(True)
    layer(xt, torch.from_numpy(label))[0].backward()
    onehot = np.eye(3)[label]
    close(xt.grad.numpy(), ref.softmax(x) - onehot)


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


@pytest.mark.parametrize("text,what", [
    ("type: 'Convolution' convolution_param { num_output: 2 kernel_size: 3 stride: 0 }", "stride"),
    ("type: 'Convolution' convolution_param { num_output: 2 kernel_size: 0 }", "kernel"),
    ("type: 'Convolution' convolution_param { num_output: 2 kernel_size: 3 dilation: 0 }", "dilation"),
    ("type: 'Convolution' convolution_param { num_output: 2 kernel_size: 3 group: 0 }", "group"),
    ("type: 'Pooling' pooling_param { kernel_size: 3 stride: 0 }", "stride"),
    ("type: 'Pooling' pooling_param { kernel_h: 0 kernel_w: 2 }", "kernel"),
    ("type: 'Dropout' dropout_param { dropout_ratio: 1.5 }", "dropout_ratio"),
    ("type: 'Dropout' dropout_param { dropout_ratio: 1 }", "dropout_ratio"),
])
def test_zero_sizes_and_bad_dropout_ratio_are_errors(text, what):
    # Caffe rejects these at set-up; unchecked they were a ZeroDivisionError or a torch error mid-training.
    with pytest.raises(CaffeCamError, match=rf"'z'.*{what}"):
        build(f"name: 'z' {text}", [(1, 2, 7, 7)], phase=TRAIN)


@pytest.mark.parametrize("text,needle", [
    ("type: 'Pooling' pooling_param { kernel_size: 3 pad: 1 pad_h: 2 pad_w: 2 }", "pad or pad_h"),
    ("type: 'Pooling' pooling_param { kernel_size: 3 stride: 1 stride_h: 2 stride_w: 2 }", "stride or stride_h"),
    ("type: 'Pooling' pooling_param { global_pooling: true kernel_size: 3 }", "kernel_size"),
    ("type: 'Pooling' pooling_param { global_pooling: true stride: 2 }", "stride 1"),
    ("type: 'Pooling' pooling_param { global_pooling: true pad: 1 }", "pad 0"),
    ("type: 'Concat' bottom: 'a' bottom: 'b' concat_param { axis: 1 concat_dim: 2 }", "axis or concat_dim"),
])
def test_conflicting_fields_are_errors_as_in_caffe(text, needle):
    # Caffe rejects these; one value used to win silently (pad_h over pad, axis over concat_dim, the input size over
    # a global pool's kernel_size or stride).
    with pytest.raises(CaffeCamError, match=rf"'cf'.*{needle}"):
        build(f"name: 'cf' {text}", [(1, 2, 7, 7), (1, 2, 7, 7)] if "Concat" in text else [(1, 2, 7, 7)])


def test_lrn_needs_a_4d_bottom():
    # Caffe: "Input must have 4 axes"; a 2-D bottom used to fail inside conv2d at the first forward.
    with pytest.raises(CaffeCamError, match=r"'n'.*N×C×H×W"):
        build("name: 'n' type: 'LRN'", [(2, 6)])


@pytest.mark.parametrize("text,shapes,needle", [
    # Caffe: "Number of labels must match number of predictions"; a mismatch was a broadcasting error mid-run.
    ("type: 'Accuracy' bottom: 'a' bottom: 'b' top: 'l'", [(2, 3, 7, 7), (2,)], "label count 2"),
    # Caffe's count(start, end) aborts when end comes first; torch's flatten raised at the first forward.
    ("type: 'Flatten' flatten_param { axis: 3 end_axis: 1 }", [(2, 3, 7, 7)], "end_axis 1 comes before axis 3"),
])
def test_mismatched_set_up_is_an_error(text, shapes, needle):
    with pytest.raises(CaffeCamError, match=rf"'m'.*{needle}"):
        build(f"name: 'm' {text}", shapes)
