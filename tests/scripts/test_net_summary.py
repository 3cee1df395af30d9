"""scripts/net_summary.py: text and --json output on a small net with hand-counted shapes, and on GoogLeNet-CAM."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from caffecam.engine.net import Net
from caffecam.engine.prototxt import parse_text
from caffecam.engine.weights import save_caffemodel
from caffecam.proto import caffe_pb2
from scripts import net_summary

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "net_summary.py"
DEPLOY = ROOT / "prototxt" / "googlenet_cam_deploy.prototxt"

SMALL = """
name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { crop_size: 8 } data_param { source: "x" batch_size: 4 } }
layer { name: "data" type: "Input" top: "data" include { phase: TEST }
  input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" include { phase: TRAIN } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" include { phase: TEST } }
"""
# By hand: conv 8 -> floor((8+2-3)/2)+1 = 4; pool ceil((4-3)/2)+1 = 2; fc input 4·2·2 = 16.
# Parameters: conv 4·3·3·3 + 4 = 112, fc 5·16 + 5 = 85: 197.
TEST_BLOBS = {"data": [1, 3, 8, 8], "conv": [1, 4, 4, 4], "pool": [1, 4, 2, 2], "fc": [1, 5], "prob": [1, 5]}
PARAMS = {"conv": [[4, 3, 3, 3], [4]], "fc": [[5, 16], [5]]}


def run_script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "tiny.prototxt"
    path.write_text(SMALL)
    return path


def test_json_on_small_net(small):
    out = run_script(small, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data == {"blobs": TEST_BLOBS, "params": PARAMS, "total_params": 197}


def test_text_on_small_net_train_phase(small, capsys):
    net_summary.main([str(small), "--phase", "TRAIN"])
    text = capsys.readouterr().out
    assert "data (Data)" in text and "Top shape: data: 4 3 8 8 (768)" in text and "label: 4 (4)" in text
    assert "Top shape: conv: 4 4 4 4 (256)" in text and "Param 0: 4 3 3 3 (108)" in text
    assert "Param 0: 5 16 (80)" in text and "Top shape: loss: scalar" in text
    assert "Net output #0: loss (loss weight 1)" in text
    assert "Total parameters: 197" in text


def test_input_shape_override(small, capsys):
    net_summary.main([str(small), "--phase", "TRAIN", "--json", "--input-shape", "data=2,3,16,16"])
    data = json.loads(capsys.readouterr().out)
    # conv 16 -> 8, pool ceil(5/2)+1 = 4, fc input 4·4·4 = 64.
    assert data["blobs"]["label"] == [2] and data["blobs"]["pool"] == [2, 4, 4, 4]
    assert data["params"]["fc"] == [[5, 64], [5]] and data["total_params"] == 112 + 5 * 64 + 5


@pytest.mark.parametrize("args,needle", [
    (["--input-shape", "data=1,3,x"], "--input-shape"),
    (["--input-shape", "nope=1,3,8,8"], "'nope'"),
])
def test_bad_options_are_one_line_errors(small, capsys, args, needle):
    with pytest.raises(SystemExit) as info:
        net_summary.main([str(small), *args])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1


def test_weights_report_and_mismatch(small, tmp_path):
    net = Net(parse_text(SMALL, caffe_pb2.NetParameter), caffe_pb2.TEST, seed=1)
    good = tmp_path / "tiny.caffemodel"
    save_caffemodel(net, good)
    out = run_script(small, "--json", "--weights", good)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["total_params"] == 197 and "copied 2 layers" in out.stderr
    other = Net(parse_text(SMALL.replace("num_output: 5", "num_output: 6"), caffe_pb2.NetParameter), seed=1)
    bad = tmp_path / "other.caffemodel"
    save_caffemodel(other, bad)
    out = run_script(small, "--weights", bad)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: ") and "(6, 16)" in out.stderr and "(5, 16)" in out.stderr


def test_malformed_prototxt(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('name: "x"\nlayer {\n  name: "a"\n  typo: 1\n}\n')
    out = run_script(bad)
    assert out.returncode == 1 and out.stderr.startswith(f"error: {bad}:4:") and "Traceback" not in out.stderr


@pytest.mark.skipif(not DEPLOY.is_file(), reason="prototxt/googlenet_cam_deploy.prototxt not generated yet")
def test_googlenet_cam_deploy_shapes():
    out = run_script(DEPLOY, "--json", "--input-shape", "data=1,3,224,224")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    blobs, params = data["blobs"], data["params"]
    assert blobs["data"] == [1, 3, 224, 224]
    assert blobs["conv1/7x7_s2"] == [1, 64, 112, 112] and blobs["pool1/3x3_s2"] == [1, 64, 56, 56]
    assert blobs["pool2/3x3_s2"] == [1, 192, 28, 28] and blobs["pool3/3x3_s2"] == [1, 480, 14, 14]
    assert blobs["inception_4e/output"] == [1, 832, 14, 14]
    assert blobs["CAM_conv"] == [1, 1024, 14, 14] and blobs["CAM_pool"] == [1, 1024, 1, 1]
    assert blobs["CAM_fc_14"] == [1, 14] and blobs["prob"] == [1, 14]
    # CAM_conv: 3×3, group 2 over 832 channels -> weight 1024×416×3×3.
    assert params["CAM_conv"] == [[1024, 416, 3, 3], [1024]] and params["CAM_fc_14"] == [[14, 1024], [14]]
    assert params["conv1/7x7_s2"] == [[64, 3, 7, 7], [64]]
    counted = sum(_prod(d) for blobs_ in params.values() for d in blobs_)
    assert data["total_params"] == counted
    assert data["total_params"] > 1024 * 416 * 9 + 1024 + 14 * 1024 + 14


def _prod(dims):
    out = 1
    for d in dims:
        out *= d
    return out
