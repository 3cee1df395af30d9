"""data/net_input.py (the deploy-time preprocessing of cam.py and extract_features.py) against element-by-element
NumPy references written from pycaffe's Transformer order and Caffe's data_transformer.cpp, and against real
pycaffe's Transformer (tests/golden/data_layers/mean_file_crop.npz, made by make_mean_file_crop.py)."""

import argparse
from pathlib import Path

import numpy as np
import pytest

from caffecam.data.datum import write_mean_binaryproto
from caffecam.data.net_input import NetInput, add_input_args, input_options
from caffecam.errors import CaffeCamError


def image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def parse(*argv):
    p = argparse.ArgumentParser()
    add_input_args(p)
    return p.parse_args([str(a) for a in argv])


def test_default_is_bgr_pixels_minus_the_imagenet_mean_exactly():
    img = image(5, 4)
    out = NetInput(5, 4)(img)
    assert out.dtype == np.float32 and out.shape == (5, 4, 3)
    for y, x, c in ((0, 0, 0), (4, 3, 2), (2, 1, 1)):
        assert out[y, x, c] == np.float32(int(img[y, x, c]) - (104, 117, 123)[c])  # integers: exact


def test_mean_image_is_centre_cropped_per_pixel():
    # Every mean pixel distinct: value = 1000·c + 10·y + x, so a wrong offset or a transposed crop shows.
    c, y, x = np.meshgrid(np.arange(3), np.arange(9), np.arange(8), indexing="ij")
    mean = (1000 * c + 10 * y + x).astype(np.float32)
    img = image(5, 4, seed=1)
    out = NetInput(5, 4, mean=mean)(img)
    # Caffe's TEST crop of a 9×8 mean to 5×4: h_off = (9 − 5) // 2 = 2, w_off = (8 − 4) // 2 = 2.
    for yy, xx, ch in ((0, 0, 0), (4, 3, 2), (1, 2, 1)):
        expect = int(img[yy, xx, ch]) - (1000 * ch + 10 * (yy + 2) + (xx + 2))
        assert out[yy, xx, ch] == np.float32(expect)


def test_rgb_raw_scale_mean_and_scale_in_pycaffes_order():
    img = image(3, 2, seed=2)
    out = NetInput(3, 2, mean=(0.485, 0.456, 0.406), scale=1 / 0.225, raw_scale=1.0, channel_order="RGB")(img)
    for yy, xx, ch in ((0, 0, 0), (2, 1, 2), (1, 0, 1)):
        v = np.float32(img[yy, xx, 2 - ch] / 255.0)  # channel 0 of an RGB net is OpenCV's channel 2
        expect = (v * np.float32(1.0) - np.float32((0.485, 0.456, 0.406)[ch])) * np.float32(1 / 0.225)
        np.testing.assert_allclose(out[yy, xx, ch], expect, rtol=1e-6)


def test_raw_scale_other_than_255_scales_the_unit_range():
    img = np.full((2, 2, 3), 51, np.uint8)  # 51 / 255 = 0.2
    out = NetInput(2, 2, mean=(0.0,), raw_scale=10.0)(img)
    np.testing.assert_allclose(out, 2.0, rtol=1e-6)


def test_mobilenet_scale():
    img = image(4, 4, seed=3)
    out = NetInput(4, 4, mean=(103.94, 116.78, 123.68), scale=0.017)(img)
    expect = (img.astype(np.float32) - np.float32([103.94, 116.78, 123.68])) * np.float32(0.017)
    np.testing.assert_allclose(out, expect, rtol=1e-6)


def test_resizes_to_the_input_size():
    out = NetInput(7, 9, mean=(0,))(image(30, 20))
    assert out.shape == (7, 9, 3)


