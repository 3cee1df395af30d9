"""The training log: writer line format, our parser, and Caffe's own parse_log.py rules as an independent reader."""

import datetime as dt
import io
import math
import re
from collections import OrderedDict

import pytest

from caffecam.errors import CaffeCamError
from caffecam.train.log import CaffeLogger, fmt_num, parse_log, write_csv

PREFIX_RX = re.compile(r"^I(\d{4}) (\d\d:\d\d:\d\d\.\d{6}) ([ \d]{5}) (\S+:\d+)\] (.*)$")


def fake_clock(start=dt.datetime(2024, 4, 11, 20, 19, 3, 141291), step=0.25):
    state = {"t": start - dt.timedelta(seconds=step)}

    def clock():
        state["t"] += dt.timedelta(seconds=step)
        return state["t"]

    return clock


# -- an independent reader: the regular expressions and row rules of Caffe's tools/extra/parse_log.py ----------------
CAFFE_ITER = re.compile(r"Iteration (\d+)")
CAFFE_TRAIN = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
CAFFE_TEST = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
CAFFE_LR = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")


def caffe_reader(text, year=2024):
    def when(line):
        tok = line.split()
        return dt.datetime.strptime(f"{year}{tok[0][1:]} {tok[1]}", "%Y%m%d %H:%M:%S.%f")

    lines = text.splitlines()
    start = when(next(ln for ln in lines if "Solving" in ln))
    it, lr = -1, math.nan
    tables = {CAFFE_TRAIN: [], CAFFE_TEST: []}
    rows = {CAFFE_TRAIN: None, CAFFE_TEST: None}
    for line in lines:
        m = CAFFE_ITER.search(line)
        if m:
            it = float(m.group(1))
        if it == -1:
            continue
        sec = (when(line) - start).total_seconds()
        m = CAFFE_LR.search(line)
        if m:
            lr = float(m.group(1))
        for rx, table in tables.items():
            row = rows[rx]
            m = rx.search(line)
            if m:
                if not row or row["NumIters"] != it:
                    if row:
                        table.append(row)
                    row = OrderedDict(NumIters=it, Seconds=sec, LearningRate=lr)
                row[m.group(2)] = float(m.group(3))
            if row and table and len(row) == len(table[0]):
                table.append(row)
                row = None
            rows[rx] = row
    for table in tables.values():
        if len(table) > 1:
            table[0]["LearningRate"] = table[1]["LearningRate"]
    return tables[CAFFE_TRAIN], tables[CAFFE_TEST]


LRS = {0: 0.01, 20: 0.01, 40: 0.001, 60: 0.001}  # step policy: base_lr 0.01, gamma 0.1, stepsize 40


def write_training_log(path, stream=None, year=False):
    """A 60-iteration run as our solver logs it: display 20, test_interval 20, step lr at 40."""
    with CaffeLogger(path, stream=stream, year=year, clock=fake_clock()) as lg:
        lg.solving("GoogLeNet-CAM")
        lg.lr_policy("step")
        for it in (0, 20, 40):
            lg.testing(it)
            lg.test_output(0, "loss3/loss3", 2.5 - it / 100, loss_weight=1)
            lg.test_output(1, "loss3/top-1", 0.1 + it / 200)
            lg.test_output(2, "loss3/top-5", 0.4 + it / 200)
            lg.iteration(it, 2.6 - it / 100, iters_per_s=1.25, secs_per_display=16, display=20)
            lg.train_output(0, "loss3/loss3", 2.7 - it / 100, loss_weight=1)
            lg.lr(it, LRS[it])
        lg.snapshot("snapshots/cam_iter_60.caffemodel")
        lg.solver_state("snapshots/cam_iter_60.solverstate")
        lg.iteration(60, 1.9)
        lg.testing(60)
        lg.test_output(0, "loss3/loss3", 1.9, loss_weight=1)
        lg.test_output(1, "loss3/top-1", 0.4)
        lg.test_output(2, "loss3/top-5", 0.7)
        lg.done()


