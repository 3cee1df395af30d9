"""Two CPU processes on gloo through torchrun: gradients averaged as Caffe's multi-GPU, ranks agree, and the run
equals one process with iter_size 2 (rank r takes global batch b·2 + r: the same images as passes 2b and 2b+1).
The test passes are shared by the ranks (none waits alone in a collective) and give one process's numbers."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from caffecam.engine.weights import blob_to_array, read_caffemodel
from scripts import train
from tests.solver_helpers import IMAGE_NET, write_images

ROOT = Path(__file__).resolve().parents[2]
NET = IMAGE_NET.replace('layer { name: "drop" type: "Dropout" bottom: "conv" top: "conv" dropout_param { '
                        'dropout_ratio: 0.3 } }\n', "")


def solver_text(prefix, iter_size=1):
    return (f'net: "net.prototxt"\nbase_lr: 0.05\nlr_policy: "step"\ngamma: 0.5\nstepsize: 3\nmomentum: 0.9\n'
            f"weight_decay: 0.001\nmax_iter: 5\ntest_iter: 3\ntest_interval: 5\ndisplay: 1\nrandom_seed: 11\n"
            f'iter_size: {iter_size}\nsnapshot_prefix: "{prefix}/snap"\nsolver_mode: CPU\n')


def arrays(path):
    return {(lp.name, i): blob_to_array(b) for lp in read_caffemodel(path).layer for i, b in enumerate(lp.blobs)}


def test_two_gloo_processes_match_iter_size_two(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_images(tmp_path / "data", n=14)
    assert "Dropout" not in NET  # dropout masks differ per rank by design
    Path("net.prototxt").write_text(NET.replace("DIR", "data"))
    Path("ddp.prototxt").write_text(solver_text("ddp"))
    Path("one.prototxt").write_text(solver_text("one", iter_size=2))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "scripts/train.py"), "--solver", "ddp.prototxt", "--cpu", "--workers", "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    log = Path("ddp/train.log").read_text()
    assert "effective batch = 3 × 2 processes = 6 images per update" in log
    assert "weights identical on all 2 processes: yes" in log
    assert log.count("Solving tinyimg") == 1  # rank 0 logs alone
    assert train.main(["--solver", "one.prototxt", "--cpu", "--workers", "0"]) == 0
    a, b = arrays("ddp/snap_iter_5.caffemodel"), arrays("one/snap_iter_5.caffemodel")
    assert a.keys() == b.keys() and len(a) == 4
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7, err_msg=str(key))
    rx = re.compile(r"\] Iteration \d+ \(.*loss = (\S+)")
    losses = [rx.findall(Path(f"{d}/train.log").read_text()) for d in ("ddp", "one")]
    assert len(losses[0]) == 5
    np.testing.assert_allclose(np.float64(losses[0]), np.float64(losses[1]), rtol=1e-5)
    # Tests at 0 and 5, 3 batches each: rank 0 runs global test batches 0, 2 then 4; rank 1 runs 1 then 3, 5.
    # The first pass sees the same weights in both runs, so its numbers are one process's to the bit.
    rx = re.compile(r"Test net output #\d+: (\S+ = \S+)")
    tests = [rx.findall(Path(f"{d}/train.log").read_text()) for d in ("ddp", "one")]
    assert len(tests[0]) == 4 and tests[0][:2] == tests[1][:2]
    np.testing.assert_allclose([float(t.split()[-1]) for t in tests[0]], [float(t.split()[-1]) for t in tests[1]],
                               rtol=1e-5)


def test_shared_test_batches_cover_each_pass_once():
    from caffecam.train.distributed import batches_before, shared_batches

    for world in (1, 2, 3, 4):
        for n in range(1, 9):
            for passes in range(4):
                start = passes * n
                seen = sorted(g for r in range(world) for g in shared_batches(start, n, r, world))
                assert seen == list(range(start, start + n))
                for r in range(world):
                    mine = list(shared_batches(start, n, r, world))
                    assert all(g % world == r for g in mine)
                    # where rank r's feed stands after `passes` passes: its batches below `start`
                    assert batches_before(start, r, world) == sum(1 for g in range(start) if g % world == r)
