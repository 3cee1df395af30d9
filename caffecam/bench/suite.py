"""The sections of `make bench` (scripts/bench.py) and what each measures with: Plan (sizes, rounds, budgets; FULL
and the seconds-long QUICK), Bench (one method per section; `all(only=...)` runs some of them, with the data and
the peak they need), GOALS (the issues' targets, printed beside each ratio)."""

import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from caffecam.bench import cam as bench_cam
from caffecam.bench import peak, scaling, side_by_side, training, zoo
from caffecam.bench import report as bench_report
from caffecam.bench.sections import SECTIONS
from caffecam.engine import precision

GOALS = {"train_fp32_vs_caffe": 3.0, "train_bf16_vs_caffe": 5.0, "gpu_bf16_images_per_s": 2500.0,
         "cam_overhead_ratio": 1.15, "end_to_end_speedup": 2.5, "report_page_ms": 2000.0}
# deploy nets at batch 16 (issues 12 and 15): ours over OpenCV 4 DNN and over real Caffe
ZOO_GOALS = {"resnet50": {"fp32_vs_cv4": 1.5, "fp32_vs_caffe": 2.5},
             "googlenet_cam": {"fp32_vs_cv4": 1.6, "bf16_vs_cv4": 2.5}}
# Seconds a section may spend on repeat rounds (its warm-up and first round always run).
BUDGETS_S = {"train": 120.0, "inference": 20.0, "cam": 90.0, "end_to_end": 60.0, "peak": 20.0, "zoo": 120.0,
             "scaling": 120.0}
KEYS = {"end_to_end": "cam_end_to_end"}  # the JSON key of a section, where it is not the section's name
NEEDS_DATA = {"pipeline", "train_vs_caffe", "loader"}
NEEDS_PEAK = {"train_vs_caffe", "zoo", "scaling"}


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
    peak_scale: int = 1  # divides the peak convolutions' channels
    peak_rounds: int = 5
    peer_train_batch: int = 32  # `caffe train` against train.py, same train_val, batch and JPEGs
    peer_train_warmup: int = 3  # iterations left out of the medians (start-up, first allocations)
    peer_train_steps: int = 4  # timed iterations per run
    peer_train_rounds: int = 2  # runs of each side, in alternating order
    zoo_nets: tuple = ("resnet50", "googlenet_cam")  # deploy nets against OpenCV 4 DNN and `caffe time`
    zoo_batch: int = 16
    zoo_rounds: int = 3
    caffe_time_iterations: int = 3
    scaling_batches: tuple = (1, 8, 32)
    scaling_cam_images: tuple = (1, 16, 64)
    scaling_rounds: int = 2
    budget_scale: float = 1.0



FULL = Plan()
QUICK = replace(FULL, width_div=8, input_size=64, train_batch=4, infer_batch=4, cam_batch=4, e2e_images=6,
                loader_images=12, source_size=(100, 75), resize=72, loader_batches=2, cpu_pipeline_steps=2,
                gpu_steps=2, gpu_pipeline_steps=3, memory_timed_steps=1, train_rounds=1, inference_rounds=2,
                cam_rounds=2, e2e_rounds=1, loader_rounds=1, report_entries=200, report_rounds=1, budget_scale=0.02,
                peak_scale=8, peak_rounds=1, peer_train_batch=4, peer_train_warmup=1, peer_train_steps=2,
                peer_train_rounds=1,
                zoo_nets=("tiny_resnet", "googlenet_cam"), zoo_batch=4, zoo_rounds=2, caffe_time_iterations=2,
                scaling_batches=(1, 2, 4), scaling_cam_images=(1, 2, 4), scaling_rounds=1)


def ratio(a, b):
    return a / b if a is not None and b else None


