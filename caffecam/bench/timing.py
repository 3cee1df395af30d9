"""Timing helpers of the bench: interleaved rounds, device synchronisation, synthetic images."""

import os
import statistics
import time

import cv2
import numpy as np
import torch


def interleaved(fns, rounds, budget_s, sync=None, warmup=1, stat=statistics.median):
    """{name: callable} -> {name: median seconds per call} (`stat`: min for a best case). Each callable runs
    `warmup` times untimed, then up to `rounds` rounds call each in turn; at least one round, and no new round that
    would end past budget_s."""
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
    return {name: stat(v) for name, v in times.items()}


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
