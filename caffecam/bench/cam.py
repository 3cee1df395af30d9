"""The inference and CAM measurements of `make bench` (scripts/bench.py): plain forward passes, CAM against the
per-channel loop, autograd Grad-CAM and torchcam, and the end-to-end pipeline over a folder of JPEGs. Timing
follows caffecam.bench.timing: callables interleaved round by round, medians over the rounds."""

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from caffecam.bench.timing import cuda_sync, interleaved, synthetic_image
from caffecam.cam.maps import CamModel, cam_maps, classifier_weight, gradcam_maps, loop_cam_maps
from caffecam.cam.pipeline import run_cam
from caffecam.data.images import collect_inputs
from caffecam.engine.net import TEST, Net
from caffecam.nets.googlenet_cam import googlenet_cam
from caffecam.proto import caffe_pb2

MEAN = np.array([104.0, 117.0, 123.0], np.float32)  # B, G, R, as CamModel's default


def deploy_net(num_classes, width_div, input_size, batch, seed=1):
    return Net(googlenet_cam(num_classes, width_div, input_size, head="prob", batch=batch), TEST, seed=seed)


def inference_speeds(spec, rounds, budget_s, device):
    """Deploy net forward (inference mode) in both memory formats -> {format: images/s}."""
    nets, inputs = {}, {}
    x = torch.rand((spec["batch"], 3, spec["input_size"], spec["input_size"])) * 255 - 117
    for fmt, mf in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        nets[fmt] = deploy_net(**spec).to(device).to(memory_format=mf).eval()
        inputs[fmt] = x.to(device).contiguous(memory_format=mf)

    def forward(fmt):
        with torch.inference_mode():
            nets[fmt](inputs[fmt])

    sync = cuda_sync if torch.device(device).type == "cuda" else None
    times = interleaved({fmt: (lambda f=fmt: forward(f)) for fmt in nets}, rounds, budget_s, sync)
    return {fmt: spec["batch"] / t for fmt, t in times.items()}


class _Tap(nn.Module):
    """Wraps the layer that writes the feature blob: its top number `position` goes through `features` (an
    nn.Identity), so forward hooks see the tensor and gradients with respect to that output reach it."""

    def __init__(self, layer, features, position=0):
        super().__init__()
        self.layer, self.features, self.position = layer, features, position

    def forward(self, *xs):
        tops = list(self.layer(*xs))
        tops[self.position] = self.features(tops[self.position])
        return tops


class TorchcamAdapter(nn.Module):
    """A copy of a CamModel's net as torchcam expects a CNN: forward(x) -> class scores (N, classes); `features` is
    the nn.Identity that `blob` (default: the model's feature blob) flows through after its last writer, so hooks see
    the value Caffe holds in it (an in-place ReLU's output); `fc` an nn.Linear sharing the CAM classifier's weight and
    bias, None when the model has no classifier weights (the gradient methods, SqueezeNet's identity head)."""

    def __init__(self, model, channels_last=None, blob=None):
        super().__init__()
        source, layers = model.net, model.layers
        net = Net(caffe_pb2.NetParameter(name=source.name, layer=source.layer_params), TEST)
        net.load_state_dict(source.state_dict())
        blob = blob or layers.feature_blob
        writer = max(i for i, lp in enumerate(net.layer_params) if blob in lp.top)
        self.net = net
        self.features = nn.Identity()
        net.layers[writer] = _Tap(net.layers[writer], self.features, list(net.layer_params[writer].top).index(blob))
        self.fc = None
        if layers.fc_layer is not None:
            ip = net.layer_by_name[layers.fc_layer]
            rows, cols = classifier_weight(net, layers.fc_layer).shape
            self.fc = nn.Linear(cols, rows, bias=len(ip.blobs) > 1)
            self.fc.weight = ip.blobs[0] if not getattr(ip, "transpose", False) else nn.Parameter(ip.blobs[0].t())
            self.fc.bias = ip.blobs[1] if len(ip.blobs) > 1 else None
        self.score_blob = layers.score_blob
        self.end = net.layer_params[max(i for i, lp in enumerate(net.layer_params) if self.score_blob in lp.top)].name
        cl = model.channels_last if channels_last is None else channels_last
        self.to(model.device)
        if cl:
            self.to(memory_format=torch.channels_last)
        self.eval()

    def forward(self, x):
        return self.net.forward(x, end=self.end)[self.score_blob].flatten(1)


def torchcam_methods():
    """(CAM, GradCAM, version) from torchcam, or None when it is not installed."""
    try:
        import torchcam
        from torchcam.methods import CAM, GradCAM
    except ImportError:
        return None
    return CAM, GradCAM, getattr(torchcam, "__version__", "?")


def overhead_pair(model, batch):
    """The two sides of the CAM overhead, alike but for the maps: the host batch goes to the device, the net runs,
    the probabilities (and on the CAM side the maps) come back to the host."""
    out_blob = model.layers.prob_blob or model.layers.score_blob

    def forward():
        with torch.inference_mode():
            return model.forward(model.to_input(batch))[out_blob].float().cpu()

    return {"forward": forward, "cam": lambda: model.run(batch, top_k=1)}


