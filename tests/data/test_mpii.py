import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from caffecam.data.datum import decode_datum, iter_lmdb
from caffecam.data.mpii import prepare
from caffecam.errors import CaffeCamError
from tests.bombs import bomb_png

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import prepare_mpii  # noqa: E402

EMPTY = np.zeros((0, 0))


def build_mpii(tmp_path):
    """An MPII-shaped RELEASE; returns (mat path, images dir, {name: vididx or None}).

    Kept images: sports 24 (8 videos x 3 frames), walking 10 (5 x 2), music playing 4 (3 videos + 1 image with no
    vididx), bicycling 3 (one video), fishing and hunting 3 (3 videos), dancing 1. Skipped: 2 test images,
    3 unlabelled, 2 missing files.
    """
    rows = []  # (name, vididx, img_train, cat_name, act_name, act_id, file exists)
    vid = 0

    def add(cat, act, act_id, videos, frames, train=1, exists=True, vididx=True):
        nonlocal vid
        for _ in range(videos):
            vid += 1
            for _ in range(frames):
                rows.append((f"{len(rows):09d}.jpg", vid if vididx else None, train, cat, act, act_id, exists))

    add("sports", "sports, ball, general", 10, 8, 3)
    add("walking", "walking, for pleasure", 20, 5, 2)
    add("music playing", "guitar, classical, folk, sitting", 30, 3, 1)
    add("music playing", "drums, sitting", 31, 1, 1, vididx=False)
    add("bicycling", "bicycling, mountain", 40, 1, 3)
    add("fishing and hunting", "fishing, general", 50, 3, 1)
    add("dancing", "ballet, modern, or jazz", 60, 1, 1)
    add("sports", "sports, ball, general", 10, 2, 1, train=0)  # test images
    add(EMPTY, EMPTY, -1, 3, 1)  # unlabelled
    add("walking", "walking, for pleasure", 20, 2, 1, exists=False)  # listed but not in the tarball

    n = len(rows)
    anno = np.empty((1, n), dtype=[("image", object), ("annorect", object), ("frame_sec", object), ("vididx", object)])
    act = np.empty((n, 1), dtype=[("cat_name", object), ("act_name", object), ("act_id", object)])
    images = tmp_path / "images"
    images.mkdir()
    for i, (name, vididx, _, cat, act_name, act_id, exists) in enumerate(rows):
        anno[0, i] = ({"name": name}, EMPTY, np.array([[i]]), np.array([[vididx]]) if vididx else EMPTY)
        act[i, 0] = (cat, act_name, np.array([[act_id]]))  # single-element fields come back as scalars
        if exists:
            color = (i * 5 % 256, i * 11 % 256, i * 17 % 256)
            cv2.imwrite(str(images / name), np.full((30, 40, 3), color, np.uint8))
    release = {"annolist": anno, "img_train": np.array([[r[2] for r in rows]]), "act": act,
               "single_person": np.empty((n, 1), object), "video_list": np.array([f"yt{k}" for k in range(vid)],
                                                                                  dtype=object), "version": "12"}
    for k in range(n):
        release["single_person"][k, 0] = EMPTY
    mat = tmp_path / "mpii.mat"
    scipy.io.savemat(mat, {"RELEASE": release})
    return mat, images, {r[0]: r[1] for r in rows}


def read_list(path):
    rows = []
    for line in Path(path).read_text().splitlines():
        p, _, lbl = line.rpartition(" ")
        rows.append((p, int(lbl)))
    return rows


def test_lists_labels_and_split(tmp_path, capsys):
    mat, images, vids = build_mpii(tmp_path)
    res = prepare(mat, images, tmp_path / "out", n_classes=4, val_fraction=0.2, seed=0, progress=False)
    out = tmp_path / "out"
    # top 4 by count: sports 24, walking 10, music playing 4, then the 3-3 tie goes to bicycling by name
    assert (out / "class_labels.csv").read_text() == "0 bicycling\n1 music_playing\n2 sports\n3 walking\n"
    train, val = read_list(out / "train.txt"), read_list(out / "val.txt")
    assert res["skipped"] == {"test image (img_train != 1)": 2, "no activity label (act_id == -1)": 3,
                              "image file missing": 2, "category not among the chosen classes": 4}
    assert len(train) + len(val) == 41 and len({p for p, _ in train + val}) == 41
    for p, _ in train + val:
        assert (images / p).is_file()

    def count(rows, label):
        return sum(1 for _, lbl in rows if lbl == label)

    # val targets round(0.2 * n) filled with whole videos: sports 5 -> two 3-frame videos, walking 2 -> one
    # 2-frame video, music 1 -> one image, bicycling: its only video stays in train
    assert [count(val, k) for k in range(4)] == [0, 1, 6, 2]
    assert [count(train, k) for k in range(4)] == [3, 3, 18, 8]
    train_vids = {vids[p] for p, _ in train if vids[p] is not None}
    val_vids = {vids[p] for p, _ in val if vids[p] is not None}
    assert not train_vids & val_vids
    assert val == sorted(val)
    printed = capsys.readouterr().out
    assert "warning: class 0 (bicycling) has 3 images in 1 video(s)" in printed
    assert "  2 sports" in printed and "skipped      2: image file missing" in printed


def test_split_is_deterministic_per_seed(tmp_path):
    mat, images, _ = build_mpii(tmp_path)
    texts = []
    for k, seed in enumerate([0, 0, 1, 2, 3]):
        prepare(mat, images, tmp_path / f"o{k}", n_classes=4, val_fraction=0.2, seed=seed, progress=False,
                log=lambda *a: None)
        texts.append(((tmp_path / f"o{k}/train.txt").read_text(), (tmp_path / f"o{k}/val.txt").read_text()))
    assert texts[0] == texts[1]
    assert len({t[1] for t in texts}) > 1


