"""SoftmaxWithLoss and Accuracy against NumPy: normalization, ignore_label, ties, Caffe's FLT_MIN clamp."""

import numpy as np
import pytest
import torch

from caffecam.errors import CaffeCamError
from tests import numpy_ref as ref
from tests.engine.layers.helpers import build, close, rand, run


@pytest.mark.parametrize("loss_text,ignore,norm", [
    ("", None, "VALID"),
    ("loss_param { ignore_label: 2 }", 2, "VALID"),
    ("loss_param { ignore_label: 2 normalization: FULL }", 2, "FULL"),
    ("loss_param { ignore_label: 2 normalization: BATCH_SIZE }", 2, "BATCH_SIZE"),
    ("loss_param { ignore_label: 2 normalization: NONE }", 2, "NONE"),
    ("loss_param { ignore_label: 2 normalize: false }", 2, "BATCH_SIZE"),
    ("loss_param { ignore_label: 2 normalize: true }", 2, "VALID"),
])
def test_softmax_with_loss(loss_text, ignore, norm):
    x = rand(4, 5, seed=15) * 2
    label = np.array([2, 0, 4, 2])
    layer = build(f"name: 'loss' type: 'SoftmaxWithLoss' bottom: 'a' bottom: 'b' top: 'l' {loss_text}",
                  [x.shape, label.shape])
    (y,) = run(layer, x, label)
    assert layer.top_shapes == [()] and y.shape == ()
    close(y, ref.softmax_loss(x, label, ignore, norm))


def test_softmax_with_loss_spatial_and_prob_top():
    x = rand(2, 3, 2, 2, seed=16)
    label = np.random.default_rng(1).integers(0, 3, size=(2, 1, 2, 2))
    layer = build("name: 'loss' type: 'SoftmaxWithLoss' bottom: 'a' bottom: 'b' top: 'l' top: 'p'",
                  [x.shape, label.shape])
    loss, prob = run(layer, x, label)
    close(loss, ref.softmax_loss(x, label))
    close(prob, ref.softmax(x, 1))
    with pytest.raises(CaffeCamError, match="'loss'"):
        build("name: 'loss' type: 'SoftmaxWithLoss' bottom: 'a' bottom: 'b' top: 'l'", [(2, 3), (3,)])


def test_accuracy_top_k_ties_and_ignore():
    # Caffe (accuracy_layer.cpp/.cu): num_better = −1 + #classes scoring >= the true one; correct if < top_k.
    x = np.array([[1.0, 2.0, 2.0, 0.0],    # label 1: tied with class 2 -> wrong at top-1, correct at top-2
                  [1.0, 2.0, 2.0, 0.0],    # label 0: two higher -> correct only at top-3
                  [0.5, 0.1, 0.2, 0.9],    # label 3: correct
                  [0.5, 0.5, 0.5, 0.5],    # label 2: all tied -> wrong even at top-3
                  [3.0, 1.0, 2.0, 0.0]])   # label 3: three higher -> wrong even at top-3
    label = np.array([1, 0, 3, 2, 3])
    for k, expect in ((1, 1 / 5), (2, 2 / 5), (3, 3 / 5), (4, 1.0)):
        layer = build(f"name: 'acc' type: 'Accuracy' accuracy_param {{ top_k: {k} }}", [x.shape, label.shape])
        (y,) = run(layer, x, label)
        close(y, expect)
        close(y, ref.accuracy(x, label, k))
    layer = build("name: 'acc' type: 'Accuracy' accuracy_param { top_k: 1 ignore_label: 0 }", [x.shape, label.shape])
    (y,) = run(layer, x, label)
    close(y, 1 / 4)
    xr, lr = rand(30, 6, seed=17), np.random.default_rng(2).integers(0, 6, 30)
    for k in (1, 2, 5):
        (y,) = run(build(f"name: 'acc' type: 'Accuracy' accuracy_param {{ top_k: {k} }}", [xr.shape, lr.shape]), xr, lr)
        close(y, ref.accuracy(xr, lr, k))
    with pytest.raises(CaffeCamError, match="'acc'"):
        build("name: 'acc' type: 'Accuracy' accuracy_param { top_k: 5 }", [(2, 4), (2,)])


@pytest.mark.parametrize("kind", ["SoftmaxWithLoss", "Accuracy"])
def test_out_of_range_label_is_an_error(kind):
    layer = build(f"name: 'lab' type: '{kind}' bottom: 'a' bottom: 'b' top: 'l'", [(2, 3), (2,)])
    for bad in (5, -1):
        with pytest.raises(CaffeCamError, match=rf"'lab'.*label {bad}.*3 classes"):
            run(layer, rand(2, 3, seed=50), np.array([0, bad]))
    ignoring = build(f"name: 'lab' type: '{kind}' bottom: 'a' bottom: 'b' top: 'l' "
                     + ("loss_param" if kind == "SoftmaxWithLoss" else "accuracy_param") + " { ignore_label: -1 }",
                     [(2, 3), (2,)])
    (y,) = run(ignoring, rand(2, 3, seed=50), np.array([0, -1]))  # an ignored label may be out of range
    assert np.isfinite(y)


def test_softmax_loss_clamps_at_flt_min_like_caffe():
    # The true class 200 below the best: p ≈ e^−200 < FLT_MIN, so Caffe's loss is −log(FLT_MIN) = 87.3365.
    x = np.array([[200.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    label = np.array([1, 2])
    layer = build("name: 'loss' type: 'SoftmaxWithLoss' bottom: 'a' bottom: 'b' top: 'l' "
                  "loss_param { normalization: NONE }", [x.shape, label.shape])
    (y,) = run(layer, x, label)
    close(y, ref.softmax_loss(x, label, normalization="NONE"))
    close(y, -np.log(np.finfo(np.float32).tiny) - np.log(ref.softmax(x[1:])[0, 2]))
    # The gradient is Caffe's (p − onehot), not cut by the clamp.
    xt = torch.from_numpy(x).requires_grad_(True)
    layer(xt, torch.from_numpy(label))[0].backward()
    onehot = np.eye(3)[label]
    close(xt.grad.numpy(), ref.softmax(x) - onehot)
