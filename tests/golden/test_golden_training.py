"""Short training runs real Caffe's SGDSolver recorded (tests/golden/make_golden.py): our Solver, started from the
recorded initial weights and fed the recorded data each iteration, must give Caffe's loss at every iteration
(relative error ≤ 1e-4) and its final weights (rel_err ≤ 1e-4 per blob, see golden.py). Skipped while a layer type
a net needs is not registered."""

import numpy as np
import pytest
import torch

from caffecam.engine.kernels import cpu_loops
from caffecam.engine.layers import LAYER_TYPES
from caffecam.engine.prototxt import parse_text
from caffecam.proto import caffe_pb2
from caffecam.train.solver import Solver
from tests.golden.golden import TRAINING, load, rel_err, training_runs

LOSS_TOL, WEIGHT_TOL = 1e-4, 1e-4
RUNS = training_runs()


class ReplayFeed:
    """The solver's feed interface over the recorded per-iteration data of the Input blobs."""

    def __init__(self, data):
        self.data = data
        self.top_names = list(data)
        self.shapes = {k: tuple(v.shape[1:]) for k, v in data.items()}
        self.batch_size = next(iter(self.shapes.values()))[0]
        self.num_items, self.batches_done = len(next(iter(data.values()))), 0

    def next(self):
        out = {k: torch.from_numpy(v[self.batches_done]) for k, v in self.data.items()}
        self.batches_done += 1
        return out

    def close(self):
        pass


@pytest.mark.parametrize("run", RUNS)
def test_training_matches_caffe(run):
    check_run(run, channels_last=False)


@pytest.mark.parametrize("run,loops", [
    ("plain_conv", {"max_pool", "max_pool_backward", "lrn_forward", "lrn_backward"}),
    ("relu_pool", {"max_pool after ReLU", "max_pool_backward"}),  # both ReLUs folded into their poolings
])
def test_training_matches_caffe_in_the_compiled_loops(monkeypatch, run, loops):
    """The scripts' CPU training path: channels_last, where LRN and MAX pooling (forward and backward) run in the
    compiled loops, and an in-place ReLU read only by a MAX pooling has its backward done by the pooling's; the
    test's tensors are small, so the size threshold is lifted."""
    if cpu_loops._load() is False:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(cpu_loops, "MIN_ELEMENTS", 0)
    calls = []
    for name in ("max_pool", "max_pool_backward", "lrn_forward", "lrn_backward"):
        def counted(*a, _f=getattr(cpu_loops, name), _name=name, **k):
            calls.append(_name + (" after ReLU" if k.get("positive_only") else ""))
            return _f(*a, **k)
        monkeypatch.setattr(cpu_loops, name, counted)
    check_run(run, channels_last=True)
    assert loops <= set(calls)
    if run == "relu_pool":
        assert "max_pool" not in calls


def check_run(run, channels_last):
    rec = load(TRAINING / f"{run}.npz")
    net_param = parse_text(str(rec["net"]), caffe_pb2.NetParameter)
    missing = sorted({lp.type for lp in net_param.layer} - set(LAYER_TYPES))
    assert not missing, f"type {', '.join(missing)} is not implemented"
    sp = parse_text(str(rec["solver"]), caffe_pb2.SolverParameter)
    sp.net_param.CopyFrom(net_param)
    data = {k[len("data/"):]: v for k, v in rec.items() if k.startswith("data/")}
    feeds = [ReplayFeed(data)] if data else []  # none for a net fed by DummyData
    solver = Solver(sp, "solver.prototxt", "cpu", None, feeds=lambda *a: feeds, channels_last=channels_last)
    layers = [str(name) for name in rec["layers"]]
    assert list(solver.net.params) == layers
    with torch.no_grad():
        for name in layers:
            for i, blob in enumerate(solver.net.params[name]):
                blob.copy_(torch.from_numpy(rec[f"init/{name}/{i}"]))

    losses = []
    for _ in range(int(rec["iters"])):
        solver.step(1)
        losses.append(solver.smoothed_loss)  # average_loss 1: this iteration's loss
    ref = rec["losses"]
    loss_err = np.abs(np.array(losses) - ref) / np.maximum(np.abs(ref), 1e-3)
    errors = {f"loss at iteration {i}": e for i, e in enumerate(loss_err) if not e <= LOSS_TOL}
    for name in layers:
        for i, blob in enumerate(solver.net.params[name]):
            e = rel_err(blob.detach().numpy(), rec[f"final/{name}/{i}"])
            if not e <= WEIGHT_TOL:
                errors[f"final {name} blob {i}"] = e
    assert not errors, f"{run}: " + ", ".join(f"{k} error {e:.3g}" for k, e in errors.items()) + \
        f"\nours  {np.round(losses, 6).tolist()}\ncaffe {np.round(ref, 6).tolist()}"
