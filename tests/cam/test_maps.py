"""CAM maps against independent computations, the layer search, preprocessing, overlays and image loading."""

import struct
import zlib

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from caffecam.cam.drawing import contact_sheet, heatmap, overlay
from caffecam.cam.maps import (
    CamModel,
    cam_maps,
    find_cam_layers,
    gradcam_maps,
    loop_cam_maps,
    parse_mean,
    read_class_labels,
    upsample_maps,
)
from caffecam.data.images import ImageLoadError, collect_inputs, header_size, load_image, output_stems, to_bgr8
from caffecam.engine.net import Net
from caffecam.engine.prototxt import parse_text
from caffecam.engine.weights import save_caffemodel
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2

BODY = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 40 dim: 40 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1
    weight_filler { type: "gaussian" std: 0.2 } bias_filler { type: "constant" value: 0.05 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
"""
GAP = 'layer { name: "gap" type: "Pooling" bottom: "conv2" top: "gap" pooling_param { pool: AVE %s } }\n'
HEAD = """
layer { name: "fc" type: "InnerProduct" bottom: "%s" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 1 }
    bias_filler { type: "constant" value: 0.3 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def tiny_net(pool="global_pooling: true", between="", fc_bottom="gap", seed=0):
    text = BODY + (GAP % pool if pool is not None else "") + between + HEAD % fc_bottom
    return Net(parse_text(text, caffe_pb2.NetParameter), seed=seed)


def images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (30 + 7 * i, 50 - 3 * i, 3), dtype=np.uint8) for i in range(n)]


# ---- finding the layers -------------------------------------------------------------------------------------------

def test_finds_feature_blob_and_classifier():
    layers = find_cam_layers(tiny_net())
    assert (layers.feature_blob, layers.fc_layer, layers.score_blob, layers.prob_blob) == ("conv2", "fc", "fc", "prob")
    assert layers.pool_layer == "gap" and layers.end_layer == "prob"


def test_kernel_covering_the_map_counts_as_global_and_dropout_is_passed():
    drop = 'layer { name: "drop" type: "Dropout" bottom: "gap" top: "gap" dropout_param { dropout_ratio: 0.4 } }\n'
    net = tiny_net(pool="kernel_size: 10 stride: 10", between=drop)  # conv2 is 10×10 at 40 px
    assert find_cam_layers(net).feature_blob == "conv2"


@pytest.mark.parametrize("case", ["partial", "max"])
def test_no_global_average_pooling_is_a_clear_error(case):
    if case == "partial":
        net = tiny_net(pool="kernel_size: 5 stride: 5")  # AVE, but 2×2 outputs: not global
    else:
        net = tiny_net()
        next(lp for lp in net.layer_params if lp.name == "gap").pooling_param.pool = caffe_pb2.PoolingParameter.MAX
    with pytest.raises(CaffeCamError, match="global average pooling.*AVE.*InnerProduct"):
        find_cam_layers(net)


def test_overrides():
    net = tiny_net()
    with pytest.raises(CaffeCamError, match="--fc-layer nope"):
        find_cam_layers(net, fc_layer="nope")
    with pytest.raises(CaffeCamError, match="--feature-blob nope"):
        find_cam_layers(net, feature_blob="nope")
    with pytest.raises(CaffeCamError, match="blob 'conv1'"):
        find_cam_layers(net, feature_blob="conv1")  # the GAP reads conv2, not conv1
    assert find_cam_layers(net, feature_blob="conv2", fc_layer="fc").pool_layer == "gap"
    # Both named: accepted without a pooling when the widths agree, refused when they do not.
    flat = ('layer { name: "flat" type: "Pooling" bottom: "conv2" top: "gap" '
            'pooling_param { pool: MAX kernel_size: 10 } }\n')
    net2 = tiny_net(pool=None, between=flat)
    assert find_cam_layers(net2, "conv2", "fc").pool_layer is None
    with pytest.raises(CaffeCamError, match="one classifier weight per feature channel"):
        find_cam_layers(net2, "conv1", "fc")


# ---- maps ---------------------------------------------------------------------------------------------------------

def plain_forward(net, model, imgs):
    x = torch.from_numpy(np.stack([model.preprocess(i) for i in imgs])).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        return x, net(x)


