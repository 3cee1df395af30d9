"""InnerProduct, Eltwise, Softmax, Scale, Bias, Embed, Reduction, ArgMax, Parameter and the registry against NumPy
references written from Caffe's formulas."""

import numpy as np
import pytest
import torch

from caffecam.engine.layers import make_layer
from caffecam.engine.prototxt import parse_text
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2
from tests import numpy_ref as ref
from tests.engine.layers.helpers import TEST, build, close, gradcheck_layer, rand, run, set_blobs


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


def test_unknown_type_names_layer():
    with pytest.raises(CaffeCamError, match="'weird'.*'Frobnicate'"):
        make_layer(parse_text("name: 'weird' type: 'Frobnicate'", caffe_pb2.LayerParameter), [(1,)], TEST)


# ---------------------------------------------------------------- Scale and Bias

@pytest.mark.parametrize("shape,axis,num_axes,pshape", [
    ((2, 3, 4, 5), 1, 1, (3,)), ((2, 3, 4, 5), 1, 2, (3, 4)), ((2, 3, 4, 5), 0, -1, (2, 3, 4, 5)),
    ((2, 3, 4, 5), -1, 1, (5,)), ((2, 3, 4), 2, 0, ()), ((3, 4), 1, -1, (4,)),
])
def test_scale_and_bias_learned_blobs(shape, axis, num_axes, pshape):
    x = rand(*shape, seed=40)
    p = f"axis: {axis} num_axes: {num_axes}"
    scale = build(f"name: 'sc' type: 'Scale' scale_param {{ {p} bias_term: true }}", [shape])
    bias = build(f"name: 'b' type: 'Bias' bias_param {{ {p} }}", [shape])
    assert [tuple(b.shape) for b in scale.blobs] == [pshape, pshape] and tuple(bias.blobs[0].shape) == pshape
    close(run(scale, x)[0], x)  # default fillers: scale 1, bias 0
    close(run(bias, x)[0], x)
    s, b = rand(*pshape, seed=41), rand(*pshape, seed=42)
    set_blobs(scale, s, b)
    set_blobs(bias, b)
    close(run(scale, x)[0], ref.scale_bias(x, s, b, axis))
    close(run(bias, x)[0], ref.scale_bias(x, None, b, axis))


def test_scale_and_bias_fillers():
    layer = build("name: 'sc' type: 'Scale' scale_param { filler { type: 'constant' value: 3 } bias_term: true "
                  "bias_filler { type: 'constant' value: -2 } }", [(2, 4, 3)])
    assert layer.blobs[0].tolist() == [3] * 4 and layer.blobs[1].tolist() == [-2] * 4
    layer = build("name: 'b' type: 'Bias' bias_param { filler { type: 'constant' value: 0.5 } }", [(2, 4, 3)])
    assert layer.blobs[0].tolist() == [0.5] * 4
    assert len(build("name: 'sc' type: 'Scale'", [(2, 4)]).blobs) == 1


@pytest.mark.parametrize("shape,pshape,axis", [((2, 3, 4), (3,), 1), ((2, 3, 4), (3, 4), 1), ((2, 3, 4), (), 1),
                                               ((2, 3, 4), (2, 3), 0), ((2, 3, 4), (4,), -1)])
def test_scale_and_bias_from_a_second_bottom(shape, pshape, axis):
    x, s = rand(*shape, seed=43), rand(*pshape, seed=44)
    layer = build(f"name: 'sc' type: 'Scale' scale_param {{ axis: {axis} bias_term: true }}", [shape, pshape])
    assert [tuple(b.shape) for b in layer.blobs] == [pshape]  # the bias: the scale's axis count (bottom[1]'s)
    b = rand(*pshape, seed=45)
    set_blobs(layer, b)
    close(run(layer, x, s)[0], ref.scale_bias(x, s, b, axis))
    layer = build(f"name: 'b' type: 'Bias' bias_param {{ axis: {axis} }}", [shape, pshape])
    assert len(layer.blobs) == 0
    close(run(layer, x, s)[0], ref.scale_bias(x, None, s, axis))


def test_gradcheck_scale_and_bias():
    layer = build("name: 'sc' type: 'Scale' scale_param { axis: 1 num_axes: 2 bias_term: true }", [(2, 3, 2, 2)])
    set_blobs(layer, rand(3, 2, seed=46), rand(3, 2, seed=47))
    gradcheck_layer(layer, torch.from_numpy(rand(2, 3, 2, 2, seed=48)))
    layer = build("name: 'b' type: 'Bias'", [(2, 3, 2)])
    set_blobs(layer, rand(3, seed=49))
    gradcheck_layer(layer, torch.from_numpy(rand(2, 3, 2, seed=50)))
    for kind in ("Scale", "Bias"):
        two = build(f"name: 't' type: '{kind}'", [(2, 3, 2), (3,)])
        x, s = (torch.from_numpy(rand(*sh, seed=51)).requires_grad_(True) for sh in ((2, 3, 2), (3,)))
        assert torch.autograd.gradcheck(lambda a, b, layer=two: layer(a, b)[0], (x, s))


