"""SoftmaxWithLoss and Accuracy against NumPy: normalization, ignore_label, ties, Caffe's FLT_MIN clamp."""

import math

import numpy as np
import pytest
import torch

from caffecam.engine.net import TRAIN, Net
from caffecam.engine.prototxt import parse_text
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2
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


def test_softmax_prob_top_passes_no_gradient():
    # Caffe's SoftmaxWithLoss backward reads only the loss top's diff.
    x = torch.from_numpy(rand(3, 4, seed=18)).requires_grad_(True)
    layer = build("name: 'loss' type: 'SoftmaxWithLoss' bottom: 'a' bottom: 'b' top: 'l' top: 'p'", [(3, 4), (3,)])
    loss, prob = layer(x, torch.tensor([0, 3, 1]))
    assert not prob.requires_grad
    loss.backward()
    close(x.grad.numpy(), (ref.softmax(x.detach().numpy()) - np.eye(4)[[0, 3, 1]]) / 3)


# ---------------------------------------------------------------- references from Caffe's formulas (float64)

LOG_THRESHOLD = float(np.float32(1e-20))  # Caffe's kLOG_THRESHOLD, a float


def normalizer(mode, outer, inner, valid):
    return max(1, {"FULL": outer * inner, "VALID": valid, "BATCH_SIZE": outer, "NONE": 1}[mode])


