"""cam.py, eval_loc.py, extract_features.py, train.py, net_summary.py, make_cam_net.py and bench.py answer --help and
refuse a bad option without importing torch (which takes over a second): each runs here with `torch` made
unimportable."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NO_TORCH = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = [sys.argv[1]] + sys.argv[2:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")


def run_without_torch(script, *args):
    return subprocess.run([sys.executable, "-c", NO_TORCH, str(ROOT / "scripts" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("script,option", [("cam.py", "--model"), ("eval_loc.py", "--model"),
                                           ("extract_features.py", "--model"), ("train.py", "--solver"),
                                           ("net_summary.py", "--phase"), ("make_cam_net.py", "--base"),
                                           ("bench.py", "--only")])
def test_help_without_torch(script, option):
    out = run_without_torch(script, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: {script}") and option in out.stdout


@pytest.mark.parametrize("script,args,message", [
    ("cam.py", ["photo.jpg"], "give --model DEPLOY.prototxt and --weights W.caffemodel"),
    ("eval_loc.py", ["--list", "l.txt", "--boxes", "b.csv", "--model", "m", "--weights", "w", "--batch-size", "0"],
     "--batch-size 0: must be at least 1"),
    ("extract_features.py", ["--model", "m", "--weights", "w", "--blobs", "fc", "--out", "f.npz", "--batch-size", "0",
                             "x.jpg"],
     "--batch-size 0: must be at least 1"),
    ("train.py", ["--weights", "w.caffemodel"], "the following arguments are required: --solver"),
    ("net_summary.py", ["n.prototxt", "--phase", "VAL"], "argument --phase: invalid choice: 'VAL'"),
    ("make_cam_net.py", ["--base", "b.prototxt"], "the following arguments are required: --cut, --classes, --out"),
    ("bench.py", ["--only", "zoo,nope"], "--only zoo,nope: unknown section 'nope'"),
])
def test_option_errors_without_torch(script, args, message):
    out = run_without_torch(script, *args)
    assert out.returncode != 0
    assert message in out.stderr and "Traceback" not in out.stderr