@pytest.mark.parametrize("shape,axis,num_axes,writes", [  # the outcomes real Caffe gave
    ((1, 3, 2), 1, 1, True), ((2, 3, 2), 1, 1, False), ((1, 3, 1), 1, 1, True), ((2, 3, 1), 1, 1, False),
    ((1, 1, 4), 1, 1, False), ((3, 2), 0, 2, True), ((1, 3, 2), 1, 2, True), ((2, 3, 2), 0, 0, False),
])
def test_scale_diff_written_not_added_where_caffe_does(shape, axis, num_axes, writes):
    """Caffe's Scale backward writes its scale diff when the outer count is 1 (with scale and inner counts above 1)
    or the scale has bottom[0]'s count: two backward passes then leave the last gradient, not the sum."""
    layer = build(f"name: 'sc' type: 'Scale' scale_param {{ axis: {axis} num_axes: {num_axes} }}", [shape])
    xs = [rand(*shape, seed=52 + i) for i in range(2)]
    for x in xs:
        layer(torch.from_numpy(x))[0].sum().backward()
    pshape = shape[axis: axis + num_axes]
    grads = [x.reshape(int(np.prod(shape[:axis])), int(np.prod(pshape)), -1).sum(axis=(0, 2)).reshape(pshape)
             for x in xs]
    close(layer.blobs[0].grad.numpy(), grads[1] if writes else grads[0] + grads[1])


@pytest.mark.parametrize("text,shapes,needle", [
    ("type: 'Scale' scale_param { axis: 1 num_axes: 3 }", [(2, 3, 4)], "extend past"),
    ("type: 'Scale'", [(2, 3, 4), (4,)], r"\(4,\) does not match"),
    ("type: 'Bias' bias_param { num_axes: -2 }", [(2, 3)], "num_axes"),
    ("type: 'Bias' bias_param { axis: 3 }", [(2, 3)], "axis 3"),
    ("type: 'Scale'", [(2, 3), (3,), (3,)], "1 or 2 bottom"),
])
def test_scale_and_bias_errors(text, shapes, needle):
    with pytest.raises(CaffeCamError, match=rf"'x'.*{needle}"):
        build(f"name: 'x' {text}", shapes)


# ---------------------------------------------------------------- Eltwise backward

def eltwise_grads(text, xs, dy):
    layer = build(f"name: 'e' type: 'Eltwise' {text}", [x.shape for x in xs])
    ts = [torch.from_numpy(x).requires_grad_(True) for x in xs]
    layer(*ts)[0].backward(torch.from_numpy(dy))
    return [t.grad.numpy() for t in ts]


def test_eltwise_max_routes_the_diff_to_caffes_winner_ties_included():
    rng = np.random.default_rng(80)
    xs = [rng.integers(-1, 2, size=(3, 4)).astype(float) for _ in range(3)]  # many ties
    dy = rand(3, 4, seed=81)
    grads = eltwise_grads("eltwise_param { operation: MAX }", xs, dy)
    index = ref.eltwise_max_index(xs)
    assert (index == 1).any() and (xs[0] == xs[1]).any()
    for k, g in enumerate(grads):
        close(g, np.where(index == k, dy, 0.0))
    # A full tie: bottom 1 takes it (a > b picks bottom 0 only when strictly greater).
    same = np.ones((2, 2))
    grads = eltwise_grads("eltwise_param { operation: MAX }", [same, same, same], np.ones((2, 2)))
    assert [g.sum() for g in grads] == [0, 4, 0]


@pytest.mark.parametrize("stable", [True, False])
def test_eltwise_prod_gradients(stable):
    xs = [rand(2, 3, seed=82 + i) for i in range(3)]
    xs[1][0, 0] = 0.0
    dy = rand(2, 3, seed=85)
    grads = eltwise_grads(f"eltwise_param {{ operation: PROD stable_prod_grad: {str(stable).lower()} }}", xs, dy)
    top = xs[0] * xs[1] * xs[2]
    for i, g in enumerate(grads):
        others = np.prod([x for j, x in enumerate(xs) if j != i], axis=0)
        if stable:
            close(g, others * dy)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                expect = top / xs[i] * dy  # Caffe: top / bottom; 0 / 0 is NaN where the bottom is 0
            np.testing.assert_allclose(g, expect, rtol=1e-5, equal_nan=True)
    assert stable or np.isnan(grads[1][0, 0])