def cam_speeds(spec, rounds, budget_s, device):
    """CamModel.run (top-1 maps on the device) against a plain forward with the same transfers (overhead_pair), the
    per-channel loop, autograd Grad-CAM and torchcam's CAM / GradCAM over one batch; images/s for each, the maps
    alone in ms, and torchcam agreement."""
    model = CamModel(deploy_net(**spec), device=device)
    rng, size = np.random.default_rng(0), spec["input_size"]
    batch = [model.preprocess(synthetic_image(rng, size, size)) for _ in range(spec["batch"])]
    x = model.to_input(batch)
    lay, weight = model.layers, model.weight
    with torch.inference_mode():
        blobs = model.forward(x)
    feats = blobs[lay.feature_blob].float().clone()  # clones outside inference mode: usable by autograd
    ids = blobs[lay.score_blob].flatten(1).argmax(1, keepdim=True).clone()

    def loop():
        with torch.inference_mode():
            b = model.forward(x)
            top = b[lay.score_blob].flatten(1).argmax(1, keepdim=True)
            return loop_cam_maps(b[lay.feature_blob], weight, top)

    fns = {**overhead_pair(model, batch), "loop": loop,
           "gradcam": lambda: gradcam_maps(model.net, x, ids, lay.feature_blob, lay.score_blob)}
    methods, checks = torchcam_methods(), {}
    if methods is not None:
        cam_cls, gradcam_cls = methods[:2]
        cam_adapter, grad_adapter = TorchcamAdapter(model), TorchcamAdapter(model)
        cam_ext = cam_cls(cam_adapter, target_layer=cam_adapter.features, fc_layer=cam_adapter.fc)
        grad_ext = gradcam_cls(grad_adapter, target_layer=grad_adapter.features)

        def torchcam_cam(normalized=True):
            with torch.inference_mode():
                scores = cam_adapter(x)
                return cam_ext(class_idx=scores.argmax(1).tolist(), normalized=normalized)[0]

        def torchcam_gradcam(normalized=True):
            scores = grad_adapter(x)
            return grad_ext(class_idx=scores.argmax(1).tolist(), scores=scores, normalized=normalized)[0]

        fns.update(torchcam_cam=torchcam_cam, torchcam_gradcam=torchcam_gradcam)
        ours = cam_maps(feats, weight.float(), ids)[:, 0]
        checks["torchcam_cam_max_rel_diff"] = _rel_diff(torchcam_cam(False), ours)
        ours_grad = gradcam_maps(model.net, x, ids, lay.feature_blob, lay.score_blob)[:, 0]
        checks["torchcam_gradcam_max_rel_diff"] = _rel_diff(torchcam_gradcam(False), ours_grad)
    sync = cuda_sync if model.device.type == "cuda" else None
    times = interleaved(fns, rounds, budget_s, sync)
    maps_only = interleaved({"cam": lambda: cam_maps(feats, weight.float(), ids).cpu(),
                             "loop": lambda: loop_cam_maps(feats, weight, ids)}, rounds, budget_s / 4, sync)
    speeds = {name: spec["batch"] / t for name, t in times.items()}
    return speeds, {k: 1000 * v for k, v in maps_only.items()}, checks


def _rel_diff(a, b):
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def torchcam_pipeline(adapter, extractor, paths, out_dir, input_size, alpha=0.5):
    """A plain torchcam CAM pipeline, one image at a time: decode, preprocess, forward, extractor, overlay, write."""
    out_dir, device = Path(out_dir), next(adapter.parameters()).device
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in paths:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        x = cv2.resize(img, (input_size, input_size), interpolation=cv2.INTER_LINEAR).astype(np.float32) - MEAN
        x = torch.from_numpy(x).permute(2, 0, 1)[None].contiguous().to(device)
        with torch.inference_mode():
            scores = adapter(x)
            cam = extractor(class_idx=int(scores.argmax(1)[0]))[0][0].float().cpu().numpy()
        up = cv2.resize(cam, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
        heat = cv2.applyColorMap(np.uint8(np.clip(up, 0, 1) * 255), cv2.COLORMAP_JET)
        cv2.imwrite(str(out_dir / f"{Path(path).stem}_cam.png"), cv2.addWeighted(img, 1 - alpha, heat, alpha, 0))


def cam_end_to_end(spec, count, work_dir, rounds, budget_s, device, batch_size):
    """run_cam over a folder of generated JPEGs (overlays + JSON written) vs torchcam_pipeline on the same net
    (contiguous memory, batch 1, no overlap: what a plain script does) -> {name: images/s}."""
    work_dir = Path(work_dir)
    size = spec["input_size"]
    rng = np.random.default_rng(7)
    (work_dir / "images").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        cv2.imwrite(str(work_dir / "images" / f"photo_{i:04d}.jpg"), synthetic_image(rng, size, size))
    items = collect_inputs([work_dir / "images"])
    model = CamModel(deploy_net(**dict(spec, batch=batch_size)), device=device)
    fns = {"run_cam": lambda: run_cam(model, items, work_dir / "ours", top_k=1, batch_size=batch_size,
                                      progress=False)}
    methods = torchcam_methods()
    if methods is not None:
        plain = CamModel(deploy_net(**dict(spec, batch=1)), device=device, channels_last=False)
        plain.net.load_state_dict(model.net.state_dict())
        adapter = TorchcamAdapter(plain, channels_last=False)
        extractor = methods[0](adapter, target_layer=adapter.features, fc_layer=adapter.fc)
        paths = [it.path for it in items]
        fns["torchcam"] = lambda: torchcam_pipeline(adapter, extractor, paths, work_dir / "torchcam", size)
    run_cam(model, items[:batch_size], work_dir / "ours", top_k=1, batch_size=batch_size, progress=False)  # warm-up
    if "torchcam" in fns:
        torchcam_pipeline(adapter, extractor, paths[:2], work_dir / "torchcam", size)
    times = interleaved(fns, rounds, budget_s, warmup=0)
    return {name: count / t for name, t in times.items()}
