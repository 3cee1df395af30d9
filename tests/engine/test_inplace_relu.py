"""In-place ReLU (top named as its bottom): Net overwrites the blob only after Convolution, InnerProduct or Concat
with no other reader in between; values and gradients match NumPy and out-of-place nets either way."""

import numpy as np
import pytest
import torch

from caffecam.engine.kernels import winograd
from caffecam.engine.net import Net
from caffecam.engine.prototxt import parse_text
from caffecam.proto import caffe_pb2
from tests import numpy_ref as ref

TRAIN = caffe_pb2.TRAIN


def build(text, phase=caffe_pb2.TEST, dtype=torch.float64):
    return Net(parse_text(text, caffe_pb2.NetParameter), phase, seed=0).to(dtype)


def inplace_flags(net):
    return {lp.name: layer.inplace for lp, layer in zip(net.layer_params, net.layers) if lp.type == "ReLU"}


def rng_array(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 5 } } }\n'
CONV = """layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.5 }
                      bias_filler { type: "gaussian" std: 0.5 } } }
"""
RELU = 'layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "{top}" }}\n'
POOL = 'layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 ' \
       'stride: 2 } }\n'


def conv_grads_np(x, w, gy):
    """Gradients of Σ gy ⊙ conv(x) for a 3×3, pad 1, stride 1 convolution: (dx, dW, db)."""
    h, wd = x.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    dw = np.zeros_like(w)
    for i in range(3):
        for j in range(3):
            dw[:, :, i, j] = np.einsum("noyx,ncyx->oc", gy, xp[:, :, i:i + h, j:j + wd])
    dx = ref.conv2d(gy, w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1], pad=(1, 1))
    return dx, dw, gy.sum((0, 2, 3))


def outputs_of(net, *names):
    """Records the tops each named layer returns, by forward hooks."""
    seen = {name: [] for name in names}
    for name in names:
        net.layer_by_name[name].register_forward_hook(lambda m, args, out, n=name: seen[n].append(out[0]))
    return seen


def run_with_grads(net, x, weights):
    """forward, loss Σ_blob weights[blob] ⊙ blob, backward: (blobs, dx, [param grads])."""
    x = x.clone().requires_grad_()
    blobs = net({"data": x})
    sum((blobs[name] * torch.from_numpy(g)).sum() for name, g in weights.items()).backward()
    grads = [p.grad.clone() for p in net.parameters() if p.grad is not None]  # BatchNorm blobs get none
    net.zero_grad()
    return blobs, x.grad, grads


def test_conv_then_inplace_relu_matches_numpy():
    net = build(INPUT + CONV + RELU.format(top="conv"))
    assert inplace_flags(net) == {"relu": True}
    seen = outputs_of(net, "conv", "relu")
    x, g = rng_array((2, 3, 6, 5), 0), rng_array((2, 4, 6, 5), 1)
    blobs, dx, (dw, db) = run_with_grads(net, torch.from_numpy(x), {"conv": g})
    assert seen["relu"][0] is seen["conv"][0]  # overwritten, not copied
    w, b = (p.detach().numpy() for p in net.params["conv"])
    pre = ref.conv2d(x, w, b, pad=(1, 1))
    np.testing.assert_allclose(blobs["conv"].detach().numpy(), ref.relu(pre), rtol=1e-12, atol=1e-12)
    expect = conv_grads_np(x, w, g * (pre > 0))
    for got, want in zip((dx, dw, db), expect):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-10)
    # The same net with the ReLU writing a new blob gives the same values and gradients.
    out_of_place = build(INPUT + CONV + RELU.format(top="conv_relu"))
    assert inplace_flags(out_of_place) == {"relu": False}
    blobs2, dx2, grads2 = run_with_grads(out_of_place, torch.from_numpy(x), {"conv_relu": g})
    assert torch.equal(blobs2["conv_relu"], blobs["conv"])
    assert torch.equal(dx2, dx) and all(torch.equal(a, b) for a, b in zip(grads2, (dw, db)))


