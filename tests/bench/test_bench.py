"""scripts/bench.py --quick end to end (every entry of the JSON report, positive finite numbers, ratios that agree with
their parts), the timing helper, and the torchcam adapter against a NumPy CAM."""

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from caffecam.bench import browser, peers, timing, training
from caffecam.bench import cam as bench_cam
from caffecam.cam.maps import CamModel
from caffecam.engine import precision
from caffecam.engine.net import Net
from caffecam.nets.googlenet_cam import tiny_cam_net

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench.py"
CUDA = torch.cuda.is_available()

GPU_KEYS = {"gpu_fp32_images_per_s", "gpu_tf32_images_per_s", "gpu_bf16_channels_last_images_per_s",
            "gpu_fp32_train_step_mb",
            "gpu_bf16_channels_last_train_step_mb", "gpu_fp32_peak_mb", "gpu_bf16_channels_last_peak_mb"}
TORCHCAM_KEYS = {"torchcam_cam_images_per_s", "cam_vs_torchcam_cam", "torchcam_gradcam_images_per_s",
                 "cam_vs_torchcam_gradcam", "torchcam_cam_max_rel_diff", "torchcam_gradcam_max_rel_diff",
                 "torchcam_pipeline_images_per_s", "speedup"}
DIFF_KEYS = {"torchcam_cam_max_rel_diff", "torchcam_gradcam_max_rel_diff"}
PAGE_KEYS = {"first_paint_ms", "filter_ms", "search_ms", "detail_ms"}
HAS_BROWSER = browser.missing() is None
EXPECTED = {
    "train": {"batch", "cpu_fp32_contiguous_images_per_s", "cpu_fp32_channels_last_images_per_s",
              "cpu_channels_last_speedup", "gpu_fp32_images_per_s", "gpu_bf16_channels_last_images_per_s",
              "goal_gpu_bf16_images_per_s", "pipeline", "cpu_fp32_channels_last_direct_conv_images_per_s",
              "cpu_winograd_speedup", "gpu_tf32_images_per_s", "gpu_precision"},
    "inference": {"batch", "contiguous_images_per_s", "channels_last_images_per_s"},
    "cam": {"batch", "forward_images_per_s", "cam_images_per_s", "cam_overhead_ratio", "goal_cam_overhead_ratio",
            "loop_images_per_s", "cam_vs_loop", "maps_ms", "loop_maps_ms", "maps_vs_loop", "gradcam_images_per_s",
            "cam_vs_gradcam"} | (TORCHCAM_KEYS - {"torchcam_pipeline_images_per_s", "speedup"}),
    "cam_end_to_end": {"images", "run_cam_images_per_s", "torchcam_pipeline_images_per_s", "speedup",
                       "goal_speedup"},
    "loader": {"batch", "workers", "jpeg_images_per_s", "lmdb_images_per_s", "lmdb_vs_jpeg"},
    "report": {"entries", "write_s", "write_entries_per_s", "data_js_mb", "expected_wrong_only", "goal_ms"} | PAGE_KEYS,
    "memory": {"cpu_train_step_mb", "cpu_baseline_mb", "cpu_peak_mb", "gpu_fp32_train_step_mb", "gpu_fp32_peak_mb",
               "gpu_bf16_channels_last_train_step_mb", "gpu_bf16_channels_last_peak_mb", "keep_freed_memory",
               "cpu_images_per_s_keep_freed_memory", "cpu_images_per_s_default_malloc", "keep_freed_memory_speedup",
               "cpu_peak_mb_default_malloc", "cpu_train_step_mb_default_malloc"},
}
PIPELINE = {"images_per_s", "data_wait_fraction", "workers", "steps", "device"}
SECTIONS = {"data", "peak", "memory", "train", "pipeline", "train_vs_caffe", "inference", "zoo", "scaling", "cam",
            "end_to_end", "loader", "report"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tmp" / "bench.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], capture_output=True,
                         text=True, cwd=REPO, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out.read_text()), run.stdout


