"""LSTMUnit, LSTM and RNN against float64 NumPy references written from Caffe's unrolled nets (lstm_layer.cpp,
rnn_layer.cpp, lstm_unit_layer.cpp), gradchecks, and the carried state."""

import numpy as np
import pytest
import torch

from caffecam.engine.net import TRAIN, Net
from caffecam.engine.prototxt import parse_text
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2
from tests.engine.layers.helpers import build, close, rand, run

# ---------------------------------------------------------------- NumPy references


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def lstm_unit_ref(c_prev, gates, cont):
    """One step: c_prev (N,H), gates (N,4H) as i, f, o, g; f is 0 where cont is 0, else cont·σ(f')."""
    h = c_prev.shape[-1]
    i, f, o, g = (gates[:, k * h:(k + 1) * h] for k in range(4))
    i, o, g = sigmoid(i), sigmoid(o), np.tanh(g)
    f = np.where(cont[:, None] == 0, 0.0, cont[:, None] * sigmoid(f))
    c = f * c_prev + i * g
    return c, o * np.tanh(c)


def lstm_unit_grad_ref(c_prev, gates, cont, dc, dh):
    """Caffe's LSTMUnit backward, element by element (lstm_unit_layer.cpp): the f' slope is c_term·c_prev·f(1 − f)."""
    n, hd = c_prev.shape
    d_prev, d_gates = np.zeros_like(c_prev), np.zeros_like(gates)
    for s in range(n):
        for d in range(hd):
            i, o = sigmoid(gates[s, d]), sigmoid(gates[s, 2 * hd + d])
            f = 0.0 if cont[s] == 0 else cont[s] * sigmoid(gates[s, hd + d])
            g = np.tanh(gates[s, 3 * hd + d])
            c = f * c_prev[s, d] + i * g
            tc = np.tanh(c)
            term = dc[s, d] + dh[s, d] * o * (1 - tc * tc)
            d_prev[s, d] = term * f
            d_gates[s, [d, hd + d, 2 * hd + d, 3 * hd + d]] = [
                term * g * i * (1 - i), term * c_prev[s, d] * f * (1 - f), dh[s, d] * tc * o * (1 - o),
                term * i * (1 - g * g)]
    return d_prev, d_gates


def lstm_ref(x, cont, w_xc, b_c, w_hc, x_static=None, w_static=None, h0=None, c0=None):
    t, n = x.shape[:2]
    hd = w_hc.shape[1]
    h = np.zeros((n, hd)) if h0 is None else h0[0]
    c = np.zeros((n, hd)) if c0 is None else c0[0]
    out = []
    for s in range(t):
        gates = (cont[s][:, None] * h) @ w_hc.T + (x[s].reshape(n, -1) @ w_xc.T + b_c)
        if x_static is not None:
            gates = gates + x_static.reshape(n, -1) @ w_static.T
        c, h = lstm_unit_ref(c, gates, cont[s])
        out.append(h)
    return np.stack(out), h, c


def rnn_ref(x, cont, w_xh, b_h, w_hh, w_ho, b_o, x_static=None, w_static=None, h0=None):
    t, n = x.shape[:2]
    h = np.zeros((n, w_hh.shape[0])) if h0 is None else h0[0]
    out = []
    for s in range(t):
        pre = (cont[s][:, None] * h) @ w_hh.T + (x[s].reshape(n, -1) @ w_xh.T + b_h)
        if x_static is not None:
            pre = pre + x_static.reshape(n, -1) @ w_static.T
        h = np.tanh(pre)
        out.append(np.tanh(h @ w_ho.T + b_o))
    return np.stack(out), h


def layer_text(kind, num_output=3, expose=False):
    return (f"name: 'rec' type: '{kind}' recurrent_param {{ num_output: {num_output} "
            f"expose_hidden: {str(expose).lower()} weight_filler {{ type: 'gaussian' std: 0.5 }} "
            "bias_filler { type: 'uniform' min: -0.5 max: 0.5 } }")

CONT = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]])  # T=3, N=2: stream 1 restarts at t=2


# ---------------------------------------------------------------- LSTMUnit


def test_lstm_unit_forward_and_caffe_backward_with_fractional_cont():
    c_prev, gates = rand(1, 4, 3, seed=1), rand(1, 4, 12, seed=2) * 2
    cont = np.array([[0.0, 1.0, 0.5, 2.0]])
    layer = build("name: 'u' type: 'LSTMUnit'", [c_prev.shape, gates.shape, cont.shape])
    assert layer.top_shapes == [(1, 4, 3), (1, 4, 3)]
    c, h = run(layer, c_prev, gates, cont)
    c_ref, h_ref = lstm_unit_ref(c_prev[0], gates[0], cont[0])
    close(c[0], c_ref)
    close(h[0], h_ref)
    tc, tg = (torch.from_numpy(a).requires_grad_(True) for a in (c_prev, gates))
    dc, dh = rand(1, 4, 3, seed=3), rand(1, 4, 3, seed=4)
    out_c, out_h = layer(tc, tg, torch.from_numpy(cont))
    ((out_c * torch.from_numpy(dc)).sum() + (out_h * torch.from_numpy(dh)).sum()).backward()
    d_prev, d_gates = lstm_unit_grad_ref(c_prev[0], gates[0], cont[0], dc[0], dh[0])
    close(tc.grad.numpy()[0], d_prev)
    close(tg.grad.numpy()[0], d_gates)


