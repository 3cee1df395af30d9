""".caffemodel I/O: current-format round trip, legacy V1 files built by hand, copy report, errors, atomic writes."""

import os

import numpy as np
import pytest
import torch

from caffecam.engine.net import Net
from caffecam.engine.prototxt import parse_text, to_text
from caffecam.engine.weights import (
    array_to_blob,
    blob_to_array,
    copy_weights,
    load_weights,
    read_caffemodel,
    save_caffemodel,
)
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2

TEST = caffe_pb2.TEST
V1 = caffe_pb2.V1LayerParameter

NET = """
name: "w"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "xavier" } bias_filler { type: "uniform" } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
K = 4 * 4 * 4  # fc input: conv top 4×4×4


def make_net(seed=0, text=NET):
    return Net(parse_text(text, caffe_pb2.NetParameter), TEST, seed=seed)


def legacy_blob(array, dims):
    blob = caffe_pb2.BlobProto(num=dims[0], channels=dims[1], height=dims[2], width=dims[3])
    blob.data.extend(np.asarray(array, dtype=np.float32).ravel().tolist())
    return blob


def test_current_format_round_trip(tmp_path):
    src, dst = make_net(1), make_net(2)
    path = tmp_path / "m.caffemodel"
    save_caffemodel(src, path)
    assert sorted(os.listdir(tmp_path)) == ["m.caffemodel"]  # no temp file left behind
    msg = caffe_pb2.NetParameter()
    msg.ParseFromString(path.read_bytes())
    assert len(msg.layers) == 0 and [lp.name for lp in msg.layer] == ["data", "conv", "relu", "fc", "prob"]
    conv = msg.layer[1]
    assert conv.type == "Convolution" and conv.convolution_param.num_output == 4
    assert [list(b.shape.dim) for b in conv.blobs] == [[4, 3, 3, 3], [4]]
    assert not any(b.HasField("num") for lp in msg.layer for b in lp.blobs)
    np.testing.assert_array_equal(np.array(conv.blobs[0].data).reshape(4, 3, 3, 3),
                                  src.params["conv"][0].detach().numpy())
    assert not torch.equal(src.params["fc"][0], dst.params["fc"][0])
    report = copy_weights(dst, read_caffemodel(path), str(path))
    for name in ("conv", "fc"):
        for a, b in zip(src.params[name], dst.params[name]):
            assert torch.equal(a, b)
    assert report.copied == ["conv", "fc"] and report.fresh == [] and report.ignored == []
    assert report.skipped_without_blobs == 3
    # The file is a whole net definition, as Caffe's are: it builds with the same shapes.
    assert Net(read_caffemodel(path)).blob_shapes == src.blob_shapes


def v1_model(fc_weight_dims=(1, 1, 5, K), with_input=True):
    """A legacy V1 NetParameter as bvlc_googlenet.caffemodel stores it: `layers`, type enums, 4-D blob dims."""
    rng = np.random.default_rng(0)
    arrays = {"conv_w": rng.standard_normal((4, 3, 3, 3)), "conv_b": rng.standard_normal(4),
              "fc_w": rng.standard_normal((5, K)), "fc_b": rng.standard_normal(5),
              "old_w": rng.standard_normal((2, 3))}
    msg = caffe_pb2.NetParameter(name="legacy")
    if with_input:
        msg.input.append("data")
        msg.input_dim.extend([1, 3, 6, 6])
    conv = msg.layers.add(name="conv", type=V1.CONVOLUTION, bottom=["data"], top=["conv"])
    conv.convolution_param.num_output = 4
    conv.convolution_param.kernel_size.append(3)
    conv.blobs_lr.extend([1, 2])
    conv.weight_decay.extend([1, 0])
    conv.blobs.extend([legacy_blob(arrays["conv_w"], (4, 3, 3, 3)), legacy_blob(arrays["conv_b"], (1, 1, 1, 4))])
    msg.layers.add(name="relu", type=V1.RELU, bottom=["conv"], top=["conv"])
    fc = msg.layers.add(name="fc", type=V1.INNER_PRODUCT, bottom=["conv"], top=["fc"])
    fc.inner_product_param.num_output = 5
    fc.blobs_lr.extend([3, 4])
    fc.weight_decay.extend([0.5, 0])
    fc.blobs.extend([legacy_blob(arrays["fc_w"], fc_weight_dims), legacy_blob(arrays["fc_b"], (1, 1, 1, 5))])
    old = msg.layers.add(name="loss3/classifier", type=V1.INNER_PRODUCT, bottom=["fc"], top=["old"])
    old.inner_product_param.num_output = 2
    old.blobs.extend([legacy_blob(arrays["old_w"], (1, 1, 2, 3))])
    msg.layers.add(name="prob", type=V1.SOFTMAX, bottom=["fc"], top=["prob"])
    return msg, arrays


def test_legacy_v1_caffemodel_loads_reshaped(tmp_path):
    msg, arrays = v1_model()
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(msg.SerializeToString())
    net = make_net(5)
    report = copy_weights(net, read_caffemodel(path), str(path))
    np.testing.assert_array_equal(net.params["conv"][0].detach().numpy(), arrays["conv_w"].astype(np.float32))
    np.testing.assert_array_equal(net.params["conv"][1].detach().numpy(), arrays["conv_b"].astype(np.float32))
    np.testing.assert_array_equal(net.params["fc"][0].detach().numpy(), arrays["fc_w"].astype(np.float32))
    np.testing.assert_array_equal(net.params["fc"][1].detach().numpy(), arrays["fc_b"].astype(np.float32))
    assert report.copied == ["conv", "fc"] and report.ignored == ["loss3/classifier"]
    assert report.skipped_without_blobs == 2
    text = "\n".join(report.lines())
    assert "copied 2" in text and "loss3/classifier" in text


def test_legacy_v1_net_builds_with_upgraded_multipliers(tmp_path):
    msg, _ = v1_model()
    del msg.layers[3]  # loss3/classifier reads "fc" and is fine, but keep the net like NET
    for m in (msg, parse_text(to_text(msg), caffe_pb2.NetParameter)):  # binary and prototxt text forms
        net = Net(m, TEST)
        assert [lp.type for lp in net.layer_params] == ["Convolution", "ReLU", "InnerProduct", "Softmax"]
        assert net.blob_shapes["fc"] == (1, 5)
        assert [(n, i, lr, dm) for n, i, _, lr, dm in net.param_specs()] == [
            ("conv", 0, 1, 1), ("conv", 1, 2, 0), ("fc", 0, 3, 0.5), ("fc", 1, 4, 0)]


def test_report_lists_fresh_ignored_and_skips_split_layers(tmp_path):
    src = make_net(1)
    msg = caffe_pb2.NetParameter(name="src")
    fc = msg.layer.add(name="fc", type="InnerProduct")
    for p in src.params["fc"]:
        array_to_blob(p.detach().numpy(), fc.blobs.add())
    msg.layer.add(name="pool2/3x3_s2_pool2/3x3_s2_0_split", type="Split")
    msg.layer.add(name="data", type="Data")
    extra = msg.layer.add(name="loss1/classifier", type="InnerProduct")
    array_to_blob(np.ones((3, 2)), extra.blobs.add())
    path = tmp_path / "src.caffemodel"
    path.write_bytes(msg.SerializeToString())
    dst = make_net(2)
    report = copy_weights(dst, read_caffemodel(path), str(path))
    assert report.copied == ["fc"] and report.fresh == ["conv"] and report.ignored == ["loss1/classifier"]
    assert report.skipped_without_blobs == 2
    assert torch.equal(dst.params["fc"][0], src.params["fc"][0])
    lines = report.lines()
    assert any("fresh" in line and "conv" in line for line in lines)
    assert any("ignored" in line and "loss1/classifier" in line for line in lines)
    assert not any("split" in line and "pool2" in line for line in lines)
    logged = []
    load_weights(dst, f"{path},{path}", log=logged.append)
    assert len(logged) == 2 * len(lines) and all(line.startswith(str(path)) for line in logged)


def test_load_weights_later_file_wins(tmp_path):
    a, b, dst = make_net(1), make_net(2), make_net(3)
    save_caffemodel(a, tmp_path / "a.caffemodel")
    save_caffemodel(b, tmp_path / "b.caffemodel")
    load_weights(dst, f"{tmp_path / 'a.caffemodel'},{tmp_path / 'b.caffemodel'}", log=lambda _: None)
    assert torch.equal(dst.params["fc"][0], b.params["fc"][0])


def test_same_name_other_shape_names_both_shapes(tmp_path):
    other = make_net(1, NET.replace("num_output: 5", "num_output: 7"))
    path = tmp_path / "o.caffemodel"
    save_caffemodel(other, path)
    with pytest.raises(CaffeCamError) as info:
        copy_weights(make_net(2), read_caffemodel(path), str(path))
    msg = str(info.value)
    assert "'fc'" in msg and "(7, 64)" in msg and "(5, 64)" in msg and "rename" in msg and "\n" not in msg


def test_legacy_dims_must_match_left_padded_shape(tmp_path):
    # Caffe matches legacy 4-D dims against the target shape left-padded with 1s: a (1,1,K,5) blob is not a (5,K)
    # weight even though the element count agrees.
    msg, _ = v1_model(fc_weight_dims=(1, 1, K, 5))
    with pytest.raises(CaffeCamError, match=r"'fc'.*\(1, 1, 64, 5\).*\(5, 64\).*rename"):
        copy_weights(make_net(), msg, "v1")


def test_blob_count_mismatch_is_an_error():
    msg = caffe_pb2.NetParameter()
    fc = msg.layer.add(name="fc", type="InnerProduct")
    array_to_blob(np.zeros((5, K)), fc.blobs.add())
    net = make_net()
    with pytest.raises(CaffeCamError, match="'fc'.*rename"):
        copy_weights(net, msg, "x")


def test_bad_files_are_one_line_errors(tmp_path):
    good = tmp_path / "good.caffemodel"
    save_caffemodel(make_net(), good)
    data = good.read_bytes()
    cases = {"missing": None, "empty": b"", "trunc_half": data[: len(data) // 2], "trunc_end": data[:-10],
             "random": np.random.default_rng(0).bytes(4096), "text": NET.encode()}
    for name, content in cases.items():
        path = tmp_path / f"{name}.caffemodel"
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(CaffeCamError) as info:
            read_caffemodel(path)
        msg = str(info.value)
        assert msg.startswith(str(path)) and "\n" not in msg, (name, msg)


def test_blob_helpers():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    blob = array_to_blob(a)
    assert list(blob.shape.dim) == [2, 3]
    np.testing.assert_array_equal(blob_to_array(blob), a)
    d = caffe_pb2.BlobProto()
    d.shape.dim.extend([3])
    d.double_data.extend([0.5, 1.5, 2.5])
    out = blob_to_array(d)
    assert out.dtype == np.float32 and out.tolist() == [0.5, 1.5, 2.5]
    legacy = blob_to_array(legacy_blob(np.ones(4), (1, 1, 1, 4)))
    assert legacy.shape == (1, 1, 1, 4)
    bad = caffe_pb2.BlobProto()
    bad.shape.dim.extend([2, 2])
    bad.data.extend([1.0])
    with pytest.raises(CaffeCamError):
        blob_to_array(bad)


def test_zero_d_blob_as_caffe_writes_it():
    # A channel_shared PReLU slope is a 0-D blob: Caffe's ToProto writes its one value and no `shape` (zero dims add
    # no field) and FromProto reads that back as 0-D. The legacy 4-D fields win only when one of them is set.
    blob = caffe_pb2.BlobProto()
    blob.data.append(0.3)
    assert blob_to_array(blob).shape == () and blob_to_array(blob) == np.float32(0.3)
    assert blob_to_array(array_to_blob(np.array(0.5, dtype=np.float32))).shape == ()
    net = Net(parse_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 } } }\n'
                         'layer { name: "pr" type: "PReLU" bottom: "x" top: "y" prelu_param { channel_shared: true } }',
                         caffe_pb2.NetParameter), TEST)
    source = caffe_pb2.NetParameter()
    source.layer.add(name="pr", type="PReLU").blobs.append(blob)
    assert copy_weights(net, source).copied == ["pr"]
    assert net.params["pr"][0].shape == () and net.params["pr"][0].item() == np.float32(0.3)


def test_failed_write_keeps_existing_file(tmp_path, monkeypatch):
    path = tmp_path / "keep.caffemodel"
    path.write_bytes(b"old contents")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("caffecam.atomic.os.fsync", broken_fsync)
    with pytest.raises((OSError, CaffeCamError)):
        save_caffemodel(make_net(), path)
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["keep.caffemodel"]


def test_unwritable_destination_is_a_one_line_error(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(CaffeCamError, match="afile"):
        save_caffemodel(make_net(), tmp_path / "afile" / "x.caffemodel")


def test_layers_loaded_from_weights_skip_their_fillers(tmp_path):
    from caffecam.engine.weights import layers_with_blobs

    param = parse_text(NET, caffe_pb2.NetParameter)
    save_caffemodel(Net(param, TEST, seed=7), tmp_path / "w.caffemodel")
    source = read_caffemodel(tmp_path / "w.caffemodel")
    names = layers_with_blobs(source)
    assert names == {name for name, blobs in Net(param, TEST, meta=True).params.items() if blobs}
    # Unseeded fillers draw from torch's global generator: the skipped layers leave it untouched.
    torch.manual_seed(0)
    net = Net(param, TEST, unfilled=names)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))
    report = copy_weights(net, source, "w.caffemodel")
    assert not report.fresh and sorted(report.copied) == sorted(names)
    for name, blobs in Net(param, TEST, seed=7).params.items():
        for got, expect in zip(net.params[name], blobs):
            assert torch.equal(got, expect), name
    # With a seed every filler draws, in Caffe's order: `unfilled` is ignored and the values are the seeded ones.
    seeded = Net(param, TEST, seed=3, unfilled=names)
    for name, blobs in Net(param, TEST, seed=3).params.items():
        for got, expect in zip(seeded.params[name], blobs):
            assert torch.equal(got, expect), name


def test_copy_keeps_shared_blobs_one_tensor_and_the_layout(tmp_path):
    shared = NET.replace('type: "InnerProduct" bottom: "conv" top: "fc"',
                         'type: "InnerProduct" bottom: "conv" top: "fc" param { name: "w" } param { name: "b" }')
    shared += """layer { name: "fc2" type: "InnerProduct" bottom: "conv" top: "fc2"
  param { name: "w" } param { name: "b" } inner_product_param { num_output: 5 } }"""
    param = parse_text(shared, caffe_pb2.NetParameter)
    save_caffemodel(Net(param, TEST, seed=5), tmp_path / "w.caffemodel")
    source = read_caffemodel(tmp_path / "w.caffemodel")
    expect = {lp.name: [blob_to_array(b) for b in lp.blobs] for lp in source.layer}
    net = Net(param, TEST, seed=9)
    net.to(memory_format=torch.channels_last)
    copy_weights(net, source)
    assert net.params["fc"][0] is net.params["fc2"][0] and net.params["fc"][1] is net.params["fc2"][1]
    assert net.params["conv"][0].is_contiguous(memory_format=torch.channels_last)
    for name in ("conv", "fc", "fc2"):
        for got, want in zip(net.params[name], expect[name]):
            np.testing.assert_array_equal(got.detach().numpy(), want)