def check_numbers(section, values, torchcam):
    for key, v in values.items():
        if key in GPU_KEYS and not CUDA:
            assert v is None, f"{section}.{key} without CUDA"
        elif key in TORCHCAM_KEYS and not torchcam:
            assert v is None, f"{section}.{key} without torchcam"
        elif key in PAGE_KEYS and not HAS_BROWSER:
            assert v is None, f"{section}.{key} without Chromium"
        elif key in DIFF_KEYS:
            assert 0 <= v < 1e-4, f"{section}.{key} = {v}"
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            assert math.isfinite(v) and v > 0, f"{section}.{key} = {v}"


def check_report(r, torchcam):
    for section, keys in EXPECTED.items():
        missing = keys - set(r[section])
        assert not missing, f"{section} lacks {missing}"
        check_numbers(section, r[section], torchcam)
    pipeline = r["train"]["pipeline"]
    assert PIPELINE <= set(pipeline)
    check_numbers("pipeline", pipeline, torchcam)
    assert 0 < pipeline["data_wait_fraction"] < 1
    assert set(r["sections_s"]) == SECTIONS and set(r["load_average_1min"]) == SECTIONS
    assert all(v >= 0 for v in r["sections_s"].values())
    assert r["total_s"] >= sum(r["sections_s"].values()) - 0.1 * len(SECTIONS)
    assert r["environment"]["torchcam"] == ("0.5.0" if torchcam else None)


def test_quick_report_has_every_entry(quick):
    r, stdout = quick
    assert r["quick"] is True
    check_report(r, torchcam=True)  # torchcam is a development requirement (requirements.txt)
    assert r["cam"]["torchcam_cam_images_per_s"] > 0 and r["cam_end_to_end"]["torchcam_pipeline_images_per_s"] > 0
    for line in ("training, batch 4", "peak convolution throughput", "training side by side", "tiny_resnet inference",
                 "googlenet_cam inference", "how cost grows", "waiting for data", "CamModel.run",
                 "CAM end to end", "data loader", "memory of one training step", "CAM report page, 200 entries",
                 "time per section", "wrote "):
        assert line in stdout


def test_quick_ratios_agree_with_their_parts(quick):
    r, _ = quick
    t, c, e, d, m = r["train"], r["cam"], r["cam_end_to_end"], r["loader"], r["memory"]
    assert t["cpu_channels_last_speedup"] == pytest.approx(
        t["cpu_fp32_channels_last_images_per_s"] / t["cpu_fp32_contiguous_images_per_s"])
    assert c["cam_overhead_ratio"] == pytest.approx(c["forward_images_per_s"] / c["cam_images_per_s"])
    assert c["cam_vs_loop"] == pytest.approx(c["cam_images_per_s"] / c["loop_images_per_s"])
    assert c["cam_vs_gradcam"] == pytest.approx(c["cam_images_per_s"] / c["gradcam_images_per_s"])
    assert c["maps_vs_loop"] == pytest.approx(c["loop_maps_ms"] / c["maps_ms"])
    assert d["lmdb_vs_jpeg"] == pytest.approx(d["lmdb_images_per_s"] / d["jpeg_images_per_s"])
    assert m["cpu_peak_mb"] - m["cpu_baseline_mb"] == pytest.approx(m["cpu_train_step_mb"])
    assert t["cpu_winograd_speedup"] == pytest.approx(
        t["cpu_fp32_channels_last_images_per_s"] / t["cpu_fp32_channels_last_direct_conv_images_per_s"])
    assert m["keep_freed_memory_speedup"] == pytest.approx(
        m["cpu_images_per_s_keep_freed_memory"] / m["cpu_images_per_s_default_malloc"])
    assert m["keep_freed_memory"] is (sys.platform == "linux")
    assert (c["goal_cam_overhead_ratio"], e["goal_speedup"]) == (1.15, 2.5)
    p = r["report"]
    assert p["entries"] == 200 and p["goal_ms"] == 2000.0 and p["expected_wrong_only"] == 50
    assert p["write_entries_per_s"] == pytest.approx(p["entries"] / p["write_s"])
    if HAS_BROWSER:  # the page's own count after "wrong only", and a page of cards in the DOM
        assert p["wrong_only_matching"] == p["expected_wrong_only"] and 0 < p["cards_in_dom"] <= 50
    assert e["speedup"] == pytest.approx(e["run_cam_images_per_s"] / e["torchcam_pipeline_images_per_s"])
    assert c["cam_vs_torchcam_cam"] == pytest.approx(c["cam_images_per_s"] / c["torchcam_cam_images_per_s"])


