"""Caffe's weight fillers. fan_in = count / shape[0], fan_out = count / shape[1]."""

import math

import torch

from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2

_NORM = caffe_pb2.FillerParameter


def _fan(shape, variance_norm):
    count = math.prod(shape)
    fan_in = count / shape[0]
    fan_out = count / shape[1] if len(shape) > 1 else count
    if variance_norm == _NORM.FAN_OUT:
        return fan_out
    if variance_norm == _NORM.AVERAGE:
        return (fan_in + fan_out) / 2
    return fan_in


KNOWN = ("constant", "uniform", "gaussian", "xavier", "msra", "positive_unitball", "bilinear")


def check_filler(shape, filler, where="filler"):
    """The errors Caffe's fillers raise at set-up, without drawing a value (a net set up on meta tensors checks its
    fillers here: drawing on the meta device would import torch's compiler stack, 1 s of start-up)."""
    kind = filler.type if filler is not None else "constant"
    if kind not in KNOWN:
        raise CaffeCamError(f"{where}: unknown filler type '{kind}' (known: {', '.join(KNOWN)})")
    if kind == "uniform" and filler.min > filler.max:
        raise CaffeCamError(f"{where}: uniform filler has min {filler.min:g} above max {filler.max:g}")
    if kind == "gaussian" and filler.std < 0:
        raise CaffeCamError(f"{where}: gaussian filler has a negative std {filler.std:g}")
    if kind == "bilinear" and math.prod(shape):
        if len(shape) != 4 or shape[2] != shape[3]:
            raise CaffeCamError(f"{where}: the bilinear filler needs a 4-D blob with a square kernel, got {shape}")
        if filler.sparse != -1:
            raise CaffeCamError(f"{where}: the bilinear filler does not support sparse")


def fill(shape, filler, generator=None, where="filler"):
    """A float32 tensor of `shape` filled as Caffe's `filler` (a FillerParameter; None means constant 0)."""
    shape = tuple(int(d) for d in shape)
    kind = filler.type if filler is not None else "constant"
    check_filler(shape, filler, where)
    if math.prod(shape) == 0:
        return torch.zeros(shape)  # nothing to fill (the fans below would divide by zero)
    if kind == "constant":
        return torch.full(shape, filler.value if filler is not None else 0.0)
    if kind == "uniform":
        return torch.empty(shape).uniform_(filler.min, filler.max, generator=generator)
    if kind == "gaussian":
        out = torch.empty(shape).normal_(filler.mean, filler.std, generator=generator)
        if filler.sparse >= 0:
            # Caffe keeps each weight with probability sparse / num_outputs (num_outputs = shape[0]).
            keep = min(1.0, filler.sparse / shape[0])
            out *= torch.empty(shape).bernoulli_(keep, generator=generator)
        return out
    if kind == "xavier":
        # The `std` field some prototxts give xavier (GoogLeNet's do) is ignored, as in Caffe.
        bound = math.sqrt(3.0 / _fan(shape, filler.variance_norm))
        return torch.empty(shape).uniform_(-bound, bound, generator=generator)
    if kind == "msra":
        std = math.sqrt(2.0 / _fan(shape, filler.variance_norm))
        return torch.empty(shape).normal_(0.0, std, generator=generator)
    if kind == "positive_unitball":
        out = torch.rand(shape, generator=generator)
        return out / out.reshape(shape[0], -1).sum(1).reshape((shape[0],) + (1,) * (len(shape) - 1))
    return _bilinear(shape)


def _bilinear(shape):
    """Caffe's BilinearFiller (filler.hpp), the upsampling kernel for Deconvolution: for a square k×k kernel,
    f = ceil(k / 2), c = (k − 1) / (2f), w[…, y, x] = (1 − |x/f − c|) · (1 − |y/f − c|), the same for every channel."""
    k = shape[3]
    f = math.ceil(k / 2)
    c = torch.tensor((k - 1) / (2.0 * f), dtype=torch.float32)
    ramp = 1 - (torch.arange(k, dtype=torch.float32) / f - c).abs()  # in float, as Caffe: its exact values
    return (ramp[:, None] * ramp[None, :]).expand(shape).clone()
