"""scripts/plot_curves.py on logs the tests write: PNG, CSV values, the latest-log lookup and its error messages."""

import datetime as dt
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from caffecam.train.log import CaffeLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import plot_curves  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "plot_curves.py"


def write_log(path, scale=1.0, nan_at=40):
    """Iterations 0..80 every 20, tests every 40, lr 0.01 then 0.001 from 60; one line per second."""
    state = {"t": dt.datetime(2024, 4, 11, 9, 0, 0)}

    def clock():
        state["t"] += dt.timedelta(seconds=1)
        return state["t"]

    with CaffeLogger(path, stream=None, clock=clock) as lg:
        lg.solving("GoogLeNet-CAM")
        lg.lr_policy("step")
        for it in range(0, 81, 20):
            if it % 40 == 0:
                lg.testing(it)
                lg.test_output(0, "loss3/loss3", scale * (3 - it / 40), loss_weight=1)
                lg.test_output(1, "loss3/top-1", 0.25 + it / 400)
                lg.test_output(2, "loss3/top-5", 0.5 + it / 400)
            loss = math.nan if it == nan_at else scale * (3.5 - it / 40)
            lg.iteration(it, loss, iters_per_s=2, secs_per_display=10, display=20)
            lg.train_output(0, "loss3/loss3", loss, loss_weight=1)
            lg.lr(it, 0.01 if it < 60 else 0.001)
        lg.done()
    return path


def check_png(path):
    img = cv2.imread(str(path))
    assert img is not None, f"{path} does not decode"
    h, w, c = img.shape
    assert c == 3 and 600 <= h <= 3000 and 600 <= w <= 3000
    assert img.std() > 10  # not a blank canvas
    return img


def test_plot_and_csv_exact(tmp_path, capsys):
    log = write_log(tmp_path / "run" / "train.log")
    out, prefix = tmp_path / "res" / "curves.png", tmp_path / "res" / "run"
    plot_curves.main([str(log), "--out", str(out), "--csv", str(prefix)])
    check_png(out)
    # One line per second: Solving at 1 s, policy 2; a test block is 4 lines (Testing + 3 outputs), a train
    # block 3 (Iteration, output, lr). Rows take the time of their first output line, counted from Solving:
    # test 0 at 4-1, train 0 at 8-1, train 20 at 11-1, test 40 at 14-1, train 40 at 18-1, train 60 at 21-1, ...
    assert Path(f"{prefix}.train.csv").read_text() == (
        "NumIters,Seconds,LearningRate,loss3/loss3\n"
        "0,7.0,0.01,3.5\n"
        "20,10.0,0.01,3.0\n"
        "40,17.0,0.01,nan\n"
        "60,20.0,0.001,2.0\n"
        "80,27.0,0.001,1.5\n")
    assert Path(f"{prefix}.test.csv").read_text() == (
        "NumIters,Seconds,LearningRate,loss3/loss3,loss3/top-1,loss3/top-5\n"
        "0,3.0,0.01,3.0,0.25,0.5\n"
        "40,13.0,0.01,2.0,0.35,0.6\n"
        "80,23.0,0.001,1.0,0.45,0.7\n")
    assert f"wrote {out}" in capsys.readouterr().out


def test_figure_overlays_logs_and_skips_nan(tmp_path):
    a = write_log(tmp_path / "a" / "train.log")
    b = write_log(tmp_path / "b" / "train.log", scale=2.0, nan_at=None)
    labels = plot_curves.unique_labels([a, b])
    assert labels == ["a/train.log", "b/train.log"]
    fig = plot_curves.build_figure([(lb, plot_curves.parse_log(p)) for lb, p in zip(labels, [a, b])], smooth=2)
    ax_loss, ax_acc, ax_lr = fig.axes
    legend = [t.get_text() for t in ax_loss.get_legend().get_texts()]
    assert "a/train.log: train loss (raw)" in legend and "b/train.log: test loss" in legend
    assert "b/train.log: train loss (smoothed, 2 pts)" in legend
    raw_a = next(ln for ln in ax_loss.get_lines() if ln.get_label() == "a/train.log: train loss (raw)")
    assert list(raw_a.get_xdata()) == [0, 20, 60, 80]  # nan at 40 skipped
    smooth_b = next(ln for ln in ax_loss.get_lines() if ln.get_label() == "b/train.log: train loss (smoothed, 2 pts)")
    # trailing 2-point mean of the logged 7, 6, 5, 4, 3
    np.testing.assert_allclose(smooth_b.get_ydata(), [7.0, 6.5, 5.5, 4.5, 3.5])
    acc = sorted(ln.get_label() for ln in ax_acc.get_lines())
    assert acc == ["a/train.log: loss3/top-1", "a/train.log: loss3/top-5",
                   "b/train.log: loss3/top-1", "b/train.log: loss3/top-5"]
    assert ax_lr.get_yscale() == "log" and ax_acc.get_ylim() == (0, 1)
    png = tmp_path / "cmp.png"
    plot_curves.main([str(a), str(b), "--out", str(png)])
    check_png(png)


def test_default_reads_newest_log(tmp_path, capsys):
    snaps = tmp_path / "snapshots"
    old = write_log(snaps / "old" / "train.log")
    new = write_log(snaps / "cam" / "deep" / "train.log")
    os.utime(old, (1_700_000_000, 1_700_000_000))
    os.utime(new, (1_700_000_100, 1_700_000_100))
    out = tmp_path / "curves.png"
    plot_curves.main(["--snapshots", str(snaps), "--out", str(out)])
    assert f"reading the latest training log: {new}" in capsys.readouterr().out
    check_png(out)


def test_no_log_messages(tmp_path, capsys):
    (tmp_path / "snapshots" / "cam").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        plot_curves.main(["--snapshots", str(tmp_path / "snapshots"), "--out", str(tmp_path / "c.png")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1
    assert f"looked for {tmp_path / 'snapshots'}/**/*.log" in err and "make train" in err

    empty = tmp_path / "empty.log"
    empty.write_text("I0411 09:00:00.000000  1234 caffe.cpp:1] Using GPUs 0\nI0411 09:00:01.000000  1234 solver.cpp:"
                     "279] Solving GoogLeNet-CAM\n")
    with pytest.raises(SystemExit) as e:
        plot_curves.main([str(empty), "--out", str(tmp_path / "c.png")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "no iterations found in 2 lines" in err and str(empty) in err

    allnan = tmp_path / "nan.log"
    allnan.write_text("I0411 09:00:01.000000  1234 solver.cpp:279] Solving n\n"
                      "I0411 09:00:02.000000  1234 solver.cpp:228] Iteration 0, loss = nan\n")
    with pytest.raises(SystemExit):
        plot_curves.main([str(allnan), "--out", str(tmp_path / "c.png")])
    assert "nothing to plot" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()
    with pytest.raises(SystemExit) as e:  # checked before any work, not a traceback at the end
        plot_curves.main([str(allnan), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err == f"error: --out {tmp_path}: is a folder; give a file name such as " \
                                        f"{tmp_path / 'curves.png'}\n"


def test_cli_as_users_run_it(tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "--csv PREFIX" in r.stdout and "--smooth N" in r.stdout
    r = subprocess.run([sys.executable, str(SCRIPT), "--snapshots", str(tmp_path / "none")], cwd=tmp_path,
                       capture_output=True, text=True, env=env)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    write_log(tmp_path / "snapshots" / "cam" / "train.log")
    r = subprocess.run([sys.executable, str(SCRIPT), "--snapshots", str(tmp_path / "snapshots")], cwd=tmp_path,
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    check_png(tmp_path / "results" / "curves.png")
