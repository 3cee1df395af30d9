"""The net builder: phase/level/stage filtering, in-place layers, input headers, errors, params, outputs, forward."""

import numpy as np
import pytest
import torch

from caffecam.engine.net import Net, data_layer_shapes, load_net
from caffecam.engine.prototxt import parse_text, read_net
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2
from tests import numpy_ref as ref

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def netp(text):
    return parse_text(text, caffe_pb2.NetParameter)


def names(net):
    return [lp.name for lp in net.layer_params]


SMALL = """
name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 7 dim: 7 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 }
                      bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "drop" type: "Dropout" bottom: "pool" top: "pool" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
  param { lr_mult: 10 decay_mult: 1 } param { lr_mult: 20 decay_mult: 0 }
  inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def test_small_net_forward_matches_numpy_chain():
    net = Net(netp(SMALL), TEST, seed=0).double()
    assert net.input_blobs == ["data"]
    assert dict(net.blob_shapes) == {"data": (2, 3, 7, 7), "conv": (2, 4, 7, 7), "pool": (2, 4, 3, 3),
                                     "fc": (2, 5), "prob": (2, 5)}
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 7))
    with torch.no_grad():
        blobs = net({"data": torch.from_numpy(x)})
    w, b = (p.detach().numpy() for p in net.params["conv"])
    conv = ref.relu(ref.conv2d(x, w, b, pad=(1, 1)))  # in-place ReLU overwrote the conv blob
    pool = ref.pool2d(conv, (3, 3), (2, 2), (0, 0))   # Dropout at TEST: identity
    fw, fb = (p.detach().numpy() for p in net.params["fc"])
    fc = ref.inner_product(pool, fw, fb)
    for name, expect in (("conv", conv), ("pool", pool), ("fc", fc), ("prob", ref.softmax(fc))):
        np.testing.assert_allclose(blobs[name].numpy(), expect, rtol=1e-5, atol=1e-8)
    # A bare tensor works for a one-input net.
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(x))["prob"].numpy(), ref.softmax(fc), rtol=1e-5)


def test_params_and_param_specs():
    net = Net(netp(SMALL), TEST, seed=0)
    assert list(net.params) == ["conv", "fc"]
    assert [tuple(p.shape) for p in net.params["conv"]] == [(4, 3, 3, 3), (4,)]
    assert [tuple(p.shape) for p in net.params["fc"]] == [(5, 36), (5,)]
    assert torch.all(net.params["conv"][1] == 0.1) and torch.all(net.params["fc"][1] == 0)
    specs = [(name, i, tuple(p.shape), lr, dm) for name, i, p, lr, dm in net.param_specs()]
    assert specs == [("conv", 0, (4, 3, 3, 3), 1, 1), ("conv", 1, (4,), 2, 0),
                     ("fc", 0, (5, 36), 10, 1), ("fc", 1, (5,), 20, 0)]
    assert net.params["conv"][0] is net.layer_by_name["conv"].blobs[0]
    # Missing ParamSpecs default to lr_mult 1, decay_mult 1.
    bare = Net(netp(SMALL.replace('param { lr_mult: 10 decay_mult: 1 } param { lr_mult: 20 decay_mult: 0 }', "")))
    assert [(lr, dm) for _, _, _, lr, dm in bare.param_specs()][2:] == [(1, 1), (1, 1)]


def test_seeded_build_is_deterministic():
    a, b, c = (Net(netp(SMALL), TEST, seed=s) for s in (3, 3, 4))
    assert torch.equal(a.params["fc"][0], b.params["fc"][0])
    assert not torch.equal(a.params["fc"][0], c.params["fc"][0])


def test_dropout_in_place_at_train():
    net = Net(netp(SMALL), TRAIN, seed=0)
    torch.manual_seed(0)
    with torch.no_grad():
        blobs = net.forward({"data": torch.randn(2, 3, 7, 7)}, end="drop")
        pool = blobs["pool"]
        full = net.layer_by_name["pool"](blobs["conv"])[0]
    kept = pool != 0
    torch.testing.assert_close(pool[kept], 2 * full[kept])


def test_forward_end_stops_after_layer():
    net = Net(netp(SMALL), TEST, seed=0)
    with torch.no_grad():
        blobs = net.forward({"data": torch.randn(2, 3, 7, 7)}, end="pool")
    assert "pool" in blobs and "fc" not in blobs and "prob" not in blobs


PHASES = """
name: "phases"
layer { name: "train_data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } include { phase: TRAIN } }
layer { name: "test_data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } include { phase: TEST } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc" include { phase: TEST } }
layer { name: "acc5" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc_b" exclude { phase: TRAIN }
  accuracy_param { top_k: 2 } }
layer { name: "aux" type: "InnerProduct" bottom: "data" top: "aux" inner_product_param { num_output: 1 }
  loss_weight: 0.3 exclude { phase: TEST } }
layer { name: "lvl" type: "Softmax" bottom: "fc" top: "lvl" include { min_level: 2 } }
layer { name: "lvl_max" type: "Softmax" bottom: "fc" top: "lvl_max" include { max_level: 1 } }
layer { name: "staged" type: "Softmax" bottom: "fc" top: "staged" include { stage: "deploy" stage: "extra" } }
layer { name: "not_staged" type: "Softmax" bottom: "fc" top: "not_staged" exclude { not_stage: "deploy" } }
layer { name: "either" type: "Softmax" bottom: "fc" top: "either" include { stage: "a" } include { phase: TRAIN } }
"""


def test_phase_level_stage_rules():
    base = ["fc", "loss", "lvl_max"]
    train = Net(netp(PHASES), TRAIN)
    assert names(train) == ["train_data"] + base[:2] + ["aux", "lvl_max", "either"]
    assert train.blob_shapes["data"] == (4, 3) and train.input_blobs == ["data", "label"]
    test = Net(netp(PHASES), TEST)
    assert names(test) == ["test_data"] + base[:2] + ["acc", "acc5", "lvl_max"]
    assert test.blob_shapes["label"] == (2,)
    assert "lvl" in names(Net(netp(PHASES), TEST, level=2))
    assert "lvl_max" not in names(Net(netp(PHASES), TEST, level=2))
    assert "staged" not in names(Net(netp(PHASES), TEST, stages=["deploy"]))
    staged = names(Net(netp(PHASES), TEST, stages=["deploy", "extra"]))
    assert "staged" in staged and "not_staged" in staged  # exclude rule not met when 'deploy' is present
    assert "not_staged" not in names(Net(netp(PHASES), TEST, stages=["other"]))
    assert "either" in names(Net(netp(PHASES), TEST, stages=["a"]))


def test_outputs_sorted_and_loss_weights():
    train = Net(netp(PHASES), TRAIN)
    assert train.output_blobs == ["aux", "either", "loss", "lvl_max"]
    assert dict(train.loss_weights) == {"loss": 1.0, "aux": pytest.approx(0.3)}
    test = Net(netp(PHASES), TEST)
    assert test.output_blobs == ["acc", "acc_b", "loss", "lvl_max"]
    assert dict(test.loss_weights) == {"loss": 1.0}
    # net.loss = Σ weight · sum(top)
    blobs = {"loss": torch.tensor(2.0), "aux": torch.tensor([1.0, 3.0])}
    assert train.loss(blobs).item() == pytest.approx(2.0 + 0.3 * 4.0)


def test_output_blob_of_trailing_in_place_layer():
    # Caffe: an in-place layer consumes its bottom and produces it again, so the blob is still a net output.
    text = SMALL.split('layer { name: "pool"')[0]
    net = Net(netp(text))
    assert net.output_blobs == ["conv"]


def test_loss_layer_with_prob_top_and_explicit_zero_weight():
    text = PHASES.replace('top: "loss" }', 'top: "loss" top: "p" loss_weight: 1 loss_weight: 0 }')
    net = Net(netp(text), TEST)
    assert dict(net.loss_weights) == {"loss": 1.0}
    assert net.blob_shapes["p"] == (2, 3)


def test_phase_filter_with_level_and_missing_phase_layers():
    with pytest.raises(CaffeCamError, match="include and exclude"):
        Net(netp('layer { name: "x" type: "Input" top: "d" input_param { shape { dim: 1 } } '
                 'include { phase: TEST } exclude { phase: TRAIN } }'))


@pytest.mark.parametrize("header", [
    'input: "data" input_dim: 2 input_dim: 3 input_dim: 7 input_dim: 7',
    'input: "data" input_shape { dim: 2 dim: 3 dim: 7 dim: 7 }',
])
def test_legacy_input_headers(header):
    text = header + "\n" + SMALL.split('layer { name: "data"', 1)[1].split("\n", 1)[1]
    net = Net(netp(text), TEST)
    assert net.input_blobs == ["data"]
    assert net.blob_shapes["data"] == (2, 3, 7, 7) and net.blob_shapes["prob"] == (2, 5)
    with torch.no_grad():
        assert net(torch.randn(2, 3, 7, 7))["prob"].shape == (2, 5)
    with pytest.raises(CaffeCamError, match="'data'"):
        net({"image": torch.randn(2, 3, 7, 7)})
    big = Net(netp(text), TEST, input_shapes={"data": (1, 3, 9, 9)})
    assert big.blob_shapes["pool"] == (1, 4, 4, 4)


def test_legacy_input_dim_count_is_checked():
    with pytest.raises(CaffeCamError, match="input_dim"):
        Net(netp('input: "data" input_dim: 1 input_dim: 3 layer { name: "r" type: "ReLU" bottom: "data" top: "r" }'))


DATA_LAYERS = """
name: "datanet"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { crop_size: 9 mirror: true } data_param { source: "x_lmdb" batch_size: 4 backend: LMDB } }
layer { name: "data" type: "ImageData" top: "data" top: "label" include { phase: TEST }
  image_data_param { source: "list.txt" batch_size: 2 new_height: 11 new_width: 10 } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def test_data_layers_are_inputs():
    train = Net(netp(DATA_LAYERS), TRAIN)
    assert train.input_blobs == ["data", "label"]
    assert train.blob_shapes["data"] == (4, 3, 9, 9) and train.blob_shapes["label"] == (4,)
    test = Net(netp(DATA_LAYERS), TEST)
    assert test.blob_shapes["data"] == (2, 3, 11, 10) and test.blob_shapes["conv"] == (2, 2, 9, 8)
    assert test.output_blobs == ["loss"]
    with torch.no_grad():
        blobs = test({"data": torch.randn(2, 3, 11, 10), "label": torch.tensor([0, 2])})
    assert blobs["loss"].shape == () and torch.isfinite(blobs["loss"])
    with pytest.raises(CaffeCamError, match="'label'"):
        test({"data": torch.randn(2, 3, 11, 10)})
    given = Net(netp(DATA_LAYERS), TRAIN, input_shapes={"data": (5, 3, 12, 12), "label": (5,)})
    assert given.blob_shapes["conv"] == (5, 2, 10, 10)


def test_data_layer_shape_from_input_shapes_when_unknown():
    text = DATA_LAYERS.replace("crop_size: 9 ", "")
    with pytest.raises(CaffeCamError, match="'data'.*input_shapes"):
        Net(netp(text), TRAIN)
    net = Net(netp(text), TRAIN, input_shapes={"data": (3, 3, 8, 8), "label": (3,)})
    assert net.blob_shapes["fc"] == (3, 3)
    # Only the data shape given: the label follows its batch size.
    net = Net(netp(text), TRAIN, input_shapes={"data": (3, 3, 8, 8)})
    assert net.blob_shapes["label"] == (3,) and net.blob_shapes["fc"] == (3, 3)
    # An override of the data blob alone is not silently ignored when the layer knows its own size.
    net = Net(netp(DATA_LAYERS), TRAIN, input_shapes={"data": (1, 3, 16, 16)})
    assert net.blob_shapes["conv"] == (1, 2, 14, 14) and net.blob_shapes["label"] == (1,)


def test_input_shapes_naming_no_input_is_an_error():
    with pytest.raises(CaffeCamError, match="'image'"):
        Net(netp(SMALL), TEST, input_shapes={"image": (1, 3, 7, 7)})


def test_data_layer_shapes_helper():
    lps = [lp for lp in netp(DATA_LAYERS).layer if lp.type in ("Data", "ImageData")]
    assert data_layer_shapes(lps[0]) == [(4, 3, 9, 9), (4,)]
    assert data_layer_shapes(lps[1]) == [(2, 3, 11, 10), (2,)]


@pytest.mark.parametrize("bad,needle", [
    ('layer { name: "weird" type: "Frobnicate" bottom: "data" top: "w" }', r"'weird'.*Frobnicate"),
    ('layer { name: "orphan" type: "ReLU" bottom: "nothing" top: "o" }', r"'orphan'.*'nothing'"),
    ('layer { name: "big" type: "Convolution" bottom: "data" top: "big" '
     'convolution_param { num_output: 1 kernel_size: 9 } }', r"'big'.*fit"),
    ('layer { name: "p2" type: "Pooling" bottom: "data" top: "p2" pooling_param { kernel_size: 2 stride: 2 } } '
     'layer { name: "cat" type: "Concat" bottom: "data" bottom: "p2" top: "cat" }', r"'cat'"),
    ('layer { name: "tops" type: "ReLU" bottom: "data" top: "a" top: "b" }', r"'tops'"),
    # Caffe: "loss_weight must be unspecified or specified once per top blob" (the extra value was ignored).
    ('layer { name: "lw" type: "ReLU" bottom: "data" top: "r" loss_weight: 1 loss_weight: 0.5 }', r"'lw'.*loss_weight"),
])
def test_errors_name_the_layer(bad, needle):
    head = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 7 dim: 7 } } }'
    with pytest.raises(CaffeCamError, match=needle):
        Net(netp(head + "\n" + bad))


