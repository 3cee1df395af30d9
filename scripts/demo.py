"""`make demo`: the whole workflow end to end on the built-in synthetic data set, on the CPU.

Generates the demo images (with ground-truth boxes), trains the small GoogLeNet-CAM from scratch through the real
solver, plots the learning curves, runs CAM on the validation images with a gallery and the report page, scores
localization, and writes results/demo/metrics.json. Each step runs the same command a user would type, and is
skipped when its output exists.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from caffecam.errors import CaffeCamError, main_guard
from caffecam.nets import demo

DATA = Path("data/demo")
SNAPSHOTS = Path(demo.DEMO_SNAPSHOT_PREFIX).parent
RESULTS = Path("results/demo")
SOLVER = Path("prototxt/demo_solver.prototxt")
DEPLOY = Path("prototxt/demo_deploy.prototxt")
THRESHOLDS = "0.2:0.8:0.05"


def run(step, cmd):
    print(f"\n== {step}: {' '.join(str(c) for c in cmd)}", flush=True)
    t = time.time()
    proc = subprocess.run([sys.executable] + [str(c) for c in cmd], cwd=ROOT)
    if proc.returncode != 0:
        raise CaffeCamError(f"demo step '{step}' failed (exit {proc.returncode}); see the output above")
    print(f"== {step}: done in {time.time() - t:.1f}s", flush=True)


def latest_solverstate():
    states = sorted(SNAPSHOTS.glob("*.solverstate"), key=lambda p: int(p.stem.rsplit("_", 1)[-1]))
    return states[-1] if states else None


@main_guard
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--started", type=float, default=None,
                    help="epoch seconds when `make demo` started (so set-up time counts in wall_seconds)")
    ap.add_argument("--workers", type=int, default=1, help="data-loading worker processes for training (default 1)")
    ap.add_argument("--bf16", action="store_true",
                    help="train and run CAM under bfloat16 autocast (a CPU with AVX512-BF16/AMX); start from "
                         "`make demo-clean` so that nothing of a float32 run is reused")
    args = ap.parse_args(argv)
    bf16 = ["--bf16"] if args.bf16 else []
    started = args.started or time.time()
    os.chdir(ROOT)
    RESULTS.mkdir(parents=True, exist_ok=True)

    if not (DATA / "val.txt").exists() or not (DATA / "boxes.csv").exists():
        run("data", ["scripts/make_demo_data.py", "--out", DATA, "--classes", demo.DEMO_NUM_CLASSES,
                     "--images", demo.DEMO_IMAGES, "--size", demo.DEMO_IMAGE_SIZE, "--seed", "0",
                     "--min-scale", demo.DEMO_MIN_SCALE, "--max-scale", demo.DEMO_MAX_SCALE])
    else:
        print(f"== data: reusing {DATA} (make demo-clean to start over)")

    final = Path(f"{demo.DEMO_SNAPSHOT_PREFIX}_iter_{demo.DEMO_MAX_ITER}.caffemodel")
    if not final.exists():
        cmd = ["scripts/train.py", "--solver", SOLVER, "--cpu", "--workers", args.workers, *bf16]
        state = latest_solverstate()
        if state is not None:
            cmd += ["--snapshot", state]
        run("train", cmd)
    else:
        print(f"== train: reusing {final}")

    log = SNAPSHOTS / "train.log"
    run("curves", ["scripts/plot_curves.py", log, "--out", RESULTS / "curves.png", "--csv", RESULTS / "train_log"])

    # The box threshold is a hyper-parameter: pick it on the training images, then score the validation images.
    sweep_json = RESULTS / "threshold_sweep_train.json"
    run("threshold", ["scripts/eval_loc.py", "--model", DEPLOY, "--weights", final, "--labels",
                      DATA / "class_labels.csv", "--list", DATA / "train.txt", "--boxes", DATA / "boxes.csv",
                      "--thresholds", THRESHOLDS, "--json", sweep_json, "--cpu", "--no-progress", *bf16])
    threshold = json.loads(sweep_json.read_text())["best_threshold"]
    print(f"== box threshold chosen on the training images: {threshold:g}")

    eval_json = RESULTS / "localization.json"
    run("cam", ["scripts/cam.py", "--model", DEPLOY, "--weights", final, "--labels", DATA / "class_labels.csv",
                "--out", RESULTS / "cam", "--gallery", RESULTS / "gallery.png", "--box-threshold", threshold,
                "--eval-boxes", DATA / "boxes.csv", "--eval-json", eval_json, "--cpu", *bf16, DATA / "val.txt"])

    scores = json.loads(eval_json.read_text())
    metrics = {
        "accuracy": scores["accuracy"],
        "loc_accuracy": scores["loc_accuracy"],
        "gt_known_loc_accuracy": scores["gt_known_loc_accuracy"],
        "box_threshold": threshold,
        "precision": "bfloat16 autocast" if args.bf16 else "float32",
        "wall_seconds": round(time.time() - started, 1),
    }
    (RESULTS / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print("\nDemo results")
    print(f"  learning curves   {RESULTS / 'curves.png'}")
    print(f"  CAM gallery       {RESULTS / 'gallery.png'}")
    print(f"  per-image CAMs    {RESULTS / 'cam'}/")
    print(f"  CAM report        {RESULTS / 'cam' / 'index.html'}   (open it in a browser)")
    print(f"  metrics           {RESULTS / 'metrics.json'}")
    print(f"  top-1 accuracy {metrics['accuracy']:.3f}, top-1 localization {metrics['loc_accuracy']:.3f}, "
          f"GT-known localization {metrics['gt_known_loc_accuracy']:.3f}, wall time {metrics['wall_seconds']:.0f}s")


if __name__ == "__main__":
    main()
