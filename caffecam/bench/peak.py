"""The machine's physical limit for the bench: its CPU (model, cores, the vector and matrix instruction sets that
decide bfloat16 speed) and its peak convolution throughput, measured on one large 3×3 and one large 1×1
convolution in float32 and bfloat16 (oneDNN through F.conv2d, channels_last, the format the nets run in).

Each net figure of the bench is then also given as a fraction of that peak, counting the net's real FLOPs
(2 per multiply-add of its Convolution and InnerProduct layers, engine/cost.py; a training step as 3 forwards:
the forward, the gradient to the inputs and the gradient to the weights).
"""

import os
import platform

import torch
import torch.nn.functional as F

from caffecam.bench.timing import interleaved

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
# (name, batch, channels in, channels out, size, kernel): about 30 and 13 GFLOP a call at full size, the fastest of
# the shapes tried here (3×3: 256 to 512 channels at 56 to 14 pixels, 1×1: 1024 channels at 28 and 14)
SHAPES = (("conv3x3", 8, 512, 512, 28, 3), ("conv1x1", 8, 1024, 1024, 28, 1))


def cpu_info():
    """{model, cores (usable by this process), flags: the FLAGS this CPU has}."""
    model, flags, found = platform.processor() or platform.machine(), set(), False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not found:
                    model, found = value.strip(), True
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "cores": cores, "torch_threads": torch.get_num_threads(),
            "flags": [f for f in FLAGS if f in flags]}


def conv_peak(rounds=3, budget_s=20.0, scale=1):
    """{conv3x3|conv1x1}_{fp32|bf16}_gflops and the best of each precision ({fp32,bf16}_peak_gflops); `scale` divides
    the channel counts (a quick run). bfloat16 entries are None where the CPU has no native bfloat16."""
    native_bf16 = bool({"avx512_bf16", "amx_bf16"} & set(cpu_info()["flags"]))
    calls, flops = {}, {}
    g = torch.Generator().manual_seed(0)
    for name, n, cin, cout, size, k in SHAPES:
        cin, cout = max(8, cin // scale), max(8, cout // scale)
        x = torch.randn((n, cin, size, size), generator=g).contiguous(memory_format=torch.channels_last)
        w = (torch.randn((cout, cin, k, k), generator=g) / (cin * k * k) ** 0.5).contiguous(
            memory_format=torch.channels_last)
        for dtype, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            if dtype == torch.bfloat16 and not native_bf16:
                continue
            xd, wd = x.to(dtype), w.to(dtype)
            calls[f"{name}_{tag}"] = lambda xd=xd, wd=wd, p=k // 2: F.conv2d(xd, wd, None, 1, p)
            flops[f"{name}_{tag}"] = 2.0 * n * cout * size * size * cin * k * k
    with torch.inference_mode():  # a peak is the best the machine does: the fastest round, not the median
        times = interleaved(calls, rounds, budget_s, stat=min)
    out = {f"{name}_{tag}_gflops": None for name, *_ in SHAPES for tag in ("fp32", "bf16")}
    out.update({f"{key}_gflops": flops[key] / t / 1e9 for key, t in times.items()})
    for tag in ("fp32", "bf16"):
        values = [v for key, v in out.items() if key.endswith(f"_{tag}_gflops") and v is not None]
        out[f"{tag}_peak_gflops"] = max(values) if values else None
    out["shapes"] = [f"{name}: batch {n}, {max(8, ci // scale)}->{max(8, co // scale)} channels, {s}x{s}"
                     for name, n, ci, co, s, _ in SHAPES]
    return out


def fraction(images_per_s, flops_per_image, peak_gflops):
    """The share of the peak a figure uses: images/s × FLOPs per image against the peak GFLOP/s."""
    if not images_per_s or not flops_per_image or not peak_gflops:
        return None
    return images_per_s * flops_per_image / 1e9 / peak_gflops