def test_eltwise_sum_coeff_gradients():
    xs = [rand(2, 3, seed=86 + i) for i in range(2)]
    dy = rand(2, 3, seed=88)
    grads = eltwise_grads("eltwise_param { coeff: 0.5 coeff: -3 }", xs, dy)
    close(grads[0], 0.5 * dy)
    close(grads[1], -3 * dy)


# ---------------------------------------------------------------- Embed

def test_embed_forward_backward():
    index = np.array([[0, 3.9], [2, 3]])  # 3.9 is truncated to 3, as Caffe's static_cast<int>
    layer = build("name: 'em' type: 'Embed' embed_param { num_output: 3 input_dim: 4 bias_term: true "
                  "weight_filler { type: 'gaussian' } bias_filler { type: 'gaussian' } }", [index.shape])
    assert [tuple(b.shape) for b in layer.blobs] == [(4, 3), (3,)]
    w, b = (p.detach().numpy() for p in layer.blobs)
    (y,) = run(layer, index)
    rows = np.array([[0, 3], [2, 3]])
    assert layer.top_shapes == [(2, 2, 3)]
    close(y, w[rows] + b)
    dy = rand(2, 2, 3, seed=89)
    layer(torch.from_numpy(index))[0].backward(torch.from_numpy(dy))
    expect = np.zeros((4, 3))
    for pos in np.ndindex(2, 2):
        expect[rows[pos]] += dy[pos]
    close(layer.blobs[0].grad.numpy(), expect)
    close(layer.blobs[1].grad.numpy(), dy.sum((0, 1)))


def test_embed_errors():
    with pytest.raises(CaffeCamError, match="'em'.*input_dim"):
        build("name: 'em' type: 'Embed' embed_param { num_output: 3 }", [(2,)])
    layer = build("name: 'em' type: 'Embed' embed_param { num_output: 3 input_dim: 4 }", [(2,)])
    with pytest.raises(CaffeCamError, match=r"'em'.*index 4 outside \[0, 4\)"):
        run(layer, np.array([1, 4]))


# ---------------------------------------------------------------- Reduction

@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis,coeff", [(0, 1.0), (1, 2.5), (-1, -0.5), (2, 1.0)])
def test_reduction(op, axis, coeff):
    x = rand(2, 3, 4, seed=90)
    layer = build(f"name: 'r' type: 'Reduction' reduction_param {{ operation: {op} axis: {axis} coeff: {coeff} }}",
                  [x.shape])
    (y,) = run(layer, x)
    a = axis % 3
    assert layer.top_shapes == [x.shape[:a]]
    close(y, ref.reduction(x, op, a, coeff))
    gradcheck_layer(layer, torch.from_numpy(rand(2, 3, 4, seed=91)), with_params=False)


# ---------------------------------------------------------------- ArgMax

@pytest.mark.parametrize("text,kw", [
    ("", {}), ("argmax_param { top_k: 3 }", {"top_k": 3}),
    ("argmax_param { top_k: 2 out_max_val: true }", {"top_k": 2, "out_max_val": True}),
    ("argmax_param { axis: 1 top_k: 2 }", {"axis": 1, "top_k": 2}),
    ("argmax_param { axis: -1 out_max_val: true }", {"axis": -1, "out_max_val": True}),
    ("argmax_param { axis: 0 top_k: 2 }", {"axis": 0, "top_k": 2}),
])
@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 6), (2, 3, 2, 2)])
def test_argmax_with_ties(text, kw, shape):
    x = np.random.default_rng(92).integers(-2, 3, size=shape).astype(float)  # ties everywhere
    layer = build(f"name: 'a' type: 'ArgMax' {text}", [shape])
    (y,) = run(layer, x)
    expect = ref.argmax(x, **kw)
    assert layer.top_shapes == [expect.shape]
    close(y, expect)


def test_argmax_errors():
    with pytest.raises(CaffeCamError, match="'a'.*top_k 5 must be between 1 and 4"):
        build("name: 'a' type: 'ArgMax' argmax_param { axis: 1 top_k: 5 }", [(2, 4)])


# ---------------------------------------------------------------- Parameter

def test_parameter_layer_is_its_blob():
    layer = build("name: 'p' type: 'Parameter' parameter_param { shape { dim: 2 dim: 3 } }", [])
    assert layer.top_shapes == [(2, 3)] and not layer.blobs[0].detach().any()  # Caffe: zeros, no filler
    with torch.no_grad():
        layer.blobs[0].fill_(1.0)
    for x in (2.0, 5.0):  # y = blob · x: Caffe's diff after the two backward passes is 5, not 2 + 5
        (y,) = layer()
        (y * x).sum().backward()
    assert layer.blobs[0].grad.tolist() == [[5.0] * 3] * 2
    with torch.no_grad():
        assert layer()[0] is layer.blobs[0]
