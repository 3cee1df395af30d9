"""What bfloat16 autocast (`--bf16`) must leave in float32: the scores the loss and Accuracy read and their
divisions, and LRN; and max pooling's −FLT_MAX, which bfloat16 cannot hold. CPU autocast lowers convolutions and
matrix products to bfloat16 as CUDA's does, so these run on the CPU (and on CUDA too where there is a device).
References: float64 NumPy; a float32 forward for the closeness of a bfloat16 one."""

import numpy as np
import pytest
import torch

from caffecam.engine import precision
from caffecam.engine.net import Net
from caffecam.engine.prototxt import parse_text
from caffecam.proto import caffe_pb2
from tests import numpy_ref as ref
from tests.engine.layers.helpers import build

N, K, C, IGNORE = 320, 48, 100, 999

SCORES_NET = f"""
name: "scores"
layer {{ name: "data" type: "Input" top: "data" top: "label"
        input_param {{ shape {{ dim: {N} dim: {K} }} shape {{ dim: {N} }} }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param {{ num_output: {C} weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss"
        loss_param {{ ignore_label: {IGNORE} }} }}
layer {{ name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc"
        accuracy_param {{ ignore_label: {IGNORE} }} }}
"""


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def autocast_bf16(device):
    precision.configure(device)  # IEEE float32 where float32 is asked for
    return torch.autocast(device, dtype=torch.bfloat16)


@pytest.mark.parametrize("device", DEVICES)
def test_loss_and_accuracy_read_float32_scores_under_bf16_autocast(device, cuda_flags):
    net = Net(parse_text(SCORES_NET, caffe_pb2.NetParameter), caffe_pb2.TEST, seed=3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, K)).astype(np.float32)
    w = net.params["fc"][0].detach().double().numpy()
    b = net.params["fc"][1].detach().double().numpy()
    scores = x.astype(np.float64) @ w.T + b
    top2 = np.sort(scores, 1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > 1e-5  # no true near-tie: float32 ranks as float64 does
    # The data exercises the bug: rounded to bfloat16, some scores tie with or pass the true best.
    rounded = torch.from_numpy(scores).bfloat16().double().numpy()
    best = rounded[np.arange(N), scores.argmax(1)]
    assert ((rounded >= best[:, None]).sum(1) > 1).any()
    label = scores.argmax(1)
    label[:100] = np.argsort(scores[:100], 1)[:, 0]  # 100 wrong on purpose (lowest score)
    label[-19:] = IGNORE  # 301 valid labels: 300 in bfloat16
    with torch.no_grad(), autocast_bf16(device):
        blobs = net.to(device)({"data": torch.from_numpy(x).to(device), "label": torch.from_numpy(label).to(device)})
    assert blobs["acc"].item() == np.float32(201) / np.float32(301)
    valid = label != IGNORE
    expect = ref.softmax_loss(scores[valid], label[valid])
    np.testing.assert_allclose(blobs["loss"].item(), expect, rtol=1e-5)
    assert blobs["fc"].dtype == torch.float32
    assert blobs["acc"].dtype == torch.float32 and blobs["loss"].dtype == torch.float32


def test_loss_layers_promote_bfloat16_scores():
    # A bfloat16 net without autocast: the divisions still happen in float32 (301 valid labels stay 301).
    layer = build("name: 'l' type: 'SoftmaxWithLoss' loss_param { ignore_label: 9 }", [(304, 3), (304,)])
    scores = torch.zeros(304, 3, dtype=torch.bfloat16)
    label = torch.zeros(304, dtype=torch.int64)
    label[:3] = 9
    (loss,) = layer(scores, label)
    np.testing.assert_allclose(loss.item(), np.log(3.0), rtol=1e-6)  # 301·log 3 / 301
    assert loss.dtype == torch.float32
    acc = build("name: 'a' type: 'Accuracy'", [(48, 2), (48,)])
    scores = torch.zeros(48, 2, dtype=torch.bfloat16)
    scores[:37, 0] = 1
    (a,) = acc(scores, torch.zeros(48, dtype=torch.int64))
    assert a.item() == np.float32(37) / np.float32(48) and a.dtype == torch.float32  # not bfloat16's 0.7695


LRN_NET = """
name: "lrn"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 16 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 16 kernel_size: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "norm" type: "LRN" bottom: "conv" top: "norm" lrn_param { local_size: 5 alpha: 1 beta: 0.75 k: 1 } }
"""


@pytest.mark.parametrize("device", DEVICES)
def test_lrn_runs_in_float32_under_bf16_autocast(device, cuda_flags):
    net = Net(parse_text(LRN_NET, caffe_pb2.NetParameter), caffe_pb2.TEST, seed=1).to(device)
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((2, 16, 5, 5)).astype(np.float32)) * 2
    with torch.no_grad(), autocast_bf16(device):
        blobs = net({"data": x.to(device)})
    assert blobs["conv"].dtype == torch.bfloat16  # the convolution itself is lowered, as on a GPU
    conv = blobs["conv"].double().cpu().numpy()
    expect = ref.lrn_across(conv, 5, 1.0, 0.75, 1.0)
    np.testing.assert_allclose(blobs["norm"].double().cpu().numpy(), expect, rtol=1e-5, atol=1e-7)
    assert blobs["norm"].dtype == torch.float32


