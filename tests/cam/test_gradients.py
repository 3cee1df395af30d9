"""The gradient family (cam/gradients.py) against torchcam 0.5 on the same Caffe nets through the adapter, Grad-CAM++
against the paper's formula in NumPy, Grad-CAM against CAM × h·w, and the choice of method and blob."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchcam.methods import CAM, GradCAM, LayerCAM, ScoreCAM, SmoothGradCAMpp, XGradCAM

from caffecam.bench.cam import TorchcamAdapter
from caffecam.cam.gradients import TITLES, choose_layers, default_layer, score_layers
from caffecam.cam.maps import CamModel
from caffecam.engine.net import TEST, Net
from caffecam.engine.prototxt import parse_text
from caffecam.engine.weights import save_caffemodel
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2
from tests.cam.report_helpers import ORACLE3, make_images, oracle3_net

BODY = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 24 dim: 24 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1
    weight_filler { type: "gaussian" std: 0.05 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1
    weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.05 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
"""
SOFTMAX = 'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }\n'
GAP_HEAD = """
layer { name: "gap" type: "Pooling" bottom: "conv2" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "gap" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 1 } bias_filler { type: "constant" } } }
""" + SOFTMAX
# No global pooling: a 2×2 max pooling, a hidden layer with a ReLU, so the gradients vary over the map (AlexNet-like).
FC_HEAD = """
layer { name: "pool" type: "Pooling" bottom: "conv2" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "hidden" type: "InnerProduct" bottom: "pool" top: "hidden"
  inner_product_param { num_output: 16 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu3" type: "ReLU" bottom: "hidden" top: "hidden" }
layer { name: "fc" type: "InnerProduct" bottom: "hidden" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 1 } } }
""" + SOFTMAX
REPO = Path(__file__).resolve().parents[2]
TORCHCAM = {"gradcam": GradCAM, "xgradcam": XGradCAM, "layercam": LayerCAM, "scorecam": ScoreCAM}


def make_net(head, seed=3):
    return Net(parse_text(BODY + head, caffe_pb2.NetParameter), TEST, seed=seed)


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-60, 60, (24, 24, 3)).astype(np.float32) for _ in range(2)]


def unit(maps):
    """Min-max normalisation of each map (the comparison the issue asks for)."""
    maps = np.asarray(maps, np.float64)
    low, high = maps.min((-2, -1), keepdims=True), maps.max((-2, -1), keepdims=True)
    assert (high > low).all(), "a flat map compares nothing"
    return (maps - low) / (high - low)


def ours(net, method, top_k=2):
    model = CamModel(net, mean=(0, 0, 0), device="cpu", channels_last=False, method=method, score_batch=7)
    xs = inputs()
    return model, model.to_input(xs), model.run(xs, top_k=top_k)


def torchcam_maps(model, x, extractor_cls, class_ids, **kwargs):
    """torchcam's unnormalised maps for class_ids (one per image) through the adapter, and the activations and
    gradients its hooks kept."""
    adapter = TorchcamAdapter(model, channels_last=False)
    if extractor_cls is CAM:
        kwargs["fc_layer"] = adapter.fc
    with extractor_cls(adapter, target_layer=adapter.features, **kwargs) as extractor:
        scores = adapter(x)
        maps = extractor(class_idx=[int(c) for c in class_ids], scores=scores, normalized=False)[0]
        hooked = [np.asarray(h[0].numpy(), np.float64) if h[0] is not None else None
                  for h in (extractor.hook_a, extractor.hook_g)]
        return maps.detach().numpy(), hooked


@pytest.mark.parametrize("head, method", [("gap", "cam")] + [(h, m) for h in ("gap", "fc") for m in TORCHCAM])
def test_maps_match_torchcam(head, method):
    net = make_net(GAP_HEAD if head == "gap" else FC_HEAD)
    model, x, out = ours(net, method)
    assert model.method == method and model.layers.feature_blob == "conv2"
    for rank in range(2):  # the second rank takes its own backward
        ref, _ = torchcam_maps(model, x, CAM if method == "cam" else TORCHCAM[method], out.class_ids[:, rank])
        np.testing.assert_allclose(unit(out.maps[:, rank]), unit(ref), atol=1e-4)


