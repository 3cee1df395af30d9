"""Atomic writes: whole files only, and the permissions a plain open() or mkdir() would give (umask applied)."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from caffecam.atomic import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]

# Under the umask, in a fresh process: a result file, a snapshot (.caffemodel through the engine's writer) and an
# LMDB folder with its data file.
WRITER = """
import os, sys
os.umask(int(sys.argv[1], 8))
from caffecam.atomic import atomic_write_bytes
from caffecam.data.datum import write_lmdb
from caffecam.engine.prototxt import write_binary
from caffecam.proto import caffe_pb2
out = sys.argv[2]
atomic_write_bytes(out + "/result.json", b"{}")
write_binary(out + "/x_iter_1.caffemodel", caffe_pb2.NetParameter(name="x"))
write_lmdb(out + "/db", [(b"k", b"v")], progress=False)
"""


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask, file_mode, dir_mode", [("022", 0o644, 0o755), ("027", 0o640, 0o750)])
def test_written_files_get_the_umasks_mode(tmp_path, umask, file_mode, dir_mode):
    subprocess.run([sys.executable, "-c", WRITER, umask, str(tmp_path)], check=True, cwd=ROOT, timeout=120)
    assert mode(tmp_path / "result.json") == file_mode
    assert mode(tmp_path / "x_iter_1.caffemodel") == file_mode
    assert mode(tmp_path / "db") == dir_mode
    assert mode(tmp_path / "db" / "data.mdb") == file_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "result.json", "x_iter_1.caffemodel"]  # no temps


def test_replaces_whole_file_and_leaves_no_temp_on_failure(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "text, not bytes: the write fails")
    assert target.read_bytes() == b"second" and [p.name for p in target.parent.iterdir()] == ["f.bin"]
