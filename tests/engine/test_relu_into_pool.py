"""An in-place ReLU whose top only a MAX pooling reads: in training on the compiled loops, Net leaves the ReLU's
backward unrecorded and the pooling's backward does it (net._relu_pool_pairs). Which pairs qualify; gradients equal
to the plain path's, bit for bit, where whole windows are 0; a blob made a leaf by a forward hook (Grad-CAM) and a
forward stopped at the ReLU keep the plain path. Real Caffe's run of such a net: tests/golden (relu_pool)."""

import numpy as np
import pytest
import torch

from caffecam.cam.gradients import leaf_blob
from caffecam.engine.kernels import cpu_loops
from caffecam.engine.net import TRAIN, Net
from caffecam.engine.prototxt import parse_text
from caffecam.proto import caffe_pb2

pytestmark = pytest.mark.skipif(cpu_loops._load() is False, reason="numba is not installed")

INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 3 dim: 4 dim: 9 dim: 8 } } }\n'
# a bias of −3 leaves many windows wholly at 0 after the ReLU
CONV = """layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.4 }
                      bias_filler { type: "constant" value: -3 } } }
"""
RELU = 'layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }\n'
POOL = 'layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 3 ' \
       'stride: 2 } }\n'
FC = """layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 } } }
"""


@pytest.fixture(autouse=True)
def small_tensors_take_the_loops(monkeypatch):
    monkeypatch.setattr(cpu_loops, "MIN_ELEMENTS", 0)


def build(text, phase=TRAIN):
    net = Net(parse_text(text, caffe_pb2.NetParameter), phase, seed=3)
    return net.to(memory_format=torch.channels_last)


def data(seed=0):
    x = np.random.default_rng(seed).standard_normal((3, 4, 9, 8)).astype(np.float32)
    return torch.from_numpy(x).contiguous(memory_format=torch.channels_last)


def grads(net, x, end_blob="fc"):
    """(blobs, parameter gradients) of Σ w ⊙ end_blob with fixed weights w."""
    blobs = net({"data": x})
    y = blobs[end_blob]
    w = torch.from_numpy(np.random.default_rng(9).standard_normal(tuple(y.shape)).astype(np.float32))
    (y * w).sum().backward()
    out = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    return blobs, out


@pytest.mark.parametrize("text,pairs", [
    (INPUT + CONV + RELU + POOL, {2: 3}),  # layer indices: the Input layer is 0
    (INPUT + CONV + RELU.replace('top: "conv"', 'top: "r"') + POOL.replace('bottom: "conv"', 'bottom: "r"'), {}),
    (INPUT + CONV + RELU + POOL + 'layer { name: "cat" type: "Concat" bottom: "pool" bottom: "pool" top: "c" }\n',
     {2: 3}),
    (INPUT + CONV + RELU + POOL + POOL.replace('name: "pool"', 'name: "pool2"').replace('top: "pool"', 'top: "p2"'),
     {}),  # two readers
    (INPUT + CONV + RELU + POOL.replace("MAX", "AVE"), {}),
    (INPUT + CONV + RELU + POOL.replace('top: "pool"', 'top: "pool" top: "mask"'), {}),
    (INPUT + CONV + RELU.replace('type: "ReLU"', 'type: "ReLU" relu_param { negative_slope: 0.1 }') + POOL, {}),
])
def test_which_relus_fold_into_their_pooling(text, pairs):
    assert build(text)._relu_into_pool == pairs


