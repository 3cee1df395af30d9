"""BatchNorm (+ Scale) folded into the Convolution before it (engine/fold.py): a small conv-BN-Scale-ReLU net against a
float64 NumPy reference of the unfolded layers (Caffe's formulas), the cases that must not fold, and ResNet-50 against
real Caffe's recording (tests/golden/zoo/resnet50.json, formula weights as tests/engine/test_zoo.py)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from caffecam.engine.fold import fold_batchnorm
from caffecam.engine.net import TEST, TRAIN, Net
from caffecam.engine.prototxt import read_net
from caffecam.engine.weights import net_to_proto
from caffecam.proto import caffe_pb2
from tests.golden import zoo_weights as zw
from tests.golden.golden import rel_err

ZOO = Path(__file__).resolve().parents[1] / "zoo"
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "zoo" / "resnet50.json"
EPS = 1e-3


def small_net(conv_top="c", bn_top="c", scale_top="c", bias_term=True, extra="", scale=True, bn_factor=0.7):
    """Input 2×3×7×6 -> conv 3×3 (4 outputs, pad 1) -> BatchNorm (eps 1e-3) -> Scale (bias) -> ReLU, tops named as
    given (equal names: in place); seeded weights, statistics stored as Caffe's sums with scale factor bn_factor."""
    text = f"""
    input: "data" input_shape {{ dim: 2 dim: 3 dim: 7 dim: 6 }}
    layer {{ name: "conv" type: "Convolution" bottom: "data" top: "{conv_top}"
             convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 bias_term: {str(bias_term).lower()} }} }}
    layer {{ name: "bn" type: "BatchNorm" bottom: "{conv_top}" top: "{bn_top}" batch_norm_param {{ eps: {EPS} }} }}
    """
    last = bn_top
    if scale:
        text += f"""layer {{ name: "scale" type: "Scale" bottom: "{bn_top}" top: "{scale_top}"
                              scale_param {{ bias_term: true }} }}"""
        last = scale_top
    text += f'layer {{ name: "relu" type: "ReLU" bottom: "{last}" top: "{last}" }}' + extra
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), TEST)
    rng = np.random.default_rng(5)
    values = {"w": rng.normal(0, 0.5, (4, 3, 3, 3)), "b": rng.normal(0, 1, 4), "mean": rng.normal(0, 2, 4),
              "var": rng.uniform(0.2, 3, 4), "gamma": rng.uniform(0.5, 2, 4) * np.array([1, -1, 1, 1]),
              "beta": rng.normal(0, 1, 4)}
    blobs = {"conv": [values["w"]] + ([values["b"]] if bias_term else []),
             "bn": [values["mean"] * bn_factor, values["var"] * bn_factor, [bn_factor]],
             "scale": [values["gamma"], values["beta"]]}
    with torch.no_grad():
        for name, arrays in blobs.items():
            if name in net.params:
                for blob, a in zip(net.params[name], arrays):
                    blob.copy_(torch.tensor(np.asarray(a), dtype=torch.float32).reshape(blob.shape))
    x = rng.normal(0, 50, (2, 3, 7, 6))
    return net, torch.tensor(x, dtype=torch.float32), values


