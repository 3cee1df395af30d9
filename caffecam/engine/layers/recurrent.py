"""Caffe's recurrent family: LSTMUnit, LSTM, RNN (and the abstract Recurrent, an error).

Caffe builds LSTM and RNN as an unrolled inner net (recurrent_layer.cpp, lstm_layer.cpp, rnn_layer.cpp); here the
same arithmetic runs as a loop over time, with the inner net's learnable blobs in its order and shapes, so that
caffemodels load. Bottoms: x (T×N×…), cont (T×N), then x_static (N×…) if given, then with expose_hidden the initial
states (1×N×H: h_0, and c_0 for LSTM). Tops: the output (T×N×H), then with expose_hidden the final states.

cont_t = 0 starts a new sequence: the previous h is multiplied by cont_t (and LSTMUnit drops the previous c).
Without expose_hidden the initial state is the final state of the previous forward pass (zeros at first), carried
over without gradient, as Caffe copies its recurrent outputs into its inputs before each forward (here zeros
again when the number of streams N changes; Caffe keeps whatever its reshaped blob holds). With
expose_hidden, Caffe shares only the data of the hidden bottoms and tops: no gradient flows through them either.
"""

import math

import torch
import torch.nn.functional as F

from caffecam.engine.kernels.lstm_unit import lstm_unit
from caffecam.engine.layers.base import Layer, register


@register()
class Recurrent(Layer):
    def setup(self, lp, shapes, gen):
        self.fail("Recurrent is Caffe's abstract base of the recurrent layers; use type LSTM or RNN")


@register()
class LSTMUnit(Layer):
    """Bottoms c_prev (1×N×H), gate inputs (1×N×4H, order i, f, o, g), cont (1×N); tops c, h (1×N×H)."""

    def setup(self, lp, shapes, gen):
        self.need_bottoms(shapes, 3)
        c, x, cont = shapes
        if len(c) != 3 or len(x) != 3 or len(cont) != 2 or {c[0], x[0], cont[0]} != {1} \
                or not c[1] == x[1] == cont[1] or x[2] != 4 * c[2]:
            self.fail(f"needs bottoms 1×N×H, 1×N×4H and 1×N, got {c}, {x}, {cont}")
        return [c, c]

    def forward(self, c_prev, gates, cont):
        return list(lstm_unit(c_prev, gates, cont))


