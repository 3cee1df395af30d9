"""One LSTM time step with Caffe's gradient (lstm_unit_layer.cpp), as one autograd Function.

Gate pre-activations X = (i', f', o', g') along the last axis, each H wide, and a continuation flag per stream:

    i = σ(i')   f = 0 if cont = 0 else cont · σ(f')   o = σ(o')   g = tanh(g')
    c = f · c_prev + i · g          h = o · tanh(c)

Caffe's backward writes df' = dc_term · c_prev · f · (1 − f): the derivative of σ(f') only when cont is 0 or 1
(for another cont it is not the derivative of the forward), hence this Function rather than autograd.
    dc_term = dc + dh · o · (1 − tanh²(c)),  dc_prev = dc_term · f,  di' = dc_term · g · i(1 − i),
    do' = dh · tanh(c) · o(1 − o),  dg' = dc_term · i · (1 − g²).   cont gets no gradient.
"""

import torch


class _LSTMUnit(torch.autograd.Function):
    @staticmethod
    def forward(ctx, c_prev, gates, cont):
        i, f, o, g = gates.chunk(4, -1)
        i, o, g = torch.sigmoid(i), torch.sigmoid(o), torch.tanh(g)
        cont = cont.unsqueeze(-1)
        f = torch.where(cont == 0, 0.0, cont * torch.sigmoid(f))
        c = f * c_prev + i * g
        tanh_c = torch.tanh(c)
        ctx.save_for_backward(c_prev, i, f, o, g, tanh_c)
        return c, o * tanh_c

    @staticmethod
    def backward(ctx, dc, dh):
        c_prev, i, f, o, g, tanh_c = ctx.saved_tensors
        dc_term = dc + dh * o * (1 - tanh_c * tanh_c)
        dgates = torch.cat([dc_term * g * i * (1 - i), dc_term * c_prev * f * (1 - f),
                            dh * tanh_c * o * (1 - o), dc_term * i * (1 - g * g)], -1)
        return dc_term * f, dgates, None


def lstm_unit(c_prev, gates, cont):
    """(c, h) of one step: c_prev (…, H), gates (…, 4H) in Caffe's order i, f, o, g, cont (…)."""
    return _LSTMUnit.apply(c_prev, gates, cont.detach().to(gates.dtype))
