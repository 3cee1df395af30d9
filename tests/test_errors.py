"""caffecam/errors.py: main_guard's one line and exit status, and under torchrun (LOCAL_RANK, WORLD_SIZE set) local
rank 0 alone reporting what every process does alike until the ranks part (rank_zero_speaks / ranks_part)."""

import argparse
import sys

import pytest

from caffecam import errors
from caffecam.errors import CaffeCamError, main_guard, rank_zero_speaks, ranks_part

LINES = "a warning\nerror: --n 3: too big\n"


@main_guard
def script(argv, part_first=False):
    rank_zero_speaks()
    parser = argparse.ArgumentParser(prog="script")
    parser.add_argument("--n", type=int)
    args = parser.parse_args(argv)
    if part_first:
        ranks_part()
    print("a warning", file=sys.stderr)
    raise CaffeCamError(f"--n {args.n}: too big")


class Stopped(Exception):
    """torchrun stopping a process (SIGTERM) because another one failed."""


def run(capsys, argv, part_first=False):
    with pytest.raises(SystemExit) as exit_:
        script(argv, part_first)
    return exit_.value.code, capsys.readouterr().err


def ranks(monkeypatch, local_rank, world_size):
    for name, value in (("LOCAL_RANK", local_rank), ("WORLD_SIZE", world_size)):
        monkeypatch.delenv(name, raising=False) if value is None else monkeypatch.setenv(name, value)


@pytest.mark.parametrize("local_rank, world_size", [(None, None), ("0", "2"), ("1", "1")])
def test_one_process_and_local_rank_0_print_the_error(monkeypatch, capsys, local_rank, world_size):
    ranks(monkeypatch, local_rank, world_size)
    monkeypatch.setattr(errors, "ALIKE_GRACE_S", 1e9)  # would hang if these processes waited
    assert run(capsys, ["--n", "3"]) == (1, LINES)


def test_the_other_ranks_wait_silently_for_torchrun_to_stop_them(monkeypatch, capsys):
    ranks(monkeypatch, "1", "2")
    stderr, seen = sys.stderr, []

    def stopped(seconds):
        seen.append((seconds, capsys.readouterr().err))
        raise Stopped

    monkeypatch.setattr(errors.time, "sleep", stopped)
    for argv in (["--n", "3"], ["--n", "x"]):  # a CaffeCamError; argparse's own usage error
        capsys.readouterr()  # (a real SIGTERM ends the process: no `finally` writes what was held back)
        with pytest.raises(Stopped):
            script(argv)
    assert seen == [(errors.ALIKE_GRACE_S, ""), (errors.ALIKE_GRACE_S, "")]
    assert sys.stderr is stderr  # main_guard gave stderr back
    capsys.readouterr()
    assert run(capsys, ["--n", "3"], part_first=True) == (1, LINES)  # after the ranks part: at once, its own error
    assert len(seen) == 2


def test_a_rank_not_stopped_after_the_grace_period_prints_its_error(monkeypatch, capsys):
    ranks(monkeypatch, "1", "2")
    monkeypatch.setattr(errors, "ALIKE_GRACE_S", 0.0)
    assert run(capsys, ["--n", "3"]) == (1, LINES)
    code, err = run(capsys, ["--n", "x"])
    assert code == 2 and err.startswith("usage: script") and "invalid int value: 'x'" in err


def test_an_unexpected_exception_keeps_its_traceback_on_every_rank(monkeypatch, capsys):
    ranks(monkeypatch, "1", "2")
    stderr = sys.stderr

    @main_guard
    def broken():
        rank_zero_speaks()
        print("before", file=sys.stderr)
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        broken()
    assert sys.stderr is stderr and capsys.readouterr().err == "before\n"


def test_a_net_without_a_name_is_called_the_unnamed_net():
    from caffecam.engine.net import Net
    from caffecam.engine.prototxt import parse_text
    from caffecam.proto import caffe_pb2
    text = 'layer { name: "d" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }'
    for name, expect in (("", "the unnamed net: input blob 'data' was not given"),
                         ("SqueezeNet", "net 'SqueezeNet': input blob 'data' was not given")):
        net = Net(parse_text(f'name: "{name}" ' + text, caffe_pb2.NetParameter))
        with pytest.raises(CaffeCamError) as exc:
            net({})
        assert str(exc.value) == expect