def test_options_from_the_command_line(tmp_path):
    mean = np.arange(3 * 6 * 6, dtype=np.float32).reshape(3, 6, 6)
    write_mean_binaryproto(tmp_path / "m.binaryproto", mean)
    opts = input_options(parse("--mean-file", tmp_path / "m.binaryproto", "--scale", 0.5, "--channel-order", "rgb"))
    assert opts["scale"] == 0.5 and opts["channel_order"] == "RGB" and np.array_equal(opts["mean"], mean)
    out = NetInput(4, 4, **opts)(np.zeros((4, 4, 3), np.uint8))
    np.testing.assert_array_equal(out, -0.5 * mean[:, 1:5, 1:5].transpose(1, 2, 0))
    assert input_options(parse("--mean-value", "1,2,3"))["mean"] == (1.0, 2.0, 3.0)  # Caffe's field name
    with pytest.raises(SystemExit):
        parse("--mean", "1,2,3", "--mean-file", "m.binaryproto")


@pytest.mark.parametrize("kwargs,needle", [
    (dict(mean=np.zeros((3, 4, 9), np.float32)), "mean image is 3×4×9, the net's input 3×5×5"),
    (dict(mean=np.zeros((1, 8, 8), np.float32)), "needs 3 channels"),
    (dict(mean=(1.0, 2.0)), "one value or three"),
    (dict(raw_scale=0.0), "raw scale > 0"),
    (dict(channel_order="GBR"), "give BGR or RGB"),
])
def test_bad_options_are_one_line(kwargs, needle):
    with pytest.raises(CaffeCamError, match=needle):
        NetInput(5, 5, **kwargs)


def test_missing_mean_file_is_one_line(tmp_path):
    with pytest.raises(CaffeCamError, match="nowhere.binaryproto"):
        input_options(parse("--mean-file", tmp_path / "nowhere.binaryproto"))
    with pytest.raises(CaffeCamError, match="nowhere.npy: file not found"):
        input_options(parse("--mean-file", tmp_path / "nowhere.npy"))


def test_pycaffe_npy_mean_file(tmp_path):
    # pycaffe ships its ImageNet mean as ilsvrc_2012_mean.npy (3×256×256 float64, B,G,R).
    mean = np.random.default_rng(4).uniform(90, 130, (3, 8, 8))
    np.save(tmp_path / "mean.npy", mean)
    opts = input_options(parse("--mean-file", tmp_path / "mean.npy"))
    out = NetInput(6, 6, **opts)(np.full((6, 6, 3), 200, np.uint8))
    np.testing.assert_array_equal(out, 200 - mean.astype(np.float32)[:, 1:7, 1:7].transpose(1, 2, 0))
    np.save(tmp_path / "flat.npy", mean[0])
    with pytest.raises(CaffeCamError, match="needs a C×H×W array"):
        input_options(parse("--mean-file", tmp_path / "flat.npy"))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CaffeCamError, match="not a .npy array"):  # never unpickled
        input_options(parse("--mean-file", tmp_path / "obj.npy"))


@pytest.mark.parametrize("case,options", [
    ("bvlc", dict(mean=(104.0, 117.0, 123.0))),
    ("rgb_unit", dict(mean=(0.485, 0.456, 0.406), scale=1 / 0.225, raw_scale=1.0, channel_order="RGB")),
    ("mobilenet", dict(mean=(103.94, 116.78, 123.68), scale=0.017)),
])
def test_matches_pycaffes_transformer(case, options):
    golden = Path(__file__).resolve().parents[1] / "golden" / "data_layers" / "mean_file_crop.npz"
    with np.load(golden, allow_pickle=False) as f:
        img, expect = f["transformer/image"], f[f"transformer/{case}"]
    got = NetInput(*img.shape[:2], **options)(img).transpose(2, 0, 1)
    # pycaffe scales float32(pixel / 255) by 255 (not exactly the pixel) and subtracts a float64 mean.
    np.testing.assert_allclose(got, expect, rtol=1e-6, atol=2e-5 if options.get("raw_scale", 255) == 255 else 1e-6)