def test_forward_end_unknown_layer_is_an_error():
    net = Net(netp(SMALL))
    with pytest.raises(CaffeCamError, match="'nope'"):
        net.forward(torch.randn(2, 3, 7, 7), end="nope")


def test_malformed_prototxt_gives_file_line_column(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text('name: "x"\nlayer {\n  name: "a"\n  type: "ReLU"\n  bogus_field: 3\n}\n')
    with pytest.raises(CaffeCamError) as info:
        read_net(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:5:") and "bogus_field" in msg and "\n" not in msg
    path.write_text('name: "x"\nlayer {\n  name: "a"\n')
    with pytest.raises(CaffeCamError, match=rf"^{path}:\d+:\d+: "):
        read_net(path)
    with pytest.raises(CaffeCamError, match="not found"):
        load_net(tmp_path / "missing.prototxt")


def test_load_net_and_v1_prototxt(tmp_path):
    v1 = """
    name: "legacy"
    input: "data" input_dim: 1 input_dim: 2 input_dim: 6 input_dim: 6
    layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 2
             weight_decay: 1 weight_decay: 0 convolution_param { num_output: 3 kernel_size: 3 } }
    layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
    layers { name: "pool" type: POOLING bottom: "conv" top: "pool"
             pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
    layers { name: "fc" type: INNER_PRODUCT bottom: "pool" top: "fc" blobs_lr: 3 inner_product_param { num_output: 4 } }
    layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
    """
    path = tmp_path / "v1.prototxt"
    path.write_text(v1)
    net = load_net(path, TEST, seed=0)
    assert [lp.type for lp in net.layer_params] == ["Convolution", "ReLU", "Pooling", "InnerProduct", "Softmax"]
    assert net.blob_shapes["pool"] == (1, 3, 2, 2) and net.blob_shapes["prob"] == (1, 4)
    assert [(n, i, lr, dm) for n, i, _, lr, dm in net.param_specs()] == [
        ("conv", 0, 1, 1), ("conv", 1, 2, 0), ("fc", 0, 3, 1), ("fc", 1, 1, 1)]
    assert net.output_blobs == ["prob"]


def test_consumers_and_producer():
    net = Net(netp(SMALL))
    assert [lp.name for lp in net.consumers("conv")] == ["relu", "pool"]
    assert net.producer("conv").name == "relu" and net.producer("prob").name == "prob"
    assert net.producer("nothing") is None


HEAD = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 7 dim: 7 } } }\n'


