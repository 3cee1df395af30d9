"""The peers' side of the bench on stand-ins whose answers are known: a fake `caffe` tool printing Caffe's log lines
(the ratios are then hand-computable), a fake OpenCV whose output disagrees (its speed must not be reported), the
peak fraction's arithmetic, and the seeded zoo weights (each BatchNorm normalizes what it sees)."""

import stat
import sys

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from caffecam.bench import peers, side_by_side, zoo
from caffecam.bench.peak import fraction
from caffecam.engine.net import TEST, Net
from caffecam.proto import caffe_pb2

FAKE_CAFFE = """#!/bin/sh
case "$1" in
  time) echo "I1130 04:00:00.000000  1 caffe.cpp:404] Average Forward pass: 250 ms." >&2 ;;
  train) for line in "0 (0 iter/s" "1 (0.5 iter/s" "2 (2 iter/s" "3 (2.5 iter/s" "4 (1.5 iter/s"; do
           echo "I1130 04:00:00.000000  1 solver.cpp:218] Iteration $line, 1s/1 iters), loss = 2.6" >&2; done ;;
  *) echo "F1130 04:00:00.000000  1 caffe.cpp:100] Check failed: unknown action" >&2; exit 1 ;;
esac
"""
# stands in for .venv-cv4's Python running cv4_dnn.py --serve: answers zeros
FAKE_CV4 = """import json, sys
import numpy as np
prototxt, weights, inp, out = sys.argv[1:5]
x = np.load(inp)
np.save(out, np.zeros((len(x), 10), np.float32))
print(json.dumps({"load_s": 0.01, "first_forward_s": 0.1, "forward_s": None, "images_per_s": None, "threads": 1,
                  "opencv": "4.fake"}), flush=True)
for _ in sys.stdin:
    print(0.1, flush=True)
"""

