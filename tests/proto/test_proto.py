"""The committed schema module must be exactly what protoc makes of caffe.proto."""

import subprocess
import sys
from pathlib import Path

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
