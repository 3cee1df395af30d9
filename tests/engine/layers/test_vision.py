"""Convolution and Pooling against the float64 NumPy references in tests/numpy_ref.py."""

import numpy as np
import pytest
import torch

from caffecam.engine.prototxt import parse_text
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2
from tests import numpy_ref as ref
from tests.engine.layers.helpers import build, close, gradcheck_layer, rand, run, set_blobs

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


def test_gradcheck_convolution():
    layer = build("name: 'c' type: 'Convolution' convolution_param { num_output: 2 kernel_size: 2 pad: 1 stride: 2 "
                  "dilation: 2 group: 2 weight_filler { type: 'gaussian' std: 0.5 } "
                  "bias_filler { type: 'constant' value: 0.1 } }", [(1, 2, 4, 3)])
    gradcheck_layer(layer, torch.from_numpy(rand(1, 2, 4, 3, seed=40)))


# ---------------------------------------------------------------- N-D and axis (base_conv_layer.cpp's geometry)

ND_CASES = [
    # (convolution_param text, input shape, kernel, stride, pad, dilation, group)
    ("num_output: 3 kernel_size: 3 pad: 1 stride: 2", (2, 2, 9), (3,), (2,), (1,), (1,), 1),
    ("num_output: 4 kernel_size: 2 dilation: 2 group: 2", (1, 2, 7), (2,), (1,), (0,), (2,), 2),
    ("num_output: 2 kernel_size: 2 kernel_size: 3 kernel_size: 1 stride: 1 stride: 2 stride: 1 pad: 1",
     (1, 2, 4, 5, 3), (2, 3, 1), (1, 2, 1), (1, 1, 1), (1, 1, 1), 1),
]


