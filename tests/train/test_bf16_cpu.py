"""`--bf16` on the CPU: the Solver runs forward and backward under bfloat16 autocast while the parameters, their
gradients, the history and Caffe's SGD update stay float32. Reference: the update recomputed in float32 NumPy from
the very gradients the bfloat16 pass produced; the gradients themselves against a float32 pass of the same batch."""

import numpy as np
import pytest
import torch

from caffecam.engine import precision
from caffecam.engine.prototxt import parse_text
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2
from caffecam.train.solver import Solver
from tests.solver_helpers import array_feeds

CONV_NET = """
name: "conv_bn"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 dim: 8 dim: 8 } shape { dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""
RATE, MOMENTUM, DECAY = 0.1, 0.9, 0.01


def solver(monkeypatch, bf16=True):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: ["AMX-BF16"])  # autocast runs on any CPU
    sp = parse_text(f"base_lr: {RATE} lr_policy: 'fixed' momentum: {MOMENTUM} weight_decay: {DECAY} max_iter: 2 "
                    "random_seed: 2 snapshot_after_train: false", caffe_pb2.SolverParameter)
    sp.net_param.CopyFrom(parse_text(CONV_NET, caffe_pb2.NetParameter))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 8).astype(np.int64)
    return Solver(sp, "solver.prototxt", "cpu", None, feeds=array_feeds((x, y), (x, y), batch=4), bf16=bf16), x, y


def test_bf16_step_keeps_float32_weights_and_caffes_update_from_the_bf16_gradients(monkeypatch):
    s, x, y = solver(monkeypatch)
    seen = []
    step = s.updater.step

    def spy(rate, it, iter_size=1):
        grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in s.updater.params]
        seen.append(([p.detach().clone() for p in s.updater.params], grads, [h.clone() for h in s.updater.history]))
        step(rate, it, iter_size)

    s.updater.step = spy
    s.step(2)
    assert len(seen) == 2
    names = [f"{name}[{i}]" for name, i, *_ in s.net.param_specs()]
    trainable = set(s.updater.trainable)
    for it, (weights, grads, history) in enumerate(seen):
        after = seen[it + 1][0] if it + 1 < len(seen) else [p.detach() for p in s.updater.params]
        for i, (w, g, h, w1) in enumerate(zip(weights, grads, history, after)):
            assert w.dtype == g.dtype == h.dtype == w1.dtype == torch.float32, names[i]
            if i not in trainable:  # BatchNorm's statistics: lr_mult 0
                continue
            # Caffe's SGD in float32: g += decay·w (Regularize); h = rate·g + momentum·h (ComputeUpdateValue); w −= h.
            f = np.float32
            g = g.numpy() + f(DECAY) * w.numpy()
            h = f(RATE) * g + f(MOMENTUM) * h.numpy()
            np.testing.assert_allclose(w1.numpy(), w.numpy() - h, rtol=2e-6, atol=1e-7, err_msg=names[i])

    # The gradients came from a bfloat16 pass: close to a float32 pass of the same batch, yet not equal to it.
    weights, grads, _ = seen[0]
    with torch.no_grad():
        for p, w in zip(s.updater.params, weights):
            p.copy_(w)
    for p in s.updater.params:
        p.grad = None
    loss = s.net.loss(s.net({"data": torch.from_numpy(x[:4]), "label": torch.from_numpy(y[:4])}))
    loss.backward()
    conv_w = names.index("conv[0]")
    g16, g32 = grads[conv_w], s.updater.params[conv_w].grad
    rel = float(torch.linalg.vector_norm(g16 - g32) / torch.linalg.vector_norm(g32))
    # bfloat16 keeps 8 bits (~4e-3 per rounding); the weight gradient, a sum of 256 terms of both signs, loses more
    # (2.2e-2 here, the same as a hand-written torch autocast of this net).
    assert 1e-4 < rel < 5e-2, rel


def test_batchnorm_statistics_stay_float32_under_bf16(monkeypatch):
    s, x, _ = solver(monkeypatch)
    with precision.autocast("cpu", True):
        blobs = s.net({"data": torch.from_numpy(x[:4]), "label": torch.zeros(4, dtype=torch.int64)})
    mean_sum, var_sum, factor = (b.detach() for b in s.net.params["bn"])
    assert mean_sum.dtype == var_sum.dtype == torch.float32 and factor.item() == 1.0
    # The bfloat16 convolution's output, then BatchNorm's batch mean in float64: float32 keeps it to ~1e-7 of its
    # scale; computed in bfloat16 it would be off by up to 2^-9 of it.
    w, b = (p.detach().bfloat16() for p in s.net.params["conv"])
    conv = torch.nn.functional.conv2d(torch.from_numpy(x[:4]).bfloat16(), w, b, padding=1).double()
    expect = conv.mean((0, 2, 3))
    np.testing.assert_allclose(mean_sum.double().numpy(), expect.numpy(), atol=2e-6 * float(expect.abs().max()))
    assert blobs["loss"].dtype == torch.float32


def test_bf16_where_the_cpu_lacks_it_is_one_line(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: [])
    with pytest.raises(CaffeCamError, match=r"^--bf16: this CPU has no native bfloat16 .*; leave out --bf16$"):
        precision.check_bf16("cpu")


def test_cpu_probe_reads_the_flags(monkeypatch, tmp_path):
    real_open = open
    fake = tmp_path / "cpuinfo"

    def fake_open(path, *a, **k):
        return real_open(fake if path == "/proc/cpuinfo" else path, *a, **k)

    monkeypatch.setattr("builtins.open", fake_open)
    fake.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert precision.cpu_bf16_support() == ["AMX-BF16", "AVX512-BF16"]
    fake.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw\n")  # oneDNN would emulate: refused
    assert precision.cpu_bf16_support() == []
    fake.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n")  # Arm Neoverse V1
    assert precision.cpu_bf16_support() == ["BF16"]
