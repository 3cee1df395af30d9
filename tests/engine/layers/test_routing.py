"""Concat, Split, Flatten, Silence, Slice, Reshape, Tile, Filter and BatchReindex against NumPy."""

import numpy as np
import pytest
import torch

from caffecam.errors import CaffeCamError
from tests.engine.layers.helpers import build, close, gradcheck_layer, rand, run

# ---------------------------------------------------------------- Concat, Flatten, Split

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


def test_split():
    x = rand(2, 3, seed=19)
    layer = build("name: 's' type: 'Split' bottom: 'x' top: 'a' top: 'b' top: 'c'", [x.shape])
    ys = run(layer, x)
    assert layer.top_shapes == [(2, 3)] * 3 and len(ys) == 3
    for y in ys:
        close(y, x)



# ---------------------------------------------------------------- Slice

def tops(n):
    return "".join(f" top: 't{i}'" for i in range(n))


@pytest.mark.parametrize("text,n,axis,points", [
    ("slice_param { slice_point: 1 slice_point: 4 }", 3, 1, [1, 4]),
    ("slice_param { axis: -1 slice_point: 2 }", 2, 3, [2]),
    ("slice_param { axis: 0 }", 2, 0, [2]),
    ("slice_param { slice_dim: 2 }", 3, 2, [1, 2]),
    ("", 1, 1, []),
])
def test_slice(text, n, axis, points):
    x = rand(4, 5, 3, 6, seed=70)
    layer = build(f"name: 's' type: 'Slice' {text} {tops(n)}", [x.shape])
    ys = run(layer, x)
    expect = np.split(x, points, axis=axis)
    assert layer.top_shapes == [e.shape for e in expect] and len(ys) == n
    for y, e in zip(ys, expect):
        close(y, e)


def test_gradcheck_slice():
    layer = build(f"name: 's' type: 'Slice' slice_param {{ slice_point: 1 }} {tops(2)}", [(2, 3, 2)])
    x = torch.from_numpy(rand(2, 3, 2, seed=71)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: torch.cat([y.reshape(-1) * (i + 1) for i, y in enumerate(layer(t))]),
                                    (x,))


@pytest.mark.parametrize("text,n,needle", [
    ("slice_param { slice_point: 2 }", 3, "1 slice_point values for 3 tops"),
    ("slice_param { slice_point: 3 slice_point: 2 }", 3, "increase"),
    ("slice_param { slice_point: 5 }", 2, "increase"),
    ("", 2, "do not divide"),
    ("slice_param { axis: 1 slice_dim: 1 }", 2, "axis or slice_dim"),
])
def test_slice_errors(text, n, needle):
    with pytest.raises(CaffeCamError, match=rf"'s'.*{needle}"):
        build(f"name: 's' type: 'Slice' {text} {tops(n)}", [(2, 5)])


# ---------------------------------------------------------------- Reshape

@pytest.mark.parametrize("text,shape,expect", [
    ("shape { dim: 0 dim: -1 }", (2, 3, 4, 5), (2, 60)),
    ("shape { dim: 0 dim: 2 dim: -1 dim: 5 }", (2, 3, 4, 5), (2, 2, 6, 5)),
    ("shape { dim: 6 dim: 2 } axis: 1 num_axes: 2", (2, 3, 4, 5), (2, 6, 2, 5)),
    ("shape { dim: 1 dim: 1 } axis: -1 num_axes: 0", (2, 3), (2, 3, 1, 1)),
    ("shape { dim: -1 } axis: 1", (2, 3, 4), (2, 12)),
    ("shape { dim: 0 dim: 0 dim: 0 }", (2, 3, 4), (2, 3, 4)),
    ("shape { dim: 3 } axis: 0 num_axes: 1", (3, 4), (3, 4)),
    ("shape { dim: 1 dim: 1 } axis: 1 num_axes: 0", (3, 4), (3, 1, 1, 4)),
])
def test_reshape(text, shape, expect):
    x = rand(*shape, seed=72)
    layer = build(f"name: 'r' type: 'Reshape' reshape_param {{ {text} }}", [shape])
    (y,) = run(layer, x)
    assert layer.top_shapes == [expect]
    close(y, x.reshape(expect))


@pytest.mark.parametrize("text,needle", [
    ("shape { dim: -1 dim: -1 }", "more than one -1"),
    ("shape { dim: 7 dim: -1 }", "not divisible"),
    ("shape { dim: 5 }", "does not hold"),
    ("shape { dim: 0 dim: 0 dim: 0 }", "no axis 2 to copy"),
    ("shape { dim: -1 } axis: 3", "axis 3 out of range"),
    ("shape { dim: -1 } axis: 1 num_axes: 2", "extend past"),
])
def test_reshape_errors(text, needle):
    with pytest.raises(CaffeCamError, match=rf"'r'.*{needle}"):
        build(f"name: 'r' type: 'Reshape' reshape_param {{ {text} }}", [(2, 6)])


