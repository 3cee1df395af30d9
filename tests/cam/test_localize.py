"""Boxes from maps, IoU, thresholds, boxes.csv, and localization scores on hand-made cases computed by hand."""

import cv2
import numpy as np
import pytest
import torch

from caffecam.cam.localize import LocalizationTally, iou, map_box, parse_thresholds, path_key, read_boxes
from caffecam.cam.maps import CamModel
from caffecam.cam.pipeline import evaluate_localization
from caffecam.data.images import InputItem
from caffecam.engine.net import Net
from caffecam.engine.prototxt import parse_text
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2

# ---- map_box ------------------------------------------------------------------------------------------------------


def test_two_blobs_the_larger_wins():
    cam = np.zeros((40, 50), np.float32)
    cam[5:10, 3:8] = 1.0  # 25 pixels, holds the maximum
    cam[20:32, 30:45] = 0.5  # 180 pixels, above 0.2 · max
    assert map_box(cam) == [30, 20, 45, 32]
    # Above 0.6 · max only the small blob is left.
    assert map_box(cam, 0.6) == [3, 5, 8, 10]


def test_diagonal_pixels_are_connected():
    cam = np.zeros((10, 10), np.float32)
    for i in range(2, 7):
        cam[i, i] = 1.0  # a diagonal line, 8-connected: one region of 5 pixels
    cam[0, 9] = 1.0
    assert map_box(cam) == [2, 2, 7, 7]


def test_threshold_edges():
    cam = np.zeros((8, 8), np.float32)
    cam[1, 1] = 10.0
    cam[1:4, 2:6] = 2.0  # exactly 0.2 · max: kept (>=), joined to the peak
    assert map_box(cam, 0.2) == [1, 1, 6, 4]
    assert map_box(cam, 0.2001) == [1, 1, 2, 2]
    assert map_box(cam, 1.0) == [1, 1, 2, 2]  # only the maximum
    # threshold 0 keeps every pixel >= 0: the whole map
    assert map_box(cam, 0.0) == [0, 0, 8, 8]


def test_ties_go_to_the_first_region_in_raster_order():
    cam = np.zeros((10, 10), np.float32)
    cam[6:8, 0:2] = 1.0
    cam[1:3, 5:7] = 1.0
    assert map_box(cam) == [5, 1, 7, 3]


@pytest.mark.parametrize("cam", [np.zeros((6, 9)), -np.ones((6, 9)), np.full((6, 9), 3.0),
                                 np.full((6, 9), np.nan), np.where(np.eye(6, 9) > 0, np.nan, -1.0)])
def test_degenerate_maps_give_the_whole_image(cam):
    assert map_box(cam.astype(np.float32)) == [0, 0, 9, 6]


def test_negative_values_and_nan_are_ignored():
    cam = np.full((6, 6), -5.0, np.float32)
    cam[2:4, 3:5] = 1.0
    cam[0, 0] = np.nan
    assert map_box(cam) == [3, 2, 5, 4]


def test_one_pixel_map():
    assert map_box(np.array([[0.7]], np.float32)) == [0, 0, 1, 1]
    assert map_box(np.array([[0.0]], np.float32)) == [0, 0, 1, 1]


# ---- IoU, thresholds, boxes.csv -------------------------------------------------------------------------------------

def test_iou_by_hand():
    assert iou([0, 0, 10, 10], [5, 5, 15, 15]) == pytest.approx(25 / 175)
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert iou([0, 0, 5, 5], [5, 0, 10, 5]) == 0.0  # touching edges share no pixel
    assert iou([0, 0, 4, 4], [10, 10, 12, 12]) == 0.0
    assert iou([0, 0, 16, 16], [8, 0, 16, 16]) == pytest.approx(0.5)
    assert iou([2, 3, 3, 4], [0, 0, 4, 4]) == pytest.approx(1 / 16)