def test_maps_equal_the_channel_sum_and_probs_equal_a_plain_forward():
    net = tiny_net()
    model = CamModel(net, device="cpu", channels_last=False)
    imgs = images(4)
    x, blobs = plain_forward(net, model, imgs)
    out = model.run([model.preprocess(i) for i in imgs], top_k=3)
    prob = blobs["prob"].numpy()
    order = np.argsort(-prob, axis=1)[:, :3]
    assert np.array_equal(out.class_ids, order)
    np.testing.assert_allclose(out.probs, np.take_along_axis(prob, order, 1), rtol=1e-6)
    np.testing.assert_allclose(out.all_probs, prob, rtol=1e-6)
    feats = blobs["conv2"].numpy().astype(np.float64)
    w = net.params["fc"][0].detach().numpy().astype(np.float64)
    expected = np.zeros(out.maps.shape)
    for n in range(4):
        for k in range(3):
            for ch in range(feats.shape[1]):  # the explicit per-channel sum, in float64
                expected[n, k] += w[order[n, k], ch] * feats[n, ch]
    np.testing.assert_allclose(out.maps, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(loop_cam_maps(blobs["conv2"], w, order), expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())
    # The bias is not part of the map: its spatial mean is the score minus the bias.
    scores = blobs["fc"].numpy()
    b = net.params["fc"][1].detach().numpy()
    np.testing.assert_allclose(expected.mean((2, 3)), np.take_along_axis(scores - b, order, 1), rtol=1e-4)


def test_channels_last_and_extra_classes_give_the_same_maps():
    net = tiny_net()
    xs = [CamModel(net, device="cpu").preprocess(i) for i in images(3)]
    a = CamModel(tiny_net(), device="cpu", channels_last=False).run(xs, 2, extra_ids=[[4], [0], [2]])
    b = CamModel(tiny_net(), device="cpu", channels_last=True).run(xs, 2, extra_ids=[[4], [0], [2]])
    np.testing.assert_allclose(a.maps, b.maps, rtol=1e-4, atol=1e-5)
    full = CamModel(tiny_net(), device="cpu").run(xs, 5)
    for n, extra in enumerate([4, 0, 2]):
        rank = list(full.class_ids[n]).index(extra)
        np.testing.assert_allclose(a.maps[n, 2], full.maps[n, rank], rtol=1e-4, atol=1e-5)


def test_gradcam_is_relu_cam_over_z():
    # For a GAP net y_c = Σ_k w[c,k]·(1/Z)·Σ A_k + b_c, so Grad-CAM's α_k = w[c,k]/Z and its map is ReLU(M_c)/Z.
    net = tiny_net()
    model = CamModel(net, device="cpu", channels_last=False)
    x, blobs = plain_forward(net, model, images(3))
    ids = torch.tensor([[0, 3], [1, 2], [4, 4]])
    grad = gradcam_maps(net, x, ids, "conv2").numpy()
    cam = cam_maps(blobs["conv2"], net.params["fc"][0].detach(), ids).numpy()
    z = blobs["conv2"].shape[2] * blobs["conv2"].shape[3]
    assert (cam < 0).any() and (cam > 0).any()  # both signs occur, so the ReLU matters
    np.testing.assert_allclose(grad * z, np.maximum(cam, 0), rtol=1e-4, atol=1e-5 * np.abs(cam).max())


def test_upsampling_is_bilinear_with_aligned_centres():
    maps = np.random.default_rng(1).normal(size=(2, 5, 7)).astype(np.float32)
    up = upsample_maps(maps, 31, 23)
    ref = F.interpolate(torch.from_numpy(maps)[None], size=(23, 31), mode="bilinear", align_corners=False)[0]
    assert up.shape == (2, 23, 31)
    np.testing.assert_allclose(up, ref.numpy(), atol=1e-4)


def test_preprocess_resizes_whole_image_and_subtracts_bgr_mean():
    model = CamModel(tiny_net(), device="cpu", mean=(10, 20, 30))
    img = images(1)[0]
    x = model.preprocess(img)
    ref = cv2.resize(img, (40, 40), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    ref -= np.array([10, 20, 30], np.float32)
    assert x.shape == (40, 40, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(x, ref)
    t = model.to_input([x])
    assert t.shape == (1, 3, 40, 40) and t.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(t[0, 2].numpy(), ref[:, :, 2])


def test_labels_and_mean(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("1 riding_a_bike\n0 walking\n2 water_activities\n")
    assert read_class_labels(p) == ["walking", "riding_a_bike", "water_activities"]
    # Places365's `name id`, ImageNet's synset_words.txt (one name per line, the id its rank)
    p.write_text("/a/airfield 0\n/b/bakery/shop 2\n/a/alley 1\n")
    assert read_class_labels(p) == ["/a/airfield", "/a/alley", "/b/bakery/shop"]
    p.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    assert read_class_labels(p) == ["n01440764 tench, Tinca tinca", "n01443537 goldfish, Carassius auratus"]
    bad = (("0 a\n2 b\n", "without gaps"), ("0 a\n0 b\n", "twice"), ("0 a\nb\n", r":2: expected `id name`"),
           ("a 0\nb 0\n", "twice"), ("", "no class names"))
    for text, what in bad:
        p.write_text(text)
        with pytest.raises(CaffeCamError, match=what):
            read_class_labels(p)
    with pytest.raises(CaffeCamError, match="5 classes"):
        CamModel(tiny_net(), labels=["a", "b"], device="cpu")
    assert parse_mean("104,117,123") == (104.0, 117.0, 123.0) and parse_mean("128") == (128.0,)
    with pytest.raises(CaffeCamError):
        parse_mean("1,2")


def test_from_files_refuses_weights_of_another_net(tmp_path):
    net = tiny_net()
    model_path = tmp_path / "net.prototxt"
    model_path.write_text(BODY + GAP % "global_pooling: true" + HEAD % "gap")
    save_caffemodel(net, tmp_path / "w.caffemodel")
    model = CamModel.from_files(model_path, tmp_path / "w.caffemodel", device="cpu")
    assert torch.equal(model.weight, net.params["fc"][0].detach())
    labels = tmp_path / "labels.csv"
    labels.write_text("0 a\n1 b\n")
    with pytest.raises(CaffeCamError) as err:  # the message starts with the labels file that is wrong
        CamModel.from_files(model_path, tmp_path / "w.caffemodel", labels, device="cpu")
    assert str(err.value).startswith(f"{labels}: 2 class labels for a classifier of 5 classes ('fc')")
    renamed = (BODY + GAP % "global_pooling: true" + HEAD % "gap").replace('name: "fc"', 'name: "fc_new"')
    model_path.write_text(renamed)
    with pytest.raises(CaffeCamError, match="fc_new"):
        CamModel.from_files(model_path, tmp_path / "w.caffemodel", device="cpu")


# ---- drawing ------------------------------------------------------------------------------------------------------

def test_overlay_size_and_blend():
    img = images(1)[0]
    cam = np.random.default_rng(2).random(img.shape[:2]).astype(np.float32)
    heat = heatmap(cam)
    assert heat.shape == img.shape and heat.dtype == np.uint8
    jet = cv2.applyColorMap(np.array([[0, 255]], np.uint8), cv2.COLORMAP_JET)[0]
    assert np.array_equal(heat[np.unravel_index(cam.argmax(), cam.shape)], jet[1])
    assert np.array_equal(heat[np.unravel_index(cam.argmin(), cam.shape)], jet[0])
    assert np.array_equal(overlay(img, cam, alpha=0.0), img)
    assert np.array_equal(overlay(img, cam, alpha=1.0), heat)
    half = overlay(img, cam, 0.5).astype(int)
    assert np.abs(half - (img.astype(int) + heat.astype(int)) / 2).max() <= 1
    drawn = overlay(img, cam, 0.5, "walking 93.0%", [3, 4, 20, 25])
    assert drawn.shape == img.shape
    assert np.array_equal(heatmap(np.zeros((3, 3))), np.broadcast_to(jet[0], (3, 3, 3)))
    tiny = overlay(np.zeros((1, 1, 3), np.uint8), np.ones((1, 1)), 0.5, "x", [0, 0, 1, 1])
    assert tiny.shape == (1, 1, 3)


def test_contact_sheet():
    tiles = [np.full((50, 100, 3), 200, np.uint8), np.full((300, 30, 3), 90, np.uint8), np.zeros((1, 1, 3), np.uint8)]
    sheet = contact_sheet(tiles, ["a", "b", "c"], cell=60)
    assert sheet.ndim == 3 and sheet.shape[1] > 60 and sheet.shape[0] > 2 * 60
    with pytest.raises(CaffeCamError):
        contact_sheet([], [])


# ---- images -------------------------------------------------------------------------------------------------------

def write(path, img, *params):
    assert cv2.imwrite(str(path), img, list(params))
    return path


def test_gray_rgba_16bit_and_one_pixel(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = load_image(write(tmp_path / "g.png", gray))
    assert out.shape == (3, 4, 3) and all(np.array_equal(out[:, :, c], gray) for c in range(3))
    bgra = np.zeros((2, 3, 4), np.uint8)
    bgra[..., :3] = (10, 200, 250)
    bgra[..., 3] = [[0, 255, 128], [255, 255, 0]]
    out = load_image(write(tmp_path / "a.png", bgra))
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 1].tolist() == [10, 200, 250]
    assert out[0, 2].tolist() == [round(10 * 128 / 255), round(200 * 128 / 255), round(250 * 128 / 255)]
    deep = np.array([[[0, 257 * 100, 65535]]], np.uint16)
    assert load_image(write(tmp_path / "d.png", deep)).tolist() == [[[0, 100, 255]]]
    deep_gray = np.array([[65535, 257]], np.uint16)
    assert load_image(write(tmp_path / "dg.png", deep_gray))[:, :, 0].tolist() == [[255, 1]]
    assert load_image(write(tmp_path / "one.png", np.full((1, 1, 3), 7, np.uint8))).shape == (1, 1, 3)
    assert load_image(write(tmp_path / "one.jpg", np.full((1, 1, 3), 7, np.uint8))).shape == (1, 1, 3)
    assert to_bgr8(np.array([[0.5, 2.0]], np.float32))[:, :, 0].tolist() == [[128, 255]]


def fake_png(width, height):
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"garbage, never decoded"


def test_huge_images_are_rejected_before_decoding(tmp_path):
    p = tmp_path / "huge.png"
    p.write_bytes(fake_png(60000, 50000))
    with pytest.raises(ImageLoadError, match=r"huge.png: image is 60000×50000 = 3,000,000,000 pixels, over the limit"):
        load_image(p)
    small = write(tmp_path / "s.png", np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(ImageLoadError, match="600 pixels, over the limit of 500"):
        load_image(small, max_pixels=500)
    assert load_image(small, max_pixels=600).shape == (20, 30, 3)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp", ".ppm"])
def test_header_size(tmp_path, ext):
    path = write(tmp_path / f"x{ext}", np.zeros((23, 37, 3), np.uint8))
    assert header_size(path.read_bytes()[:65536]) == (37, 23)


def test_unreadable_files_fail_with_their_name(tmp_path):
    good = write(tmp_path / "ok.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:40])
    (tmp_path / "text.jpg").write_text("hello")
    (tmp_path / "empty.png").write_bytes(b"")
    for name, what in (("trunc.png", "cannot decode"), ("text.jpg", "cannot decode"), ("empty.png", "empty file"),
                       ("missing.png", "not found")):
        with pytest.raises(ImageLoadError, match=f"{name}: .*{what}"):
            load_image(tmp_path / name)


def test_collect_inputs_and_stems(tmp_path):
    for rel in ("a/x.png", "a/b/x.jpg", "a/b/y.JPG", "a/.hidden/z.png", "a/notes.txt.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "list.txt").write_text("a/x.png 3\nsub dir/q r.png 1\n")
    items = collect_inputs([tmp_path / "a", tmp_path / "list.txt"])
    assert [str(i.path.relative_to(tmp_path)) for i in items] == ["a/b/x.jpg", "a/b/y.JPG", "a/x.png", "a/x.png",
                                                                  "sub dir/q r.png"]
    assert [i.label for i in items] == [None, None, None, 3, 1]
    assert collect_inputs([tmp_path / "list.txt"], root="/data")[0].path.as_posix() == "/data/a/x.png"
    assert output_stems([i.path for i in items]) == ["b__x", "y", "a__x", "a__x_2", "q r"]
    with pytest.raises(CaffeCamError, match="no such file"):
        collect_inputs([tmp_path / "nope"])
    (tmp_path / "bad.txt").write_text("a/x.png cat\n")
    with pytest.raises(CaffeCamError, match="bad.txt:1"):
        collect_inputs([tmp_path / "bad.txt"])


def test_cam_on_cuda_is_ieee_float32_unless_tf32_is_asked_for(cuda_flags):
    # This torch lets cuDNN round float32 to TF32 by default; a CamModel on CUDA turns that off. The net's move to
    # the device is patched out (no GPU here): the settings are made before it.
    net = tiny_net()
    net.to = lambda *args, **kwargs: net
    model = CamModel(net, device="cuda")
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert model.precision == "CUDA math: IEEE float32 (TF32 off; --tf32 allows it)"
    CamModel(net, device="cuda", tf32=True)
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    assert CamModel(tiny_net(), device="cpu").precision == "float32"