def test_gradcam_pp_matches_torchcam_on_a_gap_net():
    # torchcam 0.5's GradCAMpp leaves α = g² (its `alpha[idx][mask].div_(...)` divides a copy made by the boolean
    # index) and its SmoothGradCAMpp sums A·g³ over positions where the paper has (Σ A)·g³ at each position. With the
    # gradient constant over the map (a GAP head) that sum is the paper's, so SmoothGradCAMpp with one sample of
    # negligible noise is the paper's Grad-CAM++ here.
    net = make_net(GAP_HEAD)
    model, x, out = ours(net, "gradcam++")
    torch.manual_seed(0)
    ref, _ = torchcam_maps(model, x, SmoothGradCAMpp, out.class_ids[:, 0], num_samples=1, std=1e-6)
    np.testing.assert_allclose(unit(out.maps[:, 0]), unit(ref), atol=1e-4)


def test_gradcam_pp_is_the_papers_formula_on_a_net_without_gap():
    net = make_net(FC_HEAD)
    model, x, out = ours(net, "gradcam++")
    _, (a, g) = torchcam_maps(model, x, GradCAM, out.class_ids[:, 0])  # torchcam's A and ∂y_c/∂A
    assert np.ptp(g, axis=(2, 3)).max() > 0  # the gradient varies over the map: the sums differ
    denom = 2 * g ** 2 + a.sum((2, 3), keepdims=True) * g ** 3
    alpha = np.divide(g ** 2, denom, out=np.zeros_like(g), where=denom != 0)
    w = (alpha * np.maximum(g, 0)).sum((2, 3))
    expect = np.maximum(np.einsum("nc,nchw->nhw", w, a), 0)
    np.testing.assert_allclose(unit(out.maps[:, 0]), unit(expect), atol=1e-4)


def test_gradcam_is_cam_times_hw_on_a_gap_net():
    # y_c = Σ_k w[c,k]·(1/Z)·Σ A_k + b_c: Grad-CAM's weights are w[c,k]/Z, so Grad-CAM = ReLU(CAM)/Z, Z = h·w.
    net = make_net(GAP_HEAD)
    xs, extra = inputs(), [[4], [1]]
    cam = CamModel(net, mean=(0,), device="cpu", method="cam").run(xs, 2, extra)
    grad = CamModel(net, mean=(0,), device="cpu", method="gradcam").run(xs, 2, extra)
    assert np.array_equal(cam.class_ids, grad.class_ids)
    np.testing.assert_allclose(grad.probs, cam.probs, rtol=1e-6)
    assert (cam.maps < 0).any() and (cam.maps > 0).any()  # both signs: the ReLU matters
    z = 6 * 6
    np.testing.assert_allclose(grad.maps * z, np.maximum(cam.maps, 0), rtol=1e-4, atol=1e-5 * np.abs(cam.maps).max())


# ---- choosing the method and the blob -----------------------------------------------------------------------------

def test_fallback_to_gradcam_says_why():
    net = make_net(FC_HEAD)
    model = CamModel(net, device="cpu")
    assert (model.method, model.title, model.layers.feature_blob, model.num_classes) == ("gradcam", "Grad-CAM",
                                                                                          "conv2", 5)
    assert model.note == ("no CAM pair in the unnamed net: no global average pooling feeds the classifier; "
                          "using Grad-CAM of 'conv2' (--method, --layer choose another)")
    relu_head = GAP_HEAD.replace('layer { name: "fc"', 'layer { name: "r" type: "ReLU" bottom: "gap" top: "gap" }\n'
                                 'layer { name: "fc"')
    model = CamModel(make_net(relu_head), device="cpu")
    assert model.method == "gradcam" and "ReLU layer 'r' after the global average pooling 'gap'" in model.note
    with pytest.raises(CaffeCamError, match="not linear in the map sum"):
        CamModel(make_net(relu_head), device="cpu", method="cam")  # asked for CAM: refused, never a wrong map
    with pytest.raises(CaffeCamError, match="found no classifier 'fc' fed by a global average pooling"):
        CamModel(make_net(relu_head), device="cpu", fc_layer="fc")  # the pair named: CAM or nothing
    cam = CamModel(make_net(GAP_HEAD), device="cpu")
    assert (cam.method, cam.note, cam.layers.describe()) == ("cam", None, "'conv2' × 'fc'")


