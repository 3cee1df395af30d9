"""The CAM pair found by itself in the published deploy nets (tests/zoo/), and CAM on a 1×1-conv classifier and on a
SqueezeNet-style head against NumPy."""

from pathlib import Path

import numpy as np
import pytest
import torch

from caffecam.cam.maps import CamModel
from caffecam.cam.pairs import find_cam_layers
from caffecam.engine.net import TEST, Net
from caffecam.engine.prototxt import parse_text, read_net
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2

ROOT = Path(__file__).resolve().parents[2]

# net -> (feature blob, classifier or None for SqueezeNet's identity, pooling, scores blob, softmax top), by hand
# from the prototxts.
ZOO = {
    "tests/zoo/resnet50.prototxt": ("res5c", "fc1000", "pool5", "fc1000", "prob"),
    "tests/zoo/bvlc_googlenet.prototxt": ("inception_5b/output", "loss3/classifier", "pool5/7x7_s1",
                                          "loss3/classifier", "prob"),
    "tests/zoo/places365_googlenet.prototxt": ("inception_5b/output", "loss3/classifier", "pool5/7x7_s1",
                                               "loss3/classifier", "prob"),
    "tests/zoo/mobilenet_v1.prototxt": ("conv6/sep", "fc7", "pool6", "fc7", "prob"),
    "tests/zoo/mobilenet_v2.prototxt": ("conv6_4/bn", "fc7", "pool6", "fc7", "prob"),
    "tests/zoo/squeezenet_v1.0.prototxt": ("conv10", None, "pool10", "pool10", "prob"),
    "tests/zoo/squeezenet_v1.1.prototxt": ("conv10", None, "pool10", "pool10", "prob"),
    "tests/zoo/cam_vgg16.prototxt": ("CAM_conv", "CAM_fc", "CAM_pool", "CAM_fc", "prob"),
    "prototxt/googlenet_cam_deploy.prototxt": ("CAM_conv", "CAM_fc_14", "CAM_pool", "CAM_fc_14", "prob"),
}


@pytest.mark.parametrize("path", sorted(ZOO))
def test_pair_found_in_published_nets(path):
    net = Net(read_net(ROOT / path), TEST, meta=True)  # shapes and graph only, no parameters allocated
    layers = find_cam_layers(net)
    assert (layers.feature_blob, layers.fc_layer, layers.pool_layer, layers.score_blob, layers.prob_blob) == ZOO[path]
    assert layers.end_layer == "prob"
    if layers.fc_layer is None:
        assert "conv10' channels as class maps" in layers.describe()
    else:
        assert layers.describe() == f"'{ZOO[path][0]}' × '{ZOO[path][1]}'"


def test_overrides_still_win_on_a_zoo_net():
    net = Net(read_net(ROOT / "tests/zoo/mobilenet_v1.prototxt"), TEST, meta=True)
    layers = find_cam_layers(net, feature_blob="conv6/sep", fc_layer="fc7")
    assert (layers.feature_blob, layers.fc_layer, layers.pool_layer) == ("conv6/sep", "fc7", "pool6")
    with pytest.raises(CaffeCamError, match="--fc-layer conv6/sep/bn: is a BatchNorm layer"):
        find_cam_layers(net, fc_layer="conv6/sep/bn")


# ---- small nets with seeded weights -------------------------------------------------------------------------------