class _Unrolled(Layer):
    """What LSTM and RNN share: bottoms, blobs of the input transforms, the carried state."""

    n_states = 1  # recurrent state blobs (h; LSTM: h and c)
    width = 1  # rows of the input transforms per output unit (LSTM: 4 gates)

    def setup(self, lp, shapes, gen):
        p = lp.recurrent_param
        self.hidden, self.expose = p.num_output, p.expose_hidden
        if self.hidden < 1:
            self.fail("recurrent_param.num_output must be positive")
        n_exposed = self.n_states if self.expose else 0
        if len(shapes) not in (2 + n_exposed, 3 + n_exposed):
            self.fail(f"expects {2 + n_exposed} bottoms (x, cont{', initial states' if n_exposed else ''}) "
                      f"or one more (x_static after cont), got {len(shapes)}")
        x, cont = shapes[:2]
        if len(x) < 3:
            self.fail(f"needs an input x of T×N×… (at least 3 axes), got {x}")
        if cont != x[:2]:
            self.fail(f"needs a sequence continuation blob cont of T×N = {x[:2]}, got {cont}")
        self.static = len(shapes) > 2 + n_exposed
        if self.static and (len(shapes[2]) < 1 or shapes[2][0] != x[1]):
            self.fail(f"needs a static input x_static of N×… with N = {x[1]}, got {shapes[2]}")
        state = (1, x[1], self.hidden)
        for s in shapes[2 + self.static:]:
            if s != state:
                self.fail(f"needs initial hidden states of 1×N×num_output = {state}, got {s}")
        rows = self.width * self.hidden
        self.add_blob((rows, math.prod(x[2:])), p.weight_filler, gen)  # W_xc (LSTM) / W_xh (RNN)
        self.add_blob((rows,), p.bias_filler, gen)  # b_c / b_h
        if self.static:
            self.add_blob((rows, math.prod(shapes[2][1:])), p.weight_filler, gen)  # W_xc_static / W_xh_static
        self.add_blob((rows, self.hidden), p.weight_filler, gen)  # W_hc / W_hh
        self.carried = None
        return [(x[0], x[1], self.hidden)] + [state] * n_exposed

    def initial_states(self, x, exposed):
        if self.expose:
            return [s.detach()[0] for s in exposed]
        carried = self.carried
        if carried is None or carried[0].shape != (x.shape[1], self.hidden):
            return [x.new_zeros(x.shape[1], self.hidden)] * self.n_states
        return [s.to(x) for s in carried]

    def forward(self, x, cont, *rest):
        t, n = x.shape[:2]
        cont = cont.detach().to(x.dtype)
        x_static, exposed = (rest[0], rest[1:]) if self.static else (None, rest)
        # Inner products over axis 2 (x) and axis 1 (x_static), as Caffe's x_transform / x_static_transform.
        from_x = F.linear(x.reshape(t, n, -1), self.blobs[0], self.blobs[1])
        from_static = F.linear(x_static.reshape(n, -1), self.blobs[2]) if self.static else None
        outputs, states = self.run(from_x, from_static, cont, self.initial_states(x, exposed))
        states = [s.detach() for s in states]
        if not self.expose:
            self.carried = states
        return [outputs] + ([s[None] for s in states] if self.expose else [])

    def gate_input(self, h, cont_t, from_x_t, from_static, w_h):
        """W_h · (cont_t · h) + from_x_t (+ from_static), summed in the order of Caffe's Eltwise."""
        out = F.linear(h * cont_t[:, None], w_h) + from_x_t
        return out + from_static if from_static is not None else out


@register()
class LSTM(_Unrolled):
    """Blobs: W_xc (4H×K), b_c (4H), [W_xc_static (4H×K_static)], W_hc (4H×H); gate order i, f, o, g.
    gate_t = W_hc·(cont_t·h_{t−1}) + W_xc·x_t + b_c [+ W_xc_static·x_static]; (c_t, h_t) = LSTMUnit(c_{t−1},
    gate_t, cont_t); output h_1..h_T."""

    n_states, width = 2, 4

    def run(self, from_x, from_static, cont, states):
        h, c = states
        w_h = self.blobs[-1]
        outputs = []
        for t in range(from_x.shape[0]):
            c, h = lstm_unit(c, self.gate_input(h, cont[t], from_x[t], from_static, w_h), cont[t])
            outputs.append(h)
        return torch.stack(outputs), [h, c]


@register()
class RNN(_Unrolled):
    """Blobs: W_xh (H×K), b_h (H), [W_xh_static (H×K_static)], W_hh (H×H), W_ho (H×H), b_o (H).
    h_t = tanh(W_hh·(cont_t·h_{t−1}) + W_xh·x_t + b_h [+ W_xh_static·x_static]); output o_t = tanh(W_ho·h_t + b_o)."""

    def setup(self, lp, shapes, gen):
        tops = super().setup(lp, shapes, gen)
        p = lp.recurrent_param
        self.add_blob((self.hidden, self.hidden), p.weight_filler, gen)  # W_ho
        self.add_blob((self.hidden,), p.bias_filler, gen)  # b_o
        return tops

    def run(self, from_x, from_static, cont, states):
        (h,) = states
        w_hh, w_ho, b_o = self.blobs[-3], self.blobs[-2], self.blobs[-1]
        outputs = []
        for t in range(from_x.shape[0]):
            h = torch.tanh(self.gate_input(h, cont[t], from_x[t], from_static, w_hh))
            outputs.append(torch.tanh(F.linear(h, w_ho, b_o)))
        return torch.stack(outputs), [h]
