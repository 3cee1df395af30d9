"""Caffe's training log: a writer of glog lines in Caffe's message forms, and a parser of ours and real Caffe's logs.

The message forms and their order are those of Caffe's solver.cpp / sgd_solver.cpp (see shared/caffe-format.md §3),
so that Caffe's own tools/extra/parse_log.py reads our logs and we read logs written by real Caffe.
"""

import bisect
import csv
import datetime as _dt
import io
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from caffecam.atomic import atomic_write_bytes
from caffecam.errors import CaffeCamError


def fmt_num(x):
    """A number as C++ `std::ostream << x` prints it with default flags: %g with 6 significant digits."""
    return str(int(x)) if isinstance(x, int) else f"{float(x):g}"


# Source locations as in Caffe 1.0's logs; cosmetic (no reader depends on them).
SRC = {
    "solving": "solver.cpp:279", "policy": "solver.cpp:280", "restore": "solver.cpp:290",
    "testing": "solver.cpp:330", "test_out": "solver.cpp:397", "iteration": "solver.cpp:218",
    "train_out": "solver.cpp:237", "lr": "sgd_solver.cpp:105", "snapshot": "solver.cpp:447",
    "state": "sgd_solver.cpp:273", "final": "solver.cpp:310", "done": "solver.cpp:315", "early": "solver.cpp:305",
}


class CaffeLogger:
    """Writes glog-style lines `Immdd hh:mm:ss.uuuuuu  PID file:line] message` to a stream and a log file.

    stream: a file-like object (default: sys.stderr as it is at each write), a callable taking a line without
    its newline (e.g. tqdm.write, so lines do not tear a progress bar), or None for the file only. The file is
    opened for append, line-buffered and flushed after every line: a crash loses nothing, `tail -f` shows progress.
    year=True writes the newer glog prefix `I20261124 12:59:13.336908` (Caffe's parse_log.py cannot read it).
    clock: a callable returning a datetime (tests); default datetime.now.
    """

    def __init__(self, log_path=None, stream="stderr", year=False, clock=None):
        self.log_path = Path(log_path) if log_path is not None else None
        self.stream = stream
        self.year = year
        self._clock = clock or _dt.datetime.now
        self._file = None
        if self.log_path is not None:
            try:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.log_path, "a", buffering=1, encoding="utf-8")
            except OSError as exc:
                raise CaffeCamError(f"{self.log_path}: cannot open the training log for writing ({exc}); "
                                    "check the snapshot_prefix folder is writable") from exc

    def _prefix(self, severity, src):
        now = self._clock()
        date = now.strftime("%Y%m%d" if self.year else "%m%d")
        # glog prints the thread id with setw(5) (a minimum width); for the main thread it is the pid
        return f"{severity}{date} {now:%H:%M:%S}.{now.microsecond:06d} {os.getpid():5d} {src}] "

    def log(self, severity, msg, src):
        line = self._prefix(severity, src) + msg
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()
        stream = sys.stderr if isinstance(self.stream, str) and self.stream == "stderr" else self.stream
        if stream is not None:
            if callable(stream) and not hasattr(stream, "write"):
                stream(line)
            else:
                stream.write(line + "\n")
                stream.flush()
        return line

    def info(self, msg, src="solver.cpp:100"):
        return self.log("I", msg, src)

    def warning(self, msg, src="solver.cpp:100"):
        return self.log("W", msg, src)

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- Caffe's messages, in the order the solver emits them -----------------------------------------------
    def solving(self, net_name):
        return self.info(f"Solving {net_name}", SRC["solving"])

    def lr_policy(self, policy):
        return self.info(f"Learning Rate Policy: {policy}", SRC["policy"])

    def restoring(self, path):
        return self.info(f"Restoring previous solver status from {path}", SRC["restore"])

    def testing(self, iteration, test_net_id=0):
        return self.info(f"Iteration {int(iteration)}, Testing net (#{int(test_net_id)})", SRC["testing"])

    @staticmethod
    def _output(kind, i, name, value, loss_weight):
        msg = f"    {kind} net output #{int(i)}: {name} = {fmt_num(value)}"
        if loss_weight:
            msg += f" (* {fmt_num(loss_weight)} = {fmt_num(loss_weight * value)} loss)"
        return msg

    def test_output(self, i, name, value, loss_weight=0):
        return self.info(self._output("Test", i, name, value, loss_weight), SRC["test_out"])

    def iteration(self, iteration, loss, iters_per_s=None, secs_per_display=None, display=None):
        """`Iteration N (X iter/s, Ys/D iters), loss = L`, or without timing `Iteration N, loss = L`
        (the older form, and the one Caffe uses for the extra forward pass after the last update)."""
        timing = (iters_per_s, secs_per_display, display)
        if all(t is None for t in timing):
            return self.info(f"Iteration {int(iteration)}, loss = {fmt_num(loss)}", SRC["final"])
        if any(t is None for t in timing):
            raise ValueError("iteration(): give all of iters_per_s, secs_per_display, display or none")
        return self.info(f"Iteration {int(iteration)} ({fmt_num(iters_per_s)} iter/s, {fmt_num(secs_per_display)}s/"
                         f"{int(display)} iters), loss = {fmt_num(loss)}", SRC["iteration"])

    def train_output(self, i, name, value, loss_weight=0):
        return self.info(self._output("Train", i, name, value, loss_weight), SRC["train_out"])

    def lr(self, iteration, rate):
        return self.info(f"Iteration {int(iteration)}, lr = {fmt_num(rate)}", SRC["lr"])

    def snapshot(self, path):
        return self.info(f"Snapshotting to binary proto file {path}", SRC["snapshot"])

    def solver_state(self, path):
        return self.info(f"Snapshotting solver state to binary proto file {path}", SRC["state"])

    def stopped_early(self):
        return self.info("Optimization stopped early.", SRC["early"])

    def done(self):
        return self.info("Optimization Done.", SRC["done"])