def reference(x, v, bias_term=True, scale=True, bn_factor=0.7):
    """The unfolded layers in float64: convolution, Caffe's BatchNorm (statistics = sums / factor), Scale, ReLU."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    n, _, h, w = x.shape
    out = np.zeros((n, v["w"].shape[0], h - 2, w - 2))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,kc->nkhw", x[:, :, i:i + h - 2, j:j + w - 2], v["w"][:, :, i, j])
    c = (slice(None), None, None)
    if bias_term:
        out += v["b"][c]
    inv = 0.0 if bn_factor == 0 else 1 / bn_factor
    mean, var = v["mean"] * bn_factor * inv, v["var"] * bn_factor * inv
    out = (out - mean[c]) / np.sqrt(var[c] + EPS)
    if scale:
        out = out * v["gamma"][c] + v["beta"][c]
    return np.maximum(out, 0)


def max_rel(ours, ref):
    ours = ours.detach().double().numpy()
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("tops", [("c", "c", "c"), ("c", "b", "s"), ("c", "c", "s")])
@pytest.mark.parametrize("bias_term", [True, False])
def test_folded_forward_matches_the_unfolded_layers(tops, bias_term):
    net, x, v = small_net(*tops, bias_term=bias_term)
    state = {k: t.clone() for k, t in net.state_dict().items()}
    assert fold_batchnorm(net) == 1
    with torch.no_grad():
        folded = net(x)
    assert max_rel(folded[tops[2]], reference(x, v, bias_term)) < 1e-5
    # only the group's output exists: the skipped blobs would hold values Caffe never computed
    assert set(folded) == {"data", tops[2]}
    with torch.enable_grad():
        recorded = net(x)  # a forward for training or Grad-CAM runs every layer
    assert set(recorded) == {"data"} | set(tops)
    assert max_rel(recorded[tops[2]], reference(x, v, bias_term)) < 1e-5
    for k, t in net.state_dict().items():
        assert torch.equal(t, state[k]), k  # the parameters themselves are never folded


def test_scale_factor_zero_reads_the_statistics_as_zero():
    net, x, v = small_net(bn_factor=0.0)
    fold_batchnorm(net)
    with torch.no_grad():
        assert max_rel(net(x)["c"], reference(x, v, bn_factor=0.0)) < 1e-5


def test_batchnorm_without_scale_folds_alone():
    net, x, v = small_net(scale=False)
    assert fold_batchnorm(net) == 1 and net.fold.skipped == {1, 2}  # the BatchNorm and the ReLU after it
    with torch.no_grad():
        assert max_rel(net(x)["c"], reference(x, v, scale=False)) < 1e-5


@pytest.mark.parametrize("slope, fused", [(0, True), (0.1, False)])
def test_a_relu_right_after_a_convolution_runs_inside_it(slope, fused):
    text = f"""input: "data" input_shape {{ dim: 2 dim: 3 dim: 7 dim: 6 }}
    layer {{ name: "conv" type: "Convolution" bottom: "data" top: "c"
             convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 }} }}
    layer {{ name: "relu" type: "ReLU" bottom: "c" top: "c" relu_param {{ negative_slope: {slope} }} }}"""
    net, x, v = small_net()
    net2 = Net(text_format.Parse(text, caffe_pb2.NetParameter()), TEST)
    with torch.no_grad():
        net2.params["conv"][0].copy_(torch.tensor(v["w"], dtype=torch.float32))
        net2.params["conv"][1].copy_(torch.tensor(v["b"], dtype=torch.float32))
    assert fold_batchnorm(net2) == 0 and len(net2.fold) == int(fused)
    with torch.no_grad():
        y = net2(x)["c"]
    no_bn = dict(v, mean=np.zeros(4), var=np.ones(4) - EPS, gamma=np.ones(4), beta=np.zeros(4))
    ref = reference(x, no_bn)  # conv + bias, then max(·, 0)
    if slope:
        ref = ref + slope * np.minimum(reference(x, no_bn | {"w": -v["w"], "b": -v["b"]}) * -1, 0)
    assert max_rel(y, ref) < 1e-5


def test_convolution_output_read_elsewhere_does_not_fold():
    extra = 'layer { name: "peek" type: "Power" bottom: "c" top: "peek" }'
    net, x, v = small_net("c", "b", "s", extra=extra)
    assert fold_batchnorm(net) == 0
    # an in-place BatchNorm whose input another layer reads first does not fold either
    text = """input: "data" input_shape { dim: 1 dim: 3 dim: 5 dim: 5 }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "c"
            convolution_param { num_output: 2 kernel_size: 1 } }
    layer { name: "peek" type: "Power" bottom: "c" top: "peek" }
    layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }"""
    assert fold_batchnorm(Net(text_format.Parse(text, caffe_pb2.NetParameter()), TEST)) == 0


def test_batchnorm_output_read_elsewhere_keeps_its_scale():
    extra = 'layer { name: "peek" type: "Power" bottom: "b" top: "peek" }'
    net, x, v = small_net("c", "b", "s", extra=extra)
    assert fold_batchnorm(net) == 1 and net.fold.skipped == {1}
    with torch.no_grad():
        out = net(x)
    assert max_rel(out["s"], reference(x, v)) < 1e-5
    np.testing.assert_array_equal(out["peek"].numpy(), out["b"].numpy())  # Power's defaults: the identity
    # "b" is BatchNorm's own output (the reference without Scale applies the ReLU, so compare the positive part)
    assert max_rel(out["b"].clamp_min(0), reference(x, v, scale=False)) < 1e-5


def test_kept_blobs_and_stops_inside_a_group_run_unfolded():
    net, x, v = small_net("c", "b", "s")
    assert fold_batchnorm(net, keep={"b"}) == 1 and net.fold.skipped == {1}  # BatchNorm folds, Scale runs
    fold_batchnorm(net, keep={"c"})
    assert len(net.fold) == 0
    fold_batchnorm(net)
    with torch.no_grad():
        stopped = net(x, end="bn")
    assert set(stopped) == {"data", "c", "b"}


def test_new_weights_are_refolded_and_saving_sees_the_unfolded_blobs():
    net, x, v = small_net()
    fold_batchnorm(net)
    with torch.no_grad():
        net(x)
        net.params["bn"][2].fill_(0.35)  # the statistics now read as twice the values
        v2 = dict(v, mean=2 * v["mean"], var=2 * v["var"])
        assert max_rel(net(x)["c"], reference(x, v2)) < 1e-5
    saved = {lp.name: [np.array(b.data) for b in lp.blobs] for lp in net_to_proto(net).layer}
    np.testing.assert_allclose(saved["conv"][0].reshape(4, 3, 3, 3), v["w"], rtol=1e-6)
    np.testing.assert_allclose(saved["bn"][2], [0.35])


def test_only_inference_nets_fold():
    text = """input: "data" input_shape { dim: 1 dim: 3 dim: 5 dim: 5 }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "c"
            convolution_param { num_output: 2 kernel_size: 1 } }
    layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }"""
    assert fold_batchnorm(Net(text_format.Parse(text, caffe_pb2.NetParameter()), TRAIN)) == 0
    assert fold_batchnorm(Net(text_format.Parse(text, caffe_pb2.NetParameter()), TEST)) == 1
    global_at_test = text.replace('"BatchNorm" bottom: "c" top: "c" }',
                                  '"BatchNorm" bottom: "c" top: "c" batch_norm_param { use_global_stats: false } }')
    assert fold_batchnorm(Net(text_format.Parse(global_at_test, caffe_pb2.NetParameter()), TEST)) == 0


def test_resnet50_folded_is_caffes():
    g = json.loads(GOLDEN.read_text())
    net = Net(read_net(ZOO / "resnet50.prototxt"), TEST, input_shapes={g["input"]: g["input_shape"]})
    with torch.no_grad():
        for lp, layer in zip(net.layer_params, net.layers):
            for i, blob in enumerate(layer.blobs):
                blob.copy_(torch.from_numpy(zw.blob_values(lp.type, lp.name, i, tuple(blob.shape),
                                                           g["bn_factor"].get(lp.name))))
        x = torch.from_numpy(zw.net_input(tuple(g["input_shape"])))
        unfolded = net(x)
        assert fold_batchnorm(net) == 53
        folded = net(x)
    for blob in ("fc1000", "prob"):
        assert rel_err(folded[blob].numpy(), unfolded[blob].numpy()) < 1e-5, blob
        ref = np.array(g["outputs"][blob]["values"], np.float32).reshape(g["outputs"][blob]["shape"])
        assert rel_err(folded[blob].numpy(), ref) < 1e-5, blob
    for blob, spots in g["spots"].items():  # inner blobs: in-place chains, so the folded group writes them
        idx, ref = zip(*spots)
        assert rel_err(folded[blob].numpy().ravel()[list(idx)], ref) < 1e-4, blob  # test_zoo.py's TOL_BN


def test_cam_and_extract_features_fold_but_keep_the_blobs_they_read():
    from caffecam.cam.features import extract
    from caffecam.cam.maps import CamModel

    head = """layer { name: "pool" type: "Pooling" bottom: "s" top: "pool"
                      pooling_param { pool: AVE global_pooling: true } }
    layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 3 } }"""
    net, x, v = small_net("c", "b", "s", extra=head)
    with torch.no_grad():
        net.params["fc"][0].copy_(torch.linspace(-1, 1, 12).reshape(3, 4))
    model = CamModel(net, device="cpu")
    assert len(model.net.fold) == 1 and model.layers.feature_blob == "s"
    out = model.run(list(x.permute(0, 2, 3, 1).numpy()), top_k=3)
    feats = reference(x, v)
    ref = np.einsum("kc,nchw->nkhw", np.linspace(-1, 1, 12).reshape(3, 4), feats)
    ref = np.take_along_axis(ref, out.class_ids[:, :, None, None], 1)
    np.testing.assert_allclose(out.maps, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    got, _ = extract(net, "data", [(["a", "b"], x.numpy())], ["b"], progress=False)
    assert len(net.fold) == 1 and net.fold.skipped == {1}  # "b" asked for: the BatchNorm folds, the Scale runs
    assert max_rel(torch.from_numpy(got["b"]).clamp_min(0), reference(x, v, scale=False)) < 1e-5


RESIDUAL = """input: "data" input_shape { dim: 2 dim: 4 dim: 7 dim: 6 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "branch"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "branch" top: "branch" batch_norm_param { eps: 0.001 } }
layer { name: "scale" type: "Scale" bottom: "branch" top: "branch" scale_param { bias_term: true } }
layer { name: "sum" type: "Eltwise" bottom: "data" bottom: "branch" top: "sum" }
layer { name: "relu" type: "ReLU" bottom: "sum" top: "sum" }
"""


@pytest.mark.parametrize("keep, skipped", [((), {1, 2, 3, 4}), ({"branch"}, {1, 2})])
def test_a_residual_sum_and_its_relu_run_inside_the_convolution(keep, skipped):
    """ResNet's block end: conv → BatchNorm → Scale, + the shortcut (Eltwise SUM), ReLU; NumPy reference."""
    net = Net(text_format.Parse(RESIDUAL, caffe_pb2.NetParameter()), TEST)
    rng = np.random.default_rng(9)
    v = {"w": rng.normal(0, 0.3, (4, 4, 3, 3)), "b": rng.normal(0, 1, 4), "mean": rng.normal(0, 2, 4),
         "var": rng.uniform(0.2, 3, 4), "gamma": rng.uniform(0.5, 2, 4), "beta": rng.normal(0, 1, 4)}
    with torch.no_grad():
        for blob, a in zip(net.params["conv"] + net.params["bn"] + net.params["scale"],
                           [v["w"], v["b"], v["mean"] * 0.7, v["var"] * 0.7, [0.7], v["gamma"], v["beta"]]):
            blob.copy_(torch.tensor(np.asarray(a), dtype=torch.float32).reshape(blob.shape))
    x = torch.tensor(rng.normal(0, 3, (2, 4, 7, 6)), dtype=torch.float32)
    assert fold_batchnorm(net, keep=keep) == 1 and net.fold.skipped == skipped
    with torch.no_grad():
        y = net(x)["sum"]
    # reference() ends in a ReLU: undo it by the identity relu(a) − relu(−a) = a on the block's branch
    branch = reference(x, v) - reference(x, dict(v, w=-v["w"], b=-v["b"], mean=-v["mean"], beta=-v["beta"]))
    assert max_rel(y, np.maximum(x.double().numpy() + branch, 0)) < 1e-5


def test_folded_groups_under_bfloat16_autocast():
    # autocast runs the convolution in bfloat16, then the sum and ReLU outside oneDNN: bfloat16's rounding only
    net = Net(text_format.Parse(RESIDUAL, caffe_pb2.NetParameter()), TEST)
    x = torch.randn((2, 4, 7, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expect = net(x)["sum"].double().numpy()
    assert fold_batchnorm(net) == 1
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        y = net(x)["sum"]
    assert max_rel(y.float(), expect) < 2e-2
