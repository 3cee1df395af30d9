"""Plot learning curves (training loss, test loss, test accuracy, learning rate) from Caffe training logs."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import io
import math
import re

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from caffecam.atomic import atomic_write_bytes
from caffecam.errors import CaffeCamError, main_guard  # noqa: E402
from caffecam.train.log import parse_log, write_csv

REPO = Path(__file__).resolve().parents[1]
ACCURACY_RX = re.compile(r"acc|top-?\d", re.I)
STYLES = ("-", "--", ":", "-.")


def find_latest_log(snapshots):
    """The newest *.log (the solver writes <snapshot_prefix folder>/train.log) anywhere under `snapshots`."""
    snapshots = Path(snapshots)
    logs = [p for p in snapshots.glob("**/*.log") if p.is_file()] if snapshots.is_dir() else []
    if not logs:
        raise CaffeCamError(f"{snapshots}: no training log found (looked for {snapshots}/**/*.log, which `make train` "
                            "writes next to its snapshots); run `make train` first, or name a log: "
                            "scripts/plot_curves.py path/to/train.log")
    return max(logs, key=lambda p: p.stat().st_mtime)


def unique_labels(paths):
    """File names for the legend; parent folders are added where names collide (every run writes train.log)."""
    paths = [Path(p) for p in paths]
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def moving_average(values, n):
    """Trailing mean over the last n points, ignoring non-finite ones (nan where a window has none)."""
    out = []
    for i in range(len(values)):
        window = [v for v in values[max(0, i - n + 1):i + 1] if math.isfinite(v)]
        out.append(sum(window) / len(window) if window else math.nan)
    return out


def is_loss(name, parsed):
    if name in parsed.loss_weights:
        return True
    return not parsed.loss_weights and "loss" in name.lower() and not ACCURACY_RX.search(name)


def _plot(ax, xs, ys, **kw):
    """Plot the finite points only; returns how many were plotted."""
    pts = [(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], **kw)
    return len(pts)


def build_figure(logs, smooth=None):
    """logs: list of (label, ParsedLog). One figure, three panels sharing the iteration axis."""
    fig = Figure(figsize=(11, 10), dpi=100, layout="constrained")
    ax_loss, ax_acc, ax_lr = fig.subplots(3, 1, sharex=True, height_ratios=(3, 2, 1.3))
    plotted = 0
    for k, (label, p) in enumerate(logs):
        color = f"C{k % 10}"
        it, loss = p.series("loss", None)
        raw = [n for n in p.train_names if is_loss(n, p)]
        for j, name in enumerate(raw):
            tag = "train loss (raw)" if len(raw) == 1 else f"train {name} (raw)"
            plotted += _plot(ax_loss, *p.series("train", name), color=color, alpha=0.35, lw=0.8,
                             ls=STYLES[j % 4], label=f"{label}: {tag}")
        n = smooth if smooth else max(1, round(len(loss) / 25))
        if raw or n > 1:
            tag = "train loss (smoothed" + (f", {n} pts)" if n > 1 else ")")
            plotted += _plot(ax_loss, it, moving_average(loss, n), color=color, lw=1.8, label=f"{label}: {tag}")
        else:
            plotted += _plot(ax_loss, it, loss, color=color, lw=1.5, label=f"{label}: train loss")
        tests = [n for n in p.test_names if is_loss(n, p)]
        for j, name in enumerate(tests):
            tag = "test loss" if len(tests) == 1 else f"test {name}"
            plotted += _plot(ax_loss, *p.series("test", name), color=color, marker="o", ms=4, lw=1.2,
                             ls=STYLES[(j + 1) % 4], label=f"{label}: {tag}")
        metrics = [n for n in p.test_names if not is_loss(n, p)]
        for j, name in enumerate(metrics):
            plotted += _plot(ax_acc, *p.series("test", name), color=color, marker="o", ms=4, ls=STYLES[j % 4],
                             label=f"{label}: {name}")
        lr_it, lr = p.series("lr", None)
        pts = [(x, y) for x, y in zip(lr_it, lr) if math.isfinite(y)]
        if pts:
            ax_lr.step([x for x, _ in pts], [y for _, y in pts], where="post", color=color, label=label)
    if not plotted:
        raise CaffeCamError(f"{', '.join(lb for lb, _ in logs)}: nothing to plot (every loss and accuracy is nan)")
    lr_vals = [y for line in ax_lr.get_lines() for y in line.get_ydata()]
    if lr_vals and min(lr_vals) > 0:
        ax_lr.set_yscale("log")
    if not lr_vals:
        ax_lr.text(0.5, 0.5, "no learning rate logged", ha="center", va="center", transform=ax_lr.transAxes)
    acc_vals = [y for line in ax_acc.get_lines() for y in line.get_ydata()]
    if acc_vals and 0 <= min(acc_vals) and max(acc_vals) <= 1:
        ax_acc.set_ylim(0, 1)
    if not acc_vals:
        ax_acc.text(0.5, 0.5, "no test accuracy logged", ha="center", va="center", transform=ax_acc.transAxes)
    for ax, title in ((ax_loss, "loss"), (ax_acc, "test accuracy"), (ax_lr, "learning rate")):
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="best")
    ax_lr.set_xlabel("iteration")
    names = sorted({p.net_name for _, p in logs if p.net_name})
    fig.suptitle(("Learning curves: " + ", ".join(names)) if names else "Learning curves")
    return fig


def render_png(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def build_parser():
    p = argparse.ArgumentParser(
        description="Plot training loss (raw and smoothed), test loss, test accuracy and learning rate against\n"
                    "iteration from Caffe training logs: ours (scripts/train.py) and real Caffe's (both the\n"
                    "`Iteration N (x iter/s, ...), loss = L` and the older `Iteration N, loss = L` forms).\n"
                    "Several logs are overlaid, labelled by file name.",
        epilog="examples:\n  scripts/plot_curves.py                      # the latest `make train` log\n"
               "  scripts/plot_curves.py run1/train.log caffe.INFO --out results/compare.png\n"
               "  scripts/plot_curves.py train.log --csv results/train   # also results/train.{train,test}.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="*", metavar="LOG",
                   help="training log(s); default: the newest *.log under the snapshots folder")
    p.add_argument("--out", default="results/curves.png", help="PNG to write (default: results/curves.png)")
    p.add_argument("--csv", metavar="PREFIX",
                   help="also write PREFIX.train.csv and PREFIX.test.csv (NumIters,Seconds,LearningRate,<outputs>, "
                        "as Caffe's parse_log.py); with several logs PREFIX.<log name>.train.csv, ...")
    p.add_argument("--smooth", type=int, metavar="N",
                   help="moving average over N logged points for the smoothed training loss "
                        "(default: about 1/25 of the points)")
    p.add_argument("--snapshots", default=str(REPO / "snapshots"), metavar="DIR",
                   help="where to look for the latest log when no LOG is given (default: the repo's snapshots/)")
    return p


@main_guard
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.smooth is not None and args.smooth < 1:
        raise CaffeCamError(f"--smooth {args.smooth}: the window must be at least 1 point")
    if Path(args.out).is_dir():
        raise CaffeCamError(f"--out {args.out}: is a folder; give a file name such as {Path(args.out) / 'curves.png'}")
    paths = [Path(p) for p in args.logs]
    if not paths:
        paths = [find_latest_log(args.snapshots)]
        print(f"reading the latest training log: {paths[0]}")
    labels = unique_labels(paths)
    logs = []
    for path, label in zip(paths, labels):
        parsed = parse_log(path)
        for w in parsed.warnings:
            print(f"warning: {w}", file=sys.stderr)
        if parsed.empty:
            raise CaffeCamError(f"{path}: no iterations found in {parsed.lines} lines: nothing to plot (expected "
                                "Caffe log lines such as `I0411 20:19:03.141291  9236 solver.cpp:237] Iteration 40, "
                                "loss = 2.31`; has training reached its first display?)")
        logs.append((label, parsed))
    if args.csv:
        for label, parsed in logs:
            prefix = args.csv if len(logs) == 1 else f"{args.csv}.{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}"
            for written in write_csv(parsed, prefix):
                print(f"wrote {written}")
    fig = build_figure(logs, args.smooth)
    atomic_write_bytes(args.out, render_png(fig))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
