"""The Solver's CUDA set-up, checked on the CPU: moving the nets is patched out (it needs a device); what a CUDA run
decides before that — float32 math, determinism, pinned batches — is real."""

import io

import pytest
import torch

from caffecam.engine.prototxt import parse_text
from caffecam.proto import caffe_pb2
from caffecam.train.log import CaffeLogger
from caffecam.train.solver import Solver
from tests.solver_helpers import IMAGE_NET, write_images


@pytest.fixture
def image_solver(tmp_path, monkeypatch, cuda_flags):
    """make(device, seed, **kw) -> (Solver, its log text) over a tiny ImageData net, nothing moved to a device."""
    write_images(tmp_path)
    (tmp_path / "net.prototxt").write_text(IMAGE_NET.replace("DIR", str(tmp_path)))
    monkeypatch.setattr(Solver, "_prepare", lambda self, net: None)
    made = []

    def make(device, seed=7, **kw):
        sp = parse_text(f'net: "{tmp_path}/net.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 2 test_iter: 1 '
                        f'test_interval: 2 random_seed: {seed} snapshot_prefix: "{tmp_path}/snap"',
                        caffe_pb2.SolverParameter)
        out = io.StringIO()
        made.append(Solver(sp, "s.prototxt", device, CaffeLogger(stream=out), workers=0, **kw))
        return made[-1], out.getvalue()

    yield make
    for s in made:
        s.close()


def test_cuda_training_is_ieee_float32_and_deterministic_with_a_seed(image_solver):
    _, log = image_solver("cuda")
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert torch.are_deterministic_algorithms_enabled()
    assert "CUDA math: IEEE float32 (TF32 off; --tf32 allows it); cuDNN deterministic (random_seed 7)" in log


def test_tf32_on_request_and_no_determinism_without_a_seed(image_solver):
    _, log = image_solver("cuda", seed=-1, tf32=True)
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    assert not torch.backends.cudnn.deterministic and not torch.are_deterministic_algorithms_enabled()
    assert "TF32 allowed (--tf32); cuDNN free to pick nondeterministic algorithms (random_seed -1)" in log


def test_batches_are_pinned_for_a_cuda_device_only(image_solver, monkeypatch):
    # A GPU host training on the CPU (--cpu, the gloo path) must not pin: pinning opens a CUDA context on GPU 0.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cpu, log = image_solver("cpu")
    assert [f.pin_memory for f in cpu.train_feeds + cpu.test_feeds[0]] == [False, False]
    assert "CUDA math" not in log
    cuda, _ = image_solver("cuda")
    assert [f.pin_memory for f in cuda.train_feeds + cuda.test_feeds[0]] == [True, True]
