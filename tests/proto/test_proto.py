"""The committed schema module must be exactly what protoc makes of caffe.proto."""

import subprocess
import sys
from pathlib import Path

import pytest

from caffecam.engine.prototxt import parse_text, read_net
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2

PROTO_DIR = Path(__file__).resolve().parents[2] / "caffecam" / "proto"


def test_generated_module_matches_proto(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={tmp_path}", "caffe.proto"],
        check=True,
    )
    assert (tmp_path / "caffe_pb2.py").read_text() == (PROTO_DIR / "caffe_pb2.py").read_text()


def test_field_numbers_follow_caffe():
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert fields["convolution_param"].number == 106
    assert fields["input_param"].number == 143
    assert caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layers"].number == 2
    assert caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layer"].number == 100
    assert caffe_pb2.SolverParameter.DESCRIPTOR.fields_by_name["weights"].number == 42
    assert caffe_pb2.V1LayerParameter.SOFTMAX_LOSS == 21
    assert caffe_pb2.Datum.DESCRIPTOR.fields_by_name["encoded"].number == 7


def test_unpacked_repeated_scalars_are_accepted():
    # proto2 repeated scalars without [packed] may arrive packed or unpacked; both must parse.
    # ConvolutionParameter.pad = field 3 (varint): unpacked = tag 0x18 per value; packed = tag 0x1a + length.
    unpacked = bytes([0x18, 2, 0x18, 3])
    packed = bytes([0x1A, 2, 2, 3])
    for wire in (unpacked, packed):
        msg = caffe_pb2.ConvolutionParameter()
        msg.ParseFromString(wire)
        assert list(msg.pad) == [2, 3]


def test_every_layer_parameter_of_caffe_master():
    # LayerParameter's *_param field numbers in BVLC Caffe master (caffe.proto), written out by hand.
    expected = {
        "transform_param": 100, "loss_param": 101, "accuracy_param": 102, "argmax_param": 103,
        "batch_norm_param": 139, "bias_param": 141, "clip_param": 148, "concat_param": 104,
        "contrastive_loss_param": 105, "convolution_param": 106, "crop_param": 144, "data_param": 107,
        "dropout_param": 108, "dummy_data_param": 109, "eltwise_param": 110, "elu_param": 140, "embed_param": 137,
        "exp_param": 111, "flatten_param": 135, "hdf5_data_param": 112, "hdf5_output_param": 113,
        "hinge_loss_param": 114, "image_data_param": 115, "infogain_loss_param": 116, "inner_product_param": 117,
        "input_param": 143, "log_param": 134, "lrn_param": 118, "memory_data_param": 119, "mvn_param": 120,
        "parameter_param": 145, "pooling_param": 121, "power_param": 122, "prelu_param": 131, "python_param": 130,
        "recurrent_param": 146, "reduction_param": 136, "relu_param": 123, "reshape_param": 133,
        "scale_param": 142, "sigmoid_param": 124, "softmax_param": 125, "spp_param": 132, "slice_param": 126,
        "swish_param": 147, "tanh_param": 127, "threshold_param": 128, "tile_param": 138, "window_data_param": 129,
    }
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert {name: fields[name].number for name in expected} == expected
    assert sorted(n for n in fields if n.endswith("_param")) == sorted(expected)


def test_defaults_and_legacy_messages():
    bn = caffe_pb2.BatchNormParameter()
    assert not bn.HasField("use_global_stats") and abs(bn.moving_average_fraction - 0.999) < 1e-7
    assert abs(bn.eps - 1e-5) < 1e-12
    assert caffe_pb2.PoolingParameter().round_mode == caffe_pb2.PoolingParameter.CEIL
    assert caffe_pb2.ScaleParameter().axis == 1 and caffe_pb2.ScaleParameter().num_axes == 1
    assert caffe_pb2.SliceParameter().axis == 1 and caffe_pb2.ReductionParameter().coeff == 1
    assert caffe_pb2.LossParameter().normalization == caffe_pb2.LossParameter.VALID
    assert caffe_pb2.V1LayerParameter.DESCRIPTOR.fields_by_name["layer"].message_type.name == "V0LayerParameter"
    assert caffe_pb2.V1LayerParameter.DECONVOLUTION == 39 and caffe_pb2.V1LayerParameter.SILENCE == 36
    assert caffe_pb2.V0LayerParameter.DESCRIPTOR.fields_by_name["det_fg_threshold"].number == 54
    assert caffe_pb2.SolverParameter.DESCRIPTOR.fields_by_name["layer_wise_reduce"].number == 41
    assert caffe_pb2.SolverState.DESCRIPTOR.fields_by_name["current_step"].number == 4


def test_a_resnet_block_parses():
    text = """
    name: "ResNet-50"
    input: "data" input_dim: 1 input_dim: 3 input_dim: 224 input_dim: 224
    layer { bottom: "data" top: "conv1" name: "conv1" type: "Convolution"
            convolution_param { num_output: 64 kernel_size: 7 pad: 3 stride: 2 bias_term: false } }
    layer { bottom: "conv1" top: "conv1" name: "bn_conv1" type: "BatchNorm"
            batch_norm_param { use_global_stats: true } }
    layer { bottom: "conv1" top: "conv1" name: "scale_conv1" type: "Scale" scale_param { bias_term: true } }
    layer { bottom: "conv1" top: "pool1" name: "pool1" type: "Pooling"
            pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR } }
    """
    net = parse_text(text, caffe_pb2.NetParameter)
    assert [lp.type for lp in net.layer] == ["Convolution", "BatchNorm", "Scale", "Pooling"]
    assert net.layer[1].batch_norm_param.use_global_stats and net.layer[2].scale_param.bias_term
    assert net.layer[3].pooling_param.round_mode == caffe_pb2.PoolingParameter.FLOOR


def test_v0_layer_connections_parse():
    text = """
    layers { layer { name: "conv1" type: "conv" num_output: 96 kernelsize: 11 stride: 4 biasterm: true }
             bottom: "data" top: "conv1" }
    """
    net = parse_text(text, caffe_pb2.NetParameter)
    v0 = net.layers[0].layer
    assert (v0.name, v0.type, v0.num_output, v0.kernelsize, v0.stride) == ("conv1", "conv", 96, 11, 4)


def test_a_fork_field_names_file_line_and_fix(tmp_path):
    path = tmp_path / "densenet.prototxt"
    path.write_text('layer {\n  name: "pool1" type: "Pooling"\n  pooling_param {\n    pool: MAX kernel_size: 3\n'
                    '    ceil_mode: false\n  }\n}\n')
    with pytest.raises(CaffeCamError) as err:
        read_net(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:5:5: ") and '"ceil_mode"' in msg and "delete it" in msg and "\n" not in msg
    with pytest.raises(CaffeCamError, match=r":1:\d+: .*no field named \"ceil_modes\"\.$"):
        parse_text("pooling_param { ceil_modes: true }", caffe_pb2.LayerParameter)
