"""Neuron layers against float64 NumPy references written from Caffe's <type>_layer.cpp formulas: forward, and
backward as Caffe's Backward_cpu computes it (kinks at 0 and at Clip's bounds included); gradchecks; Dropout."""

import math

import numpy as np
import pytest
import torch

from caffecam.errors import CaffeCamError
from tests import numpy_ref as ref
from tests.engine.layers.helpers import TEST, TRAIN, build, close, gradcheck_layer, rand, run, set_blobs


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# (type, parameter text, forward(x), Caffe's dy/dx (x, y)); a sample with exact kinks is mixed into the input.
ELEMENTWISE = [
    ("ReLU", "", lambda x: np.maximum(x, 0), lambda x, y: (x > 0) * 1.0),
    ("ReLU", "relu_param { negative_slope: 0.1 }", lambda x: np.where(x > 0, x, 0.1 * x),
     lambda x, y: np.where(x > 0, 1.0, 0.1)),
    ("AbsVal", "", np.abs, lambda x, y: np.sign(x)),
    ("BNLL", "", lambda x: np.log1p(np.exp(x)), lambda x, y: sigmoid(x)),
    ("Clip", "clip_param { min: -0.5 max: 0.75 }", lambda x: np.clip(x, -0.5, 0.75),
     lambda x, y: ((x >= -0.5) & (x <= 0.75)) * 1.0),
    ("ELU", "", lambda x: np.where(x > 0, x, np.exp(x) - 1), lambda x, y: np.where(x > 0, 1.0, 1 + y)),
    ("ELU", "elu_param { alpha: 0.4 }", lambda x: np.where(x > 0, x, 0.4 * (np.exp(x) - 1)),
     lambda x, y: np.where(x > 0, 1.0, 0.4 + y)),
    ("Sigmoid", "", sigmoid, lambda x, y: y * (1 - y)),
    ("Swish", "", lambda x: x * sigmoid(x), lambda x, y: y + sigmoid(x) * (1 - y)),
    ("Swish", "swish_param { beta: 1.7 }", lambda x: x * sigmoid(1.7 * x),
     lambda x, y: 1.7 * y + sigmoid(1.7 * x) * (1 - 1.7 * y)),
    ("TanH", "", np.tanh, lambda x, y: 1 - y ** 2),
    # Exp: y = base^(shift + scale·x); dy/dx = ln(base) · scale · y.
    ("Exp", "", np.exp, lambda x, y: y),
    ("Exp", "exp_param { base: 2 scale: 0.5 shift: -1 }", lambda x: 2.0 ** (-1 + 0.5 * x),
     lambda x, y: math.log(2) * 0.5 * y),
    ("Exp", "exp_param { scale: -1.5 shift: 0.25 }", lambda x: np.exp(0.25 - 1.5 * x), lambda x, y: -1.5 * y),
    # Log: y = log_base(shift + scale·x); dy/dx = scale / (ln(base) · (shift + scale·x)). Input made positive below.
    ("Log", "", np.log, lambda x, y: 1 / x),
    ("Log", "log_param { base: 10 scale: 2 shift: 0.5 }", lambda x: np.log10(0.5 + 2 * x),
     lambda x, y: 2 / (math.log(10) * (0.5 + 2 * x))),
    # Power: y = (shift + scale·x)^power; dy/dx = power · scale · (shift + scale·x)^(power−1).
    ("Power", "", lambda x: x, lambda x, y: np.ones_like(x)),
    ("Power", "power_param { power: 2 scale: -0.5 shift: 1 }", lambda x: (1 - 0.5 * x) ** 2,
     lambda x, y: 2 * -0.5 * (1 - 0.5 * x)),
    ("Power", "power_param { power: 3 scale: 1.5 }", lambda x: (1.5 * x) ** 3, lambda x, y: 3 * 1.5 * (1.5 * x) ** 2),
    ("Power", "power_param { power: 0.5 scale: 2 shift: 1 }", lambda x: np.sqrt(1 + 2 * x),
     lambda x, y: 0.5 * 2 / np.sqrt(1 + 2 * x)),
    ("Power", "power_param { power: 1 scale: -3 shift: 2 }", lambda x: 2 - 3 * x, lambda x, y: np.full_like(x, -3.0)),
    ("Power", "power_param { power: 0 scale: 2 shift: 4 }", lambda x: np.ones_like(x), lambda x, y: np.zeros_like(x)),
    ("Power", "power_param { power: 2 scale: 0 shift: 3 }", lambda x: np.full_like(x, 9.0),
     lambda x, y: np.zeros_like(x)),
]

