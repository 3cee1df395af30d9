"""The real peers `make bench` runs side by side with ours, as subprocesses on the same files: real Caffe (`caffe
train`, `caffe time`) where CAFFE_REF names a build, and OpenCV 4's DNN module from the bench-only environment
.venv-cv4 (bench/cv4_dnn.py). Where a peer is missing or fails, its figures are None and `why` says so: no
constant from another machine ever stands in for a measurement.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
CV4_SCRIPT = Path(__file__).with_name("cv4_dnn.py")
# Caffe's solver.cpp and our train log: `Iteration N (X iter/s, Ys/D iters), loss = L`
ITERATION = re.compile(r"Iteration (\d+) \(([0-9.eE+-]+) iter/s")
FORWARD = re.compile(r"Average Forward pass: ([0-9.eE+-]+) ms")


class PeerError(Exception):
    """A peer could not be measured; the message says why in one line."""


def caffe_tool():
    """(real Caffe's `caffe` tool, None), or (None, why) when CAFFE_REF names no build."""
    ref = os.environ.get("CAFFE_REF")
    if not ref:
        return None, ("CAFFE_REF is not set, so the Caffe ratios were not measured (source a real Caffe build's "
                      "env.sh, e.g. /work/caffe-ref/env.sh; shared/tools/build-reference-caffe.sh makes one)")
    tool = Path(ref) / "src" / "build" / "tools" / "caffe"
    if not os.access(tool, os.X_OK):
        return None, f"CAFFE_REF={ref} has no executable {tool}, so the Caffe ratios were not measured"
    return tool, None


def cv4_python():
    """(the bench-only environment's Python, None), or (None, why)."""
    python = Path(os.environ.get("CAFFECAM_CV4_PYTHON", REPO / ".venv-cv4" / "bin" / "python"))
    if not python.exists():
        return None, (f"{python} is missing, so the OpenCV 4 DNN figures were not measured (`make bench` creates "
                      "it from requirements-bench-cv4.txt)")
    return python, None


def _run(cmd, cwd, timeout, what, env=None):
    try:
        out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        raise PeerError(f"{what} took over {timeout:.0f} s") from None
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no message"])[-1]
        raise PeerError(f"{what} failed (exit {out.returncode}): {last[:300]}")
    return out.stdout + out.stderr


def _caffe_env(tool):
    env = dict(os.environ, GLOG_minloglevel="0", GLOG_logtostderr="1")  # the per-iteration lines are INFO
    lib = str(Path(tool).parents[1] / "lib")
    env["LD_LIBRARY_PATH"] = lib + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env


def caffe_forward_s(tool, prototxt, weights, iterations, cwd, timeout=900):
    """`caffe time` on a deploy net: its "Average Forward pass" in seconds (a batch, Caffe's own timer)."""
    text = _run([tool, "time", "-model", prototxt, "-weights", weights, "-iterations", iterations], cwd, timeout,
                "caffe time", _caffe_env(tool))
    found = FORWARD.search(text)
    if not found:
        raise PeerError("caffe time printed no 'Average Forward pass' line")
    return float(found.group(1)) / 1000


def iteration_speeds(log_text, warmup):
    """iter/s of each display line after iteration `warmup` (display: 1 gives one per iteration)."""
    speeds = [float(s) for it, s in ITERATION.findall(log_text) if int(it) > warmup]
    if not speeds:
        raise PeerError(f"no 'Iteration N (X iter/s' line after iteration {warmup} in the log")
    return speeds


def caffe_train_speeds(tool, solver, cwd, warmup, timeout=1800):
    """`caffe train -solver S`: iterations/s of each iteration after the warm-up ones."""
    text = _run([tool, "train", "-solver", solver], cwd, timeout, "caffe train", _caffe_env(tool))
    return iteration_speeds(text, warmup)


def ours_train_speeds(solver, cwd, warmup, bf16=False, timeout=1800):
    """scripts/train.py on the same solver: iterations/s of each iteration after the warm-up ones."""
    cmd = [sys.executable, REPO / "scripts" / "train.py", "--solver", solver, "--cpu"] + (["--bf16"] if bf16 else [])
    env = dict(os.environ, PYTHONPATH=str(REPO))
    text = _run(cmd, cwd, timeout, "scripts/train.py" + (" --bf16" if bf16 else ""), env)
    return iteration_speeds(text, warmup)


class Cv4Server:
    """OpenCV 4 DNN kept running (cv4_dnn.py --serve) so that its forwards interleave with ours: `figures` and
    `output` after start, then each call runs one forward there and returns once it is done."""

    def __init__(self, python, prototxt, weights, x, blob, work, timeout=900):
        work = Path(work)
        work.mkdir(parents=True, exist_ok=True)
        np.save(work / "cv4_input.npy", np.ascontiguousarray(x, np.float32))
        cmd = [str(c) for c in (python, CV4_SCRIPT, prototxt, weights, work / "cv4_input.npy",
                                work / "cv4_output.npy", "--blob", blob, "--serve")]
        self.proc = subprocess.Popen(cmd, cwd=work, env=dict(os.environ, PYTHONPATH=""), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.figures = json.loads(self._answer("OpenCV 4 DNN failed to load the net"))
        self.output = np.load(work / "cv4_output.npy")

    def _answer(self, what):
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            last = (self.proc.stderr.read().strip().splitlines() or ["no message"])[-1]
            raise PeerError(f"{what} (exit {self.proc.returncode}): {last[:300]}")
        return line

    def __call__(self):
        self.proc.stdin.write("forward\n")
        self.proc.stdin.flush()
        return float(self._answer("OpenCV 4 DNN stopped"))

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def max_rel_diff(a, b):
    """max |a − b| / max |b| (the agreement check before timing)."""
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))