def test_fmt_num_is_cpp_ostream_default():
    cases = {0.0005: "0.0005", 5e-05: "5e-05", 0.01: "0.01", 1e-06: "1e-06", 2.3: "2.3", 0.0: "0",
             123456.7: "123457", 1234567.0: "1.23457e+06", 1 / 3: "0.333333", 20: "20", -0.25: "-0.25",
             math.nan: "nan", math.inf: "inf"}
    for value, text in cases.items():
        assert fmt_num(value) == text, value


def test_writer_lines_exact(tmp_path):
    stream = io.StringIO()
    log = tmp_path / "snap" / "train.log"
    write_training_log(log, stream=stream)
    file_lines = log.read_text().splitlines()
    assert file_lines == stream.getvalue().splitlines()
    parsed = [PREFIX_RX.match(ln) for ln in file_lines]
    assert all(parsed), [ln for ln, m in zip(file_lines, parsed) if not m]
    assert parsed[0].group(1) == "0411" and parsed[0].group(2) == "20:19:03.141291"
    assert parsed[1].group(2) == "20:19:03.391291"
    assert parsed[0].group(3).strip().isdigit()
    msgs = [m.group(5) for m in parsed]
    assert msgs[:9] == [
        "Solving GoogLeNet-CAM",
        "Learning Rate Policy: step",
        "Iteration 0, Testing net (#0)",
        "    Test net output #0: loss3/loss3 = 2.5 (* 1 = 2.5 loss)",
        "    Test net output #1: loss3/top-1 = 0.1",
        "    Test net output #2: loss3/top-5 = 0.4",
        "Iteration 0 (1.25 iter/s, 16s/20 iters), loss = 2.6",
        "    Train net output #0: loss3/loss3 = 2.7 (* 1 = 2.7 loss)",
        "Iteration 0, lr = 0.01",
    ]
    assert "Iteration 40, lr = 0.001" in msgs
    assert msgs[-8:-4] == ["Snapshotting to binary proto file snapshots/cam_iter_60.caffemodel",
                            "Snapshotting solver state to binary proto file snapshots/cam_iter_60.solverstate",
                            "Iteration 60, loss = 1.9", "Iteration 60, Testing net (#0)"]
    assert msgs[-1] == "Optimization Done."