def test_parse_thresholds():
    assert parse_thresholds("0.2") == [0.2]
    assert parse_thresholds("0.3,0.1") == [0.1, 0.3]
    sweep = parse_thresholds("0.1:0.5:0.05")
    assert len(sweep) == 9 and sweep[0] == 0.1 and sweep[-1] == 0.5
    assert np.allclose(np.diff(sweep), 0.05)
    for bad in ("x", "0.5:0.1:0.1", "0.1:0.5:0", "1.5", "-0.1", ""):
        with pytest.raises(CaffeCamError):
            parse_thresholds(bad)


def test_read_boxes(tmp_path):
    (tmp_path / "b.csv").write_text("# comment\nimages/a b.jpg 1 2 30 40\nimages/c.jpg 0 0 5 5\n"
                                    "images/c.jpg 10 10 20 20\n\n")
    boxes = read_boxes(tmp_path / "b.csv")
    assert boxes[path_key(tmp_path / "images/a b.jpg")] == [[1, 2, 30, 40]]
    assert boxes[path_key(tmp_path / "images/c.jpg")] == [[0, 0, 5, 5], [10, 10, 20, 20]]
    other = read_boxes(tmp_path / "b.csv", root=tmp_path / "data")
    assert path_key(tmp_path / "data" / "images/c.jpg") in other
    for text, what in (("a.jpg 1 2 3\n", "expected"), ("a.jpg 5 5 5 9\n", "empty"), ("", "no boxes")):
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(CaffeCamError, match=what):
            read_boxes(tmp_path / "bad.csv")
    with pytest.raises(CaffeCamError, match="not found"):
        read_boxes(tmp_path / "missing.csv")


def test_tally_by_hand():
    t = LocalizationTally([0.5], main_threshold=0.2)
    assert t.thresholds == [0.2, 0.5]
    cam = np.zeros((20, 20), np.float32)
    cam[0:10, 0:10] = 1.0
    cam[10:20, 0:10] = 0.3  # joins the square at 0.2, not at 0.5
    t.add(1, 1, cam, [[0, 0, 10, 10]])  # right; t=0.2 box [0,0,10,20] IoU 0.5 hit; t=0.5 IoU 1
    t.add(0, 1, cam, [[0, 0, 10, 10]])  # wrong class, GT-known hits as above
    t.add(2, 2, cam, [[0, 10, 10, 20], [10, 10, 20, 20]])  # t=0.2: IoU 0.5 with the first; t=0.5: 0
    s = t.summary()
    assert s["images"] == 3 and s["accuracy"] == pytest.approx(2 / 3)
    assert s["loc_accuracy"] == pytest.approx(2 / 3) and s["gt_known_loc_accuracy"] == 1.0
    p05 = s["per_threshold"][1]
    assert p05["threshold"] == 0.5 and p05["loc_accuracy"] == pytest.approx(1 / 3)
    assert p05["gt_known_loc_accuracy"] == pytest.approx(2 / 3)
    assert s["best_threshold"] == 0.2
    # per true class, at the main threshold 0.2: class 1 has a right hit and a wrong (GT-known) hit, class 2 a right hit
    assert s["per_class"] == [
        {"class_id": 1, "images": 2, "accuracy": 0.5, "loc_accuracy": 0.5, "gt_known_loc_accuracy": 1.0},
        {"class_id": 2, "images": 1, "accuracy": 1.0, "loc_accuracy": 1.0, "gt_known_loc_accuracy": 1.0}]
    with pytest.raises(CaffeCamError, match="no image"):
        LocalizationTally([0.2]).summary()


# ---- evaluate_localization on an "oracle" net whose maps are image channels ----------------------------------------