def infogain_ref(x, label, H, ignore=None, mode="VALID", axis=1):
    """(loss, dx): loss = −Σ_valid Σ_l H[y, l] log(max(p_l, 1e-20)) / norm,
    dx_l = (p_l Σ_k H[y, k] − H[y, l]) / norm."""
    p = np.moveaxis(ref.softmax(x, axis), axis, -1)
    flat_p, label = p.reshape(-1, p.shape[-1]), label.reshape(-1).astype(int)
    grad, loss, valid = np.zeros_like(flat_p), 0.0, 0
    for row, (probs, y) in enumerate(zip(flat_p, label)):
        if ignore is not None and y == ignore:
            continue
        loss -= sum(H[y, l] * math.log(max(probs[l], LOG_THRESHOLD)) for l in range(len(probs)))
        grad[row] = probs * H[y].sum() - H[y]
        valid += 1
    outer = int(np.prod(x.shape[:axis]))
    norm = normalizer(mode, outer, label.size // outer, valid)
    return loss / norm, np.moveaxis(grad.reshape(p.shape), -1, axis) / norm


H5 = np.abs(rand(5, 5, seed=60)) + np.eye(5)


@pytest.mark.parametrize("mode", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
def test_infogain_loss_axis_ignore_and_normalization(mode):
    x, label = rand(2, 3, 5, seed=61) * 2, np.array([[0, 4, 2], [1, 3, 4]])
    layer = build(f"name: 'ig' type: 'InfogainLoss' infogain_loss_param {{ axis: 2 }} "
                  f"loss_param {{ ignore_label: 4 normalization: {mode} }}", [x.shape, label.shape, H5.shape])
    xt = torch.from_numpy(x).requires_grad_(True)
    (loss,) = layer(xt, torch.from_numpy(label), torch.from_numpy(H5))
    loss.backward()
    want, grad = infogain_ref(x, label, H5, ignore=4, mode=mode, axis=2)
    close(loss.detach().numpy(), want)
    close(xt.grad.numpy(), grad)


def test_infogain_loss_from_a_binaryproto_clamp_and_prob_top(tmp_path):
    # H as Caffe's tools write it: legacy 4-D dims 1×1×L×L.
    blob = caffe_pb2.BlobProto(num=1, channels=1, height=5, width=5, data=H5.ravel().tolist())
    (tmp_path / "H.binaryproto").write_bytes(blob.SerializeToString())
    x = rand(4, 5, seed=62) * 2
    x[0, 1] = -80.0  # p ≈ e^−80 < 1e-20: the loss uses log(1e-20), the gradient the unclamped p
    label = np.array([1, 4, 0, 3])
    layer = build(f"name: 'ig' type: 'InfogainLoss' top: 'l' top: 'p' "
                  f"infogain_loss_param {{ source: '{tmp_path / 'H.binaryproto'}' }}", [x.shape, label.shape])
    xt = torch.from_numpy(x).requires_grad_(True)
    loss, prob = layer(xt, torch.from_numpy(label))
    loss.backward()
    want, grad = infogain_ref(x, label, H5.astype(np.float32).astype(np.float64))
    close(loss.detach().numpy(), want)
    close(xt.grad.numpy(), grad)
    close(prob.numpy(), ref.softmax(x))
    assert not prob.requires_grad


def test_infogain_loss_errors():
    with pytest.raises(CaffeCamError, match="'ig'.*infogain_loss_param.source"):
        build("name: 'ig' type: 'InfogainLoss'", [(4, 5), (4,)])
    with pytest.raises(CaffeCamError, match="'ig'.*H has 16 values, needs 5×5"):
        build("name: 'ig' type: 'InfogainLoss'", [(4, 5), (4,), (4, 4)])
    with pytest.raises(CaffeCamError, match="'ig'.*normalize is deprecated"):
        build("name: 'ig' type: 'InfogainLoss' loss_param { normalize: true }", [(4, 5), (4,), (5, 5)])
    with pytest.raises(CaffeCamError, match="nothing.binaryproto: file not found"):
        build("name: 'ig' type: 'InfogainLoss' infogain_loss_param { source: 'nothing.binaryproto' }", [(4, 5), (4,)])


def test_multinomial_logistic_loss_and_its_clamped_gradient():
    p = ref.softmax(rand(4, 5, seed=63))
    p[2, 3] = 0.0  # clamped at 1e-20: the loss adds −log(1e-20) and the gradient is −1/1e-20 / N, as in Caffe
    label = np.array([1, 0, 3, 2])
    layer = build("name: 'mll' type: 'MultinomialLogisticLoss'", [(4, 5, 1, 1), (4, 1, 1, 1)])
    pt = torch.from_numpy(p.reshape(4, 5, 1, 1)).requires_grad_(True)
    (loss,) = layer(pt, torch.from_numpy(label.reshape(4, 1, 1, 1)))
    loss.backward()
    picked = np.maximum(p[np.arange(4), label], LOG_THRESHOLD)
    close(loss.detach().numpy(), -np.log(picked).sum() / 4)
    grad = np.zeros((4, 5))
    grad[np.arange(4), label] = -1 / picked / 4
    close(pt.grad.numpy().reshape(4, 5), grad)
    with pytest.raises(CaffeCamError, match="'mll'.*one label per sample"):
        build("name: 'mll' type: 'MultinomialLogisticLoss'", [(4, 5), (4, 2)])


def sigmoid_ce_ref(x, t, ignore=None, mode="BATCH_SIZE"):
    """(loss, dx): −Σ_valid [t log σ(x) + (1 − t) log(1 − σ(x))] / norm, dx = (σ(x) − t) / norm (0 where ignored)."""
    s = 1 / (1 + np.exp(-x))
    valid = np.ones(x.shape, bool) if ignore is None else np.trunc(t) != ignore
    loss = -(t * np.log(s) + (1 - t) * np.log(1 - s))[valid].sum()
    norm = normalizer(mode, x.shape[0], x[0].size, valid.sum())
    return loss / norm, np.where(valid, s - t, 0) / norm


@pytest.mark.parametrize("loss_text,mode", [
    ("", "BATCH_SIZE"),  # Caffe's default here, unlike SoftmaxWithLoss
    ("normalization: FULL", "FULL"),
    ("normalization: VALID", "VALID"),
    ("normalization: NONE", "NONE"),
    ("normalize: true", "VALID"),
    ("normalize: false", "BATCH_SIZE"),
    ("normalize: true normalization: NONE", "NONE"),
])
def test_sigmoid_cross_entropy_loss(loss_text, mode):
    x = rand(3, 4, seed=64) * 3
    x[0, 0] = 0.0  # the slope at 0 is σ(0) − t
    t = np.array([[1, 0, 1, -1], [0.3, 1, -1, 0], [1, 1, 0, 0.7]])  # soft targets; −1 ignored
    layer = build(f"name: 'sce' type: 'SigmoidCrossEntropyLoss' loss_param {{ ignore_label: -1 {loss_text} }}",
                  [x.shape, t.shape])
    xt = torch.from_numpy(x).requires_grad_(True)
    (loss,) = layer(xt, torch.from_numpy(t))
    loss.backward()
    want, grad = sigmoid_ce_ref(x, t, ignore=-1, mode=mode)
    close(loss.detach().numpy(), want)
    close(xt.grad.numpy(), grad)


def test_sigmoid_cross_entropy_is_stable_for_large_scores():
    x, t = np.array([[200.0, -200.0, 30.0]]), np.array([[0.0, 1.0, 1.0]])
    (loss,) = run(build("name: 'sce' type: 'SigmoidCrossEntropyLoss'", [x.shape, t.shape]), x, t)
    close(loss, 400.0 + np.log1p(np.exp(-30.0)))
    with pytest.raises(CaffeCamError, match="'sce'.*same count"):
        build("name: 'sce' type: 'SigmoidCrossEntropyLoss'", [(3, 4), (3, 5)])


def test_net_loss_sums_weighted_losses_and_their_gradients():
    # Caffe: the objective is Σ loss_weight · top over the loss tops (types ending in Loss default to 1 on top 0;
    # loss_weight 0 takes a loss out); each layer's gradient is scaled by its weight.
    text = """
    layer { name: 'data' type: 'Input' top: 'x' top: 'y' top: 't'
            input_param { shape { dim: 4 dim: 6 } shape { dim: 4 } shape { dim: 4 dim: 5 } } }
    layer { name: 'ip' type: 'InnerProduct' bottom: 'x' top: 'z' inner_product_param { num_output: 5 } }
    layer { name: 'cls' type: 'SoftmaxWithLoss' bottom: 'z' bottom: 'y' top: 'l1' loss_weight: 0.3 }
    layer { name: 'reg' type: 'EuclideanLoss' bottom: 'z' bottom: 't' top: 'l2' loss_weight: 2 }
    layer { name: 'sig' type: 'SigmoidCrossEntropyLoss' bottom: 'z' bottom: 't' top: 'l3' }
    layer { name: 'off' type: 'HingeLoss' bottom: 'z' bottom: 'y' top: 'l4' loss_weight: 0 }
    """
    net = Net(parse_text(text, caffe_pb2.NetParameter), TRAIN).double()
    x, y, t = rand(4, 6, seed=70), np.array([1, 0, 4, 2]), np.random.default_rng(3).random((4, 5))
    w, b = rand(5, 6, seed=71), rand(5, seed=72)
    with torch.no_grad():
        net.params["ip"][0].copy_(torch.from_numpy(w))
        net.params["ip"][1].copy_(torch.from_numpy(b))
    blobs = net({"x": torch.from_numpy(x), "y": torch.from_numpy(y), "t": torch.from_numpy(t)})
    loss = net.loss(blobs)
    loss.backward()
    z = x @ w.T + b
    sce, d_sce = sigmoid_ce_ref(z, t)
    close(loss.item(), 0.3 * ref.softmax_loss(z, y) + 2 * ((z - t) ** 2).sum() / 8 + sce)
    dz = 0.3 * (ref.softmax(z) - np.eye(5)[y]) / 4 + 2 * (z - t) / 4 + d_sce
    close(net.params["ip"][0].grad.numpy(), dz.T @ x)
    close(net.params["ip"][1].grad.numpy(), dz.sum(0))
