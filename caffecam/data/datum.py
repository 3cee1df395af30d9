"""Caffe Datum records, LMDB databases of them, and mean.binaryproto files.

A Datum holds one image and its label. Raw records store `data` as C×H×W uint8 planes in BGR order (the order
OpenCV loads images in); encoded records (`encoded=true`) store a whole JPEG/PNG file's bytes and leave
channels/height/width as a hint. Caffe's convert_imageset keys records `%08d_<path>` in list order.
"""

import os
import shutil
import tempfile
from pathlib import Path

import cv2
import lmdb
import numpy as np
from google.protobuf import message as pb_message
from tqdm import tqdm

from caffecam.atomic import plain_mode
from caffecam.data.images import DEFAULT_MAX_PIXELS, opencv_reason, too_many_pixels
from caffecam.engine.prototxt import read_binary, write_binary
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2


def _as_hwc(img):
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.dtype != np.uint8:
        raise CaffeCamError(f"datum: expected an H×W or H×W×C uint8 image, got shape {img.shape} dtype {img.dtype}")
    return img


def encode_datum(img_bgr_uint8, label, encoded=True, ext=".jpg", quality=95):
    """Serialize one image (H×W×C or H×W, uint8, BGR) and its integer label as a Datum's bytes.

    encoded=True stores the image compressed as `ext` (".jpg" or ".png"); False stores raw C×H×W planes.
    """
    img = _as_hwc(img_bgr_uint8)
    h, w, c = img.shape
    datum = caffe_pb2.Datum(channels=c, height=h, width=w, label=int(label))
    if encoded:
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext.lower() in (".jpg", ".jpeg") else []
        ok, buf = cv2.imencode(ext, img if c != 1 else img[:, :, 0], params)
        if not ok:
            raise CaffeCamError(f"datum: OpenCV could not encode a {w}x{h}x{c} image as {ext}")
        datum.data = buf.tobytes()
        datum.encoded = True
    else:
        datum.data = np.ascontiguousarray(img.transpose(2, 0, 1)).tobytes()
    return datum.SerializeToString()


def parse_datum(data, where="datum"):
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(bytes(data))
    except pb_message.DecodeError:
        raise CaffeCamError(f"{where}: not a Caffe Datum record (protobuf decode failed)") from None
    return datum


def decode_datum(data, is_color=True, where="datum", max_pixels=DEFAULT_MAX_PIXELS):
    """Datum bytes -> (image H×W×C, label).

    Raw records give uint8 BGR (C planes as stored; float_data records give float32). Encoded records are decoded
    with OpenCV: 3 channels BGR when is_color, else 1 channel (Caffe's ImageData/Data is_color convention), after
    their header is checked against `max_pixels`.
    """
    datum = parse_datum(data, where)
    if datum.encoded:
        too_big = too_many_pixels(datum.data[:65536], len(datum.data), max_pixels)
        if too_big:
            raise CaffeCamError(f"{where}: encoded image {too_big} (--max-pixels); rebuild the LMDB with smaller "
                                "images (e.g. prepare_mpii.py --resize 256)")
        flag = cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE
        try:
            img = cv2.imdecode(np.frombuffer(datum.data, np.uint8), flag)
        except cv2.error as exc:
            raise CaffeCamError(f"{where}: encoded image cannot be decoded (OpenCV: {opencv_reason(exc)}); rebuild "
                                "the LMDB without it") from None
        if img is None:
            raise CaffeCamError(f"{where}: encoded image bytes could not be decoded (corrupt or unknown format)")
        if img.ndim == 2:
            img = img[:, :, None]
        return img, datum.label
    c, h, w = datum.channels, datum.height, datum.width
    if datum.data:
        if len(datum.data) != c * h * w:
            raise CaffeCamError(f"{where}: raw data holds {len(datum.data)} bytes but channels*height*width = "
                                f"{c}*{h}*{w} = {c * h * w}")
        planes = np.frombuffer(datum.data, np.uint8).reshape(c, h, w)
    elif len(datum.float_data):
        if len(datum.float_data) != c * h * w:
            raise CaffeCamError(f"{where}: float_data holds {len(datum.float_data)} values but "
                                f"channels*height*width = {c * h * w}")
        planes = np.asarray(datum.float_data, np.float32).reshape(c, h, w)
    else:
        raise CaffeCamError(f"{where}: Datum holds no image data")
    return np.ascontiguousarray(planes.transpose(1, 2, 0)), datum.label


