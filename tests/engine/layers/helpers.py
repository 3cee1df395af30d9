"""Building one layer from prototxt text and running it, for the layer tests."""

import numpy as np
import torch

from caffecam.engine.layers import make_layer
from caffecam.engine.prototxt import parse_text
from caffecam.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
RTOL, ATOL = 1e-5, 1e-8


def build(text, shapes, phase=TEST, seed=0):
    lp = parse_text(text, caffe_pb2.LayerParameter)
    return make_layer(lp, shapes, phase, torch.Generator().manual_seed(seed)).double()


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def run(layer, *arrays):
    with torch.no_grad():
        return [t.numpy() for t in layer(*[torch.from_numpy(np.asarray(a, dtype=np.float64)) for a in arrays])]


def set_blobs(layer, *arrays):
    with torch.no_grad():
        for blob, a in zip(layer.blobs, arrays):
            blob.copy_(torch.from_numpy(a))


def close(a, b, **kw):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, **kw)


# ---------------------------------------------------------------- gradients (float64 gradcheck, tiny inputs)

def gradcheck_layer(layer, x, with_params=True):
    names = [f"blobs.{i}" for i in range(len(layer.blobs))] if with_params else []
    params = [layer.blobs[i].detach().clone().requires_grad_(True) for i in range(len(names))]

    def f(inp, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (inp,))[0]

    assert torch.autograd.gradcheck(f, (x.requires_grad_(True), *params), eps=1e-6, atol=1e-5, rtol=1e-4)
