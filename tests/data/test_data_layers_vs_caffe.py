"""WindowData, HDF5Data, HDF5Output, MemoryData and LevelDB Data against what real Caffe gave on the same files
(tests/golden/data_layers/, recorded by its make_reference.py)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from caffecam.data.feeds import BatchFeed, make_feeds
from caffecam.data.hdf5 import Hdf5Feed
from caffecam.data.windows import WindowFeed
from caffecam.engine.layers import make_layer
from caffecam.engine.prototxt import parse_text
from caffecam.proto import caffe_pb2

REF = Path(__file__).resolve().parents[1] / "golden" / "data_layers"
TEST = caffe_pb2.TEST


@pytest.fixture(scope="module")
def caffe():
    with np.load(REF / "data_layers.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def layer(text):
    return parse_text(text, caffe_pb2.LayerParameter)


# Must match WINDOW_CASES of make_reference.py (the files windows_<case>.txt hold the windows).
WINDOW_PARAMS = {
    "warp": ("", "crop_size: 8"),
    "context_pad": ("context_pad: 2", "crop_size: 10 mean_value: 100 mean_value: 110 mean_value: 120"),
    "square": ("crop_mode: 'square' context_pad: 1 scale: 0.5", "crop_size: 9 mean_value: 50"),
    "mean_file": ("context_pad: 1", f"crop_size: 8 mean_file: '{REF}/mean.binaryproto'"),
    "mirror": ("context_pad: 3", "crop_size: 10 mirror: true"),
}


@pytest.mark.parametrize("case", list(WINDOW_PARAMS))
def test_window_data_cuts_warps_and_pads_as_caffe(caffe, case):
    extra, transform = WINDOW_PARAMS[case]
    feed = WindowFeed(layer(f"""name: "w" type: "WindowData" top: "data" top: "label"
        window_data_param {{ source: "{REF}/windows_{case}.txt" batch_size: 6 fg_fraction: 0.5 root_folder: "{REF}/"
                             {extra} }} transform_param {{ {transform} }}"""), TEST, seed=1)
    data, label = caffe[f"window/{case}/data"], caffe[f"window/{case}/label"]
    assert feed.shapes["data"] == data.shape and feed.shapes["label"] == label.shape
    batch = feed.next()
    np.testing.assert_array_equal(batch["label"], label)  # 3 background (class 0), then 3 foreground
    if case != "mirror":
        np.testing.assert_allclose(batch["data"], data, rtol=1e-6, atol=1e-4)
        return
    # Caffe mirrored some items at random: each must be one of our two orientations, and both must be right.
    fg, bg = feed.fg[0], feed.bg[0]
    seen = set()
    for k in range(6):
        window = bg if k < 3 else fg
        plain, flipped = feed.item(window, False), feed.item(window, True)
        assert not np.array_equal(plain, flipped)
        assert np.array_equal(data[k], plain) or np.array_equal(data[k], flipped), k
        seen.add(np.array_equal(data[k], flipped))
    assert seen == {False, True}  # the recording holds both orientations


def test_hdf5_data_reads_rows_across_files_and_wraps_as_caffe(caffe, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{REF}/a.h5\n\n   {REF}/b.h5\n")
    lp = layer(f'name: "h" type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ source: "{listing}" '
               'batch_size: 3 }')
    feed = Hdf5Feed(lp, TEST)
    assert feed.shapes == {"data": (3, 2, 3, 1), "label": (3, 1, 1, 1)}
    for i in range(4):
        batch = feed.next()
        for top in ("data", "label"):
            np.testing.assert_array_equal(batch[top], caffe[f"hdf5/{i}/{top}"])


def test_hdf5_shuffle_visits_every_row_once_per_pass_and_resumes(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{REF}/a.h5 {REF}/b.h5\n")
    lp = layer(f'name: "h" type: "HDF5Data" top: "label" hdf5_data_param {{ source: "{listing}" batch_size: 7 '
               'shuffle: true }')
    feed = Hdf5Feed(lp, TEST, seed=5)
    passes = [feed.next()["label"].ravel().tolist() for _ in range(3)]
    assert all(sorted(p) == [0, 1, 2, 10, 11, 12, 13] for p in passes)
    assert len({tuple(p) for p in passes}) > 1  # each pass a new order
    # Rows of one file stay together within a pass (Caffe shuffles files, then rows inside the loaded file).
    assert all({p[0] >= 10} == {v >= 10 for v in p[:3 if p[0] < 10 else 4]} for p in passes)
    resumed = Hdf5Feed(lp, TEST, seed=5, start_batch=2)
    assert resumed.next()["label"].ravel().tolist() == passes[2]


def test_hdf5_output_file_reads_back_in_caffe_as_ours(caffe, tmp_path):
    import h5py

    out = tmp_path / "out.h5"
    sink = make_layer(layer(f'name: "o" type: "HDF5Output" bottom: "x" bottom: "y" '
                            f'hdf5_output_param {{ file_name: "{out}" }}'), [(2, 3, 4), (2,)], TEST)
    sink(torch.full((2, 3, 4), 0.5), torch.full((2,), 7.0))
    with h5py.File(out, "r") as f:
        for key in ("data", "label"):
            np.testing.assert_array_equal(f[key][:], caffe[f"hdf5_output/{key}"])


def test_memory_data_batches_as_pycaffe(caffe):
    net_param = parse_text('layer { name: "m" type: "MemoryData" top: "data" top: "label" '
                           'memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }',
                           caffe_pb2.NetParameter)
    from caffecam.engine.net import Net

    net = Net(net_param, TEST)
    net.set_input_arrays(caffe["memory/input"], np.array([4, 3, 2, 1], np.float32))
    with torch.no_grad():
        for i in range(3):
            blobs = net({})
            for top in ("data", "label"):
                np.testing.assert_array_equal(blobs[top].numpy(), caffe[f"memory/{i}/{top}"])


def test_leveldb_written_by_caffe_reads_as_caffe(caffe, tmp_path):
    db = tmp_path / "leveldb"
    shutil.copytree(REF / "leveldb", db)  # LevelDB writes its LOG and LOCK: keep the repository clean
    lp = layer(f"""name: "d" type: "Data" top: "data" top: "label"
        transform_param {{ crop_size: 10 mean_value: 90 mean_value: 100 mean_value: 110 scale: 0.5 }}
        data_param {{ source: "{db}" batch_size: 2 backend: LEVELDB }}""")
    with BatchFeed(lp, TEST, workers=2) as feed:  # LevelDB is read in the main process whatever `workers` says
        assert feed.workers == 0
        batch = feed.next()
    np.testing.assert_array_equal(batch["data"].numpy(), caffe["leveldb/data"])
    np.testing.assert_array_equal(batch["label"].numpy(), caffe["leveldb/label"])
    # make_feeds opens it too (a second handle in this process reuses the open database).
    net_param = caffe_pb2.NetParameter()
    net_param.layer.add().CopyFrom(lp)
    (again,) = make_feeds(net_param, TEST, workers=0)
    np.testing.assert_array_equal(again.next()["data"].numpy(), caffe["leveldb/data"])


@pytest.mark.parametrize("channels_last", [False, True])  # True: the H×W×C transform the Solver's CPU feeds use
def test_leveldb_with_mean_file_and_test_crop_reads_as_caffe(tmp_path, channels_last):
    # The mean image is taken at the crop's own offset (data_transformer.cpp): every mean value here is distinct.
    db = tmp_path / "leveldb"
    shutil.copytree(REF / "leveldb", db)
    lp = layer(f"""name: "d" type: "Data" top: "data" top: "label"
        transform_param {{ crop_size: 10 mean_file: "{REF / 'mean_12x14.binaryproto'}" scale: 0.5 }}
        data_param {{ source: "{db}" batch_size: 2 backend: LEVELDB }}""")
    with np.load(REF / "mean_file_crop.npz", allow_pickle=False) as f:
        data, label = f["data_layer/data"], f["data_layer/label"]
    with BatchFeed(lp, TEST, workers=0, channels_last=channels_last) as feed:
        batch = feed.next()
    assert batch["data"].is_contiguous(memory_format=torch.channels_last) == channels_last
    np.testing.assert_array_equal(batch["data"].numpy(), data)
    np.testing.assert_array_equal(batch["label"].numpy(), label)


# --- user errors ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content,needle", [
    ("", "window file is empty"),
    ("# 0\nimg0.ppm\n3 23 31\n1\n0 0.9 1 1 5 5\n", "foreground window .* has class 0"),
    ("# 0\nimg0.ppm\n3 23 31\n2\n1 0.9 1 1 5\n", "ends inside image 0"),
    ("0\nimg0.ppm\n3 23 31\n0\n", "expected '# <image index>'"),
    ("# 0\nimg0.ppm\n3 23 31\n1\n1 0.9 1 1 5 5\n", "1 foreground and 0 background windows"),
    ("# 3\nimg0.ppm\n3 23 31\n2\n1 0.9 1 1 5 5\n0 0.1 1 1 5 5\n", "image index 3"),
    ("# 0\nimg0.ppm\n3 23 31\n2\n1 0.9 1 1 50 5\n0 0.1 1 1 5 5\n", r"window \(1, 1, 50, 5\) .* outside"),
])
def test_window_file_errors_are_one_line(tmp_path, content, needle):
    from caffecam.errors import CaffeCamError

    (tmp_path / "w.txt").write_text(content)
    with pytest.raises(CaffeCamError, match=needle):
        feed = WindowFeed(layer(f"""name: "w" type: "WindowData" top: "data" top: "label" window_data_param {{
            source: "{tmp_path}/w.txt" batch_size: 2 fg_fraction: 0.5 root_folder: "{REF}/" }}
            transform_param {{ crop_size: 4 }}"""), TEST)
        feed.next()


def test_hdf5_errors_name_the_file_and_the_dataset(tmp_path):
    from caffecam.errors import CaffeCamError

    def feed(listing, tops="top: 'data'", extra=""):
        (tmp_path / "l.txt").write_text(listing)
        return Hdf5Feed(layer(f"name: 'h' type: 'HDF5Data' {tops} hdf5_data_param {{ source: '{tmp_path}/l.txt' "
                              f"batch_size: 2 }} {extra}"), TEST)

    with pytest.raises(CaffeCamError, match="lists no HDF5 file"):
        feed("\n")
    with pytest.raises(CaffeCamError, match=r"l.txt:2: HDF5 file '.*nope.h5' not found"):
        feed(f"{REF}/a.h5\n{tmp_path}/nope.h5\n")
    with pytest.raises(CaffeCamError, match=r"l.txt:1: .*a.h5 has no dataset 'feat' .*; it has data, label"):
        feed(f"{REF}/a.h5\n", tops="top: 'feat'")
    with pytest.raises(CaffeCamError, match="does not transform data"):
        feed(f"{REF}/a.h5\n", extra="transform_param { scale: 2 }")
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(CaffeCamError, match="cannot read .*junk.h5 as HDF5"):
        feed(f"{tmp_path}/junk.h5\n")