def executable(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def fake_peers(tmp_path, monkeypatch):
    tools = tmp_path / "caffe" / "src" / "build" / "tools"
    tools.mkdir(parents=True)
    executable(tools / "caffe", FAKE_CAFFE)
    monkeypatch.setenv("CAFFE_REF", str(tmp_path / "caffe"))
    script = tmp_path / "fake_cv4.py"
    script.write_text(FAKE_CV4)
    # the bench calls `python cv4_dnn.py ARGS`: the wrapper drops the script's path and runs the fake
    wrapper = executable(tmp_path / "python", f'#!/bin/sh\nshift\nexec {sys.executable} {script} "$@"\n')
    monkeypatch.setenv("CAFFECAM_CV4_PYTHON", str(wrapper))
    return tmp_path


def test_caffe_logs_are_read_as_caffe_prints_them(fake_peers):
    tool, why = peers.caffe_tool()
    assert why is None and tool.name == "caffe"
    assert peers.caffe_forward_s(tool, "deploy.prototxt", "w.caffemodel", 3, fake_peers) == 0.25
    # the iterations after the warm-up one
    assert peers.caffe_train_speeds(tool, "solver.prototxt", fake_peers, warmup=1) == [2.0, 2.5, 1.5]
    with pytest.raises(peers.PeerError, match=r"caffe time failed \(exit 1\): .*Check failed: unknown action"):
        peers._run([tool, "nonsense"], fake_peers, 10, "caffe time")


def test_without_caffe_ref_the_ratio_is_not_measured(monkeypatch, tmp_path):
    monkeypatch.delenv("CAFFE_REF", raising=False)
    assert peers.caffe_tool()[0] is None and "not measured" in peers.caffe_tool()[1]
    monkeypatch.setenv("CAFFE_REF", str(tmp_path))
    assert peers.caffe_tool()[0] is None and "no executable" in peers.caffe_tool()[1]


def test_deploy_side_by_side_with_known_peers(fake_peers):
    case = zoo.tiny_resnet_case(4, fake_peers / "zoo")
    notes = []
    peak = {"fp32_peak_gflops": 100.0, "bf16_peak_gflops": None}
    out = side_by_side.deploy(case, rounds=1, budget_s=1, caffe_iterations=2, peak=peak, notes=notes)
    assert out["caffe_images_per_s"] == pytest.approx(4 / 0.25)  # the batch over Caffe's forward time
    assert out["fp32_vs_caffe"] == pytest.approx(out["ours_fp32_images_per_s"] / 16)
    assert out["caffe_peak_fraction"] == pytest.approx(16 * case.flops_per_image / 1e9 / 100)
    # the fake OpenCV answers zeros: the outputs disagree, so its speed is not reported
    assert out["cv4_max_rel_diff"] == pytest.approx(1.0) and out["cv4_images_per_s"] is None
    assert out["fp32_vs_cv4"] is None and any("differs from ours" in n for n in notes)


def test_fraction_of_peak():
    assert fraction(10.0, 4e9, 80.0) == pytest.approx(0.5)  # 10 images × 4 GFLOP = 40 of 80 GFLOP/s
    assert fraction(None, 4e9, 80.0) is None and fraction(10.0, 4e9, None) is None


def test_with_batch_sets_every_input_form():
    legacy = text_format.Parse('input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8 '
                               'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                               'convolution_param { num_output: 2 kernel_size: 3 } }', caffe_pb2.NetParameter())
    assert list(zoo.with_batch(legacy, 16).input_dim) == [16, 3, 8, 8] and list(legacy.input_dim)[0] == 1
    current = text_format.Parse(zoo.TINY_RESNET, caffe_pb2.NetParameter())
    assert list(zoo.with_batch(current, 5).layer[0].input_param.shape[0].dim) == [5, 3, 32, 32]


def test_seeded_weights_let_each_batchnorm_normalize_what_it_sees():
    net = Net(text_format.Parse(zoo.TINY_RESNET, caffe_pb2.NetParameter()), TEST)
    x = np.random.default_rng(1).random((4, 3, 32, 32), dtype=np.float32) * 255 - 117
    zoo.seed_weights(net, x)
    seen = {}
    hooks = [layer.register_forward_hook(lambda m, i, o, name=lp.name: seen.update({name: o[0].detach()}))
             for lp, layer in zip(net.layer_params, net.layers) if lp.type == "BatchNorm"]
    with torch.no_grad():
        net(torch.from_numpy(x[:4]))
    for h in hooks:
        h.remove()
    for name, y in seen.items():  # eps 1e-5 against variances of order 1e2..1e4: mean 0, variance 1 per channel
        assert y.mean((0, 2, 3)).abs().max() < 1e-3, name
        assert (y.var((0, 2, 3)) - 1).abs().max() < 1e-2, name


def test_an_agreeing_opencv_runs_interleaved_with_ours(fake_peers, monkeypatch):
    monkeypatch.setattr(side_by_side, "AGREE", 2.0)  # the fake's zeros now count as agreeing
    case = zoo.tiny_resnet_case(2, fake_peers / "zoo")
    notes = []
    out = side_by_side.deploy(case, rounds=2, budget_s=5, caffe_iterations=2, peak={}, notes=notes)
    assert out["cv4_images_per_s"] > 0 and out["opencv"] == "4.fake" and not notes
    assert out["fp32_vs_cv4"] == pytest.approx(out["ours_fp32_images_per_s"] / out["cv4_images_per_s"])


def test_training_rounds_alternate_and_pool_the_iterations(fake_peers, monkeypatch):
    """Two rounds: Caffe, fp32, bf16, then bf16, fp32, Caffe; each side's figure is the median of all its timed
    iterations (batch 4 × iter/s), and the fp32 ratio of each round is kept."""
    calls = []
    answers = {"caffe": [[1.0, 1.2, 0.8], [0.5, 0.6, 0.7]], "fp32": [[3.0, 3.3, 2.7], [2.0, 2.2, 1.8]],
               "bf16": [[6.0], [5.0]]}

    def fake(side):
        calls.append(side)
        return answers[side][calls.count(side) - 1]

    monkeypatch.setattr(peers, "caffe_train_speeds", lambda *a, **k: fake("caffe"))
    monkeypatch.setattr(peers, "ours_train_speeds", lambda *a, bf16=False, **k: fake("bf16" if bf16 else "fp32"))
    monkeypatch.setattr(side_by_side.precision, "cpu_bf16_support", lambda: True)
    spec = {"num_classes": 3, "width_div": 8, "input_size": 64}
    notes = []
    out = side_by_side.training(fake_peers / "tv", spec, fake_peers / "list.txt", fake_peers, 72, 4, 1, 3,
                                {"fp32_peak_gflops": 100.0, "bf16_peak_gflops": 400.0}, notes, rounds=2)
    assert calls == ["caffe", "fp32", "bf16", "bf16", "fp32", "caffe"]
    assert out["caffe_images_per_s"] == pytest.approx(4 * 0.75)  # median of 1, 1.2, 0.8, 0.5, 0.6, 0.7
    assert out["ours_fp32_images_per_s"] == pytest.approx(4 * 2.45)
    assert out["ours_bf16_images_per_s"] == pytest.approx(4 * 5.5)
    assert out["fp32_vs_caffe"] == pytest.approx(2.45 / 0.75)
    assert out["fp32_vs_caffe_by_round"] == pytest.approx([3.0 / 1.0, 2.0 / 0.6])
    assert out["timed_iterations"] == 6 and out["rounds"] == 2 and not notes
