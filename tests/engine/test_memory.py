"""Will a net fit: bytes counted by hand on a small net, the refusal message, the address-space limit, and meta
nets that hold no memory."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from caffecam.engine.memory import check_fits, layer_bytes
from caffecam.engine.net import Net
from caffecam.engine.prototxt import parse_text
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2

ROOT = Path(__file__).resolve().parents[2]
NET = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 2 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
"""
# By hand, in floats: data 2·3·8·8 = 384; conv weight 4·3·3·3 = 108, bias 4, top 2·4·6·6 = 288; relu in place: 0;
# fc weight 10·144 = 1440, bias 10, top 2·10 = 20.
BY_HAND = [("the input blobs", 384), ("layer 'data' (Input)", 0), ("layer 'conv' (Convolution)", 400),
           ("layer 'relu' (ReLU)", 0), ("layer 'fc' (InnerProduct)", 1470)]


def net(phase=caffe_pb2.TEST, **kw):
    return Net(parse_text(NET, caffe_pb2.NetParameter), phase, **kw)


def test_bytes_by_layer_and_training_doubles_them():
    assert layer_bytes(net()) == [(what, 4 * n) for what, n in BY_HAND]
    assert layer_bytes(net(caffe_pb2.TRAIN)) == [(what, 8 * n) for what, n in BY_HAND]


def test_refusal_names_the_largest_layer():
    small = net()
    check_fits(small, available=4 * 2254)
    with pytest.raises(CaffeCamError) as err:
        check_fits(small, available=4 * 2254 - 1)
    assert str(err.value) == ("net 'small' needs 8.8 KiB for its parameters and blobs but only 8.8 KiB of memory is "
                              "available; the largest is layer 'fc' (InnerProduct) with 5.7 KiB; use a smaller input "
                              "size or batch, or fewer outputs in that layer")


def test_meta_net_has_shapes_but_no_memory_and_materialising_keeps_the_fillers():
    meta = net(meta=True, seed=3)
    assert all(p.is_meta for p in meta.parameters()) and meta.params["fc"][0].shape == (10, 144)
    real, again = net(seed=3), net(seed=3)
    assert not any(p.is_meta for p in real.parameters())
    for a, b in zip(real.parameters(), again.parameters()):
        assert torch.equal(a, b)
    # Caffe's order of draws: conv's gaussian weight, its bias (constant 0), then fc's xavier weight, U(±√(3/144)).
    gen = torch.Generator().manual_seed(3)
    conv = torch.empty(4, 3, 3, 3).normal_(0, 2, generator=gen)
    fc = torch.empty(10, 144).uniform_(-(3 / 144) ** 0.5, (3 / 144) ** 0.5, generator=gen)
    assert torch.equal(real.params["conv"][0], conv) and torch.equal(real.params["fc"][0], fc)
    assert not real.params["conv"][1].any()


def test_address_space_limit_is_what_is_available():
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30));"
            "from caffecam.engine.memory import available_bytes; print(available_bytes())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 0 < int(out.stdout) < 3 << 30


SHARED = """name: "shared"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 } } }
layer { name: "a" type: "InnerProduct" bottom: "data" top: "a" param { name: "w" }
        inner_product_param { num_output: 4 bias_term: false weight_filler { type: "gaussian" std: 1 } } }
layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" }
        inner_product_param { num_output: 4 bias_term: false weight_filler { type: "gaussian" std: 1 } } }
layer { name: "c" type: "InnerProduct" bottom: "b" top: "c"
        inner_product_param { num_output: 4 bias_term: false weight_filler { type: "gaussian" std: 1 } } }
"""


def test_shared_blob_stays_one_tensor_and_the_sharer_still_draws():
    built = Net(parse_text(SHARED, caffe_pb2.NetParameter), caffe_pb2.TEST, seed=5)
    gen = torch.Generator().manual_seed(5)
    a, _b, c = (torch.empty(4, 4).normal_(0, 1, generator=gen) for _ in range(3))  # b's draw is discarded, as Caffe
    assert built.params["a"][0] is built.params["b"][0]
    assert torch.equal(built.params["a"][0], a) and torch.equal(built.params["c"][0], c)
    assert layer_bytes(built)[2:] == [("layer 'a' (InnerProduct)", 4 * 20), ("layer 'b' (InnerProduct)", 4 * 4),
                                      ("layer 'c' (InnerProduct)", 4 * 20)]
