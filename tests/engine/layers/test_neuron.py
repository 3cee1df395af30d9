"""ReLU and Dropout against NumPy and their statistics."""

import numpy as np
import pytest
import torch

from tests import numpy_ref as ref
from tests.engine.layers.helpers import TEST, TRAIN, build, close, rand, run

# ---------------------------------------------------------------- element-wise and shape layers

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
