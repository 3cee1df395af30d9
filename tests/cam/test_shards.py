"""CAM over a data set on two gloo processes (torchrun, CPU): scripts/cam.py and scripts/eval_loc.py write what one
process writes — every per-image file, the gallery, the report page's data and the localization scores."""

import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch.distributed as dist

from caffecam.cam.shards import Shard, merge
from caffecam.engine.weights import save_caffemodel
from tests.cam.report_helpers import CLASSES, ORACLE3, make_images, oracle3_net

ROOT = Path(__file__).resolve().parents[2]
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1")  # torchrun's default per process; the single run gets the same


def test_spans_cover_the_inputs_once_in_order():
    for world in (1, 2, 3, 5):
        for n in range(0, 12):
            spans = [Shard(r, world).span(n) for r in range(world)]
            assert [i for s in spans for i in s] == list(range(n))
            assert max(map(len, spans)) - min(map(len, spans)) <= 1


def test_merge_orders_by_input_and_sums():
    a = {"records": [[4, "e"], [0, "a"]], "failures": [[2, "p", "m"]], "thumbs": [], "scored": [[0, True, [1], 0]],
         "unscored": 1, "entries": {0: "x"}}
    b = {"records": [[1, "b"]], "failures": [], "thumbs": [[1, "t", "c"]], "scored": [], "unscored": 2,
         "entries": {1: "y"}}
    m = merge([a, b])
    assert [r for _, r in m["records"]] == ["a", "b", "e"] and m["unscored"] == 3 and m["entries"] == {0: "x", 1: "y"}


def _gather_on_rank(rank, store, out):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    shard = Shard(rank, 2)
    span = shard.span(5)  # rank 0: inputs 0, 1; rank 1: 2, 3, 4
    part = {"records": [[i, {"i": i}] for i in span], "failures": [], "scored": [], "unscored": rank,
            "thumbs": [[i, np.full((2, 3, 3), i, np.uint8), f"c{i}"] for i in span],
            "entries": {i: {"stem": f"s{i}"} for i in span}}
    merged = shard.gather(part, thumbs_limit=3)
    if rank == 0:
        out.put(json.dumps({"records": merged["records"], "unscored": merged["unscored"],
                            "thumbs": [[i, int(t.sum()), c] for i, t, c in merged["thumbs"]],
                            "entries": sorted(merged["entries"])}))
    else:
        out.put(json.dumps(merged))
    dist.destroy_process_group()


def test_gather_brings_every_rank_to_rank_0_and_the_first_thumbnails_only(tmp_path):
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_gather_on_rank, args=(r, tmp_path / "store", out)) for r in range(2)]
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    merged = json.loads(next(g for g in got if g != "null"))
    assert "null" in got  # rank 1 gets nothing back
    assert merged["records"] == [[i, {"i": i}] for i in range(5)] and merged["unscored"] == 1
    assert merged["thumbs"] == [[i, 18 * i, f"c{i}"] for i in range(3)]  # 3 of 5: rank 1 sent only input 2's
    assert merged["entries"] == [0, 1, 2, 3, 4]


def setup_data(root):
    data = root / "data"
    make_images(data, n=11)
    lines = (data / "val.txt").read_text().splitlines(keepends=True)
    (data / "broken.png").write_bytes(b"not an image")
    (data / "val.txt").write_text("".join(lines[:5] + ["broken.png 1\n"] + lines[5:]))  # a failure mid-list
    (root / "oracle.prototxt").write_text(ORACLE3)
    save_caffemodel(oracle3_net(), root / "oracle.caffemodel")
    (root / "labels.csv").write_text("".join(f"{i} {n}\n" for i, n in enumerate(CLASSES)))
    return data


def run(root, script, nproc, *args):
    head = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                 f"--nproc_per_node={nproc}"]
    cmd = head + [str(ROOT / "scripts" / script), "--no-progress", "--cpu", "--model", "oracle.prototxt",
                  "--weights", "oracle.caffemodel", "--labels", "labels.csv", "--mean", "0", "--batch-size", "3",
                  "--box-threshold", "0.3", *args]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300, env=ONE_THREAD)


def files(folder):
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "data.js":  # the page's data, less its creation time
                data = json.loads(data.decode().split("=", 1)[1].rstrip().rstrip(";"))
                data.pop("created")
            out[str(p.relative_to(folder))] = data
    return out


def test_cam_on_two_processes_writes_what_one_writes(tmp_path):
    setup_data(tmp_path)
    procs = {}
    for nproc in (1, 2):
        procs[nproc] = run(tmp_path, "cam.py", nproc, "--top-k", "2", "--save-maps", "--eval-boxes", "data/boxes.csv",
                           "--eval-json", f"loc{nproc}.json", "--gallery", f"gallery{nproc}.png", "--out",
                           f"out{nproc}", "data/val.txt")
    for proc in procs.values():
        assert proc.returncode == 1, proc.stderr[-3000:]  # broken.png: as one process, exit status 1
        assert proc.stderr.count("broken.png") >= 1 and proc.stdout.count("wrote 11 result(s)") == 1, proc.stdout
    assert "error: 1 of 12 image(s) failed" in procs[2].stderr
    one, two = files(tmp_path / "out1"), files(tmp_path / "out2")
    assert len(one) == 11 * 3 + 11 * 2 + 1 + 1 + 5 + 1  # png/json/npy, thumbs+images, maps, data.js, assets, page
    assert one.keys() == two.keys()
    for name in one:
        assert one[name] == two[name], name
    assert (tmp_path / "gallery1.png").read_bytes() == (tmp_path / "gallery2.png").read_bytes()
    loc = [json.loads((tmp_path / f"loc{n}.json").read_text()) for n in (1, 2)]
    assert loc[0] == loc[1] and loc[0]["images"] == 11
    page = json.loads((tmp_path / "out2/report/data.js").read_text().split("=", 1)[1].rstrip().rstrip(";"))
    assert [row[1] for row in page["items"]] == sorted(row[1] for row in page["items"])  # input order: img00..img10
    assert page["failures"][0][0].endswith("broken.png")


def test_eval_loc_on_two_processes_scores_what_one_scores(tmp_path):
    setup_data(tmp_path)
    outs = [run(tmp_path, "eval_loc.py", n, "--list", "data/val.txt", "--boxes", "data/boxes.csv", "--thresholds",
                "0.1:0.5:0.1", "--json", f"loc{n}.json") for n in (1, 2)]
    assert [o.returncode for o in outs] == [1, 1], outs[1].stderr[-3000:]
    one, two = (json.loads((tmp_path / f"loc{n}.json").read_text()) for n in (1, 2))
    assert one == two and one["images"] == 11 and len(one["per_threshold"]) == 5
    assert outs[0].stdout.replace("loc1", "loc2") == outs[1].stdout  # rank 0 alone prints, the same lines
    assert np.isclose(one["accuracy"], 9 / 11)  # the helpers list images 2 and 7 of these 11 with wrong labels


def test_an_option_error_under_torchrun_is_printed_once(tmp_path):
    """Every rank reads the same options and fails alike; rank 0 alone prints the line (caffecam.errors'
    rank_zero_speaks), and torchrun stops the other rank while it waits."""
    proc = run(tmp_path, "cam.py", 2, "--alpha", "2", "x.jpg")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and errors == ["error: --alpha 2.0: must lie in [0, 1]"], proc.stderr[-3000:]