@pytest.mark.parametrize("params,shape,kernel,stride,pad,dilation,group", ND_CASES)
def test_convolution_1d_and_3d(params, shape, kernel, stride, pad, dilation, group):
    layer = build(f"name: 'c' type: 'Convolution' convolution_param {{ {params} }}", [shape])
    m = layer.top_shapes[0][1]
    weight, bias = rand(m, shape[1] // group, *kernel, seed=50), rand(m, seed=51)
    assert tuple(layer.blobs[0].shape) == weight.shape
    set_blobs(layer, weight, bias)
    x = rand(*shape, seed=52)
    (y,) = run(layer, x)
    expect = ref.conv_nd(x, weight, bias, stride, pad, dilation, group)
    assert layer.top_shapes == [expect.shape]
    close(y, expect)


def test_convolution_axis_2_flattens_leading_axes():
    # axis 2 of a 5-D bottom: channels are axis 2, axes 0 and 1 both index images (Caffe's num_ = count(0, axis)).
    x = rand(2, 3, 4, 5, 6, seed=53)
    layer = build("name: 'c' type: 'Convolution' convolution_param { num_output: 2 kernel_size: 3 axis: 2 }",
                  [x.shape])
    weight, bias = rand(2, 4, 3, 3, seed=54), rand(2, seed=55)
    set_blobs(layer, weight, bias)
    (y,) = run(layer, x)
    expect = ref.conv2d(x.reshape(6, 4, 5, 6), weight, bias).reshape(2, 3, 2, 3, 4)
    assert layer.top_shapes == [expect.shape]
    close(y, expect)


def test_convolution_lone_pad_h_is_pad_w_0_as_in_caffe():
    layer = build("name: 'c' type: 'Convolution' convolution_param { num_output: 1 kernel_size: 3 pad_h: 1 }",
                  [(1, 1, 5, 5)])
    assert layer.pad == (1, 0) and layer.top_shapes == [(1, 1, 5, 3)]


@pytest.mark.parametrize("type_,params,shape,needle", [
    ("Convolution", "num_output: 1 kernel_size: 1", (1, 1, 2, 2, 2, 2), "4 spatial axes"),
    ("Convolution", "num_output: 1 kernel_size: 1 axis: 3", (1, 1, 2, 2), "0 spatial axes"),
    ("Convolution", "num_output: 1 kernel_h: 1 kernel_w: 1", (1, 1, 2), "2-D convolution only"),
    ("Convolution", "num_output: 1 kernel_size: 1 kernel_size: 1", (1, 1, 2, 2, 2), "one per spatial axis"),
    ("Convolution", "num_output: 1 kernel_size: 1 axis: 5", (1, 1, 2, 2), "axis 5"),
    ("Deconvolution", "num_output: 1 kernel_size: 1 pad: 1", (1, 1, 2, 2), "empty"),
    ("Im2col", "kernel_size: 1", (1, 1, 2, 2, 2), "1 to 2"),
])
def test_geometry_errors_are_one_line(type_, params, shape, needle):
    with pytest.raises(CaffeCamError, match=rf"'g' \({type_}\).*{needle}"):
        build(f"name: 'g' type: '{type_}' convolution_param {{ {params} }}", [shape])


# ---------------------------------------------------------------- Deconvolution

DECONV_CASES = [
    # (convolution_param text, input shape, kernel, stride, pad, dilation, group)
    ("num_output: 3 kernel_size: 3 stride: 2 pad: 1", (2, 2, 4, 3), (3, 3), (2, 2), (1, 1), (1, 1), 1),
    ("num_output: 2 kernel_size: 4 stride: 2 pad: 1 bias_term: false", (1, 3, 3, 3), (4, 4), (2, 2), (1, 1),
     (1, 1), 1),
    ("num_output: 4 kernel_size: 3 group: 2", (1, 4, 3, 2), (3, 3), (1, 1), (0, 0), (1, 1), 2),
    ("num_output: 2 kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 3 pad_h: 1 pad_w: 0 dilation: 2", (1, 2, 4, 3),
     (3, 2), (1, 3), (1, 0), (2, 2), 1),
    ("num_output: 2 kernel_size: 3 stride: 2", (1, 2, 5), (3,), (2,), (0,), (1,), 1),
]


@pytest.mark.parametrize("params,shape,kernel,stride,pad,dilation,group", DECONV_CASES)
def test_deconvolution_matches_reference(params, shape, kernel, stride, pad, dilation, group):
    layer = build(f"name: 'd' type: 'Deconvolution' convolution_param {{ {params} }}", [shape])
    m, c = layer.top_shapes[0][1], shape[1]
    # Caffe's weight shape is (C_in, num_output / group, k…) and its output size s·(in − 1) + d·(k − 1) + 1 − 2·pad.
    assert tuple(layer.blobs[0].shape) == (c, m // group) + kernel
    assert layer.top_shapes[0][2:] == tuple(s * (n - 1) + d * (k - 1) + 1 - 2 * p
                                            for s, n, d, k, p in zip(stride, shape[2:], dilation, kernel, pad))
    weight, bias = rand(c, m // group, *kernel, seed=56), rand(m, seed=57)
    set_blobs(layer, weight, bias)
    x = rand(*shape, seed=58)
    (y,) = run(layer, x)
    expect = ref.deconv_nd(x, weight, bias if "bias_term: false" not in params else None, stride, pad, dilation,
                           group)
    assert layer.top_shapes == [expect.shape]
    close(y, expect)


def test_deconvolution_is_the_adjoint_of_convolution():
    # <conv(x), y> = <x, deconv(y)> with the same weight and geometry: an independent check of the reference too.
    geometry = "num_output: 3 kernel_size: 3 stride: 2 pad: 1 group: 1 bias_term: false"
    conv = build(f"name: 'c' type: 'Convolution' convolution_param {{ {geometry} }}", [(1, 2, 7, 7)])
    deconv = build(f"name: 'd' type: 'Deconvolution' convolution_param {{ {geometry.replace('3 k', '2 k')} }}",
                   [(1, 3, 4, 4)])
    weight = rand(3, 2, 3, 3, seed=59)
    set_blobs(conv, weight)
    set_blobs(deconv, weight)
    x, y = rand(1, 2, 7, 7, seed=60), rand(1, 3, 4, 4, seed=61)
    (cx,) = run(conv, x)
    (dy,) = run(deconv, y)
    assert dy.shape == x.shape
    close(np.sum(cx * y), np.sum(x * dy))
    close(dy, ref.deconv_nd(y, weight, None, (2, 2), (1, 1)))


def test_gradcheck_deconvolution():
    layer = build("name: 'd' type: 'Deconvolution' convolution_param { num_output: 4 kernel_size: 3 stride: 2 "
                  "pad: 1 group: 2 dilation: 2 weight_filler { type: 'gaussian' std: 0.5 } "
                  "bias_filler { type: 'constant' value: 0.1 } }", [(1, 2, 3, 2)])
    gradcheck_layer(layer, torch.from_numpy(rand(1, 2, 3, 2, seed=62)))


# ---------------------------------------------------------------- Im2col

IM2COL_CASES = [
    # (convolution_param text, input shape, kernel, stride, pad, dilation)
    ("kernel_size: 3 pad: 1", (2, 2, 4, 5), (3, 3), (1, 1), (1, 1), (1, 1)),
    ("kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 0 pad_w: 2 dilation: 2", (1, 3, 6, 5), (2, 3), (2, 1),
     (0, 2), (2, 2)),
    ("kernel_size: 2 stride: 3 pad: 1", (2, 2, 7), (2,), (3,), (1,), (1,)),
]


@pytest.mark.parametrize("params,shape,kernel,stride,pad,dilation", IM2COL_CASES)
def test_im2col_matches_reference(params, shape, kernel, stride, pad, dilation):
    layer = build(f"name: 'i' type: 'Im2col' convolution_param {{ {params} }}", [shape])
    x = rand(*shape, seed=63)
    (y,) = run(layer, x)
    expect = ref.im2col(x, kernel, stride, pad, dilation)
    assert layer.top_shapes == [expect.shape]
    close(y, expect)
    # Convolution is im2col followed by the weight matrix (Caffe's own decomposition): ties the ordering to conv2d.
    if len(kernel) == 2:
        weight = rand(2, shape[1], *kernel, seed=64)
        conv = np.einsum("mk,nk...->nm...", weight.reshape(2, -1), y)
        close(conv, ref.conv2d(x, weight, None, stride, pad, dilation))


def test_im2col_axis_and_gradient():
    x = rand(2, 2, 3, 4, 4, seed=65)  # axis 2: the first two axes are images
    layer = build("name: 'i' type: 'Im2col' convolution_param { kernel_size: 2 stride: 1 axis: 2 }", [x.shape])
    (y,) = run(layer, x)
    close(y, ref.im2col(x.reshape(4, 3, 4, 4), (2, 2), (1, 1), (0, 0), (1, 1)).reshape(2, 2, 12, 3, 3))
    layer = build("name: 'i' type: 'Im2col' convolution_param { kernel_size: 3 stride: 2 pad: 1 }", [(1, 2, 4, 3)])
    gradcheck_layer(layer, torch.from_numpy(rand(1, 2, 4, 3, seed=66)), with_params=False)


# ---------------------------------------------------------------- Crop

@pytest.mark.parametrize("params,shape,ref_shape,expect_slices", [
    ("", (2, 3, 7, 6), (1, 1, 4, 3), np.s_[:, :, 0:4, 0:3]),  # default axis 2, offset 0
    ("crop_param { axis: 2 offset: 1 offset: 2 }", (2, 3, 7, 6), (5, 5, 4, 3), np.s_[:, :, 1:5, 2:5]),
    ("crop_param { axis: 1 offset: 1 }", (2, 4, 7, 6), (9, 2, 3, 3), np.s_[:, 1:3, 1:4, 1:4]),
    ("crop_param { axis: -1 offset: 3 }", (2, 3, 4, 6), (1, 1, 1, 2), np.s_[:, :, :, 3:5]),
    ("crop_param { axis: 0 }", (3, 3, 4, 6), (2, 1, 4, 5), np.s_[0:2, 0:1, 0:4, 0:5]),
])
def test_crop(params, shape, ref_shape, expect_slices):
    layer = build(f"name: 'c' type: 'Crop' bottom: 'a' bottom: 'b' {params}", [shape, ref_shape])
    x = rand(*shape, seed=67)
    (y,) = run(layer, x, np.zeros(ref_shape))
    close(y, x[expect_slices])
    assert layer.top_shapes == [x[expect_slices].shape]
    # Backward: the top's gradient lands inside the crop window of bottom 0, zero elsewhere; none for bottom 1.
    xt = torch.from_numpy(x).requires_grad_(True)
    dy = rand(*y.shape, seed=68)
    layer(xt, torch.zeros(ref_shape, dtype=torch.float64))[0].backward(torch.from_numpy(dy))
    expect = np.zeros(shape)
    expect[expect_slices] = dy
    close(xt.grad.numpy(), expect)


@pytest.mark.parametrize("params,shapes,needle", [
    ("crop_param { axis: 2 offset: 4 }", [(1, 1, 6, 6), (1, 1, 3, 3)], "falls outside"),
    ("crop_param { axis: 1 offset: 1 offset: 2 }", [(1, 2, 6, 6), (1, 1, 3, 3)], "2 offsets for the 3 axes"),
    ("", [(1, 1, 6, 6), (1, 3, 3)], "same number of axes"),
    ("", [(1, 1, 6, 6)], "2 bottom"),
])
def test_crop_errors(params, shapes, needle):
    with pytest.raises(CaffeCamError, match=rf"'crop'.*{needle}"):
        build(f"name: 'crop' type: 'Crop' {params}", shapes)