def test_layer_choice_and_bad_options():
    net = make_net(FC_HEAD)
    assert score_layers(net) == ("fc", "prob", "prob")
    assert default_layer(net, "fc") == "conv2"  # not the 3×3 max pooling
    layers, method, note = choose_layers(net, "layercam", "conv1")
    assert (layers.feature_blob, method, note) == ("conv1", "layercam", None)
    assert layers.describe() == "'conv1' (scores 'fc')"
    layers, method, _ = choose_layers(make_net(GAP_HEAD), layer="conv1")  # a --layer alone asks for Grad-CAM
    assert (method, layers.feature_blob) == ("gradcam", "conv1")
    for kwargs, what in (({"layer": "conv3"}, "no such blob; nearest"), ({"layer": "hidden"}, "no spatial extent"),
                         ({"method": "cam", "layer": "conv1"}, "--layer picks the blob"),
                         ({"method": "gradcam", "feature_blob": "conv2"}, "takes its blob from --layer"),
                         ({"method": "cam"}, "found no an InnerProduct layer|found no InnerProduct"),
                         ({"method": "nope"}, "choose one of")):
        with pytest.raises(CaffeCamError, match=what):
            choose_layers(net, **kwargs)


def test_scorecam_chunks_do_not_change_the_maps():
    net = make_net(FC_HEAD)
    xs = inputs(1)
    a = CamModel(net, mean=(0,), device="cpu", method="scorecam", score_batch=1).run(xs, 1)
    b = CamModel(net, mean=(0,), device="cpu", method="scorecam", score_batch=64).run(xs, 1)
    np.testing.assert_allclose(a.maps, b.maps, rtol=1e-5, atol=1e-6 * np.abs(a.maps).max())


# ---- the pipeline: overlays, JSON, maps, report page and localization for every method ----------------------------

@pytest.fixture(scope="module")
def oracle_data(tmp_path_factory):
    """The report helpers' labelled images and boxes, their net whose class maps are the B, G, R channels, and the
    CAM run on them (in root/cam)."""
    root = tmp_path_factory.mktemp("oracle")
    make_images(root / "data")
    (root / "oracle.prototxt").write_text(ORACLE3)
    save_caffemodel(oracle3_net(), root / "oracle.caffemodel")
    cam_run(root, "cam")
    return root


def cam_run(root, method):
    out = root / method
    spec = importlib.util.spec_from_file_location("cam_script", REPO / "scripts" / "cam.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--no-progress", "--model", str(root / "oracle.prototxt"), "--weights",
                 str(root / "oracle.caffemodel"), "--mean", "0", "--method", method, "--top-k", "2", "--save-maps",
                 "--box-threshold", "0.3", "--eval-boxes", str(root / "data" / "boxes.csv"), "--eval-json",
                 str(out / "loc.json"), "--out", str(out), str(root / "data" / "val.txt")])
    return out


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam", "layercam", "scorecam"])
def test_pipeline_runs_every_method(oracle_data, method, capsys):
    # On this net y_c = 0.05·mean(A_c) (A the ReLU'd B, G, R channels, all ≥ 0), so ∂y_c/∂A_k = 0.05/Z·[k = c]:
    # Grad-CAM, XGrad-CAM and Layer-CAM give CAM/Z, Grad-CAM++ CAM times a positive factor per image; the boxes (a
    # fraction of each map's maximum) and the localization scores are CAM's. Score-CAM weighs every channel.
    cam, out = oracle_data / "cam", cam_run(oracle_data, method)
    printed = capsys.readouterr().out
    assert f"{TITLES[method]} of 'feat' (scores 'fc') on cpu" in printed and "report: " in printed
    page = (out / "index.html").read_text()
    assert f"<title>{TITLES[method]} report: val.txt</title>" in page
    names = sorted(p.name for p in cam.glob("*_cam.json"))
    assert names == sorted(p.name for p in out.glob("*_cam.json")) and len(names) == 15
    for name in names:
        ours, ref = (json.loads((d / name).read_text()) for d in (out, cam))
        assert (ours["method"], ours["layer"], ref["method"]) == (method, "feat", "cam")
        assert [t["class_id"] for t in ours["top_k"]] == [t["class_id"] for t in ref["top_k"]]
        maps = np.load(out / name.replace(".json", ".npy"))
        assert maps.shape == (2, 32, 32) and (maps >= 0).all()
        if method != "scorecam":
            assert [t["box"] for t in ours["top_k"]] == [t["box"] for t in ref["top_k"]]
            np.testing.assert_allclose(unit(maps), unit(np.load(cam / name.replace(".json", ".npy"))), atol=1e-5)
    loc, ref = (json.loads((d / "loc.json").read_text()) for d in (out, cam))
    assert loc["accuracy"] == ref["accuracy"] == 12 / 15
    if method != "scorecam":
        assert loc == ref
