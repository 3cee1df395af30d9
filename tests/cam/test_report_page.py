"""The report page in headless Chromium, opened from file://: the grid against the JSON files, the filters against
the localization scores, the summary, keyboard moves, the threshold slider's boxes against localize.map_box on the
saved maps, a narrow window, and no console errors. Screenshots for a person: results/report/grid.png and
detail.png."""

import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import cv2
import numpy as np
import pytest

from caffecam.bench import browser
from caffecam.cam.localize import best_iou, map_box
from caffecam.cam.maps import upsample_maps
from tests.cam.report_helpers import CLASSES, REPO

WHY = browser.missing()
if WHY:  # one line in the summary of `make test`, saying what to install
    pytest.skip(WHY, allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402 (selenium may be missing: skipped above)
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

SHOTS = REPO / "results" / "report"


@pytest.fixture(scope="module")
def page(report_run):
    with browser.chromium(1280, 900) as d:
        d.get(browser.file_url(report_run["out"] / "index.html"))
        WebDriverWait(d, 20).until(lambda d: d.execute_script("return window.CamReport && CamReport.ready === true"))
        yield d


@pytest.fixture(scope="module")
def run(report_run):
    """The run as the files say: {stem: (record, label, gt box)} and the localization scores."""
    out = report_run["out"]
    records = {p.name[:-len("_cam.json")]: json.loads(p.read_text()) for p in out.glob("*_cam.json")}
    truth = {Path(n).stem: (lab, box) for n, lab, box in report_run["specs"]}
    return {k: (records[k], *truth[k]) for k in records}, json.loads(report_run["loc"].read_text())


def no_console_errors(d):
    assert browser.console_errors(d) == []


def cards(d):
    return d.find_elements(By.CSS_SELECTOR, "#grid .card-link")


def names(d):
    return [c.find_element(By.CSS_SELECTOR, ".name").text for c in cards(d)]


def set_filters(d, show="all", pred="-1", sort="input", search=""):
    for id_, value in (("f-show", show), ("f-pred", pred), ("f-sort", sort)):
        Select(d.find_element(By.ID, id_)).select_by_value(value)
    box = d.find_element(By.ID, "f-search")
    if box.get_attribute("value"):
        box.send_keys(Keys.CONTROL + "a", Keys.BACKSPACE)  # as a person would: clear() sends no input event
    if search:
        box.send_keys(search)


def test_grid_has_one_thumbnail_per_json_file(page, run):
    d, (files, _) = page, run
    assert sorted(names(d)) == sorted(files) and len(cards(d)) == 15
    assert d.find_element(By.ID, "count").text == "15 of 15 images"
    imgs = d.find_elements(By.CSS_SELECTOR, "#grid img")
    WebDriverWait(d, 10).until(lambda d: all(d.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", i) for i in imgs))
    for card, img in zip(cards(d), imgs):
        name = card.find_element(By.CSS_SELECTOR, ".name").text
        record, label, _ = files[name]
        top = record["top_k"][0]
        assert img.get_attribute("alt").startswith(f"{name}: predicted {top['class_name']}, ")
        assert Path(unquote(urlparse(img.get_attribute("src")).path)).is_file()
        assert ("✗ wrong" in card.text) == (label != top["class_id"])
    SHOTS.mkdir(parents=True, exist_ok=True)
    d.execute_script("document.getElementById('grid').scrollIntoView()")
    d.save_screenshot(str(SHOTS / "grid.png"))
    d.execute_script("window.scrollTo(0, 0)")
    no_console_errors(d)


def test_filters_sorting_and_search(page, run):
    d, (files, loc) = page, run
    wrong = {k for k, (rec, label, _) in files.items() if rec["top_k"][0]["class_id"] != label}
    set_filters(d, show="wrong")
    assert len(cards(d)) == round((1 - loc["accuracy"]) * loc["images"]) == 3
    assert set(names(d)) == wrong
    set_filters(d, show="right")
    assert set(names(d)) == set(files) - wrong
    set_filters(d, pred=str(CLASSES.index("red")))
    assert set(names(d)) == {k for k, (rec, _, _) in files.items() if rec["top_k"][0]["class_name"] == "red"}
    set_filters(d, sort="prob-desc")
    assert names(d) == sorted(files, key=lambda k: -files[k][0]["top_k"][0]["prob"])
    set_filters(d, sort="name", search="IMG07")
    assert names(d) == ["img07"]
    set_filters(d)
    assert names(d) == sorted(files)
    no_console_errors(d)


def test_summary_shows_the_runs_scores(page, run):
    d, (files, loc) = page, run
    text = lambda css: d.execute_script(f"return document.querySelector('{css}').textContent")  # noqa: E731
    assert f"Top-1 accuracy: {100 * loc['accuracy']:.1f} %" in text("#s-accuracy")
    assert f"Top-1 localization: {100 * loc['loc_accuracy']:.1f} %" in text("#s-localization")
    rows = d.execute_script("return Array.from(document.querySelectorAll('#s-per-class tbody tr'))"
                            ".map(r => Array.from(r.cells).map(c => c.textContent))")
    for p in loc["per_class"]:
        row = rows[p["class_id"]]
        assert row[0] == CLASSES[p["class_id"]]
        assert row[-2:] == [f"{100 * p['loc_accuracy']:.1f} %", f"{100 * p['gt_known_loc_accuracy']:.1f} %"]
    confusion = np.zeros((3, 3), int)
    for rec, label, _ in files.values():
        confusion[label, rec["top_k"][0]["class_id"]] += 1
    cells = d.execute_script("return Array.from(document.querySelectorAll('#s-confusion tbody tr'))"
                             ".map(r => Array.from(r.cells).slice(1).map(c => +c.textContent))")
    assert cells == confusion.tolist()
    # a count in the matrix shows its images: blue images (true) predicted green
    d.find_element(By.CSS_SELECTOR, "#summary > summary").click()
    d.find_element(By.CSS_SELECTOR, "#s-confusion tbody tr:nth-child(1) td:nth-child(3) button").click()
    assert len(cards(d)) == confusion[0, 1] > 0
    d.find_element(By.CSS_SELECTOR, "#summary > summary").click()
    set_filters(d)
    Select(d.find_element(By.ID, "f-true")).select_by_value("-1")
    no_console_errors(d)


def drawn_boxes(d):
    """[x1, y1, x2, y2] of each map panel's CAM box, as the SVG draws it (user units: original pixels)."""
    return d.execute_script("return Array.from(document.querySelectorAll('#d-panels rect.box')).map(r => "
                            "['x', 'y', 'width', 'height'].map(a => +r.getAttribute(a)))"
                            ".map(([x, y, w, h]) => [x, y, x + w, y + h])")


def oracle_label_map(image_path, label, w, h):
    """The oracle net's map of `label`, worked out apart from the pipeline: that channel of the 32×32 input (ReLU,
    times the classifier's 0.05), upsampled to the image's size."""
    small = cv2.resize(cv2.imread(str(image_path)), (32, 32), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    return upsample_maps(0.05 * small[None, :, :, label], w, h)[0]


def test_detail_view_threshold_slider_and_keys(page, run, report_run):
    d, (files, _) = page, run
    grid = cards(d)
    grid[0].send_keys(Keys.ARROW_RIGHT)
    d.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
    assert d.switch_to.active_element.text.startswith("img02")
    d.switch_to.active_element.send_keys(Keys.ENTER)  # img02: labelled green, predicted red then blue
    WebDriverWait(d, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#d-panels figure.map")) == 3)
    assert d.find_element(By.ID, "d-title").text == "img02" and not d.find_element(By.ID, "browse").is_displayed()
    record, label, gt = files["img02"]
    raw = np.load(report_run["out"] / "img02_cam.npy")
    w, h = record["width"], record["height"]
    maps = list(upsample_maps(raw, w, h)) + [oracle_label_map(record["image"], label, w, h)]
    captions = [f.text for f in d.find_elements(By.CSS_SELECTOR, "#d-panels figure.map figcaption")]
    assert captions[2].startswith(f"true class {CLASSES[label]}")
    assert drawn_boxes(d)[:2] == [t["box"] for t in record["top_k"]]  # the run's threshold, the JSON's boxes
    slider = d.find_element(By.ID, "d-threshold")
    for keys, expect in ((Keys.ARROW_RIGHT * 25, 0.55), (Keys.ARROW_LEFT * 40, 0.15)):
        slider.send_keys(keys)
        assert float(slider.get_attribute("value")) == pytest.approx(expect)
        # the boxes follow on the next frame
        WebDriverWait(d, 5).until(lambda d, t=f"at threshold {expect:.2f}": all(
            b.text.endswith(t) for b in d.find_elements(By.CSS_SELECTOR, "#d-panels figure.map .p-box")))
        drawn = drawn_boxes(d)
        shown = [f.text for f in d.find_elements(By.CSS_SELECTOR, "#d-panels figure.map .p-iou")]
        for k, (box, m) in enumerate(zip(drawn, maps)):
            ref = map_box(m, expect)
            assert max(abs(a - b) for a, b in zip(box, ref)) <= 1, (k, expect, box, ref)
            assert shown[k].startswith(f"IoU {best_iou(box, [gt]):.3f} with the ground truth")
        assert drawn[:2] != [t["box"] for t in record["top_k"]]  # the boxes did move
    d.save_screenshot(str(SHOTS / "detail.png"))
    d.find_element(By.ID, "d-box").click()
    WebDriverWait(d, 5).until(lambda d: not any(r.is_displayed() for r in d.find_elements(By.CSS_SELECTOR, "rect.box")))
    d.find_element(By.ID, "d-box").click()
    d.find_element(By.ID, "d-opacity").send_keys(Keys.END)
    WebDriverWait(d, 5).until(lambda d: {c.value_of_css_property("opacity") for c in
                                         d.find_elements(By.CSS_SELECTOR, "canvas.heat")} == {"1"})
    d.find_element(By.ID, "d-title").send_keys(Keys.ARROW_RIGHT)
    WebDriverWait(d, 5).until(lambda d: d.find_element(By.ID, "d-title").text == "img03")
    d.switch_to.active_element.send_keys(Keys.ARROW_LEFT)
    WebDriverWait(d, 5).until(lambda d: d.find_element(By.ID, "d-title").text == "img02")
    d.switch_to.active_element.send_keys(Keys.ESCAPE)
    assert d.find_element(By.ID, "browse").is_displayed() and not d.find_element(By.ID, "detail").is_displayed()
    assert d.switch_to.active_element.get_attribute("data-pos") == "2"  # back on the card it came from
    no_console_errors(d)


def test_every_box_agrees_with_localize(page, report_run):
    """The page's box rule on every saved map at thresholds 0, 0.05, ..., 1 against localize.map_box."""
    d, out = page, report_run["out"]
    thresholds = [round(0.05 * i, 2) for i in range(21)]
    boxes = d.execute_async_script("""
        const [thresholds, done] = arguments, C = CamReport, B = C.boxes, R = CAM_REPORT, out = {};
        (async () => {
          for (let c = 0; c * R.chunk < R.items.length; c++) {
            const entries = await new Promise((resolve) => {
              window.CAM_REPORT_CHUNK = (n, e) => resolve(e);
              const s = document.createElement('script');
              s.src = `report/maps/${String(c).padStart(4, '0')}.js`;
              document.head.append(s);
            });
            entries.forEach((e, i) => {
              const it = C.items[c * R.chunk + i];
              out[it.name] = B.decodeMaps(e.maps, e.ids.length, e.map_w, e.map_h).map((m) => {
                const full = B.upsample(m, e.map_w, e.map_h, it.w, it.h);
                return thresholds.map((t) => B.mapBox(full, it.w, it.h, t));
              });
            });
          }
          done(out);
        })();""", thresholds)
    assert len(boxes) == 15
    worst = 0
    for name, per_map in boxes.items():
        record = json.loads((out / f"{name}_cam.json").read_text())
        up = upsample_maps(np.load(out / f"{name}_cam.npy"), record["width"], record["height"])
        for m, page_boxes in zip(up, per_map):
            for t, box in zip(thresholds, page_boxes):
                worst = max(worst, max(abs(a - b) for a, b in zip(box, map_box(m, t))))
    assert worst <= 1
    d.refresh()  # the chunks loaded above replaced the page's own loader
    WebDriverWait(d, 20).until(lambda d: d.execute_script("return window.CamReport && CamReport.ready === true"))
    no_console_errors(d)


def test_narrow_window_has_no_sideways_scroll(page):
    d = page
    overflow = "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    try:
        d.set_window_size(400, 800)
        assert d.execute_script(overflow) <= 0
        cards(d)[0].send_keys(Keys.ENTER)
        WebDriverWait(d, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#d-panels figure.map")) >= 2)
        assert d.execute_script(overflow) <= 0
        d.switch_to.active_element.send_keys(Keys.ESCAPE)
    finally:
        d.set_window_size(1280, 900)
    no_console_errors(d)
