"""scripts/net_summary.py: text and --json output on a small net with hand-counted shapes, and on GoogLeNet-CAM."""

import json
import re
import resource
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
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 }}
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
    assert data == {"blobs": TEST_BLOBS, "params": PARAMS, "total_params": 197, "macs": {"conv": 1728, "fc": 80},
                    "total_macs": 1808}


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


# AlexNet's deploy net at a 22700×22700 input. By hand: conv1 floor((22700 − 11)/4) + 1 = 5673; pool1
# ceil((5673 − 3)/2) + 1 = 2836; conv2 (pad 2, kernel 5) 2836; pool2 ceil(2833/2) + 1 = 1418; conv3-5 (pad 1) 1418;
# pool5 ceil(1415/2) + 1 = 709. fc6's weight: 4096 × 256·709·709 = 4096 × 128,686,336 floats, 2.1 TB (1.9 TiB).
HUGE_ALEXNET = """name: "alexnet_huge"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 22700 dim: 22700 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 96 kernel_size: 11 stride: 4 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 }}
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 256 pad: 2 kernel_size: 5 group: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "norm2" type: "LRN" bottom: "conv2" top: "norm2" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "pool2" type: "Pooling" bottom: "norm2" top: "pool2" pooling_param { pool: MAX kernel_size: 3 stride: 2 }}
layer { name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3"
        convolution_param { num_output: 384 pad: 1 kernel_size: 3 } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "conv4" type: "Convolution" bottom: "conv3" top: "conv4"
        convolution_param { num_output: 384 pad: 1 kernel_size: 3 group: 2 } }
layer { name: "relu4" type: "ReLU" bottom: "conv4" top: "conv4" }
layer { name: "conv5" type: "Convolution" bottom: "conv4" top: "conv5"
        convolution_param { num_output: 256 pad: 1 kernel_size: 3 group: 2 } }
layer { name: "relu5" type: "ReLU" bottom: "conv5" top: "conv5" }
layer { name: "pool5" type: "Pooling" bottom: "conv5" top: "pool5" pooling_param { pool: MAX kernel_size: 3 stride: 2 }}
layer { name: "fc6" type: "InnerProduct" bottom: "pool5" top: "fc6" inner_product_param { num_output: 4096 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7" inner_product_param { num_output: 4096 } }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8" inner_product_param { num_output: 1000 } }
layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }
"""
MEMORY_LIMIT = 4 << 30  # address space, as `ulimit -v 4194304` sets it


