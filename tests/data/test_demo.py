import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from caffecam.data.demo import MAX_CLASSES, make_demo_set, render_sample

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import make_demo_data  # noqa: E402


def saturation(img):
    img = img.astype(int)
    return img.max(axis=2) - img.min(axis=2)


def read_list(path):
    rows = []
    for line in Path(path).read_text().splitlines():
        p, _, lbl = line.rpartition(" ")  # ImageData splits each line at its last space
        rows.append((p, int(lbl)))
    return rows


def test_every_class_object_is_alone_in_its_box():
    assert MAX_CLASSES >= 14
    looks = set()
    for label in range(MAX_CLASSES):
        for k in range(4):
            size = 64 + 32 * (k % 2)
            img, mask, (x1, y1, x2, y2) = render_sample(np.random.default_rng([7, label, k]), label, size)
            assert img.shape == (size, size, 3) and img.dtype == np.uint8
            assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size
            ys, xs = np.nonzero(mask)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)  # tight box
            # nominal side 15-35% of the image; a rotated square's corners reach 0.85 (cos 20° + sin 20°) = 1.09
            assert 0.15 * size * 0.7 <= max(x2 - x1, y2 - y1) <= 1.09 * 0.35 * size + 2
            assert x1 > 0 and y1 > 0 and x2 < size and y2 < size  # never cut off by the border
            # the object is the only saturated thing in the image: background and distractors are muted
            sat = saturation(img)
            assert np.array_equal(sat >= 100, mask > 0)
        colours = tuple(sorted({tuple(c) for c in img[mask > 0].tolist()}))
        looks.add(colours)
    assert len(looks) == MAX_CLASSES  # each class has its own colour or texture


def test_demo_set_files_counts_and_boxes(tmp_path):
    res = make_demo_set(tmp_path / "demo", classes=4, images=40, size=64, seed=3, val_fraction=0.2, progress=False)
    root = tmp_path / "demo"
    assert (root / "class_labels.csv").read_text() == "0 red_circle\n1 green_square\n2 blue_triangle\n3 yellow_plus\n"
    train, val = read_list(root / "train.txt"), read_list(root / "val.txt")
    assert (res["n_train"], res["n_val"]) == (32, 8) and (len(train), len(val)) == (32, 8)
    for k in range(4):  # 10 images per class, round(0.2 * 10) = 2 of them in val
        assert sum(lbl == k for _, lbl in train) == 8 and sum(lbl == k for _, lbl in val) == 2
    boxes = {p: tuple(int(v) for v in rest) for p, *rest in
             (line.rsplit(" ", 4) for line in (root / "boxes.csv").read_text().splitlines())}
    assert sorted(boxes) == sorted(p for p, _ in train + val) == [f"images/{i:05d}.jpg" for i in range(40)]
    inside_share = []
    for p, _ in train + val:
        img = cv2.imread(str(root / p))
        assert img.shape == (64, 64, 3)
        x1, y1, x2, y2 = boxes[p]
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
        ys, xs = np.nonzero(saturation(img) >= 100)
        inside = (xs >= x1 - 2) & (xs < x2 + 2) & (ys >= y1 - 2) & (ys < y2 + 2)  # JPEG blurs colour edges a little
        inside_share.append(inside.mean())
    assert min(inside_share) > 0.97


def test_deterministic_per_seed(tmp_path):
    def files(d):
        return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}

    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        make_demo_set(tmp_path / name, classes=3, images=12, size=48, seed=seed, progress=False)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b and len(a) == 12 + 4
    assert a["images/00000.jpg"] != c["images/00000.jpg"] and a["boxes.csv"] != c["boxes.csv"]


def test_fast_enough(tmp_path):
    start = time.perf_counter()
    make_demo_set(tmp_path / "d", classes=6, images=500, size=96, seed=0, progress=False)
    assert time.perf_counter() - start < 10.0  # ~0.4 s on one slow core; the bound only catches gross slowness


def test_script_and_errors(tmp_path, capsys):
    assert make_demo_data.main(["--out", str(tmp_path / "d"), "--classes", "14", "--images", "28", "--size", "48",
                                "--no-progress"]) == 0
    assert "14 classes" in capsys.readouterr().out
    assert len((tmp_path / "d/class_labels.csv").read_text().splitlines()) == 14
    with pytest.raises(SystemExit) as exc:
        make_demo_data.main(["--out", str(tmp_path / "e"), "--classes", str(MAX_CLASSES + 1)])
    assert exc.value.code == 1 and "between 2 and" in capsys.readouterr().err
