"""The report page at scale, for `make bench`: a report of many entries (one synthetic image repeated, as
cam.py's run would write it) written through ReportWriter, then opened from file:// in headless Chromium: the time
to the grid's first paint, to filter ("wrong only") and to search, and to open one image's detail view. The page
times itself (CamReport.timings, performance.now() until the frame after the change is painted)."""

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from caffecam.bench import browser
from caffecam.bench.timing import synthetic_image
from caffecam.cam.localize import map_box
from caffecam.cam.maps import upsample_maps
from caffecam.cam.pipeline import CamResult
from caffecam.cam.report import ReportWriter
from caffecam.data.images import InputItem

WRONG_EVERY = 4  # every 4th entry carries a wrong label, so "wrong only" keeps a quarter


def write_report(folder, entries, size=(320, 240), num_classes=14, top_k=3, map_size=14, workers=4, seed=0):
    """`entries` results of one image with smooth random maps and varied classes -> (seconds to write the report,
    its folder). Entries are added from `workers` threads, as the pipeline's writer threads do."""
    rng = np.random.default_rng(seed)
    w, h = size
    image = synthetic_image(rng, w, h)
    maps = rng.random((top_k + 1, 4, 4)).astype(np.float32)
    maps = upsample_maps(maps, map_size, map_size)  # smooth, with a peak somewhere
    up = upsample_maps(maps[:top_k], w, h)
    boxes = [map_box(m) for m in up]
    labels = [f"class_{c:02d}" for c in range(num_classes)]
    path = Path(folder) / "image.jpg"
    writer = ReportWriter(folder, labels, top_k=top_k, title=f"bench: {entries} entries")

    def add(i):
        ids = np.roll(np.arange(num_classes), -(i % num_classes))[:top_k]
        probs = np.sort(rng.dirichlet(np.ones(num_classes)))[::-1][:top_k]
        label = int(ids[0]) if i % WRONG_EVERY else int(ids[-1])
        res = CamResult(InputItem(path, label), image, None, ids, probs, maps[:top_k], maps[top_k])
        record = {"image": str(path), "width": w, "height": h,
                  "top_k": [{"class_id": int(c), "class_name": labels[c], "prob": float(p), "box": b}
                            for c, p, b in zip(ids, probs, boxes)]}
        writer.add(i, f"img{i:05d}", res, record, up)

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(add, range(entries)))
    writer.write()
    return time.perf_counter() - start, Path(folder)


def _wait(driver, script, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        value = driver.execute_script(script)
        if value is not None and value is not False:
            return value
        time.sleep(0.01)
    raise TimeoutError(script)


def _timed_change(driver, element_id, value, event):
    """Set a control as the user would and return the page's own timing of the change (ms)."""
    driver.execute_script("CamReport.timings.filter = null")
    driver.execute_script(f"const e = document.getElementById('{element_id}'); e.value = arguments[0]; "
                          f"e.dispatchEvent(new Event('{event}'))", value)
    return _wait(driver, "return CamReport.timings.filter")


def page_times(folder, rounds=3):
    """Medians over `rounds` page loads: {first_paint_ms, filter_ms, search_ms, detail_ms, shown, matching}."""
    url = browser.file_url(Path(folder) / "index.html")
    runs = []
    with browser.chromium() as d:
        for _ in range(rounds):
            d.get("about:blank")
            d.get(url)
            first = _wait(d, "return window.CamReport && CamReport.ready && CamReport.timings.firstPaint")
            filt = _timed_change(d, "f-show", "wrong", "change")
            matching = d.execute_script("return CamReport.view.length")
            shown = d.execute_script("return document.querySelectorAll('#grid .card').length")
            search = _timed_change(d, "f-search", "img0999", "input")
            d.execute_script("CamReport.timings.detail = null; "
                             "location.hash = '#image=' + (CamReport.items.length - 1)")
            detail = _wait(d, "return CamReport.timings.detail")
            errors = browser.console_errors(d)
            if errors:
                raise RuntimeError(f"the report page logged errors: {errors[:3]}")
            runs.append((first, filt, search, detail))
    med = [statistics.median(v) for v in zip(*runs)]
    return {"first_paint_ms": med[0], "filter_ms": med[1], "search_ms": med[2], "detail_ms": med[3],
            "wrong_only_matching": matching, "cards_in_dom": shown, "rounds": rounds}


def report_bench(work, entries, rounds=3):
    """The write time, and the page's times when a headless Chromium is here (else None, and why)."""
    seconds, folder = write_report(Path(work) / "report", entries)
    sizes = {p.name: p.stat().st_size for p in (folder / "report").glob("*.js")}
    out = {"entries": entries, "write_s": seconds, "write_entries_per_s": entries / seconds,
           "data_js_mb": sizes["data.js"] / 2 ** 20, "expected_wrong_only": len(range(0, entries, WRONG_EVERY)),
           "first_paint_ms": None, "filter_ms": None, "search_ms": None, "detail_ms": None, "goal_ms": 2000.0}
    why = browser.missing()
    if why is None:
        out.update(page_times(folder, rounds))
    return out, why