def lmdb_key(index, relpath):
    """Caffe convert_imageset's key: 8-digit index, underscore, the list file's path."""
    return f"{index:08d}_{relpath}".encode()


def _replace_dir(tmp, path):
    """Move the finished directory `tmp` to `path`, replacing an old one only after the new one is complete."""
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old."))
        os.replace(path, old / "db")
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_lmdb(path, items, total=None, desc=None, commit_every=1000, map_size=1 << 28, progress=True):
    """Write (key bytes, value bytes) pairs into a new LMDB directory at `path`; returns the record count.

    The database is built in a temporary sibling directory and renamed into place only when complete, so an
    interrupted run never leaves a half-written `path` (an existing database is replaced at the end).
    The map grows by doubling when full, so no size has to be guessed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    count = 0
    try:
        os.chmod(tmp, plain_mode(directory=True))  # mkdtemp's 0700 would hide the database from colleagues
        env = lmdb.open(str(tmp), map_size=map_size, subdir=True, lock=True)
        pending = []

        def flush():
            nonlocal pending
            while True:
                try:
                    with env.begin(write=True) as txn:
                        for k, v in pending:
                            txn.put(k, v)
                    break
                except lmdb.MapFullError:
                    env.set_mapsize(env.info()["map_size"] * 2)
            pending = []

        bar = tqdm(items, total=total, desc=desc or path.name, unit="rec", disable=None if progress else True)
        for key, value in bar:
            pending.append((key if isinstance(key, bytes) else str(key).encode(), value))
            count += 1
            if len(pending) >= commit_every:
                flush()
        flush()
        env.sync()
        env.close()
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return count


def iter_lmdb(path):
    """Yield (key bytes, value bytes) of an LMDB database in key order (read-only, no lock file written)."""
    path = Path(path)
    if not (path / "data.mdb").is_file():
        raise CaffeCamError(f"{path}: not an LMDB directory (no data.mdb); build one with prepare_mpii.py --lmdb")
    env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=True)
    try:
        with env.begin() as txn:
            yield from txn.cursor()
    finally:
        env.close()


def lmdb_count(path):
    path = Path(path)
    if not (path / "data.mdb").is_file():
        raise CaffeCamError(f"{path}: not an LMDB directory (no data.mdb)")
    env = lmdb.open(str(path), readonly=True, lock=False, subdir=True)
    try:
        return env.stat()["entries"]
    finally:
        env.close()


def read_mean_binaryproto(path):
    """A Caffe mean file (BlobProto, 1×C×H×W as compute_image_mean writes it) -> C×H×W float32 array."""
    blob = read_binary(path, caffe_pb2.BlobProto, "mean.binaryproto (BlobProto)")
    if blob.HasField("shape"):
        dims = list(blob.shape.dim)
    else:
        dims = [blob.num, blob.channels, blob.height, blob.width]
    values = np.asarray(blob.data if len(blob.data) else blob.double_data, np.float32)
    if len(dims) == 4:
        if dims[0] != 1:
            raise CaffeCamError(f"{path}: mean blob has num={dims[0]}; a mean file holds exactly one C×H×W image")
        dims = dims[1:]
    if len(dims) != 3 or int(np.prod(dims)) != values.size or values.size == 0:
        raise CaffeCamError(f"{path}: mean blob has shape {dims} but {values.size} values; expected 1×C×H×W")
    return values.reshape(dims)


def write_mean_binaryproto(path, mean_chw):
    """Write a C×H×W mean as a BlobProto with legacy num=1/channels/height/width dims (what Caffe writes)."""
    mean = np.asarray(mean_chw, np.float32)
    if mean.ndim != 3:
        raise CaffeCamError(f"{path}: a mean must be C×H×W, got shape {mean.shape}")
    c, h, w = mean.shape
    blob = caffe_pb2.BlobProto(num=1, channels=c, height=h, width=w)
    blob.data.extend(mean.ravel().tolist())
    write_binary(path, blob)
