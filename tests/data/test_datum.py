import struct

import cv2
import numpy as np
import pytest

from caffecam.data.datum import (
    decode_datum,
    encode_datum,
    iter_lmdb,
    lmdb_count,
    lmdb_key,
    read_mean_binaryproto,
    write_lmdb,
    write_mean_binaryproto,
)
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_raw_encode_matches_hand_built_wire_bytes():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)  # H=2, W=3, C=3 (BGR)
    planes = bytes([img[y, x, c] for c in range(3) for y in range(2) for x in range(3)])
    # Datum: channels=1, height=2, width=3 (varints), data=4 (bytes), label=5; fields in number order.
    expected = b"\x08\x03" + b"\x10\x02" + b"\x18\x03" + b"\x22" + _varint(len(planes)) + planes + b"\x28\x07"
    assert encode_datum(img, 7, encoded=False) == expected


def test_raw_decode_of_hand_built_record():
    planes = np.array([[[1, 2], [3, 4]], [[10, 20], [30, 40]], [[100, 110], [120, 130]]], np.uint8)  # C×H×W
    d = caffe_pb2.Datum(channels=3, height=2, width=2, data=planes.tobytes(), label=5)
    img, label = decode_datum(d.SerializeToString())
    assert label == 5
    assert img.shape == (2, 2, 3) and img.dtype == np.uint8
    assert img[0, 1].tolist() == [2, 20, 110]
    assert img[1, 0].tolist() == [3, 30, 120]


def test_raw_round_trip_random_and_gray():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out, label = decode_datum(encode_datum(img, 3, encoded=False))
    assert label == 3 and np.array_equal(out, img)
    gray = rng.integers(0, 256, (4, 6), dtype=np.uint8)
    out, _ = decode_datum(encode_datum(gray, 0, encoded=False))
    assert out.shape == (4, 6, 1) and np.array_equal(out[:, :, 0], gray)


def test_float_data_record():
    vals = [0.5, 1.5, 2.5, 3.5]
    d = caffe_pb2.Datum(channels=1, height=2, width=2, label=1)
    d.float_data.extend(vals)
    img, label = decode_datum(d.SerializeToString())
    assert img.dtype == np.float32 and img[:, :, 0].tolist() == [[0.5, 1.5], [2.5, 3.5]]


def test_encoded_png_round_trip_is_exact_and_jpeg_is_close():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    rec = encode_datum(img, 2, encoded=True, ext=".png")
    d = caffe_pb2.Datum.FromString(rec)
    assert d.encoded and d.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert (d.channels, d.height, d.width, d.label) == (3, 9, 11, 2)
    out, label = decode_datum(rec)
    assert label == 2 and np.array_equal(out, img)

    smooth = np.zeros((32, 32, 3), np.uint8)
    smooth[:, :, 0] = 200
    smooth[:, :, 1] = np.linspace(0, 255, 32, dtype=np.uint8)[None, :]
    rec = encode_datum(smooth, 4)
    assert caffe_pb2.Datum.FromString(rec).data[:2] == b"\xff\xd8"  # JPEG SOI marker
    out, label = decode_datum(rec)
    assert label == 4 and out.shape == smooth.shape
    assert np.abs(out.astype(int) - smooth.astype(int)).mean() < 3.0
    gray, _ = decode_datum(rec, is_color=False)
    ref = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)
    assert gray.shape == (32, 32, 1) and np.abs(gray[:, :, 0].astype(int) - ref.astype(int)).max() <= 2


def test_bad_records_are_one_line_errors():
    d = caffe_pb2.Datum(channels=3, height=2, width=2, data=b"\x00" * 5)
    with pytest.raises(CaffeCamError, match="5 bytes"):
        decode_datum(d.SerializeToString())
    with pytest.raises(CaffeCamError, match="could not be decoded"):
        decode_datum(caffe_pb2.Datum(encoded=True, data=b"notajpeg").SerializeToString())
    with pytest.raises(CaffeCamError, match="not a Caffe Datum"):
        decode_datum(b"\xff\xff\xff")


def test_lmdb_write_read_in_key_order(tmp_path):
    rng = np.random.default_rng(2)
    imgs = [rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) for _ in range(5)]
    paths = [f"dir/img {i}.jpg" for i in range(5)]
    items = ((lmdb_key(i, p), encode_datum(im, i % 2, encoded=False)) for i, (p, im) in enumerate(zip(paths, imgs)))
    # tiny map and commit size force the map-growth path
    n = write_lmdb(tmp_path / "db", items, commit_every=2, map_size=4096, progress=False)
    assert n == 5 and lmdb_count(tmp_path / "db") == 5
    got = list(iter_lmdb(tmp_path / "db"))
    assert [k for k, _ in got] == [b"00000000_dir/img 0.jpg", b"00000001_dir/img 1.jpg", b"00000002_dir/img 2.jpg",
                                   b"00000003_dir/img 3.jpg", b"00000004_dir/img 4.jpg"]
    for i, (_, v) in enumerate(got):
        img, label = decode_datum(v)
        assert label == i % 2 and np.array_equal(img, imgs[i])
    # rewriting replaces the old database and leaves no temp dirs behind
    write_lmdb(tmp_path / "db", [(b"a", b"x")], progress=False)
    assert list(iter_lmdb(tmp_path / "db")) == [(b"a", b"x")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]


def test_lmdb_interrupted_write_leaves_nothing(tmp_path):
    def items():
        yield b"a", b"1"
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_lmdb(tmp_path / "db", items(), progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(CaffeCamError, match="not an LMDB"):
        list(iter_lmdb(tmp_path / "db"))


def test_mean_binaryproto_round_trip_and_hand_built(tmp_path):
    mean = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) / 4
    write_mean_binaryproto(tmp_path / "m.binaryproto", mean)
    assert np.array_equal(read_mean_binaryproto(tmp_path / "m.binaryproto"), mean)

    # Hand-built: num=1, channels=1, height=1, width=2, data packed floats [104, 117].
    raw = b"\x08\x01\x10\x01\x18\x01\x20\x02" + b"\x2a\x08" + struct.pack("<2f", 104.0, 117.0)
    (tmp_path / "h.binaryproto").write_bytes(raw)
    got = read_mean_binaryproto(tmp_path / "h.binaryproto")
    assert got.shape == (1, 1, 2) and got.tolist() == [[[104.0, 117.0]]]

    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([1, 3, 1, 1])
    blob.double_data.extend([1.0, 2.0, 3.0])
    (tmp_path / "s.binaryproto").write_bytes(blob.SerializeToString())
    assert read_mean_binaryproto(tmp_path / "s.binaryproto").ravel().tolist() == [1.0, 2.0, 3.0]

    bad = caffe_pb2.BlobProto(num=2, channels=1, height=1, width=1)
    bad.data.extend([1.0, 2.0])
    (tmp_path / "b.binaryproto").write_bytes(bad.SerializeToString())
    with pytest.raises(CaffeCamError, match="num=2"):
        read_mean_binaryproto(tmp_path / "b.binaryproto")
