"""ImageData / Data (LMDB) feeds: list parsing, stream order, shuffle, workers and resume, DDP ranks, errors."""

import cv2
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from caffecam.data.datum import encode_datum, lmdb_key, write_lmdb
from caffecam.data.feeds import BatchFeed, check_labels, loader_throughput, make_feeds
from caffecam.data.sources import load_list
from caffecam.engine.net import Net
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2
from tests.bombs import bomb_png

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def write_images(tmp_path, n, h=10, w=12, names=None, labels=None):
    """n PNG images (lossless) and a list file; returns (list path, images, labels)."""
    imgs, lines = [], []
    rng = np.random.default_rng(5)
    for i in range(n):
        name = names[i] if names else f"img_{i}.png"
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        assert cv2.imwrite(str(tmp_path / name), img)
        imgs.append(img)
        lines.append(f"{name} {labels[i] if labels else i}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "list.txt", imgs, [labels[i] if labels else i for i in range(n)]


def image_layer(tmp_path, batch_size=2, shuffle=False, transform="", extra="", source=None):
    text = f"""name: "data" type: "ImageData" top: "data" top: "label"
        transform_param {{ {transform} }}
        image_data_param {{ source: "{source or tmp_path / 'list.txt'}" root_folder: "{tmp_path}/"
                            batch_size: {batch_size} shuffle: {str(shuffle).lower()} {extra} }}"""
    return text_format.Parse(text, caffe_pb2.LayerParameter())


def lmdb_layer(path, batch_size=2, transform="", backend="backend: LMDB"):
    text = f"""name: "data" type: "Data" top: "data" top: "label" transform_param {{ {transform} }}
               data_param {{ source: "{path}" batch_size: {batch_size} {backend} }}"""
    return text_format.Parse(text, caffe_pb2.LayerParameter())


def take(feed, n):
    return [feed.next() for _ in range(n)]


def same(a, b):
    return len(a) == len(b) and all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


# --- list files ---------------------------------------------------------------------------------------------------

def test_list_lines_split_at_the_last_space(tmp_path):
    (tmp_path / "l.txt").write_bytes(b"my dir/a b.jpg 3\r\n\nplain.png 0\n  x y z.jpg   12  \n")
    assert load_list(tmp_path / "l.txt", "/root/") == [("/root/my dir/a b.jpg", 3), ("/root/plain.png", 0),
                                                       ("/root/  x y z.jpg  ", 12)]


@pytest.mark.parametrize("content, message", [
    ("a.jpg 1\nb.jpg\n", r"l.txt:2: no label"),
    ("a.jpg 1\n\nb.jpg two\n", r"l.txt:3: label 'two' is not an integer"),
    ("a.jpg 1.5\n", r"l.txt:1: label '1.5' is not an integer"),
    ("\n\n", r"l.txt: list file is empty"),
])
def test_list_errors_name_file_and_line(tmp_path, content, message):
    (tmp_path / "l.txt").write_text(content)
    with pytest.raises(CaffeCamError, match=message):
        load_list(tmp_path / "l.txt")


def test_missing_list_file(tmp_path):
    with pytest.raises(CaffeCamError, match="nope.txt: list file not found"):
        load_list(tmp_path / "nope.txt")
    with pytest.raises(CaffeCamError, match="nope.txt: list file not found"):
        BatchFeed(image_layer(tmp_path, source=tmp_path / "nope.txt"), TRAIN, workers=0)


# --- stream order and values ----------------------------------------------------------------------------------------

def test_unshuffled_stream_walks_the_list_and_wraps_with_exact_values(tmp_path):
    _, imgs, _ = write_images(tmp_path, 5)
    lp = image_layer(tmp_path, transform="mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.5")
    feed = BatchFeed(lp, TEST, workers=0)
    assert feed.shapes == {"data": (2, 3, 10, 12), "label": (2,)} and feed.num_items == 5
    batches = take(feed, 4)
    order = [0, 1, 2, 3, 4, 0, 1, 2]
    assert [b["label"].tolist() for b in batches] == [order[0:2], order[2:4], order[4:6], order[6:8]]
    mean = np.array([104, 117, 123], np.float32)
    for b, batch in enumerate(batches):
        assert batch["data"].dtype == torch.float32 and batch["label"].dtype == torch.int64
        for k in range(2):
            img = imgs[order[2 * b + k]].astype(np.float32)
            expected = ((img - mean) * np.float32(0.5)).transpose(2, 0, 1)
            assert np.array_equal(batch["data"][k].numpy(), expected)
    assert feed.batches_done == 4


def test_resize_and_grey(tmp_path):
    _, imgs, _ = write_images(tmp_path, 3, h=9, w=11)
    feed = BatchFeed(image_layer(tmp_path, batch_size=3, extra="new_height: 6 new_width: 8"), TEST, workers=0)
    assert feed.shapes["data"] == (3, 3, 6, 8)
    data = feed.next()["data"].numpy()
    for k in range(3):
        expected = cv2.resize(imgs[k], (8, 6), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
        assert np.array_equal(data[k], expected.astype(np.float32))
    grey = BatchFeed(image_layer(tmp_path, batch_size=3, extra="is_color: false"), TEST, workers=0)
    assert grey.shapes["data"] == (3, 1, 9, 11)
    expected = cv2.imread(str(tmp_path / "img_1.png"), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    assert np.array_equal(grey.next()["data"][1, 0].numpy(), expected)


def test_shuffle_is_seeded_and_reshuffles_at_each_wrap(tmp_path):
    write_images(tmp_path, 6)
    lp = image_layer(tmp_path, batch_size=3, shuffle=True)
    labels = [b["label"].tolist() for b in take(BatchFeed(lp, TRAIN, seed=7, workers=0), 8)]
    again = [b["label"].tolist() for b in take(BatchFeed(lp, TRAIN, seed=7, workers=0), 8)]
    other = [b["label"].tolist() for b in take(BatchFeed(lp, TRAIN, seed=8, workers=0), 8)]
    assert labels == again and labels != other
    epochs = [labels[2 * e] + labels[2 * e + 1] for e in range(4)]
    assert all(sorted(e) == list(range(6)) for e in epochs)  # each pass shows every image once
    assert len({tuple(e) for e in epochs}) > 1  # and the order changes between passes


def test_rand_skip_starts_at_a_seeded_offset_below_rand_skip(tmp_path):
    write_images(tmp_path, 7)
    lp = image_layer(tmp_path, batch_size=2, extra="rand_skip: 5")
    starts = set()
    for seed in range(30):
        first = BatchFeed(lp, TRAIN, seed=seed, workers=0).next()["label"].tolist()
        assert first == [first[0], (first[0] + 1) % 7] and 0 <= first[0] < 5
        assert BatchFeed(lp, TRAIN, seed=seed, workers=0).next()["label"].tolist() == first
        starts.add(first[0])
    assert len(starts) > 2


def test_stream_is_the_same_for_any_worker_count_and_after_resume(tmp_path):
    write_images(tmp_path, 7, h=12, w=12)
    lp = image_layer(tmp_path, batch_size=3, shuffle=True,
                     transform="crop_size: 8 mirror: true mean_value: 100")
    straight = take(BatchFeed(lp, TRAIN, seed=3, workers=0), 8)
    with BatchFeed(lp, TRAIN, seed=3, workers=2, prefetch=3) as feed:
        assert same(take(feed, 8), straight)
    with BatchFeed(lp, TRAIN, seed=3, workers=2, start_batch=5) as resumed:
        assert resumed.batches_done == 5
        assert same(take(resumed, 3), straight[5:])
        assert resumed.batches_done == 8
    assert same(take(BatchFeed(lp, TRAIN, seed=3, workers=0, start_batch=2), 6), straight[2:])
    # Random crops really vary: the same image does not always give the same blob.
    assert not same(straight[:1], take(BatchFeed(lp, TRAIN, seed=4, workers=0), 1))


def test_channels_last_batches_hold_the_same_values(tmp_path):
    """channels_last=True: the workers fill N×H×W×C memory; the batch is the same N×C×H×W tensor in values, with
    channels_last strides (so the Solver's channels_last conversion copies nothing), from workers or in-process."""
    write_images(tmp_path, 7, h=12, w=12)
    lp = image_layer(tmp_path, batch_size=3, shuffle=True,
                     transform="crop_size: 8 mirror: true mean_value: 100 mean_value: 90 mean_value: 80 scale: 0.5")
    plain = take(BatchFeed(lp, TRAIN, seed=3, workers=0), 5)
    for workers in (0, 2):
        with BatchFeed(lp, TRAIN, seed=3, workers=workers, channels_last=True) as feed:
            got = take(feed, 5)
        assert same(got, plain)
        for batch in got:
            assert batch["data"].shape == (3, 3, 8, 8)
            assert batch["data"].is_contiguous(memory_format=torch.channels_last)
            assert not batch["data"].is_contiguous()


def test_ddp_ranks_take_interleaved_global_batches(tmp_path):
    write_images(tmp_path, 9)
    lp = image_layer(tmp_path, batch_size=2, shuffle=True, transform="mirror: true")
    single = take(BatchFeed(lp, TRAIN, seed=1, workers=0), 8)
    for rank in (0, 1):
        feed = BatchFeed(lp, TRAIN, seed=1, rank=rank, world_size=2, workers=0)
        assert same(take(feed, 4), single[rank::2])


# --- LMDB ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoded", [False, True])
def test_lmdb_records_in_key_order_raw_and_encoded(tmp_path, encoded):
    rng = np.random.default_rng(9)
    imgs = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(3)]
    # Written in reverse: the feed must follow LMDB's key order, not insertion order.
    records = [(lmdb_key(i, f"im{i}.png"), encode_datum(imgs[i], 10 + i, encoded=encoded, ext=".png"))
               for i in reversed(range(3))]
    write_lmdb(tmp_path / "db", records, progress=False)
    feed = BatchFeed(lmdb_layer(tmp_path / "db", transform="crop_size: 4 mean_value: 1 mean_value: 2 mean_value: 3"),
                     TEST, workers=0)
    assert feed.shapes == {"data": (2, 3, 4, 4), "label": (2,)} and feed.num_items == 3
    batches = take(feed, 2)
    assert [b["label"].tolist() for b in batches] == [[10, 11], [12, 10]]
    mean = np.array([1, 2, 3], np.float32)
    for k, i in enumerate([0, 1, 2, 0]):
        crop = imgs[i][1:5, 0:4].astype(np.float32) - mean  # centre: (6-4)//2 = 1 row, (5-4)//2 = 0 columns
        assert np.array_equal(batches[k // 2]["data"][k % 2].numpy(), crop.transpose(2, 0, 1))
    check_labels(feed, 13)
    with pytest.raises(CaffeCamError, match=r"db: record 2 \(key '00000002_im2.png'\): label 12 is outside \[0, 12\)"):
        check_labels(feed, 12)
    with BatchFeed(feed_layer := lmdb_layer(tmp_path / "db", transform="crop_size: 4 mirror: true"), TRAIN,
                   seed=2, workers=2) as parallel:
        assert same(take(parallel, 3), take(BatchFeed(feed_layer, TRAIN, seed=2, workers=0), 3))


@pytest.mark.parametrize("max_pixels, message", [
    ({}, "encoded image is 40000×40000 = 1,600,000,000 pixels, over the limit of 100,000,000 pixels (--max-pixels); "
         "rebuild the LMDB with smaller images (e.g. prepare_mpii.py --resize 256)"),
    ({"max_pixels": 2_000_000_000}, "encoded image cannot be decoded (OpenCV: pixels <= CV_IO_MAX_IMAGE_PIXELS); "
                                    "rebuild the LMDB without it"),
])
def test_decompression_bomb_in_an_lmdb_is_one_line_from_a_worker(tmp_path, max_pixels, message):
    good = encode_datum(np.zeros((6, 6, 3), np.uint8), 0, ext=".png")
    bomb = caffe_pb2.Datum(channels=1, height=40000, width=40000, data=bomb_png(), label=1, encoded=True)
    records = [(lmdb_key(0, "a.png"), good), (lmdb_key(1, "b.png"), good), (lmdb_key(2, "bomb.png"),
                                                                             bomb.SerializeToString())]
    write_lmdb(tmp_path / "db", records, progress=False)
    feed = BatchFeed(lmdb_layer(tmp_path / "db"), TRAIN, workers=2, **max_pixels)
    feed.next()
    with pytest.raises(CaffeCamError) as err:
        feed.next()
    assert str(err.value) == f"{tmp_path}/db: record 2 (key '00000002_bomb.png'): {message}"


def test_lmdb_errors(tmp_path):
    with pytest.raises(CaffeCamError, match="layer 'data' \\(Data\\): LMDB '.*nothing' not found"):
        BatchFeed(lmdb_layer(tmp_path / "nothing"), TRAIN)
    write_lmdb(tmp_path / "empty", [], progress=False)
    with pytest.raises(CaffeCamError, match="empty' holds no records"):
        BatchFeed(lmdb_layer(tmp_path / "empty"), TRAIN)
    # An LMDB read with backend unset (LEVELDB, Caffe's default) is not a LevelDB: the error says to set LMDB.
    with pytest.raises(CaffeCamError, match="LevelDB '.*empty' not found .*`backend: LMDB`"):
        BatchFeed(lmdb_layer(tmp_path / "empty", backend=""), TRAIN)
    with pytest.raises(CaffeCamError, match="LevelDB '.*empty' not found .*`backend: LMDB`"):
        BatchFeed(lmdb_layer(tmp_path / "empty", backend="backend: LEVELDB"), TRAIN)


# --- user errors ---------------------------------------------------------------------------------------------------

def test_missing_image_names_list_line_and_image(tmp_path):
    write_images(tmp_path, 3)
    (tmp_path / "img_1.png").unlink()
    with pytest.raises(CaffeCamError, match=r"list.txt:2: image '.*/img_1.png' does not exist"):
        BatchFeed(image_layer(tmp_path), TRAIN, workers=0)


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_image_fails_as_one_line_from_any_worker(tmp_path, workers):
    write_images(tmp_path, 4)
    (tmp_path / "img_2.png").write_bytes(b"garbage, not a PNG")
    feed = BatchFeed(image_layer(tmp_path), TRAIN, workers=workers)
    feed.next()
    with pytest.raises(CaffeCamError) as err:
        feed.next()
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"{tmp_path}/list.txt:3: image '{tmp_path}/img_2.png' cannot be decoded")


def test_image_smaller_than_crop_names_the_line(tmp_path):
    write_images(tmp_path, 2, h=10, w=10)
    cv2.imwrite(str(tmp_path / "img_1.png"), np.zeros((5, 10, 3), np.uint8))
    feed = BatchFeed(image_layer(tmp_path, transform="crop_size: 8"), TEST, workers=0)
    with pytest.raises(CaffeCamError, match=r"list.txt:2: image is 10x5 \(WxH\), smaller than crop_size 8"):
        feed.next()


def test_images_of_different_sizes_without_resize_or_crop(tmp_path):
    write_images(tmp_path, 2, h=10, w=10)
    cv2.imwrite(str(tmp_path / "img_1.png"), np.zeros((7, 10, 3), np.uint8))
    with pytest.raises(CaffeCamError, match=r"list.txt:2: image is 10x7x3 but the first one was 10x10x3"):
        BatchFeed(image_layer(tmp_path), TEST, workers=0).next()


def test_batch_larger_than_data_set_and_bad_resize(tmp_path):
    write_images(tmp_path, 3)
    with pytest.raises(CaffeCamError, match=r"layer 'data' \(ImageData\): batch_size 4 is larger than the data set "
                                            r"\(3 items in .*list.txt\)"):
        BatchFeed(image_layer(tmp_path, batch_size=4), TRAIN)
    with pytest.raises(CaffeCamError, match=r"layer 'data' \(ImageData\): new_height and new_width must both"):
        BatchFeed(image_layer(tmp_path, extra="new_height: 8"), TRAIN)


def test_check_labels(tmp_path):
    write_images(tmp_path, 4, labels=[0, 2, 3, 1])
    feed = BatchFeed(image_layer(tmp_path), TRAIN, workers=0)
    check_labels(feed, 4)
    with pytest.raises(CaffeCamError, match=r"list.txt:3: label 3 is outside \[0, 3\) .*num_output 3"):
        check_labels(feed, 3)
    with pytest.raises(CaffeCamError, match=r"item 1 \('b.jpg'\): label -1 is outside \[0, 5\)"):
        check_labels([("a.jpg", 0), ("b.jpg", -1)], 5)


# --- nets and throughput -------------------------------------------------------------------------------------------

def test_make_feeds_picks_the_phase_layers(tmp_path):
    write_images(tmp_path, 4)
    (tmp_path / "val.txt").write_text("img_3.png 3\nimg_2.png 2\n")
    text = f"""name: "n"
      layer {{ name: "d" type: "ImageData" top: "data" top: "label" include {{ phase: TRAIN }}
              image_data_param {{ source: "{tmp_path}/list.txt" root_folder: "{tmp_path}/" batch_size: 2 }} }}
      layer {{ name: "d" type: "ImageData" top: "data" top: "label" include {{ phase: TEST }}
              transform_param {{ crop_size: 4 }}
              image_data_param {{ source: "{tmp_path}/val.txt" root_folder: "{tmp_path}/" batch_size: 1 }} }}
      layer {{ name: "d2" type: "ImageData" top: "data" top: "label" include {{ phase: TEST stage: "big" }}
              image_data_param {{ source: "{tmp_path}/val.txt" root_folder: "{tmp_path}/" batch_size: 2 }} }}
      layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param {{ num_output: 4 }} }}"""
    net = text_format.Parse(text, caffe_pb2.NetParameter())
    (train,) = make_feeds(net, TRAIN, workers=0)
    (test,) = make_feeds(net, TEST, workers=0)
    assert [f.name for f in make_feeds(net, TEST, stages=["big"], workers=0)] == ["d", "d2"]
    assert train.shapes["data"] == (2, 3, 10, 12) and train.num_items == 4
    assert test.shapes["data"] == (1, 3, 4, 4) and test.top_names == ["data", "label"]
    assert [test.next()["label"].item() for _ in range(3)] == [3, 2, 3]
    built = Net(net, TRAIN, input_shapes=train.shapes, seed=0)
    (again,) = make_feeds(built, TRAIN, workers=0)
    assert again.shapes == train.shapes and again.top_names == built.input_blobs
    assert built(again.next())["fc"].shape == (2, 4)


def test_loader_throughput_counts_images(tmp_path):
    write_images(tmp_path, 4)
    with BatchFeed(image_layer(tmp_path), TRAIN, workers=0) as feed:
        assert loader_throughput(feed, 3) > 0
        assert feed.batches_done == 4


def test_batch_stream_pickles_for_spawned_workers(tmp_path):
    """Non-Linux platforms start workers by spawning, which pickles the stream (protobuf and LMDB handle included)."""
    import pickle

    write_images(tmp_path, 3)
    feed = BatchFeed(image_layer(tmp_path, transform="crop_size: 6 mirror: true"), TRAIN, seed=4, workers=0)
    copy = pickle.loads(pickle.dumps(feed._stream))
    assert same([copy[2]], [feed._stream[2]])
    write_lmdb(tmp_path / "db", [(lmdb_key(0, "a"), encode_datum(np.zeros((4, 4, 3), np.uint8), 1))], progress=False)
    lfeed = BatchFeed(lmdb_layer(tmp_path / "db", batch_size=1), TEST, workers=0)
    lfeed.next()
    assert pickle.loads(pickle.dumps(lfeed._stream))[0]["label"].tolist() == [1]
