"""The net's parameter rules: sharing by ParamSpec name, BatchNorm's fixed blobs, in-place BatchNorm/Scale chains,
layers without tops."""

import numpy as np
import pytest
import torch

from caffecam.engine.net import Net
from caffecam.engine.prototxt import parse_text
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2
from tests import numpy_ref as ref

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def netp(text):
    return parse_text(text, caffe_pb2.NetParameter)


SHARED = """
name: "shared"
layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "fa" type: "InnerProduct" bottom: "a" top: "fa" PA
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } } }
layer { name: "fb" type: "InnerProduct" bottom: "b" top: "fb" PB
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } } }
"""


def shared(pa='param { name: "w" } param { name: "bias" }', pb='param { name: "w" } param { name: "bias" }'):
    return Net(netp(SHARED.replace("PA", pa).replace("PB", pb)), TRAIN, seed=0).double()


def test_params_shared_by_name_are_one_tensor_listed_once_with_summed_gradients():
    net = shared()
    fa, fb = net.layer_by_name["fa"], net.layer_by_name["fb"]
    assert fa.blobs[0] is fb.blobs[0] and fa.blobs[1] is fb.blobs[1]
    assert [(name, i) for name, i, *_ in net.param_specs()] == [("fa", 0), ("fa", 1)]
    rng = np.random.default_rng(1)
    a, b, da, db = (rng.standard_normal(s) for s in ((2, 3), (2, 3), (2, 4), (2, 4)))
    blobs = net({"a": torch.from_numpy(a), "b": torch.from_numpy(b)})
    w, bias = (p.detach().numpy() for p in fa.blobs)
    np.testing.assert_allclose(blobs["fb"].detach().numpy(), ref.inner_product(b, w, bias), rtol=1e-12)
    torch.autograd.backward([blobs["fa"], blobs["fb"]], [torch.from_numpy(da), torch.from_numpy(db)])
    np.testing.assert_allclose(fa.blobs[0].grad.numpy(), da.T @ a + db.T @ b, rtol=1e-12)  # Caffe adds the diffs
    np.testing.assert_allclose(fa.blobs[1].grad.numpy(), da.sum(0) + db.sum(0), rtol=1e-12)


def test_shared_param_lr_mult_first_explicit_value_wins_and_conflicts_are_errors():
    net = shared('param { name: "w" } param { name: "bias" decay_mult: 0 }',
                 'param { name: "w" lr_mult: 3 } param { name: "bias" lr_mult: 2 }')
    assert [(lr, dm) for *_, lr, dm in net.param_specs()] == [(3, 1), (2, 0)]
    with pytest.raises(CaffeCamError, match="'fb'.*shared param 'w' has lr_mult 2.*1 in layer 'fa'"):
        shared('param { name: "w" lr_mult: 1 }', 'param { name: "w" lr_mult: 2 }')


def test_shared_param_shape_mismatch_is_an_error():
    text = SHARED.replace("PA", 'param { name: "w" }').replace("PB", 'param { name: "w" }')
    with pytest.raises(CaffeCamError, match="'fb'.*cannot share param 'w' of layer 'fa'"):
        Net(netp(text.replace("num_output: 4 weight_filler", "num_output: 5 weight_filler", 1)), TRAIN)


BN_NET = """
name: "bn"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 dim: 2 dim: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
        convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" } } }
layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" BNPARAM }
layer { name: "sc" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }
"""


def test_batch_norm_blobs_get_lr_mult_zero():
    for param in ("", "param { lr_mult: 0 } param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 }"):
        net = Net(netp(BN_NET.replace("BNPARAM", param)), TRAIN, seed=0)
        specs = {(name, i): lr for name, i, _, lr, _ in net.param_specs()}
        assert specs == {("conv", 0): 1, ("conv", 1): 1, ("bn", 0): 0, ("bn", 1): 0, ("bn", 2): 0,
                         ("sc", 0): 1, ("sc", 1): 1}


def test_in_place_batch_norm_scale_relu_chain_gives_the_last_value():
    net = Net(netp(BN_NET.replace("BNPARAM", "")), TEST, seed=0).double()
    rng = np.random.default_rng(2)
    mean, var, gamma, beta = rng.standard_normal(3), rng.random(3) + 0.5, rng.standard_normal(3), rng.standard_normal(3)
    with torch.no_grad():
        for blob, value in zip(list(net.params["bn"]) + list(net.params["sc"]),
                               (mean * 2, var * 2, np.array([2.0]), gamma, beta)):
            blob.copy_(torch.from_numpy(value))
    x = rng.standard_normal((4, 3, 2, 2))
    with torch.no_grad():
        out = net({"x": torch.from_numpy(x)})
    w, b = (p.detach().numpy() for p in net.params["conv"])
    conv = ref.conv2d(x, w, b)
    y = ref.scale_bias(ref.batch_norm(conv, mean * 2, var * 2, np.array([2.0]))[0], gamma, beta)
    np.testing.assert_allclose(out["c"].numpy(), ref.relu(y), rtol=1e-10)
    assert net.output_blobs == ["c"]


def test_silence_layer_has_no_tops_and_consumes_its_bottoms():
    text = """name: "s"
    layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "quiet" type: "Silence" bottom: "y" }
    layer { name: "soft" type: "Softmax" bottom: "x" top: "p" }"""
    net = Net(netp(text), TEST)
    assert net.output_blobs == ["p"]
    x = torch.randn(2, 3, requires_grad=True)
    y = torch.randn(2, 3, requires_grad=True)
    out = net({"x": x, "y": y})
    assert set(out) == {"x", "y", "p"}
    out["p"][:, 0].sum().backward()
    assert y.grad is None and x.grad is not None  # nothing flows back through Silence (Caffe writes zeros)


def test_parameter_layer_in_a_net_learns_through_its_top():
    text = """name: "p"
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "bias" type: "Parameter" top: "b" param { lr_mult: 2 } parameter_param { shape { dim: 2 dim: 3 } } }
    layer { name: "sum" type: "Eltwise" bottom: "x" bottom: "b" top: "y" eltwise_param { coeff: 1 coeff: -2 } }"""
    net = Net(netp(text), TRAIN)
    assert [(name, lr) for name, _, _, lr, _ in net.param_specs()] == [("bias", 2)]
    x = torch.randn(2, 3)
    out = net({"x": x})
    torch.testing.assert_close(out["y"], x)  # the blob starts at zero (Caffe gives it no filler)
    out["y"].sum().backward()
    torch.testing.assert_close(net.params["bias"][0].grad, torch.full((2, 3), -2.0))


def test_filter_in_a_net_passes_only_the_selected_items():
    text = """name: "f"
    layer { name: "in" type: "Input" top: "x" top: "sel" input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
    layer { name: "keep" type: "Filter" bottom: "x" bottom: "sel" top: "kept" }
    layer { name: "soft" type: "Softmax" bottom: "kept" top: "p" }"""
    net = Net(netp(text), TEST)
    assert net.blob_shapes["kept"] == (4, 3)  # set-up: the whole batch, as Caffe's first Reshape
    x = torch.randn(4, 3)
    out = net({"x": x, "sel": torch.tensor([1.0, 0, 0, 1])})
    torch.testing.assert_close(out["p"], torch.softmax(x[[0, 3]], 1))
