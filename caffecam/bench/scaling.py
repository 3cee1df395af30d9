"""How cost grows with the work, for `make bench`: GoogLeNet-CAM training steps and deploy forwards at batch 1, 8
and 32, and CAM end to end (run_cam over a folder of JPEGs, overlays and JSON written) at 1, 16 and 64 images.
Each figure also as a share of the machine's peak (peak.py), so the per-image overhead at small sizes shows."""

from pathlib import Path

import cv2
import numpy as np
import torch

from caffecam.bench.cam import deploy_net
from caffecam.bench.peak import fraction
from caffecam.bench.timing import interleaved, synthetic_image
from caffecam.bench.training import TrainStep
from caffecam.cam.maps import CamModel
from caffecam.cam.pipeline import run_cam
from caffecam.data.images import collect_inputs
from caffecam.engine.cost import forward_flops_per_image


def train_and_forward(spec, batches, rounds, budget_s, peak):
    """{batch: {train_images_per_s, inference_images_per_s, *_peak_fraction}}: channels_last, fp32, one batch size
    at a time (each its own nets; the forward with BatchNorm folding as cam.py runs it)."""
    out = {}
    for batch in batches:
        step = TrainStep(**spec, batch=batch, channels_last=True)
        net = deploy_net(**spec, batch=batch).eval().to(memory_format=torch.channels_last)
        x = (torch.rand((batch, 3, spec["input_size"], spec["input_size"])) * 255 - 117).contiguous(
            memory_format=torch.channels_last)

        def forward(net=net, x=x):
            with torch.inference_mode():
                net(x)

        times = interleaved({"train": step, "inference": forward}, rounds, budget_s / len(batches))
        flops = forward_flops_per_image(net)
        row = {"train_images_per_s": batch / times["train"], "inference_images_per_s": batch / times["inference"]}
        row["train_peak_fraction"] = fraction(row["train_images_per_s"], 3 * flops, peak.get("fp32_peak_gflops"))
        row["inference_peak_fraction"] = fraction(row["inference_images_per_s"], flops, peak.get("fp32_peak_gflops"))
        out[str(batch)] = row
    return out


def cam_end_to_end(spec, counts, work, batch_size, rounds, budget_s, peak):
    """{count: {images_per_s, wall_s, peak_fraction}}: run_cam over `count` generated JPEGs (224×224 as the net's
    input, so the forward is the same work at every count), the model built once."""
    work = Path(work)
    rng = np.random.default_rng(3)
    folder = work / "images"
    folder.mkdir(parents=True, exist_ok=True)
    size = spec["input_size"]
    for i in range(max(counts)):
        cv2.imwrite(str(folder / f"photo_{i:04d}.jpg"), synthetic_image(rng, size, size))
    items = collect_inputs([folder])
    model = CamModel(deploy_net(**dict(spec, batch=batch_size)), device="cpu")
    flops = forward_flops_per_image(model.net)

    def run(count):
        return run_cam(model, items[:count], work / f"out_{count}", top_k=1, batch_size=batch_size, progress=False)

    run(1)  # warm-up: thread pools, first allocations
    out = {}
    for count in counts:
        seconds = interleaved({"run": lambda c=count: run(c)}, rounds, budget_s / len(counts), warmup=0)["run"]
        out[str(count)] = {"images_per_s": count / seconds, "wall_s": seconds,
                           "peak_fraction": fraction(count / seconds, flops, peak.get("fp32_peak_gflops"))}
    return out
