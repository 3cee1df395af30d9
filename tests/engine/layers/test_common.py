"""InnerProduct, Concat, Eltwise, Softmax, Flatten, Split and the registry against NumPy."""

import numpy as np
import pytest

from caffecam.engine.layers import make_layer
from caffecam.engine.prototxt import parse_text
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2
from tests import numpy_ref as ref
from tests.engine.layers.helpers import TEST, build, close, rand, run, set_blobs


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


def test_softmax():
    x = rand(2, 5, 3, 2, seed=14) * 3
    (y,) = run(build("name: 's' type: 'Softmax'", [x.shape]), x)
    close(y, ref.softmax(x, 1))
    (y,) = run(build("name: 's' type: 'Softmax' softmax_param { axis: -1 }", [x.shape]), x)
    close(y, ref.softmax(x, 3))


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
