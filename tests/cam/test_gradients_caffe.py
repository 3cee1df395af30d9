"""The gradient methods against real Caffe's backward (tests/golden/gradcam/, made by make_gradcam_golden.py): Caffe's
∂y_c/∂A for the blob an in-place ReLU wrote, put through each paper's formula in NumPy, against our maps."""

from pathlib import Path

import numpy as np
import pytest
import torch

from caffecam.cam.maps import CamModel
from caffecam.engine.net import TEST, Net
from caffecam.engine.prototxt import read_net
from tests.golden import zoo_weights as zw

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "gradcam"


def numpy_map(method, a, g):
    """ReLU(Σ_k w_k A_k) with each paper's w (float64), from A and g = ∂y_c/∂A (N, C, h, w)."""
    if method == "gradcam":
        w = g.mean((2, 3))[:, :, None, None]
    elif method == "gradcam++":
        denom = 2 * g ** 2 + a.sum((2, 3), keepdims=True) * g ** 3
        alpha = np.divide(g ** 2, denom, out=np.zeros_like(g), where=denom != 0)
        w = (alpha * np.maximum(g, 0)).sum((2, 3))[:, :, None, None]
    elif method == "xgradcam":
        s = a.sum((2, 3))
        w = np.divide((g * a).sum((2, 3)), s, out=np.zeros_like(s), where=s != 0)[:, :, None, None]
    else:  # layercam
        w = np.maximum(g, 0)
    return np.maximum((w * a).sum(1), 0)


@pytest.fixture(scope="module")
def golden():
    ref = dict(np.load(GOLDEN / "gradcam.npz"))
    net = Net(read_net(GOLDEN / "net.prototxt"), TEST)
    with torch.no_grad():
        for lp, layer in zip(net.layer_params, net.layers):
            for i, blob in enumerate(layer.blobs):
                blob.copy_(torch.from_numpy(zw.blob_values(lp.type, lp.name, i, tuple(blob.shape))))
    return ref, net


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam", "layercam"])
def test_maps_from_caffes_gradients(golden, method):
    ref, net = golden
    model = CamModel(net, mean=(0,), device="cpu", channels_last=False, method=method)
    assert model.layers.feature_blob == "conv2" and model.note is None
    out = model.run(list(ref["input"].transpose(0, 2, 3, 1)), top_k=1)
    assert out.class_ids[:, 0].tolist() == ref["classes"].tolist()
    a, g = ref["conv2"].astype(np.float64), ref["conv2_diff"].astype(np.float64)
    expect = numpy_map(method, a, g)
    assert expect.max() > 0
    np.testing.assert_allclose(out.maps[:, 0], expect, rtol=1e-4, atol=1e-5 * expect.max())


def test_the_gradient_is_taken_at_the_relus_output(golden):
    # Caffe's full backward leaves relu2's input gradient, g·[A > 0], in the shared diff of conv2; Grad-CAM's weights
    # (means over the map) differ with it wherever A = 0 (XGrad-CAM's and Layer-CAM's do not: A = 0 there).
    ref, _ = golden
    a, g = ref["conv2"].astype(np.float64), ref["conv2_diff"].astype(np.float64)
    assert (a == 0).any() and (g[a == 0] != 0).any()
    before = numpy_map("gradcam", a, g * (a > 0))
    assert not np.allclose(before, numpy_map("gradcam", a, g), rtol=1e-3)