def test_folded_gradients_equal_the_plain_path_bit_for_bit():
    net = build(INPUT + CONV + RELU + POOL + FC)
    x = data()
    blobs, folded = grads(net, x)
    assert (blobs["pool"] == 0).float().mean() > 0.1  # windows wholly at 0: the ReLU's backward matters there
    assert type(blobs["pool"].grad_fn).__name__ == "_LoopsMaxPoolBackward"
    assert blobs["conv"].grad_fn.name() != "ReluBackward0"  # the ReLU recorded nothing
    net._relu_into_pool = {}
    blobs, plain = grads(net, x)
    assert blobs["conv"].grad_fn.name() == "ReluBackward0"
    for a, b in zip(folded, plain):
        assert torch.equal(a, b)
    # and against float64 in NCHW memory, the PyTorch path throughout
    ref = build(INPUT + CONV + RELU + POOL + FC).double().to(memory_format=torch.contiguous_format)
    _, expect = grads(ref, x.double().contiguous())
    for a, b in zip(folded, expect):
        np.testing.assert_allclose(a.double().numpy(), b.numpy(), rtol=1e-5, atol=1e-5 * b.abs().max().item())


def test_folded_gradients_under_bfloat16_autocast_equal_the_plain_path():
    """Under bfloat16 autocast the pooling runs in bfloat16's own bits (numba_bf16.py) and still folds the ReLU:
    the same gradients as with the ReLU's own backward, bit for bit."""
    net = build(INPUT + CONV + RELU + POOL + FC)
    x = data(1)
    with torch.autocast("cpu", torch.bfloat16):
        blobs, folded = grads(net, x)
        assert blobs["pool"].dtype == torch.bfloat16 and (blobs["pool"] == 0).float().mean() > 0.1
        assert type(blobs["pool"].grad_fn).__name__ == "_LoopsMaxPoolBackward"
        assert blobs["conv"].grad_fn.name() != "ReluBackward0"
        net._relu_into_pool = {}
        blobs, plain = grads(net, x)
        assert blobs["conv"].grad_fn.name() == "ReluBackward0"
    for a, b in zip(folded, plain):
        assert torch.equal(a, b)


def test_a_leaf_made_by_a_hook_keeps_the_plain_backward():
    """Grad-CAM on the ReLU's blob: the gradient of the scores with respect to the rectified map, where a window
    wholly at 0 passes its gradient to its first cell (the ReLU's backward lies before the leaf)."""
    net = build(INPUT + CONV + RELU + POOL + FC)
    x = data(1)
    with leaf_blob(net, "conv") as box, torch.enable_grad():
        fc = net({"data": x})["fc"]
        (g,) = torch.autograd.grad(fc.sum(), box["leaf"])
    net._relu_into_pool = {}
    with leaf_blob(net, "conv") as box, torch.enable_grad():
        fc = net({"data": x})["fc"]
        (expect,) = torch.autograd.grad(fc.sum(), box["leaf"])
    assert torch.equal(g, expect)
    assert (g[box["leaf"] == 0] != 0).any()  # cells at 0 that a mask would have cut


HOOKS = {"forward": lambda relu: relu.register_forward_hook(lambda m, args, out: [out[0] * 2]),
         "pre": lambda relu: relu.register_forward_pre_hook(lambda m, args: (args[0] * 2,))}


@pytest.mark.parametrize("kind", HOOKS)
def test_a_hook_on_the_relu_keeps_its_backward(kind):
    """A hook that computes from the ReLU's output or input (here ×2): the gradient passes through the hook's
    operation and the ReLU, which must have recorded its backward."""
    net = build(INPUT + CONV + RELU + POOL + FC)
    x = data(3)
    handle = HOOKS[kind](net.layer_by_name["relu"])
    blobs, hooked = grads(net, x)
    assert blobs["pool"].grad_fn is not None
    handle.remove()
    net._relu_into_pool = {}
    HOOKS[kind](net.layer_by_name["relu"])
    _, plain = grads(net, x)
    for a, b in zip(hooked, plain):
        assert torch.equal(a, b)


def test_a_forward_stopped_at_the_relu_records_its_backward():
    net = build(INPUT + CONV + RELU + POOL + FC)
    x = data(2)
    blobs = net({"data": x}, end="relu")
    assert blobs["conv"].grad_fn.name() == "ReluBackward0"
    _, stopped = grads(net, x)  # a full forward after it folds again
    net._relu_into_pool = {}
    _, plain = grads(net, x)
    for a, b in zip(stopped, plain):
        assert torch.equal(a, b)
