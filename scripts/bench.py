"""`make bench`: training, inference, CAM and data-loader speed against the real peers measured in the same run (real
Caffe where CAFFE_REF names a build, OpenCV 4's DNN module from .venv-cv4), the machine's peak convolution
throughput beside every figure, how cost grows with the batch, training-step memory and the CAM report page, in one
report (caffecam/bench/: suite.py runs the sections, text.py words them)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import math
import tempfile
from dataclasses import asdict

from caffecam.bench.sections import SECTIONS
from caffecam.errors import CaffeCamError, main_guard


def _finite(obj):
    """JSON cannot hold NaN/inf: such a value becomes null."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def build_parser():
    p = argparse.ArgumentParser(
        description="Measure, side by side in one run (medians of interleaved rounds):\n"
                    "  peak      this CPU's peak convolution GFLOP/s (3x3 and 1x1, fp32 and bf16); every net figure "
                    "is also a share of it\n"
                    "  train     GoogLeNet-CAM training images/s (contiguous, channels_last, direct convolutions; GPU "
                    "when present)\n"
                    "  train_vs_caffe  `caffe train` against train.py (fp32 and --bf16) on one train_val, batch and "
                    "JPEG set\n"
                    "  zoo       ResNet-50 and GoogLeNet-CAM inference at batch 16 against OpenCV 4 DNN and `caffe "
                    "time`\n"
                    "  scaling   training and inference at batch 1, 8, 32; CAM end to end at 1, 16, 64 images\n"
                    "  and memory, pipeline, inference, cam (against torchcam), end_to_end, loader, report (the "
                    "CAM report page in Chromium).",
        epilog="The full run takes about 6 minutes on a quiet 2-core CPU. Peers: real Caffe when CAFFE_REF names a "
               "build "
               "(source\n/work/caffe-ref/env.sh), else its ratios are n/a and a note says so; OpenCV 4 from .venv-cv4 "
               "(`make bench`\ncreates it from requirements-bench-cv4.txt). torchcam comes from requirements.txt; "
               "without Chromium\n(apt-get install chromium chromium-driver) the page's times are null.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny nets and batches, seconds (for the tests)")
    p.add_argument("--only", metavar="SECTIONS",
                   help=f"comma-separated sections to run (of: {', '.join(s for s in SECTIONS if s != 'data')}); "
                        "the data and the peak they need run too")
    p.add_argument("--out", default="results/bench.json",
                   help="JSON report (default %(default)s); the markdown page goes beside it as .md")
    p.add_argument("--cpu", action="store_true", help="measure on the CPU even when a GPU is available")
    return p


def parse_only(text):
    if text is None:
        return None
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise CaffeCamError(f"--only {text}: unknown section '{unknown[0] if unknown else ''}'; choose from "
                            f"{', '.join(s for s in SECTIONS if s != 'data')}")
    return names


@main_guard
def check_options(argv):
    parse_only(build_parser().parse_args(argv).only)


if __name__ == "__main__":  # --help and option errors answer before torch loads (over a second)
    check_options(sys.argv[1:])

import torch

from caffecam.allocator import keep_freed_memory
from caffecam.atomic import atomic_write_bytes
from caffecam.bench.suite import FULL, QUICK, Bench, environment
from caffecam.bench.text import report_markdown, report_text


@main_guard
def main(argv=None):
    args = build_parser().parse_args(argv)
    only = parse_only(args.only)
    keep_freed_memory()  # as the training and CAM scripts do
    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise CaffeCamError(f"--out {out}: is a folder; give a file name such as results/bench.json")
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    plan = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="caffecam-bench-") as work:
        b = Bench(plan, device, work)
        result = {"quick": args.quick, "only": only, "environment": environment(device, b.torchcam),
                  "plan": asdict(plan)}
        result.update(b.all(only))
    result = _finite(result)
    text = report_text(result)
    print(text)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, (json.dumps(result, indent=1) + "\n").encode())
        atomic_write_bytes(out.with_suffix(".md"), report_markdown(result).encode())
    except OSError as exc:
        raise CaffeCamError(f"--out {out}: cannot write the report ({exc})") from None
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
