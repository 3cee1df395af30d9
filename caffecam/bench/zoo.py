"""Deploy nets against their peers for `make bench`: ResNet-50 (tests/zoo, as published) and GoogLeNet-CAM at
batch 16, with seeded weights written as a .caffemodel, run by us (inference mode, channels_last, BatchNorm
folded: engine/fold.py), by OpenCV 4's DNN module and by real Caffe's `caffe time` on the same prototxt and
weights. OpenCV's output must agree with ours before it is timed.

Seeded weights: He-normal convolution and InnerProduct weights, small biases, Scale γ ~ U(0.5, 1.5) and β ~ N(0,
0.1), and each BatchNorm given the statistics it measures on the seeded input (one forward, layer by layer, with
scale factor 1), so that activations stay of order 1 through 50 layers, as in a trained net.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format

from caffecam.engine.cost import forward_flops_per_image
from caffecam.engine.fold import fold_batchnorm
from caffecam.engine.net import TEST, Net
from caffecam.engine.prototxt import read_net
from caffecam.engine.weights import save_caffemodel
from caffecam.nets.googlenet_cam import googlenet_cam
from caffecam.proto import caffe_pb2

REPO = Path(__file__).resolve().parents[2]
RESNET50 = REPO / "tests" / "zoo" / "resnet50.prototxt"
# A quick run's stand-in for ResNet-50: its block (conv-BN-Scale-ReLU twice, an identity shortcut), then its head.
TINY_RESNET = """name: "TinyResNet"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" batch_norm_param { use_global_stats: true } }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" batch_norm_param { use_global_stats: true } }
layer { name: "sc2" type: "Scale" bottom: "conv2" top: "conv2" scale_param { bias_term: true } }
layer { name: "sum" type: "Eltwise" bottom: "conv1" bottom: "conv2" top: "sum" }
layer { name: "relu2" type: "ReLU" bottom: "sum" top: "sum" }
layer { name: "pool" type: "Pooling" bottom: "sum" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@dataclass
class DeployCase:
    """One deploy net written for the peers (prototxt + caffemodel) and built for us."""
    name: str
    prototxt: Path
    weights: Path
    net: Net  # ours: weights in, BatchNorm folded, eval
    input: np.ndarray  # N×C×H×W float32, the same for every side
    out_blob: str
    flops_per_image: float
    batch_norms: int  # folded


def with_batch(param, batch):
    """The NetParameter with its image input's batch set to `batch` (Input layer, input_shape or input_dim)."""
    param = caffe_pb2.NetParameter.FromString(param.SerializeToString())
    if len(param.input_shape):
        param.input_shape[0].dim[0] = batch
    elif len(param.input_dim):
        param.input_dim[0] = batch
    for lp in param.layer:
        if lp.type == "Input":
            for shape in lp.input_param.shape:
                shape.dim[0] = batch
    return param


@torch.no_grad()
def seed_weights(net, x, seed=0):
    """The module docstring's seeded weights, in place; the BatchNorm statistics measured on input x."""
    g = torch.Generator().manual_seed(seed)
    for lp, layer in zip(net.layer_params, net.layers):
        blobs = layer.blobs
        if lp.type in ("Convolution", "InnerProduct") and len(blobs):
            fan_in = blobs[0][0].numel()
            blobs[0].copy_(torch.randn(blobs[0].shape, generator=g) * (2.0 / fan_in) ** 0.5)
            if len(blobs) > 1:
                blobs[1].copy_(torch.randn(blobs[1].shape, generator=g) * 0.01)
        elif lp.type == "Scale" and len(blobs):
            blobs[0].copy_(torch.rand(blobs[0].shape, generator=g) + 0.5)
            if len(blobs) > 1:
                blobs[-1].copy_(torch.randn(blobs[-1].shape, generator=g) * 0.1)

    def measure(layer, inputs):
        x = inputs[0].double()
        dims = [0] + list(range(2, x.dim()))
        layer.blobs[0].copy_(x.mean(dims))
        layer.blobs[1].copy_(x.var(dims))
        layer.blobs[2].fill_(1.0)

    hooks = [layer.register_forward_pre_hook(measure) for lp, layer in zip(net.layer_params, net.layers)
             if lp.type == "BatchNorm"]
    try:
        net.fold = None
        net(torch.as_tensor(x[:4]))  # the statistics of a few images: cheaper, and as good for the purpose
    finally:
        for h in hooks:
            h.remove()


def build_case(name, param, batch, work, out_blob="prob", seed=0):
    """Write `param` at `batch` with seeded weights under work/name/ and build our side of it."""
    folder = Path(work) / name
    folder.mkdir(parents=True, exist_ok=True)
    param = with_batch(param, batch)
    prototxt, weights = folder / "deploy.prototxt", folder / "weights.caffemodel"
    prototxt.write_text(text_format.MessageToString(param))
    net = Net(param, TEST)
    shape = net.blob_shapes[net.input_blobs[0]]
    rng = np.random.default_rng(seed)
    x = (rng.random(shape, dtype=np.float32) * 255 - 117).astype(np.float32)  # mean-subtracted pixel range
    seed_weights(net, x, seed)
    save_caffemodel(net, weights)
    net.eval().to(memory_format=torch.channels_last)
    folded = fold_batchnorm(net, keep={out_blob})
    return DeployCase(name, prototxt, weights, net, x, out_blob, forward_flops_per_image(net), folded)


def resnet50_case(batch, work):
    return build_case("resnet50", read_net(RESNET50), batch, work)


def tiny_resnet_case(batch, work):
    return build_case("tiny_resnet", text_format.Parse(TINY_RESNET, caffe_pb2.NetParameter()), batch, work)


def googlenet_cam_case(batch, work, num_classes=14, width_div=1, input_size=224):
    param = googlenet_cam(num_classes, width_div, input_size, head="prob", batch=batch)
    return build_case("googlenet_cam", param, batch, work)