def test_reshape_in_place_is_an_error_and_batch_follows_the_input():
    with pytest.raises(CaffeCamError, match="'r'.*in place"):
        build("name: 'r' type: 'Reshape' bottom: 'x' top: 'x' reshape_param { shape { dim: -1 } }", [(2, 6)])
    layer = build("name: 'r' type: 'Reshape' reshape_param { shape { dim: 0 dim: -1 } }", [(2, 3, 2)])
    assert run(layer, rand(5, 3, 2))[0].shape == (5, 6)


# ---------------------------------------------------------------- Tile

@pytest.mark.parametrize("axis,tiles", [(1, 3), (0, 2), (-1, 2), (2, 1)])
def test_tile(axis, tiles):
    x = rand(2, 3, 4, seed=73)
    layer = build(f"name: 't' type: 'Tile' tile_param {{ axis: {axis} tiles: {tiles} }}", [x.shape])
    (y,) = run(layer, x)
    a = axis % 3
    outer, inner = int(np.prod(x.shape[:a])), int(np.prod(x.shape[a:]))
    flat = x.reshape(outer, inner)
    expect = np.stack([np.concatenate([row] * tiles) for row in flat])  # Caffe: each outer block `tiles` times
    shape = list(x.shape)
    shape[a] *= tiles
    assert layer.top_shapes == [tuple(shape)]
    close(y, expect.reshape(shape))


def test_gradcheck_tile_and_errors():
    layer = build("name: 't' type: 'Tile' tile_param { tiles: 3 }", [(2, 2, 3)])
    gradcheck_layer(layer, torch.from_numpy(rand(2, 2, 3, seed=74)), with_params=False)
    for text in ("tile_param { axis: 1 }", "tile_param { tiles: 0 }"):
        with pytest.raises(CaffeCamError, match="'t'.*tiles"):
            build(f"name: 't' type: 'Tile' {text}", [(2, 3)])


# ---------------------------------------------------------------- Filter

def test_filter_keeps_selected_items_and_routes_gradients():
    a, b = rand(5, 2, 3, seed=75), rand(5, 4, seed=76)
    sel = np.array([0, 1.5, 0, -1, 0]).reshape(5, 1)
    layer = build("name: 'f' type: 'Filter' top: 'ta' top: 'tb'", [a.shape, b.shape, sel.shape])
    assert layer.top_shapes == [a.shape, b.shape]  # set-up: the whole batch, as Caffe's first Reshape
    ta, tb = run(layer, a, b, sel)
    close(ta, a[[1, 3]])
    close(tb, b[[1, 3]])
    x = torch.from_numpy(a).requires_grad_(True)
    dy = rand(2, 2, 3, seed=77)
    layer(x, torch.from_numpy(b), torch.from_numpy(sel))[0].backward(torch.from_numpy(dy))
    expect = np.zeros_like(a)
    expect[[1, 3]] = dy
    close(x.grad.numpy(), expect)


@pytest.mark.parametrize("shapes,needle", [([(3, 2)], "at least two"), ([(3, 2), (3, 2)], "every axis but the first"),
                                           ([(4, 2), (3, 1)], "first dim 3")])
def test_filter_errors(shapes, needle):
    with pytest.raises(CaffeCamError, match=rf"'f'.*{needle}"):
        build("name: 'f' type: 'Filter'", shapes)


# ---------------------------------------------------------------- BatchReindex

def test_batch_reindex_gathers_and_adds_gradients():
    x = rand(4, 2, 3, seed=78)
    index = np.array([3, 0, 3, 1.7, 2])
    layer = build("name: 'b' type: 'BatchReindex'", [x.shape, index.shape])
    (y,) = run(layer, x, index)
    assert layer.top_shapes == [(5, 2, 3)]
    close(y, x[[3, 0, 3, 1, 2]])
    t = torch.from_numpy(x).requires_grad_(True)
    dy = rand(5, 2, 3, seed=79)
    layer(t, torch.from_numpy(index))[0].backward(torch.from_numpy(dy))
    expect = np.zeros_like(x)
    for i, j in enumerate([3, 0, 3, 1, 2]):
        expect[j] += dy[i]
    close(t.grad.numpy(), expect)


def test_batch_reindex_errors():
    with pytest.raises(CaffeCamError, match="'b'.*1-D"):
        build("name: 'b' type: 'BatchReindex'", [(4, 2), (2, 1)])
    layer = build("name: 'b' type: 'BatchReindex'", [(4, 2), (2,)])
    with pytest.raises(CaffeCamError, match="'b'.*index 4 outside the batch of 4"):
        run(layer, rand(4, 2), np.array([0, 4]))
