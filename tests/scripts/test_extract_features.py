"""scripts/extract_features.py: against real Caffe's recorded blobs (tests/golden/extract_features/, made
by its make_reference.py), on the demo and GoogLeNet-CAM nets against a plain forward, and its one-line errors."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from caffecam.engine.layers import LAYER_TYPES
from caffecam.engine.net import Net
from caffecam.engine.prototxt import read_net
from caffecam.engine.weights import save_caffemodel
from tests.engine.layers.helpers import close

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "extract_features.py"
DATA = Path(__file__).resolve().parents[1] / "golden" / "extract_features"
sys.path.insert(0, str(REPO / "scripts"))
import extract_features  # noqa: E402


def run(*args):
    extract_features.main(["--no-progress", *map(str, args)])


def load(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def fails(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        run(*args)
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_mixed_net_matches_real_caffe(tmp_path):
    out = tmp_path / "f.npz"
    blobs = ["data", "conv1", "norm1", "pool1", "conv2/a", "cat", "offset", "sum", "fc", "prob"]
    run("--model", DATA / "mixed.prototxt", "--weights", DATA / "mixed.caffemodel", "--blobs", ",".join(blobs),
        "--out", out, "--input", DATA / "mixed_input.npy", "--batch-size", 2)
    got, caffe = load(out), load(DATA / "mixed_blobs.npz")
    assert sorted(got) == sorted(blobs + ["names"])  # keys as written, slashes included
    assert got["names"].tolist() == [f"{DATA / 'mixed_input.npy'}[{i}]" for i in range(2)]
    for b in blobs:
        np.testing.assert_allclose(got[b], caffe[b], rtol=1e-5, atol=1e-6, err_msg=b)
    # conv1 is written in place by relu1: Caffe holds the ReLU's output there.
    assert (got["conv1"] >= 0).all() and (got["conv1"] == 0).any()


@pytest.mark.skipif(not {"BatchNorm", "Scale"} <= set(LAYER_TYPES), reason="BatchNorm/Scale not in the engine yet")
def test_in_place_batchnorm_scale_relu_chain_matches_real_caffe(tmp_path):
    out = tmp_path / "f.npz"
    run("--model", DATA / "inplace_bn.prototxt", "--weights", DATA / "inplace_bn.caffemodel", "--blobs",
        "res2a_branch2a,pool", "--out", out, "--input", DATA / "inplace_bn_input.npy", "--batch-size", 2)
    got, caffe = load(out), load(DATA / "inplace_bn_blobs.npz")
    assert got["res2a_branch2a"].shape == (3, 4, 6, 5)  # batches of 2 and 1, joined
    for b in ("res2a_branch2a", "pool"):
        np.testing.assert_allclose(got[b], caffe[b], rtol=1e-5, atol=1e-6, err_msg=b)


def reference(net, images, size, mean=(104, 117, 123)):
    """Independent preprocessing (cv2 resize, BGR mean) and a plain forward of the whole net."""
    x = np.stack([(cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32)
                   - np.float32(mean)).transpose(2, 0, 1) for im in images])
    with torch.no_grad():
        return net.eval()(torch.from_numpy(x))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(4)
    arrays = [rng.integers(0, 256, (40 + 7 * i, 50 - 3 * i, 3), dtype=np.uint8) for i in range(3)]
    for i, a in enumerate(arrays):
        cv2.imwrite(str(d / f"im{i}.png"), a)
    return d, arrays


def test_demo_net_on_images(tmp_path, images):
    folder, arrays = images
    model = REPO / "prototxt" / "demo_deploy.prototxt"
    net = Net(read_net(model), seed=5)
    save_caffemodel(net, tmp_path / "w.caffemodel")
    relu_on_conv = [lp for lp in net.layer_params if lp.type == "ReLU" and lp.bottom == lp.top][0].top[0]
    blobs = [relu_on_conv, "inception_3b/output", "prob"]
    out = tmp_path / "sub" / "f.npz"
    run("--model", model, "--weights", tmp_path / "w.caffemodel", "--blobs", ",".join(blobs), "--out", out,
        "--batch-size", 2, folder)
    got, ref = load(out), reference(net, arrays, 96)
    assert got["names"].tolist() == [str(folder / f"im{i}.png") for i in range(3)]
    for b in blobs:
        assert got[b].shape[0] == 3
        # Batches of 2 here, 3 in the reference: the convolution may take another algorithm (Winograd or direct,
        # by batch size), so elements near 0 differ by float32 rounding of the blob's largest values.
        want = ref[b].numpy()
        np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-6 * float(np.abs(want).max()), err_msg=b)
    assert (got[relu_on_conv] >= 0).all()
    assert [p.name for p in out.parent.iterdir()] == ["f.npz"]  # no temporary file left behind


def test_googlenet_cam_net_in_place_cam_conv(tmp_path, images):
    folder, arrays = images
    model = REPO / "prototxt" / "googlenet_cam_deploy.prototxt"
    net = Net(read_net(model), seed=6)
    save_caffemodel(net, tmp_path / "w.caffemodel")
    out = tmp_path / "f.npz"
    run("--model", model, "--weights", tmp_path / "w.caffemodel", "--blobs", "CAM_conv,inception_4e/output,CAM_pool",
        "--out", out, "--mean", "100,110,120", folder / "im1.png")
    got, ref = load(out), reference(net, arrays[1:2], 224, mean=(100, 110, 120))
    assert got["inception_4e/output"].shape == (1, 832, 14, 14) and got["CAM_conv"].shape == (1, 1024, 14, 14)
    for b in ("CAM_conv", "inception_4e/output", "CAM_pool"):
        np.testing.assert_allclose(got[b], ref[b].numpy(), rtol=1e-4, atol=1e-5, err_msg=b)
    assert (got["CAM_conv"] >= 0).all()  # after the in-place CAM_relu


def test_mean_file_and_scale(tmp_path, images):
    folder, arrays = images
    text = ('name: "n" layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 '
            'dim: 6 } } }\nlayer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: AVE '
            'kernel_size: 2 stride: 2 } }\n')
    (tmp_path / "n.prototxt").write_text(text)
    net = Net(read_net(tmp_path / "n.prototxt"))
    save_caffemodel(net, tmp_path / "w.caffemodel")
    from caffecam.proto import caffe_pb2

    mean = np.random.default_rng(1).uniform(0, 255, (3, 10, 8)).astype(np.float32)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([1, 3, 10, 8])
    blob.data.extend(mean.ravel().tolist())
    (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
    run("--model", tmp_path / "n.prototxt", "--weights", tmp_path / "w.caffemodel", "--blobs", "data",
        "--out", tmp_path / "f.npz", "--mean-file", tmp_path / "mean.binaryproto", "--scale", 0.5, folder / "im0.png")
    resized = cv2.resize(arrays[0], (6, 8), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1).astype(np.float32)
    expect = (resized - mean[:, 1:9, 1:7]) * 0.5  # the mean image's centre crop, as Caffe's TEST crop
    close(load(tmp_path / "f.npz")["data"][0], expect)


def test_raw_scale_and_rgb_order(tmp_path, images):
    folder, arrays = images
    (tmp_path / "n.prototxt").write_text('name: "n" layer { name: "data" type: "Input" top: "data" input_param { '
                                         'shape { dim: 1 dim: 3 dim: 8 dim: 6 } } }')
    save_caffemodel(Net(read_net(tmp_path / "n.prototxt")), tmp_path / "w.caffemodel")
    run("--model", tmp_path / "n.prototxt", "--weights", tmp_path / "w.caffemodel", "--blobs", "data",
        "--out", tmp_path / "f.npz", "--raw-scale", 1, "--channel-order", "RGB", "--mean", "0.4,0.45,0.5",
        "--scale", 2, folder / "im0.png")
    # pycaffe's order: R,G,B in [0, 1] (float32 of pixel / 255), times raw_scale, minus the mean, times scale.
    rgb = cv2.resize(arrays[0], (6, 8), interpolation=cv2.INTER_LINEAR)[:, :, ::-1].transpose(2, 0, 1)
    expect = ((rgb / 255.0).astype(np.float32) - np.float32([0.4, 0.45, 0.5])[:, None, None]) * np.float32(2)
    np.testing.assert_allclose(load(tmp_path / "f.npz")["data"][0], expect, rtol=1e-6, atol=1e-7)


def test_bf16_close_to_float32_and_refused_where_the_cpu_lacks_it(tmp_path, capsys, monkeypatch):
    from caffecam.engine import precision

    base = ["--model", DATA / "mixed.prototxt", "--weights", DATA / "mixed.caffemodel", "--blobs", "fc,prob",
            "--input", DATA / "mixed_input.npy", "--cpu"]
    run(*base, "--out", tmp_path / "f32.npz")
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: ["AVX512-BF16"])
    run(*base, "--bf16", "--out", tmp_path / "bf16.npz")
    assert "bfloat16 autocast (AVX512-BF16)" in capsys.readouterr().out
    exact, low = load(tmp_path / "f32.npz"), load(tmp_path / "bf16.npz")
    for blob in ("fc", "prob"):
        assert low[blob].dtype == np.float32
        err = np.abs(low[blob] - exact[blob]).max() / np.abs(exact[blob]).max()
        assert 1e-6 < err < 3e-2, (blob, err)
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: [])
    line = fails(capsys, *base, "--bf16", "--out", tmp_path / "no.npz")
    assert "--bf16: this CPU has no native bfloat16" in line and not (tmp_path / "no.npz").exists()


def test_places365_alexnet_input_size_and_its_mean_image(tmp_path, images):
    # The published deploy file as users bring it (legacy input_dim 10×3×227×227), cut after conv1 to stay small;
    # its mean is a 3×256×256 image (places365CNN_mean.binaryproto), centre-cropped at (256 − 227) // 2 = 14.
    from caffecam.data.datum import write_mean_binaryproto
    from caffecam.engine.prototxt import write_text

    folder, arrays = images
    param = read_net(REPO / "tests" / "zoo" / "places365_alexnet.prototxt")
    del param.layer[1:]
    write_text(tmp_path / "alexnet.prototxt", param)
    save_caffemodel(Net(param, seed=1), tmp_path / "w.caffemodel")
    mean = np.random.default_rng(2).uniform(80, 140, (3, 256, 256)).astype(np.float32)
    write_mean_binaryproto(tmp_path / "mean.binaryproto", mean)
    run("--model", tmp_path / "alexnet.prototxt", "--weights", tmp_path / "w.caffemodel", "--blobs", "data",
        "--out", tmp_path / "f.npz", "--mean-file", tmp_path / "mean.binaryproto", folder / "im2.png")
    got = load(tmp_path / "f.npz")["data"]
    resized = cv2.resize(arrays[2], (227, 227), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    np.testing.assert_array_equal(got[0], resized.astype(np.float32) - mean[:, 14:241, 14:241])


def test_errors_are_one_line(tmp_path, capsys, images):
    folder, _ = images
    base = ["--model", DATA / "mixed.prototxt", "--weights", DATA / "mixed.caffemodel", "--out", tmp_path / "f.npz"]
    line = fails(capsys, *base, "--blobs", "conv2a,fc", "--input", DATA / "mixed_input.npy")
    assert "no blob 'conv2a'; nearest: conv2/a" in line
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 4, 11, 13), np.float32))
    assert "has 4 channels; input 'data'" in fails(capsys, *base, "--blobs", "fc", "--input", wrong)
    np.save(wrong, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert "not a .npy array" in fails(capsys, *base, "--blobs", "fc", "--input", wrong)
    assert "either INPUT" in fails(capsys, *base, "--blobs", "fc")
    assert "either INPUT" in fails(capsys, *base, "--blobs", "fc", "--input", wrong, folder)
    assert not (tmp_path / "f.npz").exists()


def test_unreadable_image_is_named_the_rest_written_and_status_1(tmp_path, images):
    folder, _ = images
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    model = REPO / "prototxt" / "demo_deploy.prototxt"
    save_caffemodel(Net(read_net(model), seed=1), tmp_path / "w.caffemodel")
    r = subprocess.run([sys.executable, str(SCRIPT), "--model", str(model), "--weights", str(tmp_path / "w.caffemodel"),
                        "--blobs", "prob", "--out", str(tmp_path / "f.npz"), str(folder / "im0.png"),
                        str(tmp_path / "broken.png")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "broken.png" in r.stderr and "1 input(s) could not be read" in r.stderr
    assert load(tmp_path / "f.npz")["names"].tolist() == [str(folder / "im0.png")]


def test_help():
    r = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--mean-file" in r.stdout and "--input X.npy" in r.stdout
