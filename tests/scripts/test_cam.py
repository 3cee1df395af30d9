"""scripts/cam.py and scripts/eval_loc.py end to end, as subprocesses, on tiny nets with weights saved to disk."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from caffecam.engine.net import Net
from caffecam.engine.prototxt import parse_text
from caffecam.engine.weights import save_caffemodel
from caffecam.nets.googlenet_cam import tiny_cam_net
from caffecam.nets.prototxt_files import render
from caffecam.proto import caffe_pb2
from tests.cam.test_localize import ORACLE, oracle_net, oracle_set

REPO = Path(__file__).resolve().parents[2]
CAM, EVAL = REPO / "scripts" / "cam.py", REPO / "scripts" / "eval_loc.py"
LABELS = "0 cat\n1 dog\n2 big_bird\n"


def run(script, *args, cwd=None):
    return subprocess.run([sys.executable, str(script), "--no-progress", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    netparam = tiny_cam_net(3, 32, batch=1)
    (d / "deploy.prototxt").write_text(render(netparam))
    net = Net(netparam, seed=3)
    with torch.no_grad():  # spread the classifier so the classes differ clearly
        net.params["CAM_fc"][0].normal_(0, 1, generator=torch.Generator().manual_seed(1))
    save_caffemodel(net, d / "w.caffemodel")
    (d / "labels.csv").write_text(LABELS)
    imgs = d / "imgs"
    (imgs / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(imgs / "a.png"), rng.integers(0, 256, (45, 70, 3), dtype=np.uint8))
    cv2.imwrite(str(imgs / "sub" / "b.jpg"), rng.integers(0, 256, (64, 33, 3), dtype=np.uint8))
    cv2.imwrite(str(imgs / "gray.png"), rng.integers(0, 256, (20, 20), dtype=np.uint8))
    cv2.imwrite(str(imgs / "one.png"), np.full((1, 1, 4), 200, np.uint8))
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return d, net


def reference_maps(net, image, top_k, mean=(104, 117, 123)):
    """Independent pipeline: cv2 resize, mean, a plain forward, a NumPy sum over channels."""
    x = cv2.resize(image, (32, 32), interpolation=cv2.INTER_LINEAR).astype(np.float32) - np.float32(mean)
    with torch.no_grad():
        blobs = net(torch.from_numpy(x.transpose(2, 0, 1).copy())[None])
    prob = blobs["prob"][0].numpy()
    ids = np.argsort(-prob)[:top_k]
    feats = blobs["CAM_conv"][0].numpy().astype(np.float64)
    w = net.params["CAM_fc"][0].detach().numpy().astype(np.float64)
    return ids, prob[ids], np.tensordot(w[ids], feats, axes=(1, 0))


def test_folder_with_a_broken_file(tiny, tmp_path):
    d, net = tiny
    out = tmp_path / "out"
    r = run(CAM, "--model", d / "deploy.prototxt", "--weights", d / "w.caffemodel", "--labels", d / "labels.csv",
            "--top-k", 2, "--save-maps", "--out", out, "--gallery", out / "gallery.png", "--batch-size", 3, d / "imgs")
    assert r.returncode == 1, r.stderr
    assert "broken.png: not an image" in r.stderr and "error: 1 of 5 image(s) failed" in r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in out.glob("*_cam.json")) == ["a_cam.json", "b_cam.json", "gray_cam.json",
                                                             "one_cam.json"]
    assert cv2.imread(str(out / "gallery.png")) is not None
    for stem, rel in (("a", "a.png"), ("b", "sub/b.jpg"), ("gray", "gray.png"), ("one", "one.png")):
        record = json.loads((out / f"{stem}_cam.json").read_text())
        image = cv2.imread(str(d / "imgs" / rel), cv2.IMREAD_COLOR)
        if stem == "one":  # RGBA 200 at alpha 200: composited on black
            image = np.full((1, 1, 3), round(200 * 200 / 255), np.uint8)
        h, w = image.shape[:2]
        assert set(record) == {"image", "width", "height", "method", "layer", "top_k"}
        assert record["image"] == str(d / "imgs" / rel) and (record["width"], record["height"]) == (w, h)
        ids, probs, maps = reference_maps(net, image, 2)
        assert [t["class_id"] for t in record["top_k"]] == ids.tolist()
        assert [t["class_name"] for t in record["top_k"]] == [LABELS.split()[2 * i + 1] for i in ids]
        np.testing.assert_allclose([t["prob"] for t in record["top_k"]], probs, rtol=1e-5)
        for t in record["top_k"]:
            x1, y1, x2, y2 = t["box"]
            assert all(isinstance(v, int) for v in t["box"]) and 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        raw = np.load(out / f"{stem}_cam.npy", allow_pickle=False)
        assert raw.dtype == np.float32 and raw.shape == (2, 8, 8)
        np.testing.assert_allclose(raw, maps, rtol=1e-4, atol=1e-4 * np.abs(maps).max())
        png = cv2.imread(str(out / f"{stem}_cam.png"))
        assert png.shape == (h, 2 * w, 3)  # one panel per class, side by side


def test_single_image_top1_and_bad_options(tiny, tmp_path):
    d, _ = tiny
    common = ["--model", d / "deploy.prototxt", "--weights", d / "w.caffemodel", "--labels", d / "labels.csv"]
    r = run(CAM, *common, "--out", tmp_path, "--cpu", "--no-channels-last", d / "imgs" / "a.png")
    assert r.returncode == 0, r.stderr
    assert "top-1: " in r.stdout and not list(tmp_path.glob("*.npy"))
    assert cv2.imread(str(tmp_path / "a_cam.png")).shape == (45, 70, 3)
    for extra, what in ((["--top-k", 4], "only 3 classes"), (["--alpha", 2], "--alpha"),
                        (["--box-threshold", -1], "--box-threshold"), (["--mean", "1,2"], "--mean"),
                        (["--workers", -1], "--workers"), (["--eval-json", tmp_path / "s.json"], "--eval-boxes"),
                        (["--gallery", tmp_path], "--gallery")):
        r = run(CAM, *common, *extra, "--out", tmp_path, d / "imgs" / "a.png")
        assert r.returncode == 1 and what in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = run(CAM, *common, tmp_path / "nowhere.png")
    assert r.returncode == 1 and "nowhere.png: no such file" in r.stderr


def test_net_without_gap_falls_back_to_gradcam_and_refuses_cam(tmp_path):
    text = ORACLE.replace("pool: AVE global_pooling: true", "pool: MAX global_pooling: true")
    (tmp_path / "max.prototxt").write_text(text)
    save_caffemodel(Net(parse_text(text, caffe_pb2.NetParameter)), tmp_path / "w.caffemodel")
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((8, 8, 3), np.uint8))
    common = ["--model", tmp_path / "max.prototxt", "--weights", tmp_path / "w.caffemodel", "--out", tmp_path / "o"]
    r = run(CAM, *common, tmp_path / "x.png")
    assert r.returncode == 0, r.stderr
    assert ("no CAM pair in net 'oracle': no global average pooling feeds the classifier; using Grad-CAM of 'feat'"
            in r.stdout and "Grad-CAM of 'feat' (scores 'fc') on cpu" in r.stdout)
    assert json.loads((tmp_path / "o" / "x_cam.json").read_text())["method"] == "gradcam"
    r = run(CAM, *common, "--method", "cam", tmp_path / "x.png")
    assert r.returncode == 1 and "global average pooling" in r.stderr and "Traceback" not in r.stderr


def test_auto_says_what_to_run_first(tiny, tmp_path):
    d, _ = tiny
    r = run(CAM, "--auto", d / "imgs" / "a.png", cwd=tmp_path)
    assert r.returncode == 1 and "run `make prototxt` first" in r.stderr
    (tmp_path / "prototxt").mkdir()
    (tmp_path / "prototxt" / "googlenet_cam_deploy.prototxt").write_text((d / "deploy.prototxt").read_text())
    r = run(CAM, "--auto", d / "imgs" / "a.png", cwd=tmp_path)
    assert r.returncode == 1 and "no snapshot in snapshots/" in r.stderr and "run `make train` first" in r.stderr
    (tmp_path / "snapshots").mkdir()
    for n in (9, 20, 100):
        (tmp_path / "snapshots" / f"googlenet_cam_iter_{n}.caffemodel").write_bytes((d / "w.caffemodel").read_bytes())
    (tmp_path / "snapshots" / "googlenet_cam_iter_100.caffemodel").unlink()
    r = run(CAM, "--auto", d / "imgs" / "a.png", cwd=tmp_path)
    assert r.returncode == 1 and "data/class_labels.csv not found: run `make data` first" in r.stderr
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "class_labels.csv").write_text(LABELS)
    r = run(CAM, "--auto", cwd=tmp_path)
    assert r.returncode == 1 and "make cam IMAGE=" in r.stderr
    r = run(CAM, "--auto", d / "imgs" / "a.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "googlenet_cam_iter_20.caffemodel" in r.stdout
    assert (tmp_path / "results" / "cam" / "a_cam.json").exists()


def test_localization_scores_by_hand(tmp_path):
    data = tmp_path / "data"
    oracle_set(data)
    (tmp_path / "oracle.prototxt").write_text(ORACLE)
    save_caffemodel(oracle_net(), tmp_path / "oracle.caffemodel")
    (tmp_path / "labels.csv").write_text("0 blue\n1 red\n")
    common = ["--model", tmp_path / "oracle.prototxt", "--weights", tmp_path / "oracle.caffemodel", "--labels",
              tmp_path / "labels.csv", "--mean", "0"]
    r = run(EVAL, *common, "--list", data / "val.txt", "--root", data, "--boxes", data / "boxes.csv",
            "--thresholds", "0.1:0.3:0.1", "--json", tmp_path / "loc.json")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "loc.json").read_text())
    # worked out in tests/test_localize.py: 4/5 right; at 0.2 two boxes hit, at 0.3 three
    assert s["accuracy"] == pytest.approx(0.8) and s["loc_accuracy"] == pytest.approx(0.4)
    assert s["gt_known_loc_accuracy"] == pytest.approx(0.4)
    assert [p["threshold"] for p in s["per_threshold"]] == [0.1, 0.2, 0.3]
    assert s["per_threshold"][2]["loc_accuracy"] == pytest.approx(0.6)
    assert "top-1 localization accuracy (IoU >= 0.5, threshold 0.2): 0.4000" in r.stdout
    assert "localization of CAM of 'feat' × 'fc' over 5 image(s)" in r.stdout
    # The oracle's CAM maps are ≥ 0 and its gradients constant over the map: Grad-CAM = CAM/Z, the same boxes.
    r = run(EVAL, *common, "--list", data / "val.txt", "--root", data, "--boxes", data / "boxes.csv",
            "--thresholds", "0.1:0.3:0.1", "--json", tmp_path / "loc_grad.json", "--method", "gradcam")
    assert r.returncode == 0 and "localization of Grad-CAM of 'feat' (scores 'fc') over 5 image(s)" in r.stdout
    assert json.loads((tmp_path / "loc_grad.json").read_text()) == s
    r = run(EVAL, *common, "--list", data / "val.txt", "--root", data, "--boxes", data / "boxes.csv",
            "--max-pixels", 10)
    assert r.returncode == 1 and "over the limit of 10 pixels" in r.stderr
    r = run(EVAL, *common, "--list", data / "val.txt", "--root", data, "--boxes", data / "boxes.csv", "--json", data)
    assert r.returncode == 1 and r.stderr == f"error: --json {data}: is a folder; give a file name such as " \
                                             f"{data / 'loc.json'}\n"
    r = run(CAM, *common, "--out", tmp_path / "cam", "--eval-boxes", data / "boxes.csv", "--eval-json",
            tmp_path / "loc2.json", data / "val.txt")
    assert r.returncode == 0, r.stderr
    s2 = json.loads((tmp_path / "loc2.json").read_text())
    assert (s2["accuracy"], s2["loc_accuracy"]) == (pytest.approx(0.8), pytest.approx(0.4))
    box = json.loads((tmp_path / "cam" / "a_cam.json").read_text())["top_k"][0]["box"]
    assert box == [4, 4, 12, 12]  # the blue square, exactly
    r = run(CAM, *common, "--out", tmp_path / "cam", "--eval-boxes", data / "boxes.csv", data / "a.png")
    assert r.returncode == 1 and "list file" in r.stderr


def test_help():
    for script in (CAM, EVAL):
        r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "--box-threshold" in r.stdout and "example" in r.stdout


def test_preprocessing_options_and_bf16(tiny, tmp_path):
    d, net = tiny
    # A mean image larger than the 32×32 input, every pixel distinct: cam.py centre-crops it (offsets 1 and 2).
    c, y, x = np.meshgrid(np.arange(3), np.arange(34), np.arange(36), indexing="ij")
    mean = (0.3 * c + 0.01 * y + 0.002 * x).astype(np.float32)
    from caffecam.data.datum import write_mean_binaryproto
    write_mean_binaryproto(tmp_path / "mean.binaryproto", mean)
    common = ["--model", d / "deploy.prototxt", "--weights", d / "w.caffemodel", "--labels", d / "labels.csv",
              "--top-k", 3, "--save-maps", "--cpu", "--mean-file", tmp_path / "mean.binaryproto", "--scale", 0.5,
              "--raw-scale", 1, "--channel-order", "RGB"]
    image = cv2.imread(str(d / "imgs" / "a.png"))
    # By hand: resize, B,G,R -> R,G,B, [0, 1] times raw scale 1, minus the cropped mean, times 0.5.
    rgb = cv2.resize(image, (32, 32), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
    x = ((rgb / 255.0).astype(np.float32) - mean[:, 1:33, 2:34].transpose(1, 2, 0)) * np.float32(0.5)
    with torch.no_grad():
        blobs = net(torch.from_numpy(x.transpose(2, 0, 1).copy())[None])
    prob = blobs["prob"][0].numpy()
    ids = np.argsort(-prob)
    w = net.params["CAM_fc"][0].detach().numpy().astype(np.float64)
    maps = np.tensordot(w[ids], blobs["CAM_conv"][0].numpy().astype(np.float64), axes=(1, 0))
    for extra, rtol in (([], 1e-5), (["--bf16"], 2e-2)):
        out = tmp_path / ("bf16" if extra else "fp32")
        r = run(CAM, *common, *extra, "--out", out, d / "imgs" / "a.png")
        assert r.returncode == 0, r.stderr
        record = json.loads((out / "a_cam.json").read_text())
        if not extra:
            assert [t["class_id"] for t in record["top_k"]] == ids.tolist()
        else:
            assert "bfloat16 autocast" in r.stdout
        got = {t["class_id"]: t["prob"] for t in record["top_k"]}
        np.testing.assert_allclose([got[i] for i in ids], prob[ids], rtol=rtol, atol=rtol * 0.1)
        raw = np.load(out / "a_cam.npy", allow_pickle=False)
        order = [ids.tolist().index(t["class_id"]) for t in record["top_k"]]
        np.testing.assert_allclose(raw, maps[order], rtol=rtol, atol=rtol * np.abs(maps).max())
        if extra:  # bfloat16 did run: the maps moved by its rounding
            assert np.abs(raw - maps[order]).max() > 1e-5 * np.abs(maps).max()