def run_limited(*args):
    """A script under a 4 GiB address-space limit: an attempt to allocate the net fails at once."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          preexec_fn=limit)


def test_terabyte_net_is_summarised_without_allocating_it(tmp_path):
    (tmp_path / "huge.prototxt").write_text(HUGE_ALEXNET)
    out = run_limited(SCRIPT, tmp_path / "huge.prototxt", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(out.stdout)
    assert data["blobs"]["conv1"] == [1, 96, 5673, 5673] and data["blobs"]["pool2"] == [1, 256, 1418, 1418]
    assert data["blobs"]["pool5"] == [1, 256, 709, 709] and data["blobs"]["fc6"] == [1, 4096]
    assert data["params"]["fc6"] == [[4096, 128_686_336], [4096]]
    assert data["total_params"] > 4096 * 128_686_336


def test_a_tool_that_builds_the_terabyte_net_refuses_with_one_line(tmp_path):
    (tmp_path / "huge.prototxt").write_text(HUGE_ALEXNET)
    # a readable .caffemodel holding no layer of this net (its layer list is read first, to skip their fillers)
    (tmp_path / "w.caffemodel").write_bytes(caffe_pb2.NetParameter(name="w", layer=[
        caffe_pb2.LayerParameter(name="unrelated", type="ReLU")]).SerializeToString())
    (tmp_path / "x.png").write_bytes(bytes.fromhex("89504e470d0a1a0a"))  # never read: the net comes first
    out = run_limited(ROOT / "scripts/cam.py", "--model", tmp_path / "huge.prototxt", "--weights",
                      tmp_path / "w.caffemodel", "--out", tmp_path / "out", tmp_path / "x.png")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    err = out.stderr.strip().splitlines()
    # fc6: (4096 × 128,686,336 + 4096 bias) floats + its 4096-float top, 4 bytes each: 1.917 TiB. The blobs add
    # 15.3 G floats (data 1.55 G, conv1 and norm1 3.09 G each, conv2 and norm2 2.06 G each, ...), 0.056 TiB: 2.0 TiB.
    assert len(err) == 1 and re.fullmatch(
        r"error: net 'alexnet_huge' needs 2\.0 TiB for its parameters and blobs but only \d+\.\d [MG]iB of memory "
        r"is available; the largest is layer 'fc6' \(InnerProduct\) with 1\.9 TiB; use a smaller input size or "
        r"batch, or fewer outputs in that layer", err[0]), err


def test_multiply_adds_on_small_net(small, capsys):
    net_summary.main([str(small), "--json"])
    out = json.loads(capsys.readouterr().out)
    # by hand: conv 4·4·4 outputs × 3·3·3 taps = 1728; fc 5 outputs × 16 inputs = 80
    assert out["macs"] == {"conv": 1728, "fc": 80} and out["total_macs"] == 1808
    net_summary.main([str(small)])
    text = capsys.readouterr().out
    assert "    Multiply-adds: 1,728" in text and "Total multiply-adds per forward: 1,808" in text


def test_multiply_adds_of_resnet50():
    # He et al. 2015, table 1: 3.8 × 10^9 multiply-adds for ResNet-50 at 224×224 (their "FLOPs")
    net = Net(parse_text((ROOT / "tests" / "zoo" / "resnet50.prototxt").read_text(), caffe_pb2.NetParameter), meta=True)
    assert 3.8e9 < sum(net_summary.layer_macs(net)) < 3.9e9


def test_time_prints_caffe_time_lines(small, capsys):
    net_summary.main([str(small), "--time", "--iterations", "2"])
    lines = capsys.readouterr().out.splitlines()
    timed = [line.split()[0] for line in lines if line.endswith(" ms.") and "\tforward:" in line]
    assert timed == ["conv", "relu", "pool", "fc", "prob"]
    assert len([line for line in lines if "\tbackward:" in line]) == 5
    totals = {line.split(":")[0]: float(line.split(":")[1].split()[0]) for line in lines
              if line.startswith("Average ") and line.endswith(" ms.")}
    forward = sum(float(line.split()[-2]) for line in lines if "\tforward:" in line)
    assert abs(totals["Average Forward pass"] - forward) < 1e-3 * len(timed)
    assert totals["Average Forward-Backward"] >= totals["Average Forward pass"]


def test_time_on_a_train_net_feeds_valid_labels(small, capsys):
    """TRAIN phase: the Data layer's `label` top reaches SoftmaxWithLoss; seeded noise there would be a label like
    −1 and the loss would refuse it, so labels are zeros (a class every classifier has)."""
    net_summary.main([str(small), "--phase", "TRAIN", "--input-shape", "data=64,3,8,8", "--input-shape", "label=64",
                      "--time", "--iterations", "1"])
    out = capsys.readouterr().out
    assert "\tforward:" in out and re.search(r"^ +loss\tbackward: [0-9.]+ ms\.$", out, re.M)


def test_legacy_file_is_upgraded_and_says_so(tmp_path):
    path = tmp_path / "v1.prototxt"
    path.write_text('name: "v1" input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
                    'layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"\n'
                    '  convolution_param { num_output: 2 kernel_size: 3 } }\n')
    out = run_script(path, "--json")
    assert out.returncode == 0, out.stderr
    assert "legacy V1 `layers` upgraded to `layer`" in out.stderr and "`input_dim`" in out.stderr
    assert json.loads(out.stdout)["blobs"]["conv"] == [1, 2, 6, 6]
    assert json.loads(out.stdout)["total_macs"] == 2 * 36 * 27


def test_time_needs_an_iteration(small, capsys):
    with pytest.raises(SystemExit) as exc:
        net_summary.main([str(small), "--time", "--iterations", "0"])
    assert exc.value.code != 0
    assert "--iterations 0" in capsys.readouterr().err


def test_v0_file_is_upgraded_and_says_so():
    path = ROOT / "tests" / "golden" / "upgrade" / "v0_net.prototxt"
    out = run_script(path, "--json")
    assert out.returncode == 0, out.stderr
    assert "legacy V0 layers (lowercase types, V0 padding layers) upgraded to V1" in out.stderr
    blobs = json.loads(out.stdout)["blobs"]
    # real Caffe's shapes for the upgraded net: see tests/engine/test_upgrade.py
    assert blobs["conv1"] == [2, 8, 16, 16] and blobs["prob"] == [2, 5] and "pad1" not in blobs