BODY = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1
    weight_filler { type: "gaussian" std: 0.05 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
"""
CONV_HEAD = """
layer { name: "pool" type: "Pooling" bottom: "conv1" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "drop" type: "Dropout" bottom: "pool" top: "pool" }
layer { name: "cls" type: "Convolution" bottom: "pool" top: "cls"
  convolution_param { num_output: 4 kernel_size: 1
    weight_filler { type: "gaussian" std: 1 } bias_filler { type: "constant" value: 0.3 } } }
layer { name: "prob" type: "Softmax" bottom: "cls" top: "prob" }
"""
SQUEEZE_HEAD = """
layer { name: "conv10" type: "Convolution" bottom: "conv1" top: "conv10"
  convolution_param { num_output: 5 kernel_size: 1
    weight_filler { type: "gaussian" std: 1 } bias_filler { type: "constant" value: 0.2 } } }
layer { name: "relu10" type: "ReLU" bottom: "conv10" top: "conv10" }
layer { name: "pool10" type: "Pooling" bottom: "conv10" top: "pool10" pooling_param { pool: AVE global_pooling: true } }
layer { name: "prob" type: "Softmax" bottom: "pool10" top: "prob" }
"""


def small_net(head, seed=3):
    return Net(parse_text(BODY + head, caffe_pb2.NetParameter), TEST, seed=seed)


def run_all_classes(net):
    """CamModel on two seeded 12×12 inputs, all classes in rank order, plus the net's own blobs for those inputs."""
    rng = np.random.default_rng(0)
    xs = [rng.uniform(-50, 50, (12, 12, 3)).astype(np.float32) for _ in range(2)]
    model = CamModel(net, mean=(0, 0, 0), device="cpu", channels_last=False)
    out = model.run(xs, top_k=model.num_classes)
    with torch.no_grad():
        blobs = net.forward({"data": torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous()})
    return model, out, {k: v.numpy() for k, v in blobs.items()}


def test_one_by_one_conv_classifier_maps_equal_numpy():
    net = small_net(CONV_HEAD)
    model, out, blobs = run_all_classes(net)
    assert model.layers.describe() == "'conv1' × 'cls'"
    feats = blobs["conv1"]  # (2, 6, 6, 6)
    w = net.params["cls"][0].detach().numpy()[:, :, 0, 0]  # (4 classes, 6 channels)
    b = net.params["cls"][1].detach().numpy()
    expect = np.einsum("kc,nchw->nkhw", w, feats)  # every class, class order
    for i in range(2):
        np.testing.assert_allclose(out.maps[i], expect[i, out.class_ids[i]], rtol=1e-4, atol=1e-4)
        # the map's mean over positions plus the bias is the net's score (the pooling's mean, moved through w)
        scores = out.maps[i].mean((1, 2)) + b[out.class_ids[i]]
        np.testing.assert_allclose(scores, blobs["cls"][i, out.class_ids[i], 0, 0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out.probs[i], blobs["prob"][i, out.class_ids[i], 0, 0], rtol=1e-5)


def test_squeezenet_style_maps_are_the_channels():
    net = small_net(SQUEEZE_HEAD)
    model, out, blobs = run_all_classes(net)
    assert model.layers.fc_layer is None and model.num_classes == 5
    feats = blobs["conv10"]  # after the in-place ReLU
    for i in range(2):
        np.testing.assert_allclose(out.maps[i], feats[i, out.class_ids[i]], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.maps[i].mean((1, 2)), blobs["pool10"][i, out.class_ids[i], 0, 0],
                                   rtol=1e-5, atol=1e-6)
        e = np.exp(feats[i].mean((1, 2)) - feats[i].mean((1, 2)).max())
        np.testing.assert_allclose(out.probs[i], (e / e.sum())[out.class_ids[i]], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("between", [
    'layer { name: "r" type: "ReLU" bottom: "pool" top: "pool" }',
    'layer { name: "bn" type: "BatchNorm" bottom: "pool" top: "pool" }',
    'layer { name: "sc" type: "Scale" bottom: "pool" top: "pool" scale_param { bias_term: true } }',
])
def test_nonlinear_layer_after_the_pooling_is_one_clear_line(between):
    head = CONV_HEAD.replace('layer { name: "drop" type: "Dropout" bottom: "pool" top: "pool" }', between)
    net = Net(parse_text(BODY + head, caffe_pb2.NetParameter), TEST, meta=True)
    with pytest.raises(CaffeCamError, match="not linear in the map sum.*--feature-blob and --fc-layer") as e:
        find_cam_layers(net)
    assert "\n" not in str(e.value)