def test_quick_peers_peak_and_scaling(quick):
    r, _ = quick
    k, s, z = r["peak"], r["train_vs_caffe"], r["zoo"]
    native_bf16 = bool(precision.cpu_bf16_support())
    for key in ("conv3x3_fp32_gflops", "conv1x1_fp32_gflops", "fp32_peak_gflops"):
        assert k[key] > 0
    assert (k["bf16_peak_gflops"] is not None) == native_bf16
    caffe = peers.caffe_tool()[0] is not None
    cv4 = peers.cv4_python()[0] is not None
    assert s["batch"] == 4 and s["ours_fp32_images_per_s"] > 0
    assert (s["caffe_images_per_s"] is not None) == caffe
    assert (s["ours_bf16_images_per_s"] is not None) == native_bf16
    if caffe:
        assert s["fp32_vs_caffe"] == pytest.approx(s["ours_fp32_images_per_s"] / s["caffe_images_per_s"])
    else:
        assert s["fp32_vs_caffe"] is None and any("Caffe ratios were not measured" in n for n in r["notes"])
    tiny = z["tiny_resnet"]
    # conv1 16·32·32 outputs × 27 taps, conv2 16·32·32 × 144, fc 10 × 16: multiply-adds, 2 FLOPs each
    assert tiny["flops_per_image"] == 2 * (16 * 1024 * 27 + 16 * 1024 * 144 + 10 * 16)
    assert tiny["batch_norms_folded"] == 2 and z["googlenet_cam"]["batch_norms_folded"] == 0
    for d in z.values():
        assert d["batch"] == 4 and d["ours_fp32_images_per_s"] > 0
        assert d["ours_fp32_peak_fraction"] == pytest.approx(
            d["ours_fp32_images_per_s"] * d["flops_per_image"] / 1e9 / k["fp32_peak_gflops"])
        assert (d["cv4_images_per_s"] is not None) == cv4 and (d["caffe_images_per_s"] is not None) == caffe
        if cv4:  # timed only after its output agreed with ours
            assert d["cv4_max_rel_diff"] < 1e-4 and d["fp32_vs_cv4"] == pytest.approx(
                d["ours_fp32_images_per_s"] / d["cv4_images_per_s"])
    assert z["googlenet_cam"]["goal_fp32_vs_cv4"] == 1.6 and z["tiny_resnet"]["goal_fp32_vs_caffe"] == 2.5
    grow = r["scaling"]
    assert set(grow["train_and_inference"]) == {"1", "2", "4"} and set(grow["cam_end_to_end"]) == {"1", "2", "4"}
    for n, v in grow["cam_end_to_end"].items():
        assert v["images_per_s"] == pytest.approx(int(n) / v["wall_s"])


def test_only_runs_the_sections_asked_for_and_writes_the_markdown(tmp_path):
    out = tmp_path / "b.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--only", "peak", "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["only"] == ["peak"] and set(r["sections_s"]) == {"peak"}
    assert not set(r) & {"train", "zoo", "cam", "memory"}
    page = out.with_suffix(".md").read_text()
    assert "| figure | ours, images/s | peer, images/s | ratio | goal |" in page
    assert r["environment"]["cpu"]["model"] in page
    assert "peak convolution throughput" in run.stdout