class Bench:
    def __init__(self, plan, device, work):
        self.plan, self.device, self.work = plan, torch.device(device), Path(work)
        self.cuda = self.device.type == "cuda"
        self.net = dict(num_classes=plan.num_classes, width_div=plan.width_div, input_size=plan.input_size)
        self.notes, self.sections, self.loads, self.gpu_memory = [], {}, {}, {}
        self.peak_figures = {}
        self.torchcam = bench_cam.torchcam_methods()
        if self.torchcam is None:
            self.notes.append("torchcam is not installed (pip install -r requirements.txt): its entries are "
                              "null")
        if plan.width_div != 1 or plan.input_size != 224:
            self.notes.append(f"smoke run: a net of width/{plan.width_div} at {plan.input_size}x{plan.input_size} "
                              "with tiny batches; its figures do not compare with the goals")
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
        out = {"batch": p.train_batch, "cpu_fp32_contiguous_images_per_s": cpu["contiguous"],
               "cpu_fp32_channels_last_images_per_s": cpu["channels_last"],
               "cpu_channels_last_speedup": ratio(cpu["channels_last"], cpu["contiguous"]),
               "cpu_fp32_channels_last_direct_conv_images_per_s": cpu["channels_last_direct"],
               "cpu_winograd_speedup": ratio(cpu["channels_last"], cpu["channels_last_direct"]),
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

    def peak(self):
        out = peak.conv_peak(self.plan.peak_rounds, self.budget("peak"), self.plan.peak_scale)
        self.peak_figures = out
        return out

    def train_vs_caffe(self):
        p = self.plan
        out = side_by_side.training(self.work / "train_vs_caffe", self.net, self.images / "list.txt", self.images,
                                    p.resize, p.peer_train_batch, p.peer_train_warmup, p.peer_train_steps,
                                    self.peak_figures, self.notes, p.peer_train_rounds)
        out.update(goal_fp32_vs_caffe=GOALS["train_fp32_vs_caffe"],
                   goal_bf16_vs_caffe_fp32=GOALS["train_bf16_vs_caffe"])
        return out

    def zoo(self):
        p, out = self.plan, {}
        builders = {"resnet50": lambda: zoo.resnet50_case(p.zoo_batch, self.work / "zoo"),
                    "tiny_resnet": lambda: zoo.tiny_resnet_case(p.zoo_batch, self.work / "zoo"),
                    "googlenet_cam": lambda: zoo.googlenet_cam_case(p.zoo_batch, self.work / "zoo", p.num_classes,
                                                                    p.width_div, p.input_size)}
        for name in p.zoo_nets:
            out[name] = side_by_side.deploy(builders[name](), p.zoo_rounds, self.budget("zoo") / len(p.zoo_nets),
                                            p.caffe_time_iterations, self.peak_figures, self.notes)
            goals = ZOO_GOALS.get({"tiny_resnet": "resnet50"}.get(name, name), {})  # the quick run's stand-in
            out[name].update({f"goal_{k}": v for k, v in goals.items()})
        return out

    def scaling(self):
        p = self.plan
        return {"train_and_inference": scaling.train_and_forward(self.net, p.scaling_batches, p.scaling_rounds,
                                                                 self.budget("scaling") * 2 / 3, self.peak_figures),
                "cam_end_to_end": scaling.cam_end_to_end(self.net, p.scaling_cam_images, self.work / "scaling",
                                                         p.cam_batch, p.scaling_rounds, self.budget("scaling") / 3,
                                                         self.peak_figures)}

    def all(self, only=None):
        """The sections in SECTIONS order (those in `only`, when given), with what they need run first."""
        wanted = set(only or SECTIONS)
        if wanted & NEEDS_DATA:
            wanted.add("data")
        if wanted & NEEDS_PEAK:
            wanted.add("peak")
        start, out = time.perf_counter(), {}
        for name in SECTIONS:
            if name in wanted:
                result = self.run(name, getattr(self, name))
                if name != "data":
                    out[KEYS.get(name, name)] = result
        if "train" in out and "pipeline" in out:
            out["train"]["pipeline"] = out.pop("pipeline")
        if "memory" in out:
            out["memory"].update(self.gpu_memory)
        out["sections_s"], out["total_s"], out["notes"] = self.sections, time.perf_counter() - start, self.notes
        out["load_average_1min"] = self.loads  # at each section's start: other work on the machine skews timings
        return out

def environment(device, torchcam):
    """Versions, the CPU (model, usable cores, its vector/matrix flags) and the device."""
    return {"cpu": peak.cpu_info(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device),
            "cuda_device": torch.cuda.get_device_name(0) if torch.device(device).type == "cuda" else None,
            "cuda_math": precision.describe(False) if torch.device(device).type == "cuda" else None,
            "torchcam": torchcam[2] if torchcam else None}