def test_reader_before_inplace_relu_keeps_the_blob_and_gradients():
    """conv → pool reads conv → ReLU in place on conv: pool must see (and backpropagate through) the values
    before the ReLU, as in Caffe where pool ran first."""
    net = build(INPUT + CONV + POOL + RELU.format(top="conv"))
    assert inplace_flags(net) == {"relu": False}
    seen = outputs_of(net, "conv", "relu")
    x, g_conv, g_pool = rng_array((2, 3, 6, 5), 2), rng_array((2, 4, 6, 5), 3), rng_array((2, 4, 3, 3), 4)
    blobs, dx, grads = run_with_grads(net, torch.from_numpy(x), {"conv": g_conv, "pool": g_pool})
    assert seen["relu"][0] is not seen["conv"][0]
    w, b = (p.detach().numpy() for p in net.params["conv"])
    pre = ref.conv2d(x, w, b, pad=(1, 1))
    np.testing.assert_allclose(blobs["pool"].detach().numpy(), ref.pool2d(pre, (2, 2), (2, 2), (0, 0)), rtol=1e-12)
    np.testing.assert_allclose(blobs["conv"].detach().numpy(), ref.relu(pre), rtol=1e-12, atol=1e-12)
    # dL/dpre = g_conv·[pre > 0] + g_pool routed to each window's maximum (Caffe's 3×3 ceil output: the last
    # row/column window is clipped to the input).
    gpre = g_conv * (pre > 0)
    for i in range(3):
        for j in range(3):
            win = pre[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
            flat = win.reshape(2, 4, -1).argmax(-1)
            for n in range(2):
                for c in range(4):
                    r, s = divmod(flat[n, c], win.shape[3])
                    gpre[n, c, 2 * i + r, 2 * j + s] += g_pool[n, c, i, j]
    for got, want in zip((dx, *grads), conv_grads_np(x, w, gpre)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-10)
    other = build(INPUT + CONV + POOL + RELU.format(top="conv_relu"))
    _, dx2, grads2 = run_with_grads(other, torch.from_numpy(x), {"conv_relu": g_conv, "pool": g_pool})
    assert torch.equal(dx2, dx) and all(torch.equal(a, b) for a, b in zip(grads2, grads))


def test_reader_after_inplace_relu_sees_the_rectified_blob():
    net = build(INPUT + CONV + RELU.format(top="conv") + POOL)
    assert inplace_flags(net) == {"relu": True}
    x = rng_array((2, 3, 6, 5), 5)
    with torch.no_grad():
        blobs = net({"data": torch.from_numpy(x)})
    w, b = (p.detach().numpy() for p in net.params["conv"])
    post = ref.relu(ref.conv2d(x, w, b, pad=(1, 1)))
    np.testing.assert_allclose(blobs["pool"].numpy(), ref.pool2d(post, (2, 2), (2, 2), (0, 0)), rtol=1e-12)


@pytest.mark.parametrize("header", [
    INPUT,
    'input: "data" input_shape { dim: 2 dim: 3 dim: 6 dim: 5 }\n',  # legacy net input
])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_relu_on_net_input_leaves_the_callers_tensor(header, requires_grad):
    net = build(header + 'layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }\n')
    assert inplace_flags(net) == {"relu": False}
    x = torch.from_numpy(rng_array((2, 3, 6, 5), 6)).requires_grad_(requires_grad)
    before = x.detach().clone()
    with torch.set_grad_enabled(requires_grad):
        y = net({"data": x})["data"]
    assert torch.equal(x.detach(), before)
    np.testing.assert_array_equal(y.detach().numpy(), ref.relu(before.numpy()))
    if requires_grad:
        y.sum().backward()
        assert torch.equal(x.grad, (before > 0).double())


@pytest.mark.parametrize("middle,inplace", [
    (POOL.replace('top: "pool"', 'top: "mid"'), False),
    ('layer { name: "mid" type: "LRN" bottom: "conv" top: "mid" lrn_param { local_size: 3 } }\n', False),
    ('layer { name: "mid" type: "Dropout" bottom: "conv" top: "mid" }\n', False),
    ('layer { name: "mid" type: "ReLU" bottom: "conv" top: "mid" }\n', False),
    ('layer { name: "mid" type: "InnerProduct" bottom: "conv" top: "mid" inner_product_param { num_output: 5 '
     'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 1 } } }\n', True),
    ('layer { name: "mid" type: "Concat" bottom: "conv" bottom: "data" top: "mid" }\n', True),
    (CONV.replace('name: "conv"', 'name: "mid"').replace('bottom: "data"', 'bottom: "conv"')
     .replace('top: "conv"', 'top: "mid"'), True),
    ('layer { name: "mid" type: "BatchNorm" bottom: "conv" top: "mid" }\n', True),
    ('layer { name: "mid" type: "Scale" bottom: "conv" top: "mid" scale_param { bias_term: true '
     'filler { type: "gaussian" } bias_filler { type: "gaussian" } } }\n', True),
    ('layer { name: "mid" type: "Scale" bottom: "conv" top: "mid" scale_param { filler { type: "gaussian" } } }\n',
     True),
    ('layer { name: "mid" type: "Bias" bottom: "conv" top: "mid" bias_param { filler { type: "gaussian" } } }\n',
     True),
    ('layer { name: "mid" type: "Eltwise" bottom: "conv" bottom: "conv" top: "mid" eltwise_param { operation: PROD '
     'stable_prod_grad: false } }\n', False),
    ('layer { name: "mid" type: "Eltwise" bottom: "conv" bottom: "conv" top: "mid" }\n', True),
    ('layer { name: "mid" type: "Eltwise" bottom: "conv" bottom: "conv" bottom: "conv" top: "mid" '
     'eltwise_param { coeff: 0.5 coeff: -1 coeff: 2 } }\n', True),
    ('layer { name: "mid" type: "Eltwise" bottom: "conv" bottom: "conv" top: "mid" eltwise_param { operation: MAX '
     '} }\n', False),
])
def test_which_producers_allow_overwriting(middle, inplace):
    """ReLU in place on the top of `mid`, which reads conv: overwritten only after the _OVERWRITABLE types."""
    relu2 = 'layer {{ name: "relu2" type: "ReLU" bottom: "mid" top: "{}" }}\n'
    net = build(INPUT + CONV + middle + relu2.format("mid"), TRAIN)
    assert inplace_flags(net)["relu2"] is inplace
    # Values and gradients equal those of the same net with an out-of-place ReLU.
    other = build(INPUT + CONV + middle + relu2.format("mid_relu"), TRAIN)
    assert not any(inplace_flags(other).values())
    g = rng_array(tuple(net.blob_shapes["mid"]), 8)
    x = torch.from_numpy(rng_array((2, 3, 6, 5), 9))
    torch.manual_seed(1)  # Dropout's mask: the same draw for both nets
    blobs, dx, grads = run_with_grads(net, x, {"mid": g})
    torch.manual_seed(1)
    blobs2, dx2, grads2 = run_with_grads(other, x, {"mid_relu": g})
    assert torch.equal(blobs2["mid_relu"], blobs["mid"])
    assert (blobs["mid"] >= 0).all() and (blobs["mid"] > 0).any()
    assert torch.equal(dx2, dx) and all(torch.equal(a, b) for a, b in zip(grads2, grads))


def test_second_inplace_relu_in_a_row_writes_a_new_tensor():
    net = build(INPUT + CONV + RELU.format(top="conv") + RELU.format(top="conv").replace('"relu"', '"relu_b"'))
    assert inplace_flags(net) == {"relu": True, "relu_b": False}
    x = rng_array((2, 3, 6, 5), 10)
    with torch.no_grad():
        y = net({"data": torch.from_numpy(x)})["conv"]
    w, b = (p.detach().numpy() for p in net.params["conv"])
    np.testing.assert_allclose(y.numpy(), ref.relu(ref.conv2d(x, w, b, pad=(1, 1))), rtol=1e-12, atol=1e-12)


WIDE = """
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: {n} dim: 128 dim: {h} dim: {w} }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 128 kernel_size: 3 pad: 1 {engine}
    weight_filler {{ type: "gaussian" std: 0.05 }} bias_filler {{ type: "gaussian" std: 0.5 }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "{top}" }}
"""


def wide_net(n, h, w, engine="", top="conv"):
    return build(WIDE.format(n=n, h=h, w=w, engine=engine, top=top), TRAIN, torch.float32)


def test_winograd_conv_with_inplace_relu_trains_like_direct_out_of_place(monkeypatch):
    net, direct = wide_net(8, 14, 13), wide_net(8, 14, 13, engine="engine: CAFFE", top="conv_relu")
    assert inplace_flags(net) == {"relu": True} and inplace_flags(direct) == {"relu": False}
    calls = []
    real = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda *a: calls.append(1) or real(*a))
    x = torch.from_numpy(rng_array((8, 128, 14, 13), 11)).float()
    g = rng_array((8, 128, 14, 13), 12).astype(np.float32)
    blobs, dx, grads = run_with_grads(net, x, {"conv": g})
    assert calls == [1]
    blobs2, dx2, grads2 = run_with_grads(direct, x, {"conv_relu": g})
    assert calls == [1]
    for got, want in zip((blobs["conv"], dx, *grads), (blobs2["conv_relu"], dx2, *grads2)):
        torch.testing.assert_close(got.detach(), want.detach(), rtol=0, atol=2e-5 * float(want.detach().abs().max()))


def test_batch1_odd_height_winograd_conv_with_inplace_relu_trains():
    net = wide_net(1, 39, 40)  # 20 × 20 = 400 tiles: Winograd
    x = torch.from_numpy(rng_array((1, 128, 39, 40), 13)).float()
    assert winograd.suits(x, net.params["conv"][0], (1, 1), (1, 1), (1, 1), 1)
    net({"data": x})["conv"].sum().backward()
