"""scripts/train.py end to end on a tiny image net: log file, snapshots, fine-tuning, errors with what to run
first, SIGTERM snapshot, NaN stop."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from caffecam.engine.weights import blob_to_array, read_caffemodel
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2
from scripts import train
from tests.bombs import OPENCV_MAX_PIXELS, bomb_png
from tests.solver_helpers import IMAGE_NET, write_images

ROOT = Path(__file__).resolve().parents[2]
RX_TRAIN = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
RX_TEST = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")


def setup(tmp_path, monkeypatch, max_iter=6, extra="", mode="CPU"):
    """A tiny data set and solver in tmp_path (the working directory); paths relative to it, as users write them."""
    monkeypatch.chdir(tmp_path)
    if not (tmp_path / "data").exists():
        write_images(tmp_path / "data")
        (tmp_path / "net.prototxt").write_text(IMAGE_NET.replace("DIR", "data"))
    (tmp_path / "solver.prototxt").write_text(
        f'net: "net.prototxt"\nbase_lr: 0.05\nlr_policy: "step"\ngamma: 0.5\nstepsize: 4\nmomentum: 0.9\n'
        f"max_iter: {max_iter}\ntest_iter: 1\ntest_interval: 3\ndisplay: 2\nsnapshot: 3\nrandom_seed: 5\n"
        f'snapshot_prefix: "snapshots/tiny"\nsolver_mode: {mode}\n{extra}\n')
    return "solver.prototxt"


def run_main(args, capsys):
    try:
        rc = train.main(args)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def test_train_writes_log_and_snapshots(tmp_path, monkeypatch, capsys):
    solver = setup(tmp_path, monkeypatch)
    rc, err = run_main(["--solver", solver, "--cpu", "--workers", "0"], capsys)
    assert rc == 0, err
    log = (tmp_path / "snapshots" / "train.log").read_text()
    assert log.strip().splitlines()[-1].endswith("Optimization Done.")
    assert "effective batch = 3 × 1 process = 3 images per update" in log
    assert [m.group(1) for m in re.finditer(r"\] Iteration (\d+) \(", log)] == ["0", "2", "4"]
    assert [m.group(2) for m in RX_TEST.finditer(log)] == ["acc", "loss"] * 3  # tests at 0, 3, 6
    assert [m.group(2) for m in RX_TRAIN.finditer(log)] == ["loss"] * 3
    assert "Iteration 6, loss = " in log  # the extra forward after the last update
    for it in (3, 6):
        assert (tmp_path / f"snapshots/tiny_iter_{it}.caffemodel").is_file()
        assert (tmp_path / f"snapshots/tiny_iter_{it}.solverstate").is_file()
    assert "Optimization Done." in err  # the same lines on stderr
    assert "\r" not in log  # no progress bar in the log file (stderr is not a terminal here)


def test_finetune_copies_by_name_and_resume(tmp_path, monkeypatch, capsys):
    solver = setup(tmp_path, monkeypatch)
    assert run_main(["--solver", solver, "--cpu", "--workers", "0"], capsys)[0] == 0
    Path("first").mkdir()
    os.replace("snapshots/tiny_iter_6.caffemodel", "first/w.caffemodel")
    rc, err = run_main(["--solver", solver, "--cpu", "--workers", "0", "--weights", "first/w.caffemodel",
                        "--log", "ft.log"], capsys)
    assert rc == 0, err
    log = Path("ft.log").read_text()
    assert "Finetuning from first/w.caffemodel" in log and "copied 2 layers from the weights" in log
    rc, err = run_main(["--solver", solver, "--cpu", "--workers", "0", "--snapshot",
                        "snapshots/tiny_iter_3.solverstate", "--log", "resume.log"], capsys)
    assert rc == 0, err
    log = Path("resume.log").read_text()
    assert "Restoring previous solver status from snapshots/tiny_iter_3.solverstate" in log
    assert re.findall(r"\] Iteration (\d+) \(", log) == ["4"]  # resumed at 3: displays at 4 only
    w = {lp.name: blob_to_array(lp.blobs[0]) for lp in read_caffemodel("snapshots/tiny_iter_6.caffemodel").layer
         if lp.blobs}
    assert set(w) == {"conv", "fc"}


@pytest.mark.parametrize("args, missing, advice", [
    (["--weights", "weights/bvlc_googlenet.caffemodel"], None, "run `make weights` first"),
    ([], "data/train.txt", "run `make data` first"),
    ([], "data/demo/train.txt", "run `make demo` first"),
])
def test_missing_inputs_say_what_to_run(tmp_path, monkeypatch, capsys, args, missing, advice):
    solver = setup(tmp_path, monkeypatch)
    if missing:
        Path("net.prototxt").write_text(IMAGE_NET.replace("DIR/list.txt", missing).replace("DIR", "data"))
    rc, err = run_main(["--solver", solver, "--cpu", *args], capsys)
    assert rc == 1
    assert err.startswith("error: ") and advice in err and err.count("\n") == 1


def test_bad_combinations(tmp_path, monkeypatch, capsys):
    solver = setup(tmp_path, monkeypatch)
    rc, err = run_main(["--solver", solver, "--snapshot", "a.solverstate", "--weights", "b.caffemodel"], capsys)
    assert rc == 1 and "not both" in err
    rc, err = run_main(["--solver", solver, "--snapshot", "nope.solverstate"], capsys)
    assert rc == 1 and "nope.solverstate: solver state not found" in err


def test_gpu_mode_without_cuda_warns_once(tmp_path, monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    solver = setup(tmp_path, monkeypatch, max_iter=1, mode="GPU")
    rc, err = run_main(["--solver", solver, "--workers", "0"], capsys)
    assert rc == 0
    warnings = [ln for ln in err.splitlines() if ln.startswith("W")]
    assert len(warnings) == 1 and "solver_mode GPU but CUDA is not available: training on the CPU" in warnings[0]


def test_nan_loss_exits_nonzero_with_one_line(tmp_path, monkeypatch, capsys):
    solver = setup(tmp_path, monkeypatch, max_iter=50)
    Path(solver).write_text(Path(solver).read_text().replace("base_lr: 0.05", "base_lr: 1e38"))
    rc, err = run_main(["--solver", solver, "--cpu", "--workers", "0"], capsys)
    assert rc == 1
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(r"error: solver.prototxt: iteration \d+: the loss is (nan|inf); training stopped .*", last)
    assert "the loss is" in Path("snapshots/train.log").read_text()  # in the log file too


def test_sigterm_snapshots_and_exits_zero(tmp_path, monkeypatch):
    solver = setup(tmp_path, monkeypatch, max_iter=100000, extra="snapshot_after_train: false")
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts/train.py"), "--solver", solver, "--cpu",
                             "--workers", "0"], stderr=subprocess.PIPE, text=True)
    log = tmp_path / "snapshots" / "train.log"
    deadline = time.time() + 60
    while time.time() < deadline and not (log.exists() and "Iteration 4 (" in log.read_text()):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    text = log.read_text()
    assert "SIGTERM received" in text and "Optimization stopped early." in text
    state = re.findall(r"Snapshotting solver state to binary proto file (\S+)", text)[-1]
    assert (tmp_path / state).is_file()
    resume = rf"To resume: \S+ \S*scripts/train.py --solver solver.prototxt --snapshot {re.escape(state)} --cpu"
    assert re.search(resume, text)
    model = {lp.name: lp for lp in read_caffemodel(state.replace(".solverstate", ".caffemodel")).layer}
    assert np.isfinite(blob_to_array(model["conv"].blobs[0])).all()


def test_help():
    out = subprocess.run([sys.executable, str(ROOT / "scripts/train.py"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--snapshot" in out.stdout and "torchrun" in out.stdout


def test_gpu_ids_and_relaunch_under_torchrun(monkeypatch):
    assert train.gpu_ids("0,1") == [0, 1] and train.gpu_ids(None) is None
    with pytest.raises(Exception, match="give a GPU id"):
        train.gpu_ids("first")
    calls = []
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(train.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(train.torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(train.distributed, "relaunch", lambda script, argv, n: calls.append((Path(script).name, n)))
    argv = ["--solver", "s.prototxt", "--gpu", "all"]
    train.maybe_relaunch(train.parse_args(argv), argv)
    assert calls == [("train.py", 4)]
    argv = ["--solver", "s.prototxt", "--gpu", "0"]
    train.maybe_relaunch(train.parse_args(argv), argv)
    assert len(calls) == 1  # one GPU: no relaunch


@pytest.fixture
def four_gpus(monkeypatch):
    """torch.cuda as on a host whose job sees 4 GPUs; returns the ids set_device was given."""
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(train.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(train.torch.cuda, "device_count", lambda: 4)
    chosen = []
    monkeypatch.setattr(train.torch.cuda, "set_device", chosen.append)
    return chosen


def under_torchrun(monkeypatch, local_rank, local_world, nodes=1):
    monkeypatch.setenv("RANK", str(local_rank))
    monkeypatch.setenv("WORLD_SIZE", str(local_world * nodes))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))


def test_gpu_list_is_read_through_the_scheduler_mask(monkeypatch, four_gpus):
    # A scheduler gave the job physical GPUs 4-7: --gpu 2,3 are the third and fourth of them, physical 6 and 7.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    relaunched = []
    monkeypatch.setattr(train.distributed, "relaunch", lambda script, argv, n: relaunched.append(n))
    argv = ["--solver", "s.prototxt", "--gpu", "2,3"]
    args = train.parse_args(argv)
    train.maybe_relaunch(args, argv)
    assert relaunched == [2]
    sp = caffe_pb2.SolverParameter(solver_mode=caffe_pb2.SolverParameter.GPU)
    for local_rank, physical in ((0, "6"), (1, "7")):  # each relaunched process, under the same mask
        under_torchrun(monkeypatch, local_rank, 2)
        device = train.choose_device(sp, args, local_rank, print)
        assert os.environ["CUDA_VISIBLE_DEVICES"].split(",")[device.index] == physical
    assert four_gpus == [2, 3]
    monkeypatch.delenv("WORLD_SIZE")  # back outside torchrun
    with pytest.raises(CaffeCamError, match="GPU 7 does not exist"):
        train.maybe_relaunch(train.parse_args(["--solver", "s", "--gpu", "0,7"]), [])
    with pytest.raises(CaffeCamError, match="listed twice"):
        train.gpu_ids("1,1")


def test_gpu_list_under_a_torchrun_the_user_started(monkeypatch, four_gpus):
    sp = caffe_pb2.SolverParameter(solver_mode=caffe_pb2.SolverParameter.GPU)
    args = train.parse_args(["--solver", "s.prototxt", "--gpu", "3,1"])
    for local_rank in (0, 1):
        under_torchrun(monkeypatch, local_rank, 2, nodes=2)
        assert train.choose_device(sp, args, local_rank, print).index == (3, 1)[local_rank]
    args = train.parse_args(["--solver", "s.prototxt"])  # no --gpu: one GPU per local rank
    assert train.choose_device(sp, args, 1, print).index == 1
    args = train.parse_args(["--solver", "s.prototxt", "--gpu", "0"])
    with pytest.raises(CaffeCamError, match="--gpu 0 lists 1 GPU.s. for the 2 processes torchrun started"):
        train.choose_device(sp, args, 1, print)


def test_tf32_on_cpu_warns_and_bf16_trains_where_the_cpu_has_it(tmp_path, monkeypatch, capsys):
    from caffecam.engine import precision
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: ["AMX-BF16"])
    solver = setup(tmp_path, monkeypatch, max_iter=1)
    rc, err = run_main(["--solver", solver, "--cpu", "--bf16", "--tf32", "--workers", "0"], capsys)
    assert rc == 0 and "--tf32 applies to CUDA only" in err, err
    assert "bfloat16 autocast (AMX-BF16): parameters, gradients and updates in float32" in err
    params = read_caffemodel(tmp_path / "snapshots" / "tiny_iter_1.caffemodel")
    assert all(b.data and not b.double_data for lp in params.layer for b in lp.blobs)  # float32 weights written


def test_bf16_on_a_cpu_without_it_is_one_line(tmp_path, monkeypatch, capsys):
    from caffecam.engine import precision
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: [])
    solver = setup(tmp_path, monkeypatch, max_iter=1)
    rc, err = run_main(["--solver", solver, "--cpu", "--bf16", "--workers", "0"], capsys)
    lines = [line for line in err.splitlines() if "--bf16" in line]
    assert rc != 0 and "Traceback" not in err and len(lines) >= 1
    assert "--bf16: this CPU has no native bfloat16" in lines[-1] and "leave out --bf16" in lines[-1]
    assert not (tmp_path / "snapshots" / "tiny_iter_1.caffemodel").exists()


def test_resume_command_keeps_the_devices_and_process_count(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    args = train.parse_args(["--solver", "s.prototxt", "--gpu", "0,1", "--log", "my log.txt", "--bf16", "--tf32"])
    cmd = train.resume_command(args, "snap/x_iter_5.solverstate", world=2)
    assert cmd.endswith("--solver s.prototxt --snapshot snap/x_iter_5.solverstate --gpu 0,1 --log 'my log.txt' "
                        "--bf16 --tf32")
    assert "torch.distributed.run" not in cmd  # --gpu 0,1 relaunches by itself
    args = train.parse_args(["--solver", "s.prototxt"])  # started by torchrun with 4 processes
    cmd = train.resume_command(args, "x.solverstate", world=4)
    assert "-m torch.distributed.run --standalone --nproc_per_node=4 " in cmd
    assert cmd.endswith("--solver s.prototxt --snapshot x.solverstate")


@pytest.mark.parametrize("max_pixels, message", [
    (None, "is 40000×40000 = 1,600,000,000 pixels, over the limit of 100,000,000 pixels (--max-pixels); shrink it or "
           "remove that line"),
    (2_000_000_000, "cannot be decoded (OpenCV: pixels <= CV_IO_MAX_IMAGE_PIXELS); fix or remove that line of the "
                    "list"),
])
def test_decompression_bomb_in_the_list_snapshots_and_stops_with_one_line(tmp_path, monkeypatch, capsys, max_pixels,
                                                                          message):
    solver = setup(tmp_path, monkeypatch, max_iter=20)
    # Training reads data/train.txt in order, 3 images a batch: line 8 comes in the batch of iteration 2.
    assert bomb_png().startswith(b"\x89PNG") and 40000 * 40000 > OPENCV_MAX_PIXELS
    Path("data/img/bomb.png").write_bytes(bomb_png())
    lines = [f"img/{i}.png {i % 3}" for i in range(7)] + ["img/bomb.png 1", "img/8.png 2"]
    Path("data/train.txt").write_text("\n".join(lines) + "\n")
    net = IMAGE_NET.replace("DIR/list.txt", "DIR/train.txt", 1).replace("shuffle: true", "shuffle: false")
    Path("net.prototxt").write_text(net.replace("DIR", "data"))
    extra = [] if max_pixels is None else ["--max-pixels", str(max_pixels)]
    rc, err = run_main(["--solver", solver, "--cpu", "--workers", "1", *extra], capsys)
    assert rc == 1 and "Traceback" not in err
    assert err.splitlines()[-1] == f"error: data/train.txt:8: image 'data/img/bomb.png' {message}"
    log = Path("snapshots/train.log").read_text()
    assert "iterations so far are saved in snapshots/tiny_iter_2.solverstate" in log
    assert Path("snapshots/tiny_iter_2.caffemodel").is_file() and Path("snapshots/tiny_iter_2.solverstate").is_file()


def test_second_trainer_on_the_same_prefix_is_refused_and_a_killed_ones_lock_is_taken_over(tmp_path, monkeypatch,
                                                                                            capsys):
    setup(tmp_path, monkeypatch, max_iter=2)
    os.replace("solver.prototxt", "short.prototxt")  # the same snapshot_prefix, 2 iterations
    solver = setup(tmp_path, monkeypatch, max_iter=100000, extra="snapshot_after_train: false")
    first = subprocess.Popen([sys.executable, str(ROOT / "scripts/train.py"), "--solver", solver, "--cpu",
                              "--workers", "0"], stderr=subprocess.DEVNULL)
    try:
        log, lock = Path("snapshots/train.log"), Path("snapshots/tiny.lock")
        deadline = time.time() + 60
        while time.time() < deadline and not (log.exists() and "Iteration 2 (" in log.read_text()):
            time.sleep(0.1)
        assert lock.read_text() == f"{socket.gethostname()} {first.pid}\n"
        rc, err = run_main(["--solver", "short.prototxt", "--cpu", "--workers", "0"], capsys)
        assert rc == 1
        assert err == (f"error: short.prototxt:13: another training run (pid {first.pid} on host "
                       f"{socket.gethostname()}) is using snapshot prefix 'snapshots/tiny' (lock snapshots/tiny.lock); "
                       "wait for it to finish, or give this run another snapshot_prefix\n")
        assert log.read_text().count("Using cpu") == 1 and "another training run" not in log.read_text()
    finally:
        first.kill()  # SIGKILL: no clean-up, the lock file stays
        first.wait(timeout=60)
    assert lock.read_text() == f"{socket.gethostname()} {first.pid}\n"
    rc, err = run_main(["--solver", "short.prototxt", "--cpu", "--workers", "0"], capsys)
    assert rc == 0, err
    assert f"snapshots/tiny.lock: left by pid {first.pid}, which is no longer running on this host; taken over" in err
    assert not lock.exists() and Path("snapshots/tiny_iter_2.caffemodel").is_file()


def test_a_lock_from_another_host_is_kept_until_deleted(tmp_path, monkeypatch, capsys):
    solver = setup(tmp_path, monkeypatch, max_iter=1)
    Path("snapshots").mkdir()
    Path("snapshots/tiny.lock").write_text("gpu-node-7 4242\n")
    rc, err = run_main(["--solver", solver, "--cpu", "--workers", "0"], capsys)
    assert rc == 1 and err == ("error: solver.prototxt:13: snapshots/tiny.lock says a training run (pid 4242 on host "
                               "gpu-node-7) is using snapshot prefix 'snapshots/tiny'; if that run has ended, delete "
                               "the lock file and run again\n")
    Path("snapshots/tiny.lock").unlink()
    assert run_main(["--solver", solver, "--cpu", "--workers", "0"], capsys)[0] == 0
    assert not Path("snapshots/tiny.lock").exists()