# -- parser ---------------------------------------------------------------------------------------------------------
_VAL = r"[-+]?(?:nan|inf(?:inity)?|\d+\.?\d*(?:e[-+]?\d+)?|\.\d+(?:e[-+]?\d+)?)"
_PREFIX = re.compile(r"([IWEF])(\d{8}|\d{4}) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?\s+\d+ [^\]\s]*\] ?(.*)")
_MESSAGES = [
    ("solving", re.compile(r"Solving (.*)")),
    ("policy", re.compile(r"Learning Rate Policy: (\S+)")),
    ("testing", re.compile(r"Iteration (\d+), Testing net \(#(\d+)\)")),
    ("output", re.compile(rf"(Train|Test) net output #(\d+): (\S+) = ({_VAL})(?: \(\* ({_VAL}) = {_VAL} loss\))?",
                          re.I)),
    ("loss", re.compile(rf"Iteration (\d+)(?: \(({_VAL}) iter/s, ({_VAL})s/(\d+) iters\))?, loss = ({_VAL})", re.I)),
    ("lr", re.compile(rf"Iteration (\d+), lr = ({_VAL})", re.I)),
    ("iter", re.compile(r".*\bIteration (\d+)\b")),
]


@dataclass
class Row:
    """One CSV row: the outputs logged for one iteration (one Train block, or one Test net's block)."""

    iter: int
    seconds: float
    lr: float
    values: dict
    test_net: int = 0
    run: int = 0
    line: int = 0
    last_index: int = field(default=-1, repr=False)

    def as_dict(self):
        return {"NumIters": self.iter, "Seconds": self.seconds, "LearningRate": self.lr, **self.values}


@dataclass
class ParsedLog:
    """What parse_log found. train/test: Rows; loss: (iter, seconds, smoothed loss) of the `Iteration N ..., loss =`
    lines; lrs: (iter, seconds, lr); *_names: output names in order of first appearance; loss_weights: name ->
    the W of `(* W = ... loss)` for outputs logged as losses."""

    source: str = ""
    train: list = field(default_factory=list)
    test: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    lrs: list = field(default_factory=list)
    train_names: list = field(default_factory=list)
    test_names: list = field(default_factory=list)
    loss_weights: dict = field(default_factory=dict)
    net_name: str = ""
    lr_policy: str = ""
    runs: int = 0
    done: bool = False
    lines: int = 0
    warnings: list = field(default_factory=list)

    @property
    def empty(self):
        return not (self.train or self.test or self.loss)

    def series(self, kind, name):
        """(iterations, values) of one output ('train' / 'test'), of 'loss' (the smoothed loss) or 'lr'."""
        if kind in ("loss", "lr"):
            pts = self.loss if kind == "loss" else self.lrs
            return [p[0] for p in pts], [p[2] for p in pts]
        rows = [r for r in (self.train if kind == "train" else self.test) if name in r.values]
        return [r.iter for r in rows], [r.values[name] for r in rows]