def test_lstm_unit_gradcheck_binary_cont_and_shape_errors():
    cont = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    layer = build("name: 'u' type: 'LSTMUnit'", [(1, 3, 2), (1, 3, 8), (1, 3)])
    inputs = (torch.from_numpy(rand(1, 3, 2, seed=5)).requires_grad_(True),
              torch.from_numpy(rand(1, 3, 8, seed=6)).requires_grad_(True))
    assert torch.autograd.gradcheck(lambda c, g: layer(c, g, cont), inputs, eps=1e-6, atol=1e-6)
    with pytest.raises(CaffeCamError, match="'u'.*1×N×H, 1×N×4H and 1×N"):
        build("name: 'u' type: 'LSTMUnit'", [(1, 3, 2), (1, 3, 6), (1, 3)])


# ---------------------------------------------------------------- LSTM and RNN


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_blob_layout_is_caffes(kind):
    x, xs = (3, 2, 2, 2), (2, 5)
    plain = build(layer_text(kind), [x, (3, 2)])
    static = build(layer_text(kind), [x, (3, 2), xs])
    if kind == "LSTM":  # W_xc, b_c, [W_xc_static], W_hc
        assert [tuple(b.shape) for b in plain.blobs] == [(12, 4), (12,), (12, 3)]
        assert [tuple(b.shape) for b in static.blobs] == [(12, 4), (12,), (12, 5), (12, 3)]
    else:  # W_xh, b_h, [W_xh_static], W_hh, W_ho, b_o
        assert [tuple(b.shape) for b in plain.blobs] == [(3, 4), (3,), (3, 3), (3, 3), (3,)]
        assert [tuple(b.shape) for b in static.blobs] == [(3, 4), (3,), (3, 5), (3, 3), (3, 3), (3,)]
    assert plain.top_shapes == [(3, 2, 3)]


