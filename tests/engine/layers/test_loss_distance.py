"""EuclideanLoss, ContrastiveLoss and HingeLoss against float64 NumPy references written from Caffe's forward and
backward formulas (euclidean_loss_layer.cpp, contrastive_loss_layer.cpp, hinge_loss_layer.cpp)."""

import numpy as np
import pytest
import torch

from caffecam.errors import CaffeCamError
from tests.engine.layers.helpers import build, close, rand


def loss_and_grads(layer, *arrays, grad_of=(0,), weight=1.0):
    ts = [torch.from_numpy(np.asarray(a, dtype=np.float64)) for a in arrays]
    for i in grad_of:
        ts[i].requires_grad_(True)
    (loss,) = layer(*ts)
    (weight * loss).backward()
    return loss.item(), [ts[i].grad.numpy() for i in grad_of]


def test_euclidean_loss_both_bottoms_get_gradients():
    a, b = rand(4, 3, 2, seed=1), rand(4, 6, seed=2)
    layer = build("name: 'e' type: 'EuclideanLoss'", [a.shape, b.shape])
    loss, (da, db) = loss_and_grads(layer, a, b, grad_of=(0, 1), weight=2.5)
    diff = a.reshape(4, 6) - b
    close(loss, (diff ** 2).sum() / 4 / 2)
    close(da.reshape(4, 6), 2.5 * diff / 4)
    close(db, -2.5 * diff / 4)
    with pytest.raises(CaffeCamError, match="'e'.*same dimension"):
        build("name: 'e' type: 'EuclideanLoss'", [(4, 3), (4, 2)])


def contrastive_ref(a, b, y, margin, legacy):
    """(loss, da) as Caffe: dissimilar pairs (int(y) == 0) push apart up to the margin; the new version's gradient
    divides by d + 1e-4."""
    n = a.shape[0]
    a, b = a.reshape(n, -1), b.reshape(n, -1)
    loss, da = 0.0, np.zeros_like(a)
    for i in range(n):
        diff = a[i] - b[i]
        d2 = diff @ diff
        d = np.sqrt(d2)
        if int(y.ravel()[i]):
            loss += d2
            da[i] = diff / n
        elif legacy:
            loss += max(margin - d2, 0.0)
            da[i] = -diff / n if margin - d2 > 0 else 0
        else:
            loss += max(margin - d, 0.0) ** 2
            da[i] = -(margin - d) / (d + 1e-4) * diff / n if margin - d > 0 else 0
    return loss / n / 2, da


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss(legacy):
    a, b = rand(6, 3, 1, 1, seed=3) * 0.6, rand(6, 3, 1, 1, seed=4) * 0.6
    b[5] = a[5]  # a dissimilar pair at distance 0: no NaN, gradient 0 (Caffe's +1e-4)
    b[4] = a[4] + 2.0  # a dissimilar pair beyond the margin: no gradient
    y = np.array([1, 0, 0.5, 2, 0, 0]).reshape(6, 1, 1, 1)  # 0.5 truncates to 0: dissimilar
    flag = "true" if legacy else "false"
    layer = build(f"name: 'c' type: 'ContrastiveLoss' contrastive_loss_param {{ margin: 1.5 legacy_version: {flag} }}",
                  [a.shape, b.shape, y.shape])
    loss, (da, db) = loss_and_grads(layer, a, b, y, grad_of=(0, 1))
    want, want_da = contrastive_ref(a, b, y, 1.5, legacy)
    close(loss, want)
    close(da.reshape(6, 3), want_da)
    close(db.reshape(6, 3), -want_da)
    assert np.all(da[4:] == 0)


def test_contrastive_loss_shapes():
    build("name: 'c' type: 'ContrastiveLoss'", [(4, 3), (4, 3), (4,)])
    with pytest.raises(CaffeCamError, match="'c'.*N×C×1×1"):
        build("name: 'c' type: 'ContrastiveLoss'", [(4, 3, 2, 2), (4, 3, 2, 2), (4,)])
    with pytest.raises(CaffeCamError, match="'c'.*expects 3 bottom"):
        build("name: 'c' type: 'ContrastiveLoss'", [(4, 3), (4, 3)])


def hinge_ref(x, label, squared):
    """(loss, dx): t = x with the label's entry negated, m = max(0, 1 + t); L1: Σm/N, dx = sign(t')·[m > 0]/N;
    L2: Σm²/N, dx = 2·m·sign/N, sign = −1 at the label."""
    n = x.shape[0]
    flat = x.reshape(n, -1)
    sign = np.ones_like(flat)
    sign[np.arange(n), label.astype(int)] = -1
    m = np.maximum(0.0, 1 + sign * flat)
    if squared:
        return (m ** 2).sum() / n, (2 * m * sign / n).reshape(x.shape)
    return m.sum() / n, ((m > 0) * sign / n).reshape(x.shape)


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss(norm):
    x, label = rand(5, 4, 1, 1, seed=5), np.array([0, 3, 1, 1, 2])
    layer = build(f"name: 'h' type: 'HingeLoss' hinge_loss_param {{ norm: {norm} }}", [x.shape, label.shape])
    loss, (dx,) = loss_and_grads(layer, x, label)
    want, want_dx = hinge_ref(x, label, norm == "L2")
    close(loss, want)
    close(dx, want_dx)
    # Spatial bottoms: the label indexes the whole flattened sample, as Caffe's dim = count / num.
    xs, ls = rand(3, 2, 2, seed=6), np.array([3, 0, 2])
    loss, (dx,) = loss_and_grads(build("name: 'h' type: 'HingeLoss'", [xs.shape, ls.shape]), xs, ls)
    close(loss, hinge_ref(xs, ls, False)[0])
    close(dx, hinge_ref(xs, ls, False)[1])


def test_hinge_loss_label_out_of_range():
    layer = build("name: 'h' type: 'HingeLoss'", [(2, 3), (2,)])
    with pytest.raises(CaffeCamError, match="'h'.*out of range for 3"):
        loss_and_grads(layer, rand(2, 3, seed=7), np.array([0, 3]))