def test_writer_appends_flushes_and_warns(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("I0101 00:00:00.000000  1234 x.cpp:1] earlier run\n")
    seen = []
    lg = CaffeLogger(log, stream=seen.append, clock=fake_clock())
    lg.lr(100, 5e-05)
    lg.warning("solver_mode GPU but no CUDA device: running on CPU")
    lg.test_output(0, "loss", 0.5, loss_weight=0.3)
    text = log.read_text()  # before close: each line is flushed as written
    lg.close()
    lines = text.splitlines()
    assert lines[0].endswith("earlier run") and len(lines) == 4
    assert lines[1].endswith("sgd_solver.cpp:105] Iteration 100, lr = 5e-05")
    assert lines[2].startswith("W0411 ") and lines[2].endswith("running on CPU")
    assert lines[3].endswith("] " + "    Test net output #0: loss = 0.5 (* 0.3 = 0.15 loss)")
    assert seen == lines[1:]
    year = CaffeLogger(None, stream=None, year=True, clock=fake_clock()).info("x")
    assert year.startswith("I20240411 20:19:03.141291 ")
    with pytest.raises(ValueError):
        CaffeLogger(None, stream=None).iteration(3, 1.0, iters_per_s=2.0)


def test_our_log_read_by_caffe_regexes_and_ours(tmp_path):
    log = tmp_path / "train.log"
    write_training_log(log)
    c_train, c_test = caffe_reader(log.read_text())
    # Caffe's reader, by hand: train rows at 0, 20, 40; test rows at 0, 20, 40, 60.
    assert [r["NumIters"] for r in c_train] == [0, 20, 40]
    assert [r["loss3/loss3"] for r in c_train] == [2.7, 2.5, 2.3]
    assert [r["NumIters"] for r in c_test] == [0, 20, 40, 60]
    assert [r["loss3/top-5"] for r in c_test] == [0.4, 0.5, 0.6, 0.7]
    # parse_log.py's lr lags one display: the row at 40 (logged before `Iteration 40, lr = 0.001`) gets 0.01.
    assert [r["LearningRate"] for r in c_train] == [0.01, 0.01, 0.01]
    assert [r["LearningRate"] for r in c_test] == [0.01, 0.01, 0.01, 0.001]

    for mode in ("parse_log", "iteration"):
        ours = parse_log(log, lr_mode=mode)
        for crows, rows in ((c_train, ours.train), (c_test, ours.test)):
            assert len(rows) == len(crows)
            for c, r in zip(crows, rows):
                assert (r.iter, r.values) == (c["NumIters"], {k: v for k, v in c.items() if "/" in k})
                assert r.seconds == pytest.approx(c["Seconds"], abs=1e-9)
                if mode == "parse_log":
                    assert r.lr == c["LearningRate"]
    ours = parse_log(log)
    assert [r.lr for r in ours.train] == [0.01, 0.01, 0.001]  # the lr of that iteration
    assert [r.lr for r in ours.test] == [0.01, 0.01, 0.001, 0.001]
    # one line every 0.25 s from the Solving line; 7 lines per display block
    assert ours.loss == [(0, 1.5, 2.6), (20, 3.25, 2.4), (40, 5.0, 2.2), (60, 6.25, 1.9)]
    assert ours.lrs == [(0, 2.0, 0.01), (20, 3.75, 0.01), (40, 5.5, 0.001)]
    assert ours.train_names == ["loss3/loss3"]
    assert ours.test_names == ["loss3/loss3", "loss3/top-1", "loss3/top-5"]
    assert ours.loss_weights == {"loss3/loss3": 1.0}
    assert (ours.net_name, ours.lr_policy, ours.runs, ours.done) == ("GoogLeNet-CAM", "step", 1, True)
    assert ours.warnings == []
    assert ours.test[1].as_dict() == {"NumIters": 20, "Seconds": 2.5, "LearningRate": 0.01, "loss3/loss3": 2.3,
                                      "loss3/top-1": 0.2, "loss3/top-5": 0.5}
    assert ours.series("test", "loss3/top-1") == ([0, 20, 40, 60], [0.1, 0.2, 0.3, 0.4])


REAL_CAFFE = """\
I20261124 12:59:10.000000 31337 caffe.cpp:218] Using GPUs 0
I20261124 12:59:10.500000 31337 solver.cpp:44] Initializing solver from parameters:
test_iter: 100
base_lr: 0.01
lr_policy: "step"
I20261124 12:59:13.336908 31337 solver.cpp:279] Solving GoogLeNet-CAM
I20261124 12:59:13.336950 31337 solver.cpp:280] Learning Rate Policy: step
I20261124 12:59:14.000000 31337 solver.cpp:330] Iteration 0, Testing net (#0)
I20261124 12:59:20.336908 31337 solver.cpp:397]     Test net output #0: loss3/loss3 = 2.65 (* 1 = 2.65 loss)
I20261124 12:59:20.336910 31337 solver.cpp:397]     Test net output #1: loss3/top-1 = 0.0625
I20261124 12:59:21.836908 31337 solver.cpp:228] Iteration 0, loss = 2.71
I20261124 12:59:21.836950 31337 solver.cpp:244]     Train net output #0: loss3/loss3 = 2.71 (* 1 = 2.71 loss)
I20261124 12:59:21.837000 31337 sgd_solver.cpp:106] Iteration 0, lr = 0.01
I20261124 13:00:01.336908 31337 solver.cpp:218] Iteration 20 (0.5 iter/s, 39.5s/20 iters), loss = -nan
I20261124 13:00:01.337000 31337 solver.cpp:237]     Train net output #0: loss3/loss3 = inf (* 1 = inf loss)
I20261124 13:00:01.337100 31337 sgd_solver.cpp:105] Iteration 20, lr = 1e-03
"""


def test_real_caffe_excerpt_year_prefix_both_iteration_forms_nan():
    p = parse_log(REAL_CAFFE.splitlines(keepends=True))
    assert p.loss[0] == (0, pytest.approx(8.5), 2.71)
    assert p.loss[1][:2] == (20, pytest.approx(48.0)) and math.isnan(p.loss[1][2])
    assert [(r.iter, r.lr) for r in p.train] == [(0, 0.01), (20, 0.001)]
    assert p.train[0].values == {"loss3/loss3": 2.71} and p.train[1].values == {"loss3/loss3": math.inf}
    assert p.train[1].seconds == pytest.approx(48.000092)
    assert [(r.iter, r.seconds, r.lr) for r in p.test] == [(0, pytest.approx(7.0), 0.01)]
    assert p.test[0].values == {"loss3/loss3": 2.65, "loss3/top-1": 0.0625}
    assert p.loss_weights == {"loss3/loss3": 1.0} and not p.done


def test_truncated_last_line_and_lines_without_newlines(tmp_path):
    log = tmp_path / "cut.log"
    whole = REAL_CAFFE.splitlines()[:-2]
    cut = "I20261124 13:00:01.337000 31337 solver.cpp:237]     Train net output #0: loss3/"
    log.write_text("\n".join(whole) + "\n" + cut)
    p = parse_log(log)
    assert len(p.warnings) == 1 and "incomplete" in p.warnings[0]
    assert [r.iter for r in p.train] == [0]
    # a cut number must not become a wrong value: "loss = 2." of "loss = 2.31" is dropped, not read as 2
    log.write_text("\n".join(whole[:10]) + "\nI20261124 12:59:21.836908 31337 solver.cpp:228] Iteration 0, loss = 2.")
    assert parse_log(log).loss == []
    # plain strings without newlines are whole lines
    assert [x[0] for x in parse_log(whole).loss] == [0, 20]


def test_rollover_several_runs_and_progress_bar_junk():
    lines = [
        "I1231 23:59:50.000000  9236 solver.cpp:279] Solving net",
        "I1231 23:59:55.000000  9236 solver.cpp:228] Iteration 0, loss = 3",
        "I1231 23:59:55.100000  9236 sgd_solver.cpp:106] Iteration 0, lr = 0.1",
        "I0101 00:00:10.000000  9236 solver.cpp:228] Iteration 10, loss = 2",
        "I0101 00:00:20.000000  9236 solver.cpp:228] Iteration 20, loss = 1.5",  # crash after this; resume from 10
        "I0102 08:00:00.000000  4242 solver.cpp:279] Solving net",
        "I0102 08:00:00.500000  4242 solver.cpp:290] Restoring previous solver status from s_iter_10.solverstate",
        " 40%|####      | 4/10 [00:02<00:03]\rI0102 08:00:05.000000  4242 solver.cpp:228] Iteration 10, loss = 2.1",
        "I0102 08:00:05.100000  4242 sgd_solver.cpp:106] Iteration 10, lr = 0.01",
        "I0102 08:00:15.000000  4242 solver.cpp:228] Iteration 20, loss = 1.25",
    ]
    p = parse_log(lines)
    assert p.runs == 2
    # run 1 keeps iteration 0 (its last kept line 5.1 s after Solving); run 2 continues from there: 5.1 + 5, + 15
    assert p.loss == [(0, 5.0, 3.0), (10, 10.1, 2.1), (20, 20.1, 1.25)]
    assert p.lrs == [(0, 5.1, 0.1), (10, 10.2, 0.01)]
    single = parse_log(lines[:5])
    assert [x[1] for x in single.loss] == [5.0, 20.0, 30.0]  # across midnight of 31 Dec


def test_two_test_nets_and_write_csv_exact(tmp_path):
    lines = [
        "I0411 10:00:00.000000  1111 solver.cpp:279] Solving n",
        "I0411 10:00:01.000000  1111 solver.cpp:330] Iteration 0, Testing net (#0)",
        "I0411 10:00:02.000000  1111 solver.cpp:397]     Test net output #0: acc = 0.5",
        "I0411 10:00:03.000000  1111 solver.cpp:330] Iteration 0, Testing net (#1)",
        "I0411 10:00:04.000000  1111 solver.cpp:397]     Test net output #0: acc = 0.25",
        "I0411 10:00:05.000000  1111 solver.cpp:228] Iteration 0, loss = 1",
        "I0411 10:00:05.500000  1111 solver.cpp:244]     Train net output #0: loss = 1 (* 1 = 1 loss)",
        "I0411 10:00:05.500000  1111 solver.cpp:244]     Train net output #1: acc = nan",
        "I0411 10:00:06.000000  1111 sgd_solver.cpp:106] Iteration 0, lr = 0.0005",
        "I0411 10:00:07.000000  1111 solver.cpp:228] Iteration 5, loss = 0.75",
        "I0411 10:00:07.250000  1111 solver.cpp:244]     Train net output #0: loss = 0.5 (* 1 = 0.5 loss)",
    ]
    p = parse_log(lines)
    assert p.test_names == ["acc", "net1:acc"]
    train_csv, test_csv = write_csv(p, tmp_path / "out" / "run")
    assert train_csv.read_text() == ("NumIters,Seconds,LearningRate,loss,acc\n"
                                     "0,5.5,0.0005,1.0,nan\n"
                                     "5,7.25,0.0005,0.5,\n")
    assert test_csv.read_text() == ("NumIters,Seconds,LearningRate,acc,net1:acc\n"
                                    "0,2.0,0.0005,0.5,\n"
                                    "0,4.0,0.0005,,0.25\n")


def test_empty_and_missing(tmp_path):
    p = parse_log(["not a log", "I0411 10:00:00.000000  1111 caffe.cpp:1] Using GPUs 0"])
    assert p.empty and p.lines == 2
    with pytest.raises(CaffeCamError, match="cannot read"):
        parse_log(tmp_path / "missing.log")
    with pytest.raises(ValueError):
        parse_log([], lr_mode="caffe")


def test_default_stream_is_current_stderr(capsys):
    CaffeLogger(clock=fake_clock()).done()
    err = capsys.readouterr().err
    assert err.startswith("I0411 20:19:03.141291 ") and err.endswith("solver.cpp:315] Optimization Done.\n")


def test_file_with_progress_bar_garbage_dates_and_leap_day(tmp_path):
    log = tmp_path / "tee.log"
    log.write_bytes(
        b"I0228 23:59:59.000000  7 solver.cpp:279] Solving n\n"
        b"\r 10%|#         | 1/10 [00:01<00:09]\r                \rI0229 00:00:09.000000  7 solver.cpp:228] "
        b"Iteration 0, loss = 4\n"
        b"I9931 00:00:10.000000  7 solver.cpp:228] Iteration 5, loss = 3\n"  # not a date: skipped
        b"I0301 00:00:19.500000  7 solver.cpp:228] Iteration 10, loss = 2\n"
        b"\r 20%|##        | 2/10 [00:02<00:08]")
    p = parse_log(log)
    assert p.loss == [(0, 10.0, 4.0), (10, 86400 + 20.5, 2.0)]  # 2000 (the guessed year) has a 29 February
    assert p.warnings == [f"{log}:5: last line is incomplete (cut off while written); ignored"]
