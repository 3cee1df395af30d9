"""scripts/cam.py out of the box on the published deploy nets (tests/zoo/) with seeded weights: the CAM pair it
finds, or the Grad-CAM it falls back to, named in its output and its JSON."""

import importlib.util
import json
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from google.protobuf import text_format

from caffecam.cam.gradients import choose_layers
from caffecam.engine.net import TEST, Net
from caffecam.engine.prototxt import read_net
from caffecam.proto import caffe_pb2

ROOT = Path(__file__).resolve().parents[2]
# net -> (input side the test runs at, None = as declared; shape of the saved top-1 map; the line naming the pair or
# method). VGG16 and AlexNet run shrunk: their fc6 (102M and 38M weights at 224/227) would take most of a minute to
# fill, write and read; the blob Grad-CAM picks is the same one at any size.
CASES = {
    "resnet50": (None, (1, 7, 7), "CAM of 'res5c' × 'fc1000' on cpu"),
    "squeezenet_v1.1": (None, (1, 14, 14), "CAM of 'conv10' channels as class maps (identity classifier: 'pool10' "
                                           "feeds the softmax directly) on cpu"),
    "mobilenet_v1": (None, (1, 7, 7), "CAM of 'conv6/sep' × 'fc7' on cpu"),
    "bvlc_googlenet": (None, (1, 7, 7), "CAM of 'inception_5b/output' × 'loss3/classifier' on cpu"),
    "places365_vgg16": (64, (1, 4, 4), "no CAM pair in net 'VGG-Places365': no global average pooling feeds the "
                                       "classifier; using Grad-CAM of 'conv5_3' (--method, --layer choose another)\n"
                                       "Grad-CAM of 'conv5_3' (scores 'fc8a') on cpu"),
    "bvlc_alexnet": (99, (1, 5, 5), "no CAM pair in net 'AlexNet': no global average pooling feeds the classifier; "
                                    "using Grad-CAM of 'conv5' (--method, --layer choose another)\n"
                                    "Grad-CAM of 'conv5' (scores 'fc8') on cpu"),
}


def cam_script():
    spec = importlib.util.spec_from_file_location("cam_script", ROOT / "scripts" / "cam.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seeded_values(lp, index, shape):
    """Weights that keep activations finite and maps non-flat, fast to draw: He-scaled normal filters, BatchNorm as
    the identity (mean 0, variance 1, factor 1), Scale 1, biases 0.01."""
    if lp.type == "BatchNorm":
        return np.zeros(shape, np.float32) if index == 0 else np.ones(shape, np.float32)
    if lp.type == "Scale" and index == 0:
        return np.ones(shape, np.float32)
    if lp.type in ("Convolution", "InnerProduct") and index == 0:
        rng = np.random.default_rng(zlib.crc32(lp.name.encode()))
        fan_in = int(np.prod(shape[1:]))
        return rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / fan_in))
    return np.full(shape, 0.01, np.float32)


def packed_floats(field, array):
    """Wire bytes of a packed repeated float field (BlobProto's `data` is field 5), straight from the array: the
    value-by-value copy of save_caffemodel took 2.5 s of this test for ResNet-50's 100 MB (measured, loaded CPU)."""
    raw, size = np.ascontiguousarray(array, "<f4").tobytes(), bytearray()
    length = len(raw)
    while True:  # the length as a varint
        byte, length = length & 0x7F, length >> 7
        size.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes([field << 3 | 2]) + bytes(size) + raw


def deploy_files(name, side, folder):
    """The zoo net (its input set to batch 1 and `side` pixels when given) and a .caffemodel of seeded weights."""
    param = read_net(ROOT / "tests" / "zoo" / f"{name}.prototxt")
    if side is not None:
        dims = param.input_dim if len(param.input_dim) else next(
            lp for lp in param.layer if lp.type == "Input").input_param.shape[0].dim
        dims[:] = [1, 3, side, side]
    model = folder / f"{name}.prototxt"
    model.write_text(text_format.MessageToString(param, as_utf8=True))
    net = Net(param, TEST, meta=True)  # the blob shapes, nothing allocated
    weights = caffe_pb2.NetParameter(name=net.name)
    for lp, layer in zip(net.layer_params, net.layers):
        if len(layer.blobs):
            entry = weights.layer.add()
            entry.CopyFrom(lp)
            for i, blob in enumerate(layer.blobs):
                proto = entry.blobs.add()
                proto.shape.dim.extend(blob.shape)
                proto.MergeFromString(packed_floats(5, seeded_values(lp, i, tuple(blob.shape))))
    (folder / f"{name}.caffemodel").write_bytes(weights.SerializeToString())
    return model, folder / f"{name}.caffemodel"


@pytest.mark.parametrize("name", sorted(CASES))
def test_cam_runs_out_of_the_box_on_the_zoo(name, tmp_path, capsys):
    side, map_shape, named = CASES[name]
    model, weights = deploy_files(name, side, tmp_path)
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    cam_script().main(["--model", str(model), "--weights", str(weights), "--cpu", "--no-progress", "--save-maps",
                       "--out", str(tmp_path / "out"), str(image)])
    out = capsys.readouterr().out
    assert named in out, out
    record = json.loads((tmp_path / "out" / "photo_cam.json").read_text())
    method = "gradcam" if "Grad-CAM" in named else "cam"
    assert record["method"] == method and f"of '{record['layer']}'" in named
    maps = np.load(tmp_path / "out" / "photo_cam.npy")
    assert maps.shape == map_shape and np.isfinite(maps).all()
    assert maps.max() > maps.min() or method == "gradcam"  # a Grad-CAM map may be all 0 (the ReLU), a CAM map not


# The published nets without a global-average-pooling head: Grad-CAM's blob and scores, by hand from the prototxts.
NO_GAP = {
    "bvlc_alexnet": ("conv5", "fc8"),
    "bvlc_reference_caffenet": ("conv5", "fc8"),
    "bvlc_reference_rcnn_ilsvrc13": ("conv5", "fc-rcnn"),
    "finetune_flickr_style": ("conv5", "fc8_flickr"),
    "places365_alexnet": ("conv5", "fc8"),
    "places365_vgg16": ("conv5_3", "fc8a"),
}


@pytest.mark.parametrize("name", sorted(NO_GAP))
def test_nets_without_gap_get_gradcam_at_the_last_conv(name):
    net = Net(read_net(ROOT / "tests" / "zoo" / f"{name}.prototxt"), TEST, meta=True)
    layers, method, note = choose_layers(net)
    assert (method, layers.feature_blob, layers.score_blob) == ("gradcam",) + NO_GAP[name]
    assert f"no global average pooling feeds the classifier; using Grad-CAM of '{NO_GAP[name][0]}'" in note