KINKS = {"Clip": [-0.5, 0.75], "Log": [], "Power": []}  # values placed exactly on each type's kinks


def sample(kind, seed=20):
    x = rand(2, 3, 4, 5, seed=seed)
    if kind == "Log" or kind == "Power":
        return np.abs(x) + 0.1  # Log's and a fractional Power's domain; Power at 0 is its own test below
    flat = x.reshape(-1)
    for i, v in enumerate(KINKS.get(kind, [0.0])):
        flat[i] = v
        flat[i + 7] = v
    return x


def forward_backward(layer, x, dy):
    xt = torch.from_numpy(x).requires_grad_(True)
    (y,) = layer(xt)
    y.backward(torch.from_numpy(dy))
    return y.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize("kind,params,fwd,grad", ELEMENTWISE, ids=lambda v: v if isinstance(v, str) else "")
def test_elementwise_forward_and_caffe_backward(kind, params, fwd, grad):
    x = sample(kind)
    layer = build(f"name: 'n' type: '{kind}' {params}", [x.shape])
    assert layer.top_shapes == [x.shape] and len(layer.blobs) == 0
    dy = rand(*x.shape, seed=21)
    y, dx = forward_backward(layer, x, dy)
    expect = fwd(x)
    close(y, expect)
    close(dx, dy * grad(x, expect))


@pytest.mark.parametrize("kind,params", [
    ("BNLL", ""), ("ELU", "elu_param { alpha: 0.4 }"), ("Sigmoid", ""), ("Swish", "swish_param { beta: 1.7 }"),
    ("TanH", ""), ("Exp", "exp_param { base: 3 scale: 0.5 shift: 1 }"), ("Log", "log_param { base: 2 shift: 3 }"),
    ("Power", "power_param { power: 1.5 scale: 0.5 shift: 2 }"), ("Power", "power_param { power: 3 scale: 2 }"),
])
def test_gradcheck_smooth_neurons(kind, params):
    x = rand(2, 3, 2, 2, seed=22)
    x = x[np.abs(x) > 0.05].reshape(-1)[:8].reshape(2, 4) if kind != "Log" else np.abs(x) + 0.1  # off ELU's kink
    layer = build(f"name: 'n' type: '{kind}' {params}", [x.shape])
    gradcheck_layer(layer, torch.from_numpy(x))


def test_elu_backward_uses_alpha_plus_y():
    # Caffe's dx = dy · (alpha + y) for x ≤ 0: at x = −40 in float, y = −alpha exactly and the gradient is 0 (the
    # true derivative alpha · e^−40 would be 4e-18); at x = 0 it is alpha, not 1.
    layer = build("name: 'e' type: 'ELU' elu_param { alpha: 2 }", [(3,)]).float()
    x = torch.tensor([-40.0, 0.0, 1e-3], requires_grad=True)
    (y,) = layer(x)
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 2.0, 1.0]


def test_power_shift_zero_backward_is_nan_at_zero_as_in_caffe():
    # Caffe's shift = 0 case computes power · y / x: 0/0 at x = 0 (autograd would give 0).
    layer = build("name: 'p' type: 'Power' power_param { power: 3 scale: 2 }", [(3,)])
    x = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64, requires_grad=True)
    (y,) = layer(x)
    y.backward(torch.ones(3, dtype=torch.float64))
    assert math.isnan(x.grad[0]) and x.grad[1:].tolist() == [3 * 2 * 2.0 ** 2, 3 * 2 * 4.0 ** 2]


def test_clip_with_min_above_max_is_min_everywhere():
    layer = build("name: 'c' type: 'Clip' clip_param { min: 1 max: -1 }", [(4,)])
    (y,) = run(layer, np.array([-3.0, 0.0, 0.5, 3.0]))
    close(y, np.ones(4))