def test_class_list_and_errors(tmp_path):
    mat, images, _ = build_mpii(tmp_path)
    (tmp_path / "cl.txt").write_text("walking\nfishing_and_hunting\n# comment\nmusic playing\n")
    res = prepare(mat, images, tmp_path / "o", class_list=tmp_path / "cl.txt", val_fraction=0, progress=False,
                  log=lambda *a: None)
    assert (tmp_path / "o/class_labels.csv").read_text() == "0 fishing_and_hunting\n1 music_playing\n2 walking\n"
    assert res["n_train"] == 3 + 4 + 10 and res["n_val"] == 0
    # "id name" lines (a previous class_labels.csv) keep their ids
    (tmp_path / "cl2.txt").write_text("0 walking\n1 dancing\n")
    prepare(mat, images, tmp_path / "o2", class_list=tmp_path / "cl2.txt", progress=False, log=lambda *a: None)
    assert (tmp_path / "o2/class_labels.csv").read_text() == "0 walking\n1 dancing\n"
    assert read_list(tmp_path / "o2/train.txt").count(("000000044.jpg", 1)) == 1  # the one dancing image

    (tmp_path / "bad.txt").write_text("walking\nswimming\n")
    with pytest.raises(CaffeCamError, match=r"bad.txt:2: unknown category 'swimming'"):
        prepare(mat, images, tmp_path / "o3", class_list=tmp_path / "bad.txt", progress=False)
    (tmp_path / "binary.txt").write_bytes(b"\xff\xd8\xff\xe0 a JPEG given as the class list")
    with pytest.raises(CaffeCamError, match=r"binary.txt: cannot read"):
        prepare(mat, images, tmp_path / "o3", class_list=tmp_path / "binary.txt", progress=False)
    with pytest.raises(CaffeCamError, match="more categories than the 6"):
        prepare(mat, images, tmp_path / "o3", n_classes=7, progress=False)
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(CaffeCamError, match="not a readable MATLAB"):
        prepare(tmp_path / "junk.mat", images, tmp_path / "o3", progress=False)
    scipy.io.savemat(tmp_path / "other.mat", {"x": np.ones(3)})
    with pytest.raises(CaffeCamError, match="no RELEASE struct"):
        prepare(tmp_path / "other.mat", images, tmp_path / "o3", progress=False)


def test_single_image_release_is_squeezed_to_a_scalar_struct(tmp_path):
    images = tmp_path / "im"
    images.mkdir()
    cv2.imwrite(str(images / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    anno = np.empty((1, 1), dtype=[("image", object), ("vididx", object)])
    anno[0, 0] = ({"name": "a.jpg"}, np.array([[3]]))
    act = np.empty((1, 1), dtype=[("cat_name", object), ("act_name", object), ("act_id", object)])
    act[0, 0] = ("running", "jogging, general", 5)
    scipy.io.savemat(tmp_path / "one.mat", {"RELEASE": {"annolist": anno, "img_train": np.array([[1]]),
                                                        "act": act}})
    res = prepare(tmp_path / "one.mat", images, tmp_path / "o", n_classes=1, progress=False, log=lambda *a: None)
    assert read_list(res["train"]) == [("a.jpg", 0)] and (tmp_path / "o/class_labels.csv").read_text() == "0 running\n"


def test_script_writes_lmdb(tmp_path, capsys):
    mat, images, _ = build_mpii(tmp_path)
    out = tmp_path / "data"
    assert prepare_mpii.main(["--annotations", str(mat), "--images", str(images), "--out", str(out), "--classes", "3",
                              "--val-fraction", "0.2", "--lmdb", "--resize", "16", "--no-progress"]) == 0
    for split in ("train", "val"):
        rows = read_list(out / f"{split}.txt")
        recs = list(iter_lmdb(out / f"{split}_lmdb"))
        assert [k.decode() for k, _ in recs] == [f"{i:08d}_{p}" for i, (p, _) in enumerate(rows)]
        for (p, label), (_, v) in zip(rows, recs):
            img, got_label = decode_datum(v)
            assert got_label == label and img.shape == (16, 16, 3)
            ref = cv2.resize(cv2.imread(str(images / p)), (16, 16))
            assert np.abs(img.astype(int) - ref.astype(int)).max() <= 3  # flat colour: JPEG nearly exact
    assert "wrote" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exc:
        prepare_mpii.main(["--annotations", str(tmp_path / "nope.mat"), "--images", str(images)])
    assert exc.value.code == 1
    assert capsys.readouterr().err.startswith("error: ")
    with pytest.raises(SystemExit) as exc:
        prepare_mpii.main(["--annotations", str(mat), "--images", str(images), "--lmdb", "--workers", "-1"])
    assert exc.value.code == 1
    assert capsys.readouterr().err == "error: --workers must be at least 1 (or left out for all cores), got -1\n"


def test_lmdb_refuses_a_decompression_bomb_in_one_line(tmp_path, capsys):
    mat, images, _ = build_mpii(tmp_path)
    victim = sorted(images.iterdir())[0]
    victim.write_bytes(bomb_png())  # 1.6 gigapixels in 200 kB, under a .jpg name
    with pytest.raises(SystemExit) as exc:
        prepare_mpii.main(["--annotations", str(mat), "--images", str(images), "--out", str(tmp_path / "d"),
                           "--classes", "3", "--val-fraction", "0.2", "--lmdb", "--no-progress"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"image '{victim}' is 40000×40000" in err and "delete it and run again" in err
