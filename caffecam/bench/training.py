"""The training measurements of `make bench` (scripts/bench.py): training steps, data loading, memory (inference and
CAM are in bench/cam.py; the timing helpers both use are in bench/timing.py).

Every CPU ratio compares runs made side by side in one process: the callables are interleaved round by round and
each figure is the median over the rounds, so a background load slows both sides alike. On a GPU each configuration
is measured alone (gpu_train). A training step is the Solver's: forward, Caffe's loss, backward, the loss read back
(a device sync), then caffecam.sgd's update.
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

from caffecam.allocator import keep_freed_memory
from caffecam.bench.timing import cuda_sync, default_workers, interleaved, synthetic_image
from caffecam.data.datum import encode_datum, lmdb_key, write_lmdb
from caffecam.data.feeds import BatchFeed, loader_throughput
from caffecam.engine import precision
from caffecam.engine.kernels import winograd
from caffecam.engine.net import TRAIN, Net
from caffecam.errors import CaffeCamError
from caffecam.nets.builders import image_data_layers, lmdb_data_layers
from caffecam.nets.googlenet_cam import googlenet_cam
from caffecam.proto import caffe_pb2
from caffecam.train import sgd

REPO = Path(__file__).resolve().parents[2]


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
                 seed=1, winograd=True, tf32=False):
        self.device, self.channels_last, self.batch = torch.device(device), channels_last, batch
        precision.configure(self.device, tf32)  # process-wide: the step last built decides
        self.winograd = winograd  # False: every convolution direct, as with `engine: CAFFE` on each layer
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
        enabled, winograd.ENABLED = winograd.ENABLED, self.winograd and winograd.ENABLED
        try:
            with torch.autocast("cuda", torch.bfloat16, enabled=self.bf16):
                loss = self.net.loss(self.net(inputs if inputs is not None else self.inputs))
            loss.backward()
        finally:
            winograd.ENABLED = enabled
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


def gpu_train(spec, configs, rounds, budget_s, steps_per_call, device):
    """{name: TrainStep kwargs} -> {name: {"images_per_s", "step_mb", "peak_mb"}}, each configuration alone on the
    GPU: built, timed, its step's memory read, then freed before the next is built, so that no figure counts another
    configuration's parameters, gradients and history (TF32, a process-wide switch, also rules out interleaving)."""
    out = {}
    for name, kw in configs.items():
        step = TrainStep(**spec, device=device, **kw)
        seconds = interleaved({name: lambda s=step: [s() for _ in range(steps_per_call)]}, rounds, budget_s,
                              cuda_sync)[name]
        step_mb, peak_mb = cuda_step_memory_mb(step)
        out[name] = {"images_per_s": steps_per_call * spec["batch"] / seconds, "step_mb": step_mb, "peak_mb": peak_mb}
        del step
        gc.collect()
        torch.cuda.empty_cache()
    precision.configure(device)  # IEEE float32 again for what follows
    return out


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
    cuda = device.type == "cuda"
    step = TrainStep(**spec, device=device, channels_last=True, bf16=cuda)
    batch = spec["batch"]
    lp = image_data_layers(str(list_path), str(list_path), f"{root}/", resize, spec["input_size"], batch, batch)[0]
    workers = workers or default_workers()
    feed = BatchFeed(lp, TRAIN, seed=1, workers=workers, pin_memory=cuda, channels_last=True)
    sync = cuda_sync if cuda else (lambda: None)
    try:
        for _ in range(warmup):
            step(step.to_device(feed.next()))
        sync()
        waited, start = 0.0, time.perf_counter()
        for _ in range(steps):
            t = time.perf_counter()
            inputs = step.to_device(feed.next())
            waited += time.perf_counter() - t
            step(inputs)
        sync()  # the last update is queued on the device until here
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
    """Run in a fresh process: build the net, then one training step; print its memory figures as JSON (MiB), and
    with "timed_steps" in the spec, the median images/s of that many more steps. "keep_memory" (default true)
    says whether to call allocator.keep_freed_memory first, as scripts/train.py does.

    A child exec'd from a big process starts with that process's ru_maxrss (Linux keeps the old image's high-water
    mark across exec), so the high-water mark is reset after the build (/proc/self/clear_refs 5) and read back as
    VmHWM: the peak of this process alone. Without /proc, ru_maxrss after minus ru_maxrss before the step.
    """
    spec = json.loads(args_json)
    kept = keep_freed_memory() if spec.pop("keep_memory", True) else False
    timed_steps = spec.pop("timed_steps", 0)
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
    times = []
    for _ in range(timed_steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(json.dumps({"baseline_mb": base / 1024, "peak_mb": peak / 1024, "step_mb": (peak - base) / 1024,
                      "method": method, "keep_freed_memory": kept,
                      "images_per_s": spec["batch"] / statistics.median(times) if times else None}))


def cpu_step_memory(spec, timeout=300, keep_memory=True, timed_steps=0):
    """memory_child in a subprocess; returns its figures."""
    code = "import sys; from caffecam.bench.training import memory_child; memory_child(sys.argv[1])"
    env = dict(os.environ, PYTHONPATH=str(REPO), CAFFECAM_KEEP_MEMORY="1" if keep_memory else "0")
    spec = dict(spec, keep_memory=keep_memory, timed_steps=timed_steps)
    try:
        out = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                             cwd=REPO, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CaffeCamError(f"bench: the training-step memory child took over {timeout} s (machine busy?)") from None
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no message (killed for memory?)"])[-1]
        raise CaffeCamError(f"bench: the training-step memory child failed (exit {out.returncode}): {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


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