class _Clock:
    """Turns glog prefixes into datetimes. The short prefix has no year: a month going backwards means a new year."""

    def __init__(self):
        self.year, self.last_month = 2000, None

    def __call__(self, date, hh, mm, ss, frac):
        year, month, day = (int(date[:4]), int(date[4:6]), int(date[6:])) if len(date) == 8 else \
            (None, int(date[:2]), int(date[2:]))
        if not (1 <= month <= 12 and 1 <= day <= 31):
            return None  # not a date: not a glog line
        if year is None:
            if self.last_month is not None and month < self.last_month:
                self.year += 1
            year = self.year
            if (month, day) == (2, 29) and year % 4:
                month, day = 3, 1  # 29 Feb in a guessed year that has none
        micro = int((frac or "0").ljust(6, "0"))
        try:
            t = _dt.datetime(year, month, day, int(hh), int(mm), int(ss), micro)
        except ValueError:
            return None
        self.last_month = month
        return t


def _read_lines(path_or_lines):
    if isinstance(path_or_lines, (str, os.PathLike)):
        try:
            with open(path_or_lines, encoding="utf-8", errors="replace", newline="") as f:
                pieces = f.read().split("\n")  # only \n ends a line; a progress bar's \r does not
            lines = [p + "\n" for p in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
            return str(path_or_lines), lines
        except OSError as exc:
            raise CaffeCamError(f"{path_or_lines}: cannot read the training log ({exc.strerror})") from exc
    return "<lines>", list(path_or_lines)


def parse_log(path_or_lines, lr_mode="iteration"):
    """Parse a Caffe training log (a path, or an iterable of lines) written by us or by real Caffe.

    Seconds count from the run's `Solving` line. Several runs in one file (resumes append to the log): a run that
    starts at iteration s replaces what earlier runs logged for iterations >= s, and its seconds continue from
    the last kept time (downtime between runs is not counted). A last line without its newline is a line cut off
    while being written and is ignored. nan/inf values are kept as floats.
    lr_mode: 'iteration' gives each row the lr logged for that iteration (Caffe logs `Iteration N, lr` after the
    outputs of N), else the latest earlier one; 'parse_log' reproduces Caffe's parse_log.py, which takes the last
    lr seen before the row, i.e. one display interval late, and copies the second row's lr into the first row.
    """
    if lr_mode not in ("iteration", "parse_log"):
        raise ValueError(f"lr_mode must be 'iteration' or 'parse_log', not {lr_mode!r}")
    source, lines = _read_lines(path_or_lines)
    out = ParsedLog(source=source, lines=len(lines))
    if lines and any(ln.endswith("\n") for ln in lines) and not lines[-1].endswith(("\n", "\r")):
        out.warnings.append(f"{source}:{len(lines)}: last line is incomplete (cut off while written); ignored")
        lines = lines[:-1]
    clock = _Clock()
    st = {"start": None, "iter": -1, "run": -1, "test_net": 0, "train": None, "test": None}
    lr_events = []
    for lineno, raw in enumerate(lines, 1):
        m = _PREFIX.match(raw.rstrip("\r\n").rsplit("\r", 1)[-1])  # text after a progress bar's last \r
        t = clock(*m.group(2, 3, 4, 5, 6)) if m else None
        if t is not None:
            _parse_message(out, st, lr_events, t, m.group(7).strip(), lineno)
    out.runs = st["run"] + 1
    _merge_runs(out, lr_events)
    _assign_lr(out.train, lr_events, lr_mode)
    _assign_lr(out.test, lr_events, lr_mode)
    out.lrs = [(e.iter, e.seconds, e.value) for e in lr_events]
    out.loss = [(e.iter, e.seconds, e.value) for e in out.loss]
    return out


@dataclass
class _Event:
    iter: int
    seconds: float
    value: float
    run: int
    line: int


def _parse_message(out, st, lr_events, t, msg, lineno):
    kind, mm = next(((k, m) for k, rx in _MESSAGES if (m := rx.match(msg))), (None, None))
    if kind == "solving":
        st.update(start=t, iter=-1, run=st["run"] + 1, train=None, test=None)
        out.net_name = mm.group(1).strip()
        return
    if st["start"] is None:  # an excerpt without its Solving line: count from its first line
        st.update(start=t, run=0)
    sec = (t - st["start"]).total_seconds()
    if kind == "policy":
        out.lr_policy = mm.group(1)
    elif kind == "testing":
        st.update(iter=int(mm.group(1)), test_net=int(mm.group(2)), test=None)
    elif kind == "output":
        _add_output(out, st, mm, sec, lineno)
    elif kind == "loss":
        st.update(iter=int(mm.group(1)), train=None)
        out.loss.append(_Event(st["iter"], sec, float(mm.group(5)), st["run"], lineno))
    elif kind == "lr":
        st["iter"] = int(mm.group(1))
        lr_events.append(_Event(st["iter"], sec, float(mm.group(2)), st["run"], lineno))
    elif kind == "iter":
        st["iter"] = int(mm.group(1))
    elif msg.startswith("Optimization Done"):
        out.done = True


def _add_output(out, st, mm, sec, lineno):
    key, idx, name, weight = mm.group(1).lower(), int(mm.group(2)), mm.group(3), mm.group(5)
    it = st["iter"]
    if it < 0:  # outputs before any iteration: not part of the table (parse_log.py skips them too)
        return
    row = st[key]
    # A new row when the iteration changes or the output numbering starts over (a second test net, a rerun).
    if row is None or row.iter != it or idx <= row.last_index:
        test_net = st["test_net"] if key == "test" else 0
        if key == "test" and row is not None and row.iter == it and row.test_net == test_net:
            test_net += 1  # numbering restarted without a `Testing net (#k)` line
        row = Row(iter=it, seconds=sec, lr=math.nan, values={}, test_net=test_net, run=st["run"], line=lineno)
        (out.train if key == "train" else out.test).append(row)
        st[key] = row
    row.last_index = idx
    if row.test_net:
        name = f"net{row.test_net}:{name}"
    names = out.train_names if key == "train" else out.test_names
    if name not in names:
        names.append(name)
    row.values[name] = float(mm.group(4))  # a blob with several elements repeats its name: last one wins
    if weight is not None:
        out.loss_weights[name] = float(weight)


def _merge_runs(out, lr_events):
    """A later run starting at iteration s supersedes earlier runs' records at iterations >= s."""
    groups = (out.train, out.test, out.loss, lr_events)
    for r in range(1, out.runs):
        starts = [x.iter for xs in groups for x in xs if x.run == r]
        if not starts:
            continue
        s = min(starts)
        for xs in groups:
            xs[:] = [x for x in xs if x.run >= r or x.iter < s]
        offset = max((x.seconds for xs in groups for x in xs if x.run < r), default=0.0)
        for xs in groups:
            for x in xs:
                if x.run == r:
                    x.seconds += offset


def _assign_lr(rows, lr_events, mode):
    if not lr_events:
        return
    if mode == "parse_log":
        lines = [e.line for e in lr_events]  # in file order
        for row in rows:
            k = bisect.bisect_left(lines, row.line)
            row.lr = lr_events[k - 1].value if k else math.nan
        if len(rows) > 1:
            rows[0].lr = rows[1].lr
        return
    by_iter = sorted(lr_events, key=lambda e: (e.iter, e.line))
    iters = [e.iter for e in by_iter]
    same = {}
    for e in by_iter:
        same.setdefault((e.run, e.iter), e.value)
    for row in rows:
        k = bisect.bisect_left(iters, row.iter)  # by_iter[k - 1] is the latest lr logged before this iteration
        row.lr = same.get((row.run, row.iter), by_iter[k - 1].value if k else by_iter[0].value)


def _csv_bytes(rows, names):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["NumIters", "Seconds", "LearningRate", *names])
    for r in rows:
        w.writerow([r.iter, repr(float(r.seconds)), repr(float(r.lr)),
                    *(repr(r.values[n]) if n in r.values else "" for n in names)])
    return buf.getvalue().encode()


def write_csv(parsed, prefix):
    """Write PREFIX.train.csv and PREFIX.test.csv (columns NumIters,Seconds,LearningRate,<output names>, one row per
    iteration that logged outputs, as Caffe's parse_log.py); returns the two paths."""
    prefix = str(prefix)
    paths = (Path(prefix + ".train.csv"), Path(prefix + ".test.csv"))
    atomic_write_bytes(paths[0], _csv_bytes(parsed.train, parsed.train_names))
    atomic_write_bytes(paths[1], _csv_bytes(parsed.test, parsed.test_names))
    return paths
