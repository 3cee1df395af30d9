"""The report's files against what the run wrote beside them: data.js rows against the <stem>_cam.json files and
the list's labels, the maps chunks against the <stem>_cam.npy files and boxes.csv, the summary against the
localization scores and a confusion matrix counted here; when cam.py writes a report and when not."""

import base64
import json
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.cam.report_helpers import CLASSES, REPO, make_images


def read_script(path, name):
    text = path.read_text()
    m = re.fullmatch(rf"window\.{name} = (.*);\n", text, re.S)
    assert m, text[:200]
    return json.loads(m.group(1))


def read_chunks(out):
    entries = []
    for path in sorted((out / "report" / "maps").glob("*.js")):
        m = re.fullmatch(r"CAM_REPORT_CHUNK\((\d+), (.*)\);\n", path.read_text(), re.S)
        assert m and int(m.group(1)) == int(path.stem)
        entries += json.loads(m.group(2))
    return entries


def decode(b64, shape):
    return np.frombuffer(base64.b64decode(b64), "<f4").reshape(shape)


def test_rows_and_maps_match_the_run(report_run):
    out, specs = report_run["out"], report_run["specs"]
    data = read_script(out / "report" / "data.js", "CAM_REPORT")
    records = {p.name[:-len("_cam.json")]: json.loads(p.read_text()) for p in out.glob("*_cam.json")}
    labels = {Path(n).stem: lab for n, lab, _ in specs}
    gts = {Path(n).stem: box for n, _, box in specs}
    assert data["classes"] == CLASSES and data["threshold"] == 0.3 and data["top_k"] == 2
    assert data["has_labels"] and data["has_boxes"] and data["failures"] == []
    assert [row[1] for row in data["items"]] == sorted(records)  # input order: the list's order
    chunks = read_chunks(out)
    assert len(chunks) == len(records) == 15
    for row, entry in zip(data["items"], chunks):
        file, name, pred, prob, label, w, h = row
        rec = records[name]
        top = rec["top_k"]
        assert (pred, label, w, h) == (top[0]["class_id"], labels[name], rec["width"], rec["height"])
        assert prob == pytest.approx(top[0]["prob"], abs=1e-5)
        assert entry["file"] == file and entry["image"] == rec["image"]
        assert entry["ids"] == [t["class_id"] for t in top] and entry["boxes"] == [t["box"] for t in top]
        raw = np.load(out / f"{name}_cam.npy")
        assert (entry["map_h"], entry["map_w"]) == raw.shape[1:]
        np.testing.assert_array_equal(decode(entry["maps"], raw.shape), raw)
        assert entry["gt"] == [gts[name]]
        # the true class's map comes along only when it is not among the top 2 (images 2 and 7 of the helpers)
        assert (entry["label_map"] is not None) == (label not in entry["ids"])
        thumb = cv2.imread(str(out / "report" / "thumbs" / f"{file}.jpg"))
        assert max(thumb.shape[:2]) <= 192 and abs(thumb.shape[1] / thumb.shape[0] - w / h) < 0.05
        assert cv2.imread(str(out / "report" / "images" / f"{file}.jpg")).shape[:2] == (h, w)
    assert sum(e["label_map"] is not None for e in chunks) == 2


def test_summary_is_the_runs_numbers(report_run):
    out, specs = report_run["out"], report_run["specs"]
    data = read_script(out / "report" / "data.js", "CAM_REPORT")
    loc = json.loads(report_run["loc"].read_text())
    assert data["localization"] == loc  # eval-json and the page show one computation
    confusion = np.zeros((3, 3), int)
    for name, label, _ in specs:
        top1 = json.loads((out / f"{Path(name).stem}_cam.json").read_text())["top_k"][0]["class_id"]
        confusion[label, top1] += 1
    cls = data["classification"]
    assert cls["confusion"] == confusion.tolist() and cls["images"] == 15
    assert cls["accuracy"] == pytest.approx(loc["accuracy"]) == pytest.approx(12 / 15)
    assert [p["accuracy"] for p in cls["per_class"]] == pytest.approx(
        [confusion[c, c] / confusion[c].sum() for c in range(3)])
    assert data["predicted"] == confusion.sum(0).tolist()


@pytest.fixture(scope="module")
def cam_main():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import cam
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return cam.main


def test_when_a_report_is_written(report_run, cam_main, tmp_path, capsys):
    root = report_run["root"]
    common = ["--no-progress", "--model", str(root / "oracle.prototxt"), "--weights", str(root / "oracle.caffemodel"),
              "--labels", str(root / "labels.csv"), "--mean", "0", "--cpu"]
    folder = tmp_path / "imgs"
    make_images(folder, n=3)
    (folder / "broken.png").write_bytes(b"not an image")
    with pytest.raises(SystemExit) as exc:  # one image failed: exit status 1, and the report lists it
        cam_main(common + ["--out", str(tmp_path / "a"), str(folder)])
    assert exc.value.code == 1
    data = read_script(tmp_path / "a" / "report" / "data.js", "CAM_REPORT")
    assert len(data["items"]) == 3 and not data["has_labels"] and data["classification"] is None
    assert len(data["failures"]) == 1 and "broken.png" in data["failures"][0][1]
    assert f"report: {tmp_path / 'a' / 'index.html'}" in capsys.readouterr().out
    page = (tmp_path / "a" / "index.html").read_text()
    assert "<title>CAM report: imgs</title>" in page and "http" not in page.replace("http://www.w3.org", "")
    cam_main(common + ["--out", str(tmp_path / "b"), str(folder / "img00.png")])
    assert not (tmp_path / "b" / "index.html").exists()
    cam_main(common + ["--out", str(tmp_path / "c"), "--report", str(folder / "img00.png")])
    assert (tmp_path / "c" / "index.html").exists()
    cam_main(common + ["--out", str(tmp_path / "d"), "--no-report", str(folder / "val.txt")])
    assert not (tmp_path / "d" / "index.html").exists() and len(list((tmp_path / "d").glob("*_cam.json"))) == 3


def test_the_assets_are_small_and_our_own():
    from caffecam.cam.report import ASSETS

    for path in ASSETS.iterdir():
        text = path.read_text()
        assert len(text.splitlines()) < 400, path
        assert not re.search(r"(src|href)=\"(https?:)?//", text), path  # nothing from the network
