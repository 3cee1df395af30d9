"""`make bench`: training, inference, CAM and data-loader speed, training-step memory, and the CAM report page with
10,000 entries in headless Chromium, in one report."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, replace

import torch

from caffecam.allocator import keep_freed_memory
from caffecam.atomic import atomic_write_bytes
from caffecam.bench import cam as bench_cam
from caffecam.bench import report as bench_report
from caffecam.bench import training
from caffecam.engine import precision
from caffecam.errors import CaffeCamError, main_guard

CAFFE_REFERENCE = {"images_per_s": 4.6, "batch": 8,
                   "what": "real Caffe 1.0 with OpenBLAS training GoogLeNet-CAM on this 2-core CPU (issue 3)"}
GOALS = {"cpu_vs_caffe": 3.0, "gpu_bf16_images_per_s": 2500.0, "cam_overhead_ratio": 1.15, "end_to_end_speedup": 2.0,
         "report_page_ms": 2000.0}
# Seconds a section may spend on repeat rounds (its warm-up and first round always run). Sized so the full run
# stays under 10 minutes on the 2-core CPU even when other work slows it down.
BUDGETS_S = {"train": 120.0, "inference": 20.0, "cam": 90.0, "end_to_end": 60.0}


@dataclass(frozen=True)
class Plan:
    num_classes: int = 14
    width_div: int = 1
    input_size: int = 224
    train_batch: int = 32
    infer_batch: int = 16
    cam_batch: int = 16
    e2e_images: int = 48
    loader_images: int = 128
    source_size: tuple = (500, 375)  # generated JPEGs, W×H
    resize: int = 256  # ImageData new_height/new_width and the LMDB cache's size
    loader_batches: int = 8
    cpu_pipeline_steps: int = 3
    gpu_steps: int = 20  # GPU training steps per timed call
    gpu_pipeline_steps: int = 60
    memory_timed_steps: int = 3  # training steps timed in each memory child (with and without keep_freed_memory)
    # Interleaved rounds per section (medians are taken over them), cut short by BUDGETS_S.
    train_rounds: int = 5
    inference_rounds: int = 5
    cam_rounds: int = 7
    e2e_rounds: int = 5
    loader_rounds: int = 3
    report_entries: int = 10_000  # entries of the CAM report page (one image repeated)
    report_rounds: int = 3  # page loads; medians over them
    budget_scale: float = 1.0


FULL = Plan()
QUICK = replace(FULL, width_div=8, input_size=64, train_batch=4, infer_batch=4, cam_batch=4, e2e_images=6,
                loader_images=12, source_size=(100, 75), resize=72, loader_batches=2, cpu_pipeline_steps=2,
                gpu_steps=2, gpu_pipeline_steps=3, memory_timed_steps=1, train_rounds=1, inference_rounds=2,
                cam_rounds=2, e2e_rounds=1, loader_rounds=1, report_entries=200, report_rounds=1, budget_scale=0.02)


def ratio(a, b):
    return a / b if a is not None and b else None


class Bench:
    def __init__(self, plan, device, work):
        self.plan, self.device, self.work = plan, torch.device(device), Path(work)
        self.cuda = self.device.type == "cuda"
        self.net = dict(num_classes=plan.num_classes, width_div=plan.width_div, input_size=plan.input_size)
        self.notes, self.sections, self.loads, self.gpu_memory = [], {}, {}, {}
        self.torchcam = bench_cam.torchcam_methods()
        if self.torchcam is None:
            self.notes.append("torchcam is not installed (pip install -r requirements.txt): its entries are "
                              "null")
        if plan.width_div != 1 or plan.input_size != 224:
            self.notes.append(f"smoke run: a net of width/{plan.width_div} at {plan.input_size}x{plan.input_size} "
                              "with tiny batches; its figures do not compare with the goals or the Caffe reference")
        if not self.cuda:
            self.notes.append("no CUDA device used: the GPU entries are null; the loader pipeline ran on the CPU")
        precision.configure(self.device)  # float32 on the GPU is IEEE float32 unless an entry says TF32

    def budget(self, name):
        return BUDGETS_S[name] * self.plan.budget_scale

    def run(self, name, fn):
        print(f"[{name}] ...", flush=True)
        self.loads[name] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        start = time.perf_counter()
        out = fn()
        self.sections[name] = round(time.perf_counter() - start, 2)
        print(f"[{name}] done in {self.sections[name]:.1f} s", flush=True)
        return out

    def data(self):
        p = self.plan
        self.images = self.work / "jpegs"
        self.entries = training.write_jpegs(self.images, p.loader_images, *p.source_size, p.num_classes)
        self.lmdb = self.work / "cache_lmdb"
        training.write_image_cache(self.lmdb, self.images, self.entries, p.resize)

    def memory(self):
        spec = dict(self.net, batch=self.plan.train_batch, channels_last=True)
        steps = self.plan.memory_timed_steps
        cpu = training.cpu_step_memory(spec, keep_memory=True, timed_steps=steps)
        plain = training.cpu_step_memory(spec, keep_memory=False, timed_steps=steps)
        out = {"cpu_train_step_mb": cpu["step_mb"], "cpu_baseline_mb": cpu["baseline_mb"],
               "cpu_peak_mb": cpu["peak_mb"], "cpu_method": "child process: " + cpu["method"],
               "keep_freed_memory": cpu["keep_freed_memory"],
               "cpu_images_per_s_keep_freed_memory": cpu["images_per_s"],
               "cpu_images_per_s_default_malloc": plain["images_per_s"],
               "keep_freed_memory_speedup": ratio(cpu["images_per_s"], plain["images_per_s"]),
               "cpu_peak_mb_default_malloc": plain["peak_mb"], "cpu_train_step_mb_default_malloc": plain["step_mb"],
               "speed_method": f"median of {steps} steps after the measured one, one child process each",
               "cpu_memory_format": "channels_last", "gpu_fp32_train_step_mb": None, "gpu_fp32_peak_mb": None,
               "gpu_bf16_channels_last_train_step_mb": None, "gpu_bf16_channels_last_peak_mb": None,
               "gpu_method": "torch.cuda.max_memory_allocated during the step minus memory_allocated before it, "
                             "each configuration alone on the device"}
        return out

    def train(self):
        p = self.plan
        spec = dict(self.net, batch=p.train_batch)
        configs = {"contiguous": {}, "channels_last": {"channels_last": True},
                   "channels_last_direct": {"channels_last": True, "winograd": False}}
        cpu = training.train_speeds(spec, configs, p.train_rounds, self.budget("train"))[0]
        best = max(cpu["contiguous"], cpu["channels_last"])
        out = {"batch": p.train_batch, "cpu_fp32_contiguous_images_per_s": cpu["contiguous"],
               "cpu_fp32_channels_last_images_per_s": cpu["channels_last"],
               "cpu_channels_last_speedup": ratio(cpu["channels_last"], cpu["contiguous"]),
               "cpu_fp32_channels_last_direct_conv_images_per_s": cpu["channels_last_direct"],
               "cpu_winograd_speedup": ratio(cpu["channels_last"], cpu["channels_last_direct"]),
               "caffe_reference_images_per_s": CAFFE_REFERENCE["images_per_s"],
               "caffe_reference_batch": CAFFE_REFERENCE["batch"], "caffe_reference": CAFFE_REFERENCE["what"],
               "cpu_vs_caffe": ratio(best, CAFFE_REFERENCE["images_per_s"]), "goal_cpu_vs_caffe": GOALS["cpu_vs_caffe"],
               "gpu_fp32_images_per_s": None, "gpu_tf32_images_per_s": None,
               "gpu_bf16_channels_last_images_per_s": None,
               "goal_gpu_bf16_images_per_s": GOALS["gpu_bf16_images_per_s"],
               "gpu_precision": {"fp32": "IEEE float32 (TF32 off, the default)", "tf32": "TF32 (--tf32)",
                                 "bf16_channels_last": "bf16 autocast (--bf16), float32 parts IEEE"}}
        if self.cuda:
            configs = {"fp32": {}, "tf32": {"tf32": True}, "bf16_channels_last": {"channels_last": True, "bf16": True}}
            gpu = training.gpu_train(spec, configs, p.train_rounds, self.budget("train") / 8, p.gpu_steps, self.device)
            for name, figures in gpu.items():
                out[f"gpu_{name}_images_per_s"] = figures["images_per_s"]
                if name != "tf32":  # its memory is fp32's
                    self.gpu_memory.update({f"gpu_{name}_train_step_mb": figures["step_mb"],
                                            f"gpu_{name}_peak_mb": figures["peak_mb"]})
        return out

    def pipeline(self):
        p = self.plan
        steps = p.gpu_pipeline_steps if self.cuda else p.cpu_pipeline_steps
        out = training.pipeline_speed(dict(self.net, batch=p.train_batch), self.images / "list.txt", self.images,
                                   p.resize, steps, self.device, warmup=3 if self.cuda else 1)
        out.update(device=self.device.type, precision="bf16 autocast + channels_last" if self.cuda
                   else "fp32 channels_last", source_size=list(p.source_size), resize=p.resize)
        return out

    def inference(self):
        p = self.plan
        speeds = bench_cam.inference_speeds(dict(self.net, batch=p.infer_batch), p.inference_rounds,
                                        self.budget("inference"), self.device)
        return {"batch": p.infer_batch, "device": self.device.type,
                "contiguous_images_per_s": speeds["contiguous"], "channels_last_images_per_s": speeds["channels_last"]}

    def cam(self):
        p = self.plan
        s, maps_ms, checks = bench_cam.cam_speeds(dict(self.net, batch=p.cam_batch), p.cam_rounds, self.budget("cam"),
                                              self.device)
        tc, tg = s.get("torchcam_cam"), s.get("torchcam_gradcam")
        return {"batch": p.cam_batch, "device": self.device.type, "image_size": p.input_size,
                "forward_images_per_s": s["forward"], "cam_images_per_s": s["cam"],
                "cam_overhead_ratio": s["forward"] / s["cam"], "goal_cam_overhead_ratio": GOALS["cam_overhead_ratio"],
                "loop_images_per_s": s["loop"], "cam_vs_loop": ratio(s["cam"], s["loop"]),
                "maps_ms": maps_ms["cam"], "loop_maps_ms": maps_ms["loop"],
                "maps_vs_loop": ratio(maps_ms["loop"], maps_ms["cam"]),
                "gradcam_images_per_s": s["gradcam"], "cam_vs_gradcam": ratio(s["cam"], s["gradcam"]),
                "torchcam_cam_images_per_s": tc, "cam_vs_torchcam_cam": ratio(s["cam"], tc),
                "torchcam_gradcam_images_per_s": tg, "cam_vs_torchcam_gradcam": ratio(s["cam"], tg),
                "torchcam_cam_max_rel_diff": checks.get("torchcam_cam_max_rel_diff"),
                "torchcam_gradcam_max_rel_diff": checks.get("torchcam_gradcam_max_rel_diff")}

    def end_to_end(self):
        p = self.plan
        s = bench_cam.cam_end_to_end(self.net, p.e2e_images, self.work / "e2e", p.e2e_rounds, self.budget("end_to_end"),
                                 self.device, p.cam_batch)
        return {"images": p.e2e_images, "image_size": p.input_size, "batch": p.cam_batch,
                "run_cam_images_per_s": s["run_cam"], "torchcam_pipeline_images_per_s": s.get("torchcam"),
                "speedup": ratio(s["run_cam"], s.get("torchcam")), "goal_speedup": GOALS["end_to_end_speedup"],
                "torchcam_pipeline": "one image at a time: cv2 decode, forward (contiguous), torchcam CAM, "
                                     "cv2 overlay, cv2.imwrite"}

    def loader(self):
        p = self.plan
        workers = min(8, os.cpu_count() or 2)
        s = training.loader_speeds(self.images / "list.txt", self.images, self.lmdb, p.resize, p.input_size,
                                p.train_batch, p.loader_batches, p.loader_rounds, workers)
        return {"batch": p.train_batch, "workers": workers, "source_size": list(p.source_size), "resize": p.resize,
                "crop": p.input_size, "jpeg_images_per_s": s["jpeg"], "lmdb_images_per_s": s["lmdb"],
                "lmdb_vs_jpeg": ratio(s["lmdb"], s["jpeg"])}

    def report(self):
        out, why = bench_report.report_bench(self.work, self.plan.report_entries, self.plan.report_rounds)
        if why:
            self.notes.append(f"the report page's times are null: {why}")
        out["goal_ms"] = GOALS["report_page_ms"]
        return out

    def all(self):
        start = time.perf_counter()
        self.run("data", self.data)
        out = {"memory": self.run("memory", self.memory)}
        out["train"] = self.run("train", self.train)
        out["train"]["pipeline"] = self.run("pipeline", self.pipeline)
        out["memory"].update(self.gpu_memory)
        out["inference"] = self.run("inference", self.inference)
        out["cam"] = self.run("cam", self.cam)
        out["cam_end_to_end"] = self.run("end_to_end", self.end_to_end)
        out["loader"] = self.run("loader", self.loader)
        out["report"] = self.run("report", self.report)
        out["sections_s"], out["total_s"], out["notes"] = self.sections, time.perf_counter() - start, self.notes
        out["load_average_1min"] = self.loads  # at each section's start: other work on the machine skews timings
        return out


def environment(device, torchcam):
    return {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device),
            "cuda_device": torch.cuda.get_device_name(0) if torch.device(device).type == "cuda" else None,
            "cuda_math": precision.describe(False) if torch.device(device).type == "cuda" else None,
            "torchcam": torchcam[2] if torchcam else None}


def fmt(v, unit="", digits=1):
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}{unit}"


def report(r):
    t, c, e, d, m, i = r["train"], r["cam"], r["cam_end_to_end"], r["loader"], r["memory"], r["inference"]
    p = r["report"]
    pl = t["pipeline"]
    agree = "n/a" if c["torchcam_cam_max_rel_diff"] is None else (
        f"CAM max rel diff {c['torchcam_cam_max_rel_diff']:.1e}, GradCAM {c['torchcam_gradcam_max_rel_diff']:.1e}")
    lines = [
        f"GoogLeNet-CAM bench ({'quick smoke run' if r['quick'] else 'full'}) — torch {r['environment']['torch']}, "
        f"{r['environment']['cpu_count']} CPUs, device {r['environment']['device']}",
        f"training, batch {t['batch']} (forward + backward + Caffe SGD), images/s:",
        f"  CPU fp32 contiguous      {fmt(t['cpu_fp32_contiguous_images_per_s'], '', 2)}",
        f"  CPU fp32 channels_last   {fmt(t['cpu_fp32_channels_last_images_per_s'], '', 2)}"
        f"   (×{fmt(t['cpu_channels_last_speedup'], '', 2)} vs contiguous)",
        f"  CPU fp32 channels_last, every convolution direct (no Winograd) "
        f"{fmt(t['cpu_fp32_channels_last_direct_conv_images_per_s'], '', 2)}"
        f"   (Winograd ×{fmt(t['cpu_winograd_speedup'], '', 2)})",
        f"  CPU in a fresh process, channels_last: {fmt(m['cpu_images_per_s_keep_freed_memory'], '', 2)} with "
        f"keep_freed_memory, {fmt(m['cpu_images_per_s_default_malloc'], '', 2)} with glibc's default malloc "
        f"(×{fmt(m['keep_freed_memory_speedup'], '', 2)})",
        f"  real Caffe 1.0 reference {t['caffe_reference_images_per_s']} (batch {t['caffe_reference_batch']}): "
        f"ours ×{fmt(t['cpu_vs_caffe'], '', 2)} (goal ×{t['goal_cpu_vs_caffe']:g})",
        f"  GPU fp32 (TF32 off)      {fmt(t['gpu_fp32_images_per_s'])}",
        f"  GPU TF32 (--tf32)        {fmt(t['gpu_tf32_images_per_s'])}",
        f"  GPU bf16 + channels_last {fmt(t['gpu_bf16_channels_last_images_per_s'])}"
        f"   (goal {t['goal_gpu_bf16_images_per_s']:g})",
        f"  JPEG pipeline on {pl['device']} ({pl['precision']}, {pl['workers']} workers): "
        f"{fmt(pl['images_per_s'], '', 2)} images/s, {fmt(100 * pl['data_wait_fraction'], '%')} of step time "
        "waiting for data",
        f"inference, deploy net batch {i['batch']} on {i['device']}: {fmt(i['contiguous_images_per_s'], '', 2)} "
        f"images/s contiguous, {fmt(i['channels_last_images_per_s'], '', 2)} channels_last",
        f"CAM, batch {c['batch']} of {c['image_size']}×{c['image_size']} on {c['device']}, images/s:",
        f"  plain forward {fmt(c['forward_images_per_s'], '', 2)}, CamModel.run {fmt(c['cam_images_per_s'], '', 2)}"
        f" -> overhead ×{fmt(c['cam_overhead_ratio'], '', 3)} (goal ≤ ×{c['goal_cam_overhead_ratio']:g})",
        f"  per-channel loop {fmt(c['loop_images_per_s'], '', 2)} (CAM ×{fmt(c['cam_vs_loop'], '', 2)}); maps alone "
        f"{fmt(c['maps_ms'], ' ms', 2)} vs loop {fmt(c['loop_maps_ms'], ' ms')} (×{fmt(c['maps_vs_loop'], '', 0)})",
        f"  autograd Grad-CAM {fmt(c['gradcam_images_per_s'], '', 2)} (CAM ×{fmt(c['cam_vs_gradcam'], '', 2)})",
        f"  torchcam CAM {fmt(c['torchcam_cam_images_per_s'], '', 2)} (CAM ×{fmt(c['cam_vs_torchcam_cam'], '', 2)}), "
        f"torchcam GradCAM {fmt(c['torchcam_gradcam_images_per_s'], '', 2)} "
        f"(CAM ×{fmt(c['cam_vs_torchcam_gradcam'], '', 2)})",
        "  torchcam's maps against ours (unnormalized): " + agree,
        f"CAM end to end, {e['images']} JPEGs {e['image_size']}×{e['image_size']} with overlays written: run_cam "
        f"{fmt(e['run_cam_images_per_s'], '', 2)} images/s, plain torchcam pipeline "
        f"{fmt(e['torchcam_pipeline_images_per_s'], '', 2)} -> ×{fmt(e['speedup'], '', 2)} "
        f"(goal ×{e['goal_speedup']:g})",
        f"data loader, batch {d['batch']}, {d['workers']} workers, {d['source_size'][0]}×{d['source_size'][1]} "
        f"JPEGs -> {d['resize']} -> crop {d['crop']}: JPEG files {fmt(d['jpeg_images_per_s'])} images/s, "
        f"LMDB cache {fmt(d['lmdb_images_per_s'])} images/s",
        f"memory of one training step (batch {t['batch']}): CPU {fmt(m['cpu_train_step_mb'], ' MiB', 0)} "
        f"({m['cpu_memory_format']}; peak RSS {fmt(m['cpu_peak_mb'], ' MiB', 0)}; with glibc's default malloc "
        f"{fmt(m['cpu_train_step_mb_default_malloc'], ' MiB', 0)}, "
        f"peak {fmt(m['cpu_peak_mb_default_malloc'], ' MiB', 0)}), "
        f"GPU fp32 {fmt(m['gpu_fp32_train_step_mb'], ' MiB', 0)} (peak {fmt(m['gpu_fp32_peak_mb'], ' MiB', 0)}), "
        f"GPU bf16 {fmt(m['gpu_bf16_channels_last_train_step_mb'], ' MiB', 0)} "
        f"(peak {fmt(m['gpu_bf16_channels_last_peak_mb'], ' MiB', 0)})",
        f"CAM report page, {p['entries']:,} entries ({fmt(p['data_js_mb'], ' MiB', 2)} of data.js) in headless "
        f"Chromium from file://: first paint {fmt(p['first_paint_ms'], ' ms', 0)}, filter \"wrong only\" "
        f"{fmt(p['filter_ms'], ' ms', 0)}, search {fmt(p['search_ms'], ' ms', 0)}, detail view "
        f"{fmt(p['detail_ms'], ' ms', 0)} (goal < {p['goal_ms']:.0f} ms); written in {fmt(p['write_s'], ' s')} "
        f"({fmt(p['write_entries_per_s'], ' entries/s', 0)})",
        "time per section: " + ", ".join(f"{k} {v:.0f} s" for k, v in r["sections_s"].items())
        + f"; total {r['total_s']:.0f} s",
        "load average (1 min) at each section's start: "
        + ", ".join(f"{k} {fmt(v, '', 1)}" for k, v in r["load_average_1min"].items()),
    ]
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)


def _finite(obj):
    """JSON cannot hold NaN/inf: such a value becomes null."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def build_parser():
    p = argparse.ArgumentParser(
        description="Measure GoogLeNet-CAM training images/s (CPU fp32 contiguous and channels_last against real "
                    "Caffe's 4.6;\nGPU fp32 and bf16 when present; the JPEG loader pipeline and its data-wait "
                    "share), inference\nimages/s, the CAM overhead over a plain forward, CAM against the per-channel "
                    "loop, autograd\nGrad-CAM and torchcam, run_cam end to end against a plain torchcam pipeline, "
                    "loader images/s\nfrom JPEG files and from an LMDB cache, the memory of one training step, and "
                    "the CAM report page\nwith 10,000 entries in headless Chromium (first paint, filter, search, "
                    "detail view). Ratios are\nmeasured side by side in one run (median of interleaved rounds).",
        epilog="The full run takes a few minutes on a 2-core CPU (at most 10). torchcam comes from "
               "requirements.txt;\nwithout it its entries are null; without Chromium (apt-get install chromium "
               "chromium-driver) the page's are.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny nets and batches, seconds (for the tests)")
    p.add_argument("--out", default="results/bench.json", help="JSON report (default %(default)s)")
    p.add_argument("--cpu", action="store_true", help="measure on the CPU even when a GPU is available")
    return p


@main_guard
def main(argv=None):
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # as the training and CAM scripts do
    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise CaffeCamError(f"--out {out}: is a folder; give a file name such as results/bench.json")
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    plan = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="caffecam-bench-") as work:
        b = Bench(plan, device, work)
        result = {"quick": args.quick, "environment": environment(device, b.torchcam), "plan": asdict(plan)}
        result.update(b.all())
    result = _finite(result)
    text = report(result)
    print(text)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, (json.dumps(result, indent=1) + "\n").encode())
    except OSError as exc:
        raise CaffeCamError(f"--out {out}: cannot write the report ({exc})") from None
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