def test_top_produced_twice_is_an_error():
    with pytest.raises(CaffeCamError, match=r"'b'.*'x'.*already produced"):
        Net(netp(HEAD + 'layer { name: "a" type: "ReLU" bottom: "data" top: "x" } '
                        'layer { name: "b" type: "Softmax" bottom: "data" top: "x" }'))
    # In place means top i named as bottom i, as in Caffe.
    with pytest.raises(CaffeCamError, match=r"'s'.*'data'"):
        Net(netp(HEAD + 'layer { name: "s" type: "Split" bottom: "data" top: "copy" top: "data" }'))
    net = Net(netp(HEAD + 'layer { name: "r" type: "ReLU" bottom: "data" top: "data" }'))
    assert net.blob_shapes["data"] == (1, 3, 7, 7)


def test_duplicate_layer_names_in_one_phase_are_an_error():
    with pytest.raises(CaffeCamError, match=r"'a'.*rename"):
        Net(netp(HEAD + 'layer { name: "a" type: "ReLU" bottom: "data" top: "x" } '
                        'layer { name: "a" type: "Softmax" bottom: "data" top: "y" }'))


def test_winograd_layers_are_the_wide_3x3_convolutions_at_the_setup_batch(monkeypatch):
    from caffecam.engine.kernels import cpu_loops, winograd
    from caffecam.nets.googlenet_cam import googlenet_cam

    param = googlenet_cam(14, 1, 224, head="loss", batch=32)
    # With the compiled loops (F(4×4)): every 3×3 layer, ≥ 64 channels per group on both sides. Without: ≥ 128
    # (F(2×2); CAM_conv: 416 → 512 per group, 2 groups), so inception_3a (96 → 128), 4a (96 → 208), 4b (112 → 224)
    # and conv2 (64 → 192) are too narrow.
    expected = two_by_two = ["inception_3b/3x3", "inception_4c/3x3", "inception_4d/3x3", "inception_4e/3x3",
                             "CAM_conv"]
    if cpu_loops._load() is not False:
        expected = ["conv2/3x3", "inception_3a/3x3", "inception_3b/3x3", "inception_4a/3x3", "inception_4b/3x3",
                    "inception_4c/3x3", "inception_4d/3x3", "inception_4e/3x3", "CAM_conv"]
    assert Net(param, caffe_pb2.TRAIN).winograd_layers() == expected
    assert Net(googlenet_cam(14, 1, 224, head="prob", batch=1), caffe_pb2.TEST).winograd_layers() == []  # 49 tiles
    cam = next(lp for lp in param.layer if lp.name == "CAM_conv")
    cam.convolution_param.engine = caffe_pb2.ConvolutionParameter.CAFFE
    assert Net(param, caffe_pb2.TRAIN).winograd_layers() == expected[:-1]
    monkeypatch.setattr(winograd, "TILE4", False)  # CAFFECAM_WINOGRAD=2
    assert Net(param, caffe_pb2.TRAIN).winograd_layers() == two_by_two[:-1]
    monkeypatch.setattr(winograd, "ENABLED", False)
    assert Net(param, caffe_pb2.TRAIN).winograd_layers() == []