def test_without_torchcam_entries_are_null(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import bench as script
    finally:
        sys.path.remove(str(REPO / "scripts"))
    monkeypatch.setattr(bench_cam, "torchcam_methods", lambda: None)
    out = tmp_path / "b.json"
    script.main(["--quick", "--only", "cam,end_to_end", "--out", str(out)])  # the sections torchcam is in
    r = json.loads(out.read_text())
    assert set(r) >= {"cam", "cam_end_to_end"} and not set(r) & {"train", "zoo", "memory", "report"}
    for section in ("cam", "cam_end_to_end"):
        check_numbers(section, r[section], torchcam=False)
    assert any("torchcam is not installed" in n for n in r["notes"])
    assert "note: torchcam is not installed" in capsys.readouterr().out


def test_help_and_bad_out(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0 and "--quick" in run.stdout and "--only" in run.stdout and "torchcam" in run.stdout
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--only", "zoo,speed"], capture_output=True,
                         text=True, cwd=REPO)
    assert run.returncode == 1 and run.stderr.startswith("error: --only zoo,speed: unknown section 'speed'")
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)], capture_output=True,
                         text=True, cwd=REPO)
    assert run.returncode == 1 and run.stderr.startswith("error: --out") and "Traceback" not in run.stderr


def test_interleaved_medians_rounds_and_budget():
    calls = []

    def sleeper(name, seconds):
        def fn():
            calls.append(name)
            time.sleep(seconds)
        return fn

    fns = {"a": sleeper("a", 0.002), "b": sleeper("b", 0.02)}
    times = timing.interleaved(fns, rounds=3, budget_s=10, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-ups, then rounds alternate
    assert 0.002 <= times["a"] < 0.015 and 0.02 <= times["b"] < 0.06
    calls.clear()
    timing.interleaved(fns, rounds=5, budget_s=0, warmup=0)
    assert calls == ["a", "b"]  # the budget allows no second round, yet one always runs


def test_train_step_applies_caffe_sgd():
    """One step with lr 0.001, momentum 0.9, weight decay 5e-4 from zero history: w1 = w0 − lr·lr_mult·(g + wd·w0)."""
    step = training.TrainStep(3, 8, 64, 2)
    w0 = {name: p.detach().clone() for name, p in step.net.named_parameters()}
    # One thread: the gradient is computed twice and must be the same floats both times. With two threads, under
    # load, conv1's weight gradient once came out summed in another order (1.7e-4 apart in one value of 1,176).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        step.net.loss(step.net(step.inputs)).backward()  # the gradient, taken apart from the step
        grads = {name: p.grad.clone() for name, p in step.net.named_parameters()}
        step()
    finally:
        torch.set_num_threads(threads)
    specs = {id(p): (lr, decay) for _, _, p, lr, decay in step.net.param_specs()}
    for name, p in step.net.named_parameters():
        lr_mult, decay_mult = specs[id(p)]
        expect = w0[name] - 0.001 * lr_mult * (grads[name] + 0.0005 * decay_mult * w0[name])
        torch.testing.assert_close(p.detach(), expect, rtol=1e-5, atol=1e-7)


def test_torchcam_adapter_matches_numpy_cam():
    from torchcam.methods import CAM

    net = Net(tiny_cam_net(3, 32, batch=2), seed=5)
    model = CamModel(net, device="cpu")
    adapter = bench_cam.TorchcamAdapter(model)
    x = torch.rand(2, 3, 32, 32) * 255 - 117
    with torch.inference_mode():
        blobs = net(x)
        scores = adapter(x)
    np.testing.assert_allclose(scores.numpy(), blobs["CAM_fc"].flatten(1).numpy(), rtol=1e-5, atol=1e-5)
    assert adapter.fc.weight is adapter.net.params["CAM_fc"][0]  # its own copy of the net, sharing the blob
    feats = blobs["CAM_conv"].numpy().astype(np.float64)  # (N, C, h, w) after the in-place ReLU
    w = net.params["CAM_fc"][0].detach().numpy().astype(np.float64)
    cls = scores.argmax(1).tolist()
    with CAM(adapter, target_layer=adapter.features, fc_layer=adapter.fc) as extractor:
        with torch.inference_mode():
            adapter(x)
            maps = extractor(class_idx=cls, normalized=False)[0].numpy()
    expect = np.stack([np.tensordot(w[c], feats[i], axes=(0, 0)) for i, c in enumerate(cls)])
    np.testing.assert_allclose(maps, expect, rtol=1e-4, atol=1e-4 * np.abs(expect).max())


# ---- the GPU measurements, checked on the CPU with the device's parts patched ------------------------------------

class FakeStep:
    """Stands in for training.TrainStep: counts the live instances and records what happens, in order."""
    live, events = 0, []

    def __init__(self, *args, **kwargs):
        FakeStep.live += 1

    def __del__(self):
        FakeStep.live -= 1

    def to_device(self, batch):
        return batch

    def __call__(self, inputs=None):
        FakeStep.events.append("step")
        return 0.0


@pytest.fixture
def fake_gpu(monkeypatch, cuda_flags):
    FakeStep.live, FakeStep.events = 0, []
    monkeypatch.setattr(training, "TrainStep", FakeStep)
    monkeypatch.setattr(training, "cuda_sync", lambda: FakeStep.events.append("sync"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    return FakeStep


def test_gpu_memory_figures_hold_one_configuration_each(fake_gpu, monkeypatch, tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import bench as script
    finally:
        sys.path.remove(str(REPO / "scripts"))
    alive = []

    def memory(step):
        alive.append(fake_gpu.live)
        return 10.0 * len(alive), 100.0 * len(alive)

    monkeypatch.setattr(training, "cuda_step_memory_mb", memory)
    b = script.Bench(script.QUICK, "cuda", tmp_path)
    out = b.train()
    assert alive == [1, 1, 1]  # fp32, tf32 and bf16 each read with no other configuration alive
    assert (b.gpu_memory["gpu_fp32_train_step_mb"], b.gpu_memory["gpu_bf16_channels_last_peak_mb"]) == (10.0, 300.0)
    assert out["gpu_tf32_images_per_s"] > 0 and out["gpu_precision"]["fp32"].startswith("IEEE float32")
    assert not torch.backends.cudnn.allow_tf32  # the TF32 entry does not leave TF32 on for what follows


def test_gpu_pipeline_clock_stops_after_the_last_update_is_done(fake_gpu, monkeypatch, tmp_path):
    class Feed:
        def __init__(self, *args, **kwargs):
            self.pin_memory = kwargs.get("pin_memory")

        def next(self):
            return {}

        def close(self):
            pass

    ticks = iter(range(1000))

    def clock():
        fake_gpu.events.append("clock")
        return next(ticks)

    monkeypatch.setattr(training, "BatchFeed", Feed)
    monkeypatch.setattr(training, "time", type("T", (), {"perf_counter": staticmethod(clock)}))
    spec = dict(num_classes=3, width_div=8, input_size=32, batch=2)
    training.pipeline_speed(spec, tmp_path / "list.txt", tmp_path, 40, steps=2, device="cuda", workers=1)
    events = fake_gpu.events
    last_clock = len(events) - 1 - events[::-1].index("clock")
    assert events[last_clock - 2:last_clock] == ["step", "sync"]
    first_clock = events.index("clock")
    assert events[first_clock - 2:first_clock] == ["step", "sync"]  # the warm-up's update is done before the start


def test_cam_overhead_sides_make_the_same_transfers(monkeypatch):
    # Like with like: both sides upload the host batch and read results back; only the maps differ.
    net = Net(tiny_cam_net(3, 32, batch=2), seed=5)
    model = CamModel(net, device="cpu")
    rng = np.random.default_rng(0)
    batch = [model.preprocess(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]
    uploads, upload = [], model.to_input
    monkeypatch.setattr(model, "to_input", lambda b: uploads.append(len(b)) or upload(b))
    sides = bench_cam.overhead_pair(model, batch)
    probs = sides["forward"]()
    assert uploads == [2]
    result = sides["cam"]()
    assert uploads == [2, 2]
    np.testing.assert_allclose(probs.numpy().reshape(2, -1), result.all_probs, rtol=1e-6)
