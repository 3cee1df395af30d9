"""The measurements of `make bench` (scripts/bench.py): training, inference, CAM, data loading, memory.

Every ratio compares runs made side by side in one process: the callables are interleaved round by round and each
figure is the median over the rounds, so a background load slows both sides alike. A training step is the Solver's:
forward, Caffe's loss, backward, the loss read back (a device sync), then caffecam.sgd's update.
"""

import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from caffecam import sgd
from caffecam.cam import CamModel, cam_maps, classifier_weight, gradcam_maps, loop_cam_maps
from caffecam.cam_pipeline import run_cam
from caffecam.data import BatchFeed, loader_throughput
from caffecam.datum import encode_datum, lmdb_key, write_lmdb
from caffecam.errors import CaffeCamError
from caffecam.images import collect_inputs
from caffecam.models import googlenet_cam, image_data_layers, lmdb_data_layers
from caffecam.net import TEST, TRAIN, Net
from caffecam.proto import caffe_pb2

REPO = Path(__file__).resolve().parents[1]
MEAN = np.array([104.0, 117.0, 123.0], np.float32)  # B, G, R, as CamModel's default


def interleaved(fns, rounds, budget_s, sync=None, warmup=1):
    """{name: callable} -> {name: median seconds per call}. Each callable runs `warmup` times untimed, then up to
    `rounds` rounds call each in turn; at least one round, and no new round that would end past budget_s."""
    sync = sync or (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
            sync()
    times = {name: [] for name in fns}
    start = time.perf_counter()
    for _ in range(max(1, rounds)):
        begin = time.perf_counter()
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
        now = time.perf_counter()
        if now - start + (now - begin) > budget_s:
            break
    return {name: statistics.median(v) for name, v in times.items()}


def default_workers():
    """Loader worker processes as scripts/train.py picks them for one process: half the cores, at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, min(8, cpus // 2))


def cuda_sync():
    torch.cuda.synchronize()


# ---- synthetic data --------------------------------------------------------------------------------------------

def synthetic_image(rng, width, height):
    """A smooth random colour field with a little noise: compresses like a photo, not like white noise."""
    small = rng.integers(0, 256, (max(2, height // 32), max(2, width // 32), 3), dtype=np.uint8)
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_jpegs(folder, count, width, height, num_classes, seed=0):
    """`count` JPEGs in `folder` and their ImageData list `folder/list.txt`; returns [(relpath, label)]."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(count):
        rel = f"img_{i:05d}.jpg"
        cv2.imwrite(str(folder / rel), synthetic_image(rng, width, height), [cv2.IMWRITE_JPEG_QUALITY, 90])
        entries.append((rel, int(rng.integers(num_classes))))
    (folder / "list.txt").write_text("".join(f"{rel} {label}\n" for rel, label in entries))
    return entries


def write_image_cache(path, folder, entries, size):
    """The LMDB cache of the same images as prepare_mpii.py --lmdb builds it: resized to size², encoded Datum."""
    def records():
        for i, (rel, label) in enumerate(entries):
            img = cv2.resize(cv2.imread(str(Path(folder) / rel)), (size, size), interpolation=cv2.INTER_LINEAR)
            yield lmdb_key(i, rel), encode_datum(img, label, encoded=True, quality=95)

    return write_lmdb(path, records(), total=len(entries), progress=False)


# ---- training ------------------------------------------------------------------------------------------------------

class TrainStep:
    """GoogLeNet-CAM (head loss3, Input layer) with Caffe's SGD; calling it runs one training iteration."""

    def __init__(self, num_classes, width_div, input_size, batch, device="cpu", channels_last=False, bf16=False,
                 seed=1):
        self.device, self.channels_last, self.batch = torch.device(device), channels_last, batch
        self.bf16 = bf16 and self.device.type == "cuda"
        param = googlenet_cam(num_classes, width_div, input_size, head="loss", batch=batch)
        self.net = Net(param, TRAIN, seed=seed).to(self.device)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        sp = caffe_pb2.SolverParameter(type="SGD", base_lr=0.001, momentum=0.9, weight_decay=0.0005)
        self.updater = sgd.Updater(sp, self.net.param_specs())
        self.params = list(self.net.parameters())
        g = torch.Generator().manual_seed(seed)
        self.inputs = self.to_device({"data": torch.rand((batch, 3, input_size, input_size), generator=g) * 255 - 117,
                                      "label": torch.randint(0, num_classes, (batch,), generator=g)})
        self.iter = 0

    def to_device(self, batch):
        """As Solver._inputs: to the device without blocking, 4-D blobs in channels_last when asked."""
        out = {}
        for name, value in batch.items():
            t = torch.as_tensor(value).to(self.device, non_blocking=True)
            out[name] = t.contiguous(memory_format=torch.channels_last) if self.channels_last and t.dim() == 4 else t
        return out

    def __call__(self, inputs=None):
        for p in self.params:
            p.grad = None
        with torch.autocast("cuda", torch.bfloat16, enabled=self.bf16):
            loss = self.net.loss(self.net(inputs if inputs is not None else self.inputs))
        loss.backward()
        value = float(loss.detach())  # the Solver reads the loss every iteration
        self.updater.step(0.001, self.iter)
        self.iter += 1
        return value


def train_speeds(spec, configs, rounds, budget_s, steps_per_call=1, device="cpu"):
    """{name: TrainStep kwargs} -> ({name: images/s}, {name: TrainStep}), measured interleaved."""
    steps = {name: TrainStep(**spec, device=device, **kw) for name, kw in configs.items()}
    sync = cuda_sync if torch.device(device).type == "cuda" else None
    calls = {name: (lambda s=s: [s() for _ in range(steps_per_call)]) for name, s in steps.items()}
    times = interleaved(calls, rounds, budget_s, sync)
    return {name: steps_per_call * spec["batch"] / t for name, t in times.items()}, steps


def cuda_step_memory_mb(step):
    """(peak CUDA memory one training step allocates beyond what was held before it, the peak in all) in MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return (peak - before) / 2 ** 20, peak / 2 ** 20


def pipeline_speed(spec, list_path, root, resize, steps, device, workers=None, warmup=1):
    """Training fed by the real ImageData loader (list of JPEGs, resize, random crop, mirror, worker processes).

    Returns images/s and the share of the step time spent waiting for the next batch (fetch + copy to device).
    bf16 autocast + channels_last on CUDA; fp32 + channels_last on the CPU (the faster CPU format).
    """
    device = torch.device(device)
    step = TrainStep(**spec, device=device, channels_last=True, bf16=device.type == "cuda")
    batch = spec["batch"]
    lp = image_data_layers(str(list_path), str(list_path), f"{root}/", resize, spec["input_size"], batch, batch)[0]
    workers = workers or default_workers()
    feed = BatchFeed(lp, TRAIN, seed=1, workers=workers)
    try:
        for _ in range(warmup):
            step(step.to_device(feed.next()))
        waited, start = 0.0, time.perf_counter()
        for _ in range(steps):
            t = time.perf_counter()
            inputs = step.to_device(feed.next())
            waited += time.perf_counter() - t
            step(inputs)
        total = time.perf_counter() - start
    finally:
        feed.close()
    return {"images_per_s": steps * batch / total, "data_wait_fraction": waited / total, "workers": workers,
            "steps": steps}


def _proc_status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def memory_child(args_json):
    """Run in a fresh process: build the net, then one training step; print its memory figures as JSON (MiB).

    A child exec'd from a big process starts with that process's ru_maxrss (Linux keeps the old image's high-water
    mark across exec), so the high-water mark is reset after the build (/proc/self/clear_refs 5) and read back as
    VmHWM: the peak of this process alone. Without /proc, ru_maxrss after minus ru_maxrss before the step.
    """
    spec = json.loads(args_json)
    step = TrainStep(**spec)
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        base, read = _proc_status_kib("VmRSS"), (lambda: _proc_status_kib("VmHWM"))
        method = "VmHWM after the step minus VmRSS after the build (high-water mark reset after the build)"
    except OSError:
        base, read = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, None
        method = "ru_maxrss after the step minus ru_maxrss after the build"
    step()
    peak = read() if read else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"baseline_mb": base / 1024, "peak_mb": peak / 1024, "step_mb": (peak - base) / 1024,
                      "method": method}))


def cpu_step_memory(spec, timeout=300):
    """memory_child in a subprocess; returns its figures."""
    code = "import sys; from caffecam.bench import memory_child; memory_child(sys.argv[1])"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        out = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                             cwd=REPO, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CaffeCamError(f"bench: the training-step memory child took over {timeout} s (machine busy?)") from None
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no message (killed for memory?)"])[-1]
        raise CaffeCamError(f"bench: the training-step memory child failed (exit {out.returncode}): {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- inference and CAM -----------------------------------------------------------------------------------------

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
    """Wraps the layer that writes the feature blob: its first top goes through `features` (an nn.Identity), so
    forward hooks see the tensor and gradients with respect to that output reach it."""

    def __init__(self, layer, features):
        super().__init__()
        self.layer, self.features = layer, features

    def forward(self, *xs):
        tops = list(self.layer(*xs))
        return [self.features(tops[0])] + tops[1:]


class TorchcamAdapter(nn.Module):
    """A copy of a CamModel's net as torchcam expects a CNN: forward(x) -> class scores (N, classes); `features` is
    the nn.Identity the feature blob flows through; `fc` an nn.Linear sharing the InnerProduct's weight and bias."""

    def __init__(self, model, channels_last=None):
        super().__init__()
        source, layers = model.net, model.layers
        net = Net(caffe_pb2.NetParameter(name=source.name, layer=source.layer_params), TEST)
        net.load_state_dict(source.state_dict())
        pool = [lp.name for lp in net.layer_params].index(layers.pool_layer)
        writer = max(i for i, lp in enumerate(net.layer_params[:pool]) if layers.feature_blob in lp.top)
        self.net = net
        self.features = nn.Identity()
        net.layers[writer] = _Tap(net.layers[writer], self.features)
        ip = net.layer_by_name[layers.fc_layer]
        rows, cols = classifier_weight(net, layers.fc_layer).shape
        self.fc = nn.Linear(cols, rows, bias=len(ip.blobs) > 1)
        self.fc.weight = ip.blobs[0] if not getattr(ip, "transpose", False) else nn.Parameter(ip.blobs[0].t())
        self.fc.bias = ip.blobs[1] if len(ip.blobs) > 1 else None
        self.score_blob, self.end = layers.score_blob, layers.fc_layer
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


def cam_speeds(spec, rounds, budget_s, device):
    """CamModel.run (top-1 maps on the device) against a plain forward, the per-channel loop, autograd Grad-CAM
    and torchcam's CAM / GradCAM over one batch; images/s for each, the maps alone in ms, and torchcam agreement."""
    model = CamModel(deploy_net(**spec), device=device)
    rng, size = np.random.default_rng(0), spec["input_size"]
    batch = [model.preprocess(synthetic_image(rng, size, size)) for _ in range(spec["batch"])]
    x = model.to_input(batch)
    lay, weight = model.layers, model.weight
    with torch.inference_mode():
        blobs = model.forward(x)
    feats = blobs[lay.feature_blob].float().clone()  # clones outside inference mode: usable by autograd
    ids = blobs[lay.score_blob].flatten(1).argmax(1, keepdim=True).clone()

    def forward():
        with torch.inference_mode():
            return model.net(x)

    def loop():
        with torch.inference_mode():
            b = model.forward(x)
            top = b[lay.score_blob].flatten(1).argmax(1, keepdim=True)
            return loop_cam_maps(b[lay.feature_blob], weight, top)

    fns = {"forward": forward, "cam": lambda: model.run(batch, top_k=1), "loop": loop,
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


# ---- data loading ---------------------------------------------------------------------------------------------

def loader_speeds(list_path, root, lmdb_path, resize, crop, batch, n_batches, rounds, workers):
    """ImageData over the JPEG list (resize + crop) vs Data over the LMDB cache -> {source: images/s}; each round
    opens a fresh feed (an idle feed's workers would keep filling their queue during the other's timing)."""
    image_lp = image_data_layers(str(list_path), str(list_path), f"{root}/", resize, crop, batch, batch)[0]
    lmdb_lp = lmdb_data_layers(str(lmdb_path), str(lmdb_path), crop, batch, batch)[0]

    def measure(lp):
        with BatchFeed(lp, TRAIN, seed=1, workers=workers) as feed:
            return loader_throughput(feed, n_batches)

    speeds = {"jpeg": [], "lmdb": []}
    for _ in range(max(1, rounds)):
        speeds["jpeg"].append(measure(image_lp))
        speeds["lmdb"].append(measure(lmdb_lp))
    return {k: statistics.median(v) for k, v in speeds.items()}