ORACLE = """
name: "oracle"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }
layer { name: "feat" type: "Convolution" bottom: "data" top: "feat" convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "relu" type: "ReLU" bottom: "feat" top: "feat" }
layer { name: "gap" type: "Pooling" bottom: "feat" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "gap" top: "fc" inner_product_param { num_output: 2 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def oracle_net():
    """Features = the B, G, R channels (1×1 identity conv); class 0 scores blue, class 1 red. So the map of class 0
    is the blue channel and of class 1 the red one, at image resolution for 32×32 images."""
    net = Net(parse_text(ORACLE, caffe_pb2.NetParameter))
    with torch.no_grad():
        net.params["feat"][0].copy_(torch.eye(3).reshape(3, 3, 1, 1))
        net.params["feat"][1].zero_()
        net.params["fc"][0].copy_(torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]))
        net.params["fc"][1].zero_()
    return net


def oracle_set(folder):
    """Five 32×32 PNGs and the outcome of each, worked out by hand (see comments)."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = []

    def add(name, label, gt, paint):
        img = np.zeros((32, 32, 3), np.uint8)
        paint(img)
        cv2.imwrite(str(folder / name), img)
        specs.append((name, label, gt))

    add("a.png", 0, [4, 4, 12, 12], lambda im: im.__setitem__((slice(4, 12), slice(4, 12), 0), 255))
    # red 16×16 square; the ground truth is its left half: IoU 0.5, a hit
    add("b.png", 1, [10, 10, 18, 26], lambda im: im.__setitem__((slice(10, 26), slice(10, 26), 2), 255))
    # blue square but labelled 1: predicted 0 (wrong); the red map is empty -> whole image, IoU 256/1024: miss
    add("c.png", 1, [0, 0, 16, 16], lambda im: im.__setitem__((slice(0, 16), slice(0, 16), 0), 255))
    # red 8×8 at the corner, ground truth 16×16: right class, IoU 0.25: miss

    add("d.png", 1, [0, 0, 16, 16], lambda im: im.__setitem__((slice(0, 8), slice(0, 8), 2), 255))

    def ring(im):  # red ring at 60 (0.235 of the max) around a 255 core
        im[8:24, 8:24, 2] = 60
        im[12:20, 12:20, 2] = 255

    # threshold 0.2: box [8, 8, 24, 24], IoU 64/256 = 0.25 miss; threshold 0.3: the core, IoU 1 hit
    add("e.png", 1, [12, 12, 20, 20], ring)
    (folder / "val.txt").write_text("".join(f"{n} {lab}\n" for n, lab, _ in specs))
    (folder / "boxes.csv").write_text("".join(f"{n} {' '.join(map(str, g))}\n" for n, _, g in specs))
    return specs


def test_evaluate_localization_by_hand(tmp_path):
    oracle_set(tmp_path)
    from caffecam.data.images import read_list_file

    items = read_list_file(tmp_path / "val.txt")
    model = CamModel(oracle_net(), mean=(0, 0, 0), device="cpu")
    s = evaluate_localization(model, items, read_boxes(tmp_path / "boxes.csv"), [0.2, 0.3], progress=False)
    assert s["images"] == 5 and s["accuracy"] == pytest.approx(4 / 5)
    # at 0.2: a, b localized -> 2/5 for both measures; at 0.3: e too -> 3/5
    assert s["loc_accuracy"] == pytest.approx(2 / 5) and s["gt_known_loc_accuracy"] == pytest.approx(2 / 5)
    at03 = s["per_threshold"][1]
    assert at03["threshold"] == 0.3
    assert at03["loc_accuracy"] == pytest.approx(3 / 5) and at03["gt_known_loc_accuracy"] == pytest.approx(3 / 5)
    assert s["best_threshold"] == 0.3 and s["failures"] == [] and s["unscored"] == 0


def test_evaluate_localization_skips_and_reports(tmp_path):
    oracle_set(tmp_path)
    boxes = read_boxes(tmp_path / "boxes.csv")
    items = [InputItem(tmp_path / "a.png", 0), InputItem(tmp_path / "missing.png", 0),
             InputItem(tmp_path / "b.png", None)]
    s = evaluate_localization(oracle_net(), items, boxes, progress=False)
    assert s["images"] == 1 and s["unscored"] == 1
    assert len(s["failures"]) == 1 and "missing.png" in s["failures"][0][1]
    with pytest.raises(CaffeCamError, match="labelled"):
        evaluate_localization(oracle_net(), [InputItem(tmp_path / "a.png")], boxes, progress=False)
