"""transform_param (crop, mirror, mean_value, mean_file, scale) and read_image against NumPy references."""

import cv2
import numpy as np
import pytest

from caffecam.data.datum import write_mean_binaryproto
from caffecam.data.transform import TEST, TRAIN, check_transform_param, read_image, transform
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2


def tp_of(**kw):
    tp = caffe_pb2.TransformationParameter()
    for k, v in kw.items():
        if k == "mean_value":
            tp.mean_value.extend(v)
        else:
            setattr(tp, k, v)
    return tp


def image(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def reference(img, top, left, size_h, size_w, mean_chw, scale, flip=False):
    """Element by element: out[c, y, x] = (img[top + y, left + sx, c] - mean[c, y, x]) * scale, sx mirrored."""
    c = img.shape[2]
    out = np.zeros((c, size_h, size_w), np.float32)
    for ch in range(c):
        for y in range(size_h):
            for x in range(size_w):
                sx = size_w - 1 - x if flip else x
                v = np.float32(img[top + y, left + sx, ch]) - np.float32(mean_chw[ch, top + y, left + sx])
                out[ch, y, x] = v * np.float32(scale)
    return out


def test_test_phase_centre_crop_mean_values_and_scale_exact():
    img = image(11, 13)
    tp = tp_of(crop_size=6, mean_value=[104.0, 117.0, 123.0], scale=0.017)
    out = transform(img, tp, TEST)
    # (11-6)//2 = 2 rows, (13-6)//2 = 3 columns: integer floor of the centring offset.
    mean = np.broadcast_to(np.array([104, 117, 123], np.float32)[:, None, None], (3, 11, 13))
    assert out.dtype == np.float32 and out.shape == (3, 6, 6)
    assert np.array_equal(out, reference(img, 2, 3, 6, 6, mean, np.float32(0.017)))
    assert out[0, 0, 0] == np.float32((np.float32(img[2, 3, 0]) - np.float32(104)) * np.float32(0.017))


def test_single_mean_value_is_used_for_every_channel():
    img = image(5, 4)
    out = transform(img, tp_of(mean_value=[100.0]), TEST)
    expected = img.transpose(2, 0, 1).astype(np.float32) - 100.0
    assert np.array_equal(out, expected)


def test_no_parameters_is_plain_float_chw():
    img = image(3, 5)
    assert np.array_equal(transform(img, tp_of(), TEST), img.transpose(2, 0, 1).astype(np.float32))


def test_grayscale_image_gets_one_channel():
    img = image(6, 6, c=1)
    out = transform(img[:, :, 0], tp_of(crop_size=4, mean_value=[10.0]), TEST)
    assert out.shape == (1, 4, 4)
    assert np.array_equal(out[0], img[1:5, 1:5, 0].astype(np.float32) - 10.0)


def test_mean_file_is_cropped_at_the_image_offset(tmp_path):
    img = image(9, 10)
    mean = np.random.default_rng(1).uniform(0, 255, (3, 9, 10)).astype(np.float32)
    write_mean_binaryproto(tmp_path / "mean.binaryproto", mean)
    tp = tp_of(crop_size=5, mean_file=str(tmp_path / "mean.binaryproto"), scale=2.0)
    out = transform(img, tp, TEST)
    assert np.array_equal(out, reference(img, 2, 2, 5, 5, mean, 2.0))


def test_mirror_with_mean_file_subtracts_the_unmirrored_mean(tmp_path):
    img = image(6, 7)
    mean = np.random.default_rng(2).uniform(0, 255, (3, 6, 7)).astype(np.float32)
    write_mean_binaryproto(tmp_path / "m.binaryproto", mean)
    tp = tp_of(mirror=True, mean_file=str(tmp_path / "m.binaryproto"))
    flips = 0
    for seed in range(40):
        out = transform(img, tp, TEST, np.random.default_rng(seed))
        plain, flipped = reference(img, 0, 0, 6, 7, mean, 1.0), reference(img, 0, 0, 6, 7, mean, 1.0, flip=True)
        assert np.array_equal(out, plain) or np.array_equal(out, flipped)
        flips += np.array_equal(out, flipped)
    assert 0 < flips < 40


def test_hwc_layout_holds_the_same_values(tmp_path):
    """hwc=True (channels_last batches): the element-by-element reference, transposed; TRAIN crop, mirror, mean
    file and scale, and a mean value per channel."""
    img = image(9, 11)
    mean = np.random.default_rng(3).uniform(0, 255, (3, 9, 11)).astype(np.float32)
    write_mean_binaryproto(tmp_path / "m.binaryproto", mean)
    tp = tp_of(crop_size=6, mirror=True, mean_file=str(tmp_path / "m.binaryproto"), scale=0.5)
    for seed in range(12):
        chw = transform(img, tp, TRAIN, np.random.default_rng(seed))
        hwc = transform(img, tp, TRAIN, np.random.default_rng(seed), hwc=True)
        assert hwc.shape == (6, 6, 3) and hwc.flags.c_contiguous and chw.flags.c_contiguous
        assert np.array_equal(hwc, chw.transpose(1, 2, 0))
        rng = np.random.default_rng(seed)
        flip = bool(rng.integers(2))
        top, left = int(rng.integers(4)), int(rng.integers(6))
        assert np.array_equal(chw, reference(img, top, left, 6, 6, mean, 0.5, flip))
    tp = tp_of(mean_value=[10.5, 20.25, 30.0], scale=2.0)
    expect = reference(img, 0, 0, 9, 11, np.broadcast_to(np.float32([10.5, 20.25, 30.0])[:, None, None], (3, 9, 11)),
                       2.0)
    assert np.array_equal(transform(img, tp, TEST, hwc=True), expect.transpose(1, 2, 0))


def test_mean_file_and_image_sizes_must_match(tmp_path):
    write_mean_binaryproto(tmp_path / "m.binaryproto", np.zeros((3, 8, 8), np.float32))
    tp = tp_of(crop_size=8, mean_file=str(tmp_path / "m.binaryproto"))
    with pytest.raises(CaffeCamError, match=r"pic.jpg: image is 3x10x10 .* mean file .* 3x8x8"):
        transform(image(10, 10), tp, TEST, where="pic.jpg")


def test_mean_file_and_mean_value_together_is_an_error(tmp_path):
    write_mean_binaryproto(tmp_path / "m.binaryproto", np.zeros((3, 4, 4), np.float32))
    tp = tp_of(mean_file=str(tmp_path / "m.binaryproto"), mean_value=[1.0])
    with pytest.raises(CaffeCamError, match="both mean_file and mean_value"):
        transform(image(4, 4), tp, TEST)


def test_mean_value_count_must_be_one_or_channels():
    with pytest.raises(CaffeCamError, match="2 mean_value entries"):
        transform(image(4, 4), tp_of(mean_value=[1.0, 2.0]), TEST)
    with pytest.raises(CaffeCamError, match="layer 'x'.*2 mean_value"):
        check_transform_param(tp_of(mean_value=[1.0, 2.0]), 3, "layer 'x'")
    with pytest.raises(CaffeCamError, match="force_color and force_gray"):
        check_transform_param(tp_of(force_color=True, force_gray=True), 3)


def test_train_crop_offsets_are_in_range_and_cover_every_position():
    h, w, crop = 7, 9, 4
    # One channel whose value encodes the pixel position, so the output's first pixel tells the offset.
    pos = (np.arange(h)[:, None] * w + np.arange(w)[None, :]).astype(np.uint8)[:, :, None]
    seen = set()
    for seed in range(600):
        out = transform(pos, tp_of(crop_size=crop), TRAIN, np.random.default_rng(seed))
        top, left = divmod(int(out[0, 0, 0]), w)
        assert np.array_equal(out[0], pos[top:top + crop, left:left + crop, 0].astype(np.float32))
        seen.add((top, left))
    assert seen == {(t, l) for t in range(h - crop + 1) for l in range(w - crop + 1)}


def test_mirror_flips_about_half_the_time_in_either_phase():
    img = image(5, 6)
    for phase in (TRAIN, TEST):
        flips = 0
        for seed in range(400):
            out = transform(img, tp_of(mirror=True), phase, np.random.default_rng(seed))
            plain = img.transpose(2, 0, 1).astype(np.float32)
            if np.array_equal(out, plain[:, :, ::-1]):
                flips += 1
            else:
                assert np.array_equal(out, plain)
        assert 150 < flips < 250


def test_image_smaller_than_crop_is_an_error():
    with pytest.raises(CaffeCamError, match=r"list.txt:3: image is 5x4 \(WxH\), smaller than crop_size 6"):
        transform(image(4, 5), tp_of(crop_size=6), TEST, where="list.txt:3")


def test_read_image_colour_grey_and_resize(tmp_path):
    img = image(10, 12)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    assert np.array_equal(read_image(tmp_path / "a.png"), img)
    resized = read_image(tmp_path / "a.png", True, 7, 5)
    assert resized.shape == (7, 5, 3)
    assert np.array_equal(resized, cv2.resize(img, (5, 7), interpolation=cv2.INTER_LINEAR))
    grey = image(8, 9, c=1)[:, :, 0]
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    assert np.array_equal(read_image(tmp_path / "g.png", False), grey[:, :, None])
    colour = read_image(tmp_path / "g.png", True)
    assert colour.shape == (8, 9, 3) and all(np.array_equal(colour[:, :, c], grey) for c in range(3))


def test_read_image_errors(tmp_path):
    with pytest.raises(CaffeCamError, match=r"l.txt:2: image '.*nope.jpg' does not exist"):
        read_image(tmp_path / "nope.jpg", where="l.txt:2")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(CaffeCamError, match="bad.jpg' cannot be decoded"):
        read_image(tmp_path / "bad.jpg")
    cv2.imwrite(str(tmp_path / "a.png"), image(4, 4))
    with pytest.raises(CaffeCamError, match="both be 0 or both be > 0"):
        read_image(tmp_path / "a.png", True, 4, 0)