@pytest.mark.parametrize("params,shape,slopes", [
    ("", (2, 3, 4, 5), None),
    ("prelu_param { channel_shared: true }", (2, 3, 4, 5), None),
    ("", (3, 4), None),  # 2-D bottom: channels on axis 1
    ("prelu_param { filler { type: 'constant' value: -0.3 } }", (1, 2, 3), None),
    ("", (2, 3, 4, 5), np.array([0.1, -0.7, 1.3])),
])
def test_prelu_forward_and_parameter_gradient(params, shape, slopes):
    layer = build(f"name: 'p' type: 'PReLU' {params}", [shape])
    shared = "channel_shared" in params
    assert [tuple(b.shape) for b in layer.blobs] == [() if shared else (shape[1],)]
    default = -0.3 if "-0.3" in params else 0.25  # Caffe's default filler is constant 0.25
    assert torch.all(layer.blobs[0] == float(np.float32(default)))
    if slopes is not None:
        set_blobs(layer, slopes)
    a = layer.blobs[0].detach().numpy().copy()
    x = sample("PReLU", seed=23).reshape(-1)[: math.prod(shape)].reshape(shape)
    dy = rand(*shape, seed=24)
    a_c = np.full(shape[1], float(a)) if shared else a
    a_b = a_c.reshape((1, -1) + (1,) * (len(shape) - 2))
    y, dx = forward_backward(layer, x, dy)
    close(y, np.maximum(x, 0) + a_b * np.minimum(x, 0))
    close(dx, dy * np.where(x > 0, 1.0, a_b))  # slope at x = 0, as Caffe
    # prelu_layer.cpp: da_c = Σ dy · x over the positions of channel c with x ≤ 0 (all channels when shared).
    per_channel = np.moveaxis(dy * x * (x <= 0), 1, 0).reshape(shape[1], -1).sum(axis=1)
    close(layer.blobs[0].grad.numpy(), per_channel.sum() if shared else per_channel)


def test_gradcheck_prelu():
    layer = build("name: 'p' type: 'PReLU' prelu_param { filler { type: 'uniform' min: -0.5 max: 0.5 } }",
                  [(2, 3, 2)])
    x = rand(2, 3, 2, seed=25)
    gradcheck_layer(layer, torch.from_numpy(np.where(np.abs(x) < 0.05, 0.3, x)))


def test_threshold_forward_and_no_backward():
    x = rand(2, 3, 4, seed=26)
    x.reshape(-1)[:3] = 0.2  # exactly at the threshold: 0, Caffe's test is x > threshold
    layer = build("name: 'thr' type: 'Threshold' threshold_param { threshold: 0.2 }", [x.shape])
    (y,) = run(layer, x)
    close(y, (x > 0.2) * 1.0)
    assert y.reshape(-1)[:3].tolist() == [0.0, 0.0, 0.0]
    xt = torch.from_numpy(x).requires_grad_(True)
    with pytest.raises(CaffeCamError, match="'thr'.*no backward"):
        layer(xt)[0].sum().backward()


@pytest.mark.parametrize("text,needle", [
    ("type: 'Exp' exp_param { base: -2 }", "strictly positive"),
    ("type: 'Exp' exp_param { base: 0 }", "strictly positive"),
    ("type: 'Log' log_param { base: 1 }", "base 1"),
    ("type: 'PReLU'", "at least 2 axes"),
    ("type: 'TanH' bottom: 'a' bottom: 'b'", "1 bottom"),
])
def test_neuron_set_up_errors(text, needle):
    shapes = [(4,), (4,)] if "bottom: 'b'" in text else [(4,)]
    with pytest.raises(CaffeCamError, match=rf"'bad'.*{needle}"):
        build(f"name: 'bad' {text}", shapes)


@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_relu(slope):
    x = rand(2, 3, 4, 5, seed=10)
    layer = build(f"name: 'r' type: 'ReLU' relu_param {{ negative_slope: {slope} }}", [x.shape])
    (y,) = run(layer, x)
    close(y, ref.relu(x, slope))


def test_dropout_train_statistics_and_test_identity():
    torch.manual_seed(0)
    x = np.full((200, 500), 2.0)
    layer = build("name: 'd' type: 'Dropout' dropout_param { dropout_ratio: 0.3 }", [x.shape], phase=TRAIN)
    (y,) = run(layer, x)
    kept = y != 0
    # Kept units are scaled by 1/(1 − p); the kept fraction is 1 − p (100000 draws: sd 0.0014).
    close(y[kept], np.full(kept.sum(), 2.0 / 0.7))
    assert abs(kept.mean() - 0.7) < 0.01
    assert abs(y.mean() - 2.0) < 0.03
    layer = build("name: 'd' type: 'Dropout' dropout_param { dropout_ratio: 0.3 }", [x.shape], phase=TEST)
    (y,) = run(layer, x)
    close(y, x)
