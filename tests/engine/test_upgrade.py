"""Legacy nets upgraded as real Caffe upgrades them: tests/golden/upgrade/*.upgraded.prototxt are the output of BVLC
Caffe's own `upgrade_net_proto_text` (make_upgrade_golden.sh) on the legacy files beside them."""

from pathlib import Path

import numpy as np
import pytest

from caffecam.engine.net import TEST, TRAIN, Net
from caffecam.engine.prototxt import parse_text, read_net
from caffecam.engine.upgrade import upgrade_net
from caffecam.engine.weights import caffemodel_blobs
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2

HERE = Path(__file__).resolve().parents[1] / "golden" / "upgrade"
NAMES = ["v0_net", "v0_data", "v1_net", "bn_legacy"]


@pytest.mark.parametrize("name", NAMES)
def test_upgrade_is_caffes(name):
    ours, notes = upgrade_net(read_net(HERE / f"{name}.prototxt"), inputs_as_layer=True)
    caffes = read_net(HERE / f"{name}.upgraded.prototxt")
    assert notes
    # message equality field by field, so a difference names the layer
    assert [lp.name for lp in ours.layer] == [lp.name for lp in caffes.layer]
    for a, b in zip(ours.layer, caffes.layer):
        assert a == b, f"{a.name}:\n{a}\nCaffe's:\n{b}"
    assert ours == caffes


def test_v0_notes_and_padding():
    ours, notes = upgrade_net(read_net(HERE / "v0_net.prototxt"))
    assert notes[0].startswith("legacy V0 layers")
    assert "padding" not in {lp.type for lp in ours.layer}
    conv2 = next(lp for lp in ours.layer if lp.name == "conv2")
    assert list(conv2.bottom) == ["norm1"] and list(conv2.convolution_param.pad) == [1]


def test_v0_net_builds_as_its_upgrade():
    legacy = Net(read_net(HERE / "v0_net.prototxt"), TEST)
    upgraded = Net(read_net(HERE / "v0_net.upgraded.prototxt"), TEST)
    # conv1: (31 + 2·2 - 5)/2 + 1 = 16; pool1 AVE 3/2 pad 1, rounding up: ceil((16 + 2 - 3)/2) + 1 = 9; conv2 pad 1
    # keeps 9; pool2 MAX 2/2: ceil((9 - 2)/2) + 1 = 5; concat doubles the 4 channels
    assert legacy.blob_shapes["conv1"] == (2, 8, 16, 16)
    assert legacy.blob_shapes["cat"] == (2, 8, 5, 5)
    assert dict(legacy.blob_shapes) == {b: s for b, s in upgraded.blob_shapes.items()}


def test_v1_data_fields_move_to_transform_param():
    ours, notes = upgrade_net(read_net(HERE / "v1_net.prototxt"))
    data = ours.layer[0]
    assert data.transform_param.scale == pytest.approx(1 / 256) and data.transform_param.crop_size == 28
    assert data.transform_param.mean_file == "mean.binaryproto" and data.transform_param.mirror
    assert not data.data_param.HasField("scale") and not data.data_param.HasField("crop_size")
    assert any("transform_param" in n for n in notes)


def test_bn_legacy_trains_with_frozen_statistics():
    net = Net(read_net(HERE / "bn_legacy.prototxt"), TRAIN)
    bn = net.layer_params[[lp.name for lp in net.layer_params].index("bn")]
    assert [(p.lr_mult, p.decay_mult) for p in bn.param] == [(0, 0)] * 3


def test_current_net_is_left_alone():
    net = read_net(HERE / "v1_net.upgraded.prototxt")
    assert upgrade_net(net) == (net, [])
    net = read_net(HERE / "bn_legacy.upgraded.prototxt")  # three param specs, all 0 already: nothing to say
    assert upgrade_net(net) == (net, [])


def test_mixed_lists_refused():
    net = parse_text('name: "m" layer { name: "a" type: "ReLU" } layers { name: "b" type: RELU }',
                     caffe_pb2.NetParameter)
    with pytest.raises(CaffeCamError, match="mixes current `layer` and legacy `layers`"):
        upgrade_net(net)


def test_unknown_v0_type_is_one_line():
    net = parse_text('name: "u" layers { layer { name: "x" type: "warp" } }', caffe_pb2.NetParameter)
    with pytest.raises(CaffeCamError, match=r"^net 'u', legacy layer 0 \('x'\): unknown V0 layer type 'warp'"):
        upgrade_net(net)


def test_v0_field_of_another_type_is_noted():
    net = parse_text('name: "n" input: "a" '
                     'layers { layer { name: "r" type: "relu" num_output: 3 } bottom: "a" top: "a" }',
                     caffe_pb2.NetParameter)
    ours, notes = upgrade_net(net)
    assert ours.layer[0].type == "ReLU" and not ours.layer[0].HasField("convolution_param")
    assert any("num_output does not apply to type 'relu'" in n for n in notes)


def test_v0_caffemodel_blobs_by_name():
    model = caffe_pb2.NetParameter(name="old")
    conn = model.layers.add()
    conn.layer.name, conn.layer.type = "conv1", "conv"
    blob = conn.layer.blobs.add(num=2, channels=1, height=1, width=3)
    blob.data.extend([1, 2, 3, 4, 5, 6])
    model.layers.add().layer.name = "relu1"
    (name, arrays), (name2, arrays2) = caffemodel_blobs(model)
    assert (name, name2, arrays2) == ("conv1", "relu1", [])
    np.testing.assert_array_equal(arrays[0], np.arange(1, 7, dtype=np.float32).reshape(2, 1, 1, 3))