def _reference(kind, x, cont, blobs, x_static=None, hidden=()):
    if kind == "LSTM":
        w_xc, b_c, *rest = blobs
        w_static, w_hc = rest if x_static is not None else (None, rest[0])
        h0, c0 = hidden or (None, None)
        out, h, c = lstm_ref(x, cont, w_xc, b_c, w_hc, x_static, w_static, h0, c0)
        return out, [h, c]
    w_xh, b_h, *rest = blobs
    w_static, w_hh, w_ho, b_o = rest if x_static is not None else (None, *rest)
    out, h = rnn_ref(x, cont, w_xh, b_h, w_hh, w_ho, b_o, x_static, w_static, hidden[0] if hidden else None)
    return out, [h]


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_forward_matches_the_unrolled_net(kind):
    x, cont = rand(3, 2, 2, 2, seed=10), CONT
    layer = build(layer_text(kind), [x.shape, cont.shape], seed=3)
    blobs = [b.detach().numpy() for b in layer.blobs]
    (y,) = run(layer, x, cont)
    close(y, _reference(kind, x, cont, blobs)[0])
    # With a static input, exposed initial states and fractional cont.
    xs, frac = rand(2, 5, seed=11), np.array([[0.5, 1.0], [1.0, 0.3], [2.0, 0.0]])
    n_states = 2 if kind == "LSTM" else 1
    hidden = [rand(1, 2, 3, seed=12 + k) for k in range(n_states)]
    layer = build(layer_text(kind, expose=True), [x.shape, cont.shape, xs.shape] + [(1, 2, 3)] * n_states, seed=4)
    blobs = [b.detach().numpy() for b in layer.blobs]
    y, *final = run(layer, x, frac, xs, *hidden)
    ref, ref_final = _reference(kind, x, frac, blobs, xs, hidden)
    close(y, ref)
    for got, want in zip(final, ref_final):
        close(got[0], want)
    assert layer.top_shapes == [(3, 2, 3)] + [(1, 2, 3)] * n_states


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_state_carries_over_to_the_next_forward(kind):
    # Caffe copies the last step's states into the first step's before each forward (recurrent_layer.cpp).
    x1, x2 = rand(3, 2, 4, seed=20), rand(3, 2, 4, seed=21)
    cont2 = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # stream 0 continues, stream 1 restarts
    layer = build(layer_text(kind), [x1.shape, (3, 2)], seed=5)
    blobs = [b.detach().numpy() for b in layer.blobs]
    (y1,) = run(layer, x1, CONT)
    (y2,) = run(layer, x2, cont2)
    ref1, states = _reference(kind, x1, CONT, blobs)
    close(y1, ref1)
    close(y2, _reference(kind, x2, cont2, blobs, hidden=[s[None] for s in states])[0])
    assert np.abs(y2 - _reference(kind, x2, cont2, blobs)[0]).max() > 1e-3  # the carried state mattered


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_gradcheck_inputs_and_blobs(kind):
    n_states = 2 if kind == "LSTM" else 1
    layer = build(layer_text(kind, num_output=2, expose=True), [(3, 2, 3), (3, 2), (2, 2)] + [(1, 2, 2)] * n_states)
    cont = torch.from_numpy(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]))
    hidden = [torch.from_numpy(rand(1, 2, 2, seed=30 + k)) for k in range(n_states)]
    names = [f"blobs.{i}" for i in range(len(layer.blobs))]

    def f(x, xs, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (x, cont, xs, *hidden))[0]

    inputs = [torch.from_numpy(rand(3, 2, 3, seed=31)), torch.from_numpy(rand(2, 2, seed=32))]
    inputs += [b.detach().clone() for b in layer.blobs]
    assert torch.autograd.gradcheck(f, [t.requires_grad_(True) for t in inputs], eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_no_gradient_through_cont_or_exposed_states(kind):
    # Caffe shares only the data of the exposed state bottoms and tops, and never backpropagates to cont.
    n_states = 2 if kind == "LSTM" else 1
    layer = build(layer_text(kind, expose=True), [(3, 2, 4), (3, 2)] + [(1, 2, 3)] * n_states)
    x = torch.from_numpy(rand(3, 2, 4, seed=40)).requires_grad_(True)
    cont = torch.ones(3, 2, dtype=torch.float64, requires_grad=True)
    hidden = [torch.from_numpy(rand(1, 2, 3, seed=41 + k)).requires_grad_(True) for k in range(n_states)]
    y, *final = layer(x, cont, *hidden)
    assert all(not t.requires_grad for t in final)
    y.sum().backward()
    assert x.grad is not None and cont.grad is None and all(h.grad is None for h in hidden)


def test_errors_name_the_layer():
    with pytest.raises(CaffeCamError, match="'rec'.*abstract.*use type LSTM or RNN"):
        build("name: 'rec' type: 'Recurrent' recurrent_param { num_output: 3 }", [(3, 2, 4), (3, 2)])
    with pytest.raises(CaffeCamError, match="'rec'.*num_output must be positive"):
        build("name: 'rec' type: 'LSTM'", [(3, 2, 4), (3, 2)])
    with pytest.raises(CaffeCamError, match="'rec'.*cont of T×N"):
        build(layer_text("LSTM"), [(3, 2, 4), (3, 1)])
    with pytest.raises(CaffeCamError, match="'rec'.*x_static of N"):
        build(layer_text("RNN"), [(3, 2, 4), (3, 2), (5, 4)])
    with pytest.raises(CaffeCamError, match="'rec'.*initial hidden states of 1×N×num_output"):
        build(layer_text("LSTM", expose=True), [(3, 2, 4), (3, 2), (1, 2, 3), (1, 2, 4)])
    with pytest.raises(CaffeCamError, match="'rec'.*expects 4 bottoms"):
        build(layer_text("LSTM", expose=True), [(3, 2, 4), (3, 2)])


def test_lstm_in_a_net_trains_and_keeps_caffes_param_order():
    text = """
    layer { name: 'data' type: 'Input' top: 'x' top: 'cont' top: 't'
            input_param { shape { dim: 3 dim: 2 dim: 4 } shape { dim: 3 dim: 2 } shape { dim: 3 dim: 2 dim: 3 } } }
    layer { name: 'lstm' type: 'LSTM' bottom: 'x' bottom: 'cont' top: 'h'
            recurrent_param { num_output: 3 weight_filler { type: 'uniform' min: -0.3 max: 0.3 } } }
    layer { name: 'loss' type: 'EuclideanLoss' bottom: 'h' bottom: 't' top: 'loss' }
    """
    net = Net(parse_text(text, caffe_pb2.NetParameter), TRAIN, seed=0)
    assert [tuple(b.shape) for b in net.params["lstm"]] == [(12, 4), (12,), (12, 3)]
    feeds = {"x": torch.from_numpy(rand(3, 2, 4, seed=50)).float(), "cont": torch.from_numpy(CONT).float(),
             "t": torch.from_numpy(rand(3, 2, 3, seed=51)).float()}
    blobs = net(feeds)
    w = [b.detach().double().numpy() for b in net.params["lstm"]]
    np.testing.assert_allclose(blobs["h"].detach().numpy(), lstm_ref(rand(3, 2, 4, seed=50), CONT, *w)[0], rtol=1e-5,
                               atol=1e-6)
    net.loss(blobs).backward()
    assert all(b.grad is not None and b.grad.abs().sum() > 0 for b in net.params["lstm"])
