"""LRN (both regions) against the float64 NumPy reference."""

import pytest
import torch

from caffecam.errors import CaffeCamError
from tests import numpy_ref as ref
from tests.engine.layers.helpers import build, close, gradcheck_layer, rand, run

# ---------------------------------------------------------------- LRN

@pytest.mark.parametrize("size,alpha,beta,k,c",
                         [(5, 0.3, 0.75, 2.0, 7), (3, 1.0, 0.5, 1.0, 2), (5, 1e-4, 0.75, 1.0, 1)])
def test_lrn_across_channels_edges(size, alpha, beta, k, c):
    x = rand(2, c, 3, 4, seed=8) * 2
    layer = build(f"name: 'n' type: 'LRN' lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} k: {k} }}",
                  [x.shape])
    (y,) = run(layer, x)
    close(y, ref.lrn_across(x, size, alpha, beta, k))


def test_lrn_within_channel_ignores_k():
    x = rand(2, 3, 6, 5, seed=9) * 2
    for size in (3, 5):
        layer = build(f"name: 'n' type: 'LRN' lrn_param {{ local_size: {size} alpha: 0.7 beta: 0.6 k: 9 "
                      "norm_region: WITHIN_CHANNEL }", [x.shape])
        (y,) = run(layer, x)
        close(y, ref.lrn_within(x, size, 0.7, 0.6))


def test_lrn_even_size_is_an_error():
    with pytest.raises(CaffeCamError, match="'n'.*odd"):
        build("name: 'n' type: 'LRN' lrn_param { local_size: 4 }", [(1, 3, 2, 2)])


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_gradcheck_lrn(region):
    layer = build(f"name: 'n' type: 'LRN' lrn_param {{ local_size: 3 alpha: 0.5 beta: 0.75 norm_region: {region} }}",
                  [(1, 4, 3, 3)])
    gradcheck_layer(layer, torch.from_numpy(rand(1, 4, 3, 3, seed=42)), with_params=False)


def test_lrn_needs_a_4d_bottom():
    # Caffe: "Input must have 4 axes"; a 2-D bottom used to fail inside conv2d at the first forward.
    with pytest.raises(CaffeCamError, match=r"'n'.*N×C×H×W"):
        build("name: 'n' type: 'LRN'", [(2, 6)])