def test_lrn_keeps_a_bfloat16_top_on_the_loops_where_every_reader_lowers_it(monkeypatch):
    """On the compiled loops (numba_bf16.py) LRN takes the bfloat16 convolution output as it is, computes in
    float32 and rounds its top once: the float32 LRN of the same values, rounded by torch. Its gradient likewise."""
    from caffecam.engine.kernels import cpu_loops
    if cpu_loops._load() is False:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(cpu_loops, "MIN_ELEMENTS", 0)
    text = LRN_NET + ('layer { name: "fc" type: "InnerProduct" bottom: "norm" top: "fc" '
                      'inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }\n')
    net = Net(parse_text(text, caffe_pb2.NetParameter), caffe_pb2.TRAIN, seed=1).to(memory_format=torch.channels_last)
    x = (torch.from_numpy(np.random.default_rng(2).standard_normal((2, 16, 5, 5)).astype(np.float32)) * 2
         ).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        blobs = net({"data": x})
        for name in ("conv", "norm"):
            blobs[name].retain_grad()
        blobs["fc"].float().sum().backward()
    assert blobs["conv"].dtype == blobs["norm"].dtype == torch.bfloat16
    conv = blobs["conv"].detach().float().requires_grad_()
    expect = net.layer_by_name["norm"](conv)[0]
    assert torch.equal(blobs["norm"].detach(), expect.detach().to(torch.bfloat16))
    expect.backward(blobs["norm"].grad.float())
    assert blobs["conv"].grad.dtype == torch.bfloat16
    assert torch.equal(blobs["conv"].grad, conv.grad.to(torch.bfloat16))


@pytest.mark.parametrize("readers,kept", [
    ('layer { name: "c2" type: "Convolution" bottom: "norm" top: "c2" convolution_param { num_output: 2 '
     'kernel_size: 1 } }', True),
    ('layer { name: "p" type: "Pooling" bottom: "norm" top: "p" pooling_param { pool: MAX kernel_size: 2 } }\n'
     'layer { name: "c2" type: "Convolution" bottom: "p" top: "c2" convolution_param { num_output: 2 '
     'kernel_size: 1 } }', True),
    ('layer { name: "p" type: "Pooling" bottom: "norm" top: "p" pooling_param { pool: AVE kernel_size: 2 } }', False),
    ('layer { name: "s" type: "Softmax" bottom: "norm" top: "s" }', False),
    ('layer { name: "c2" type: "Convolution" bottom: "norm" top: "c2" convolution_param { num_output: 2 '
     'kernel_size: 1 } }\nlayer { name: "s" type: "Softmax" bottom: "norm" top: "s" }', False),
    ('', False),
])
def test_which_float32_layers_may_keep_a_bfloat16_top(readers, kept):
    """Only where every reader would lower the top to bfloat16 anyway (a convolution, or a MAX pooling read only
    by such): an AVE pooling, a Softmax or no reader keeps the float32 top."""
    net = Net(parse_text(LRN_NET + readers, caffe_pb2.NetParameter), caffe_pb2.TEST, seed=1)
    norm = next(i for i, lp in enumerate(net.layer_params) if lp.name == "norm")
    assert (norm in net._rounded_tops) == kept


def test_max_pool_window_past_the_edge_stays_finite_in_bfloat16():
    # kernel 1, stride 3 on 5 pixels: Caffe's third window starts at 6, past the edge, and yields −FLT_MAX, which
    # bfloat16 rounds to −inf; the lowest finite bfloat16 stands in for it.
    layer = build("name: 'p' type: 'Pooling' pooling_param { pool: MAX kernel_size: 1 stride: 3 }", [(1, 1, 5, 5)])
    x = torch.arange(25, dtype=torch.bfloat16).reshape(1, 1, 5, 5)
    (y,) = layer(x)
    assert y.shape == (1, 1, 3, 3) and y.dtype == torch.bfloat16
    assert torch.isfinite(y).all()
    np.testing.assert_array_equal(y[0, 0, :2, :2].float().numpy(), [[0, 3], [15, 18]])
    assert (y[0, 0, 2, :].float() == -torch.finfo(torch.bfloat16).max).all()


SMALL_NET = """
name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 16 dim: 16 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 32 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 64 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "gap" type: "Pooling" bottom: "conv2" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "gap" top: "fc"
        inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.02 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def test_bf16_forward_on_the_cpu_is_close_to_float32_and_ends_in_float32():
    net = Net(parse_text(SMALL_NET, caffe_pb2.NetParameter), caffe_pb2.TEST, seed=4)
    x = torch.from_numpy(np.random.default_rng(5).uniform(-100, 100, (4, 3, 16, 16)).astype(np.float32))
    with torch.no_grad():
        exact = net({"data": x})
        with precision.autocast("cpu", True):
            low = net({"data": x})
    assert low["conv2"].dtype == torch.bfloat16  # the convolutions ran in bfloat16
    assert low["fc"].dtype == low["prob"].dtype == torch.float32  # the scores and the Softmax: float32
    for blob, tol in (("conv2", 2e-2), ("fc", 2e-2), ("prob", 2e-2)):  # measured 4.6e-3, 2.1e-3, 4.3e-3
        a, b = low[blob].double(), exact[blob].double()
        err = float((a - b).abs().max() / b.abs().max())
        assert 1e-5 < err < tol, (blob, err)  # bfloat16's 8 bits: ~4e-3 a rounding, a few roundings deep
    np.testing.assert_allclose(low["prob"].sum(1).numpy(), 1.0, rtol=1e-6)


def test_winograd_stands_aside_under_bf16_autocast():
    from caffecam.engine.kernels import winograd

    x, w = torch.zeros(8, 128, 28, 28), torch.zeros(128, 128, 3, 3)
    if not winograd.suits(x, w, (1, 1), (1, 1), (1, 1), 1):
        pytest.skip("Winograd is off here (CAFFECAM_WINOGRAD=0)")
    with precision.autocast("cpu", True):
        assert not winograd.suits(x, w, (1, 1), (1, 1), (1, 1), 1)
