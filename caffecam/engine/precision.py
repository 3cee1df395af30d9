"""How a CUDA device computes float32, and whether a run repeats itself bit for bit: torch's process-wide settings,
made where a net goes onto a CUDA device (the Solver, CamModel, the bench). On the CPU nothing here applies.

TF32. This torch lets cuDNN round float32 convolution inputs to TensorFloat-32 (a 10-bit mantissa) by default: a
192-channel 3×3 convolution is then off by about 3e-4 relative, against 2e-7 in true float32. Caffe computed in
float32, so TF32 is off for convolutions and matrix products alike unless asked for (`tf32=True`, `--tf32`).

Determinism. cuDNN picks its algorithms by heuristics (or by timing them, in benchmark mode), and some backward
algorithms accumulate with atomics, so two runs differ in the low bits. With `deterministic=True` (the Solver asks
for it when random_seed >= 0) cuDNN uses deterministic algorithms with benchmark mode off, torch switches the ops
that have one to their deterministic version (the loss's gather backward) and warns about any that has none, and
cuBLAS gets the fixed workspace it needs to be reproducible.
"""

import os

import torch


def configure(device, tf32=False, deterministic=None):
    """Set torch's CUDA math for work on `device`; returns what was set as one line for the log (None on a CPU).
    `deterministic` None leaves cuDNN's choice of algorithms as it is (inference: forward passes repeat anyway)."""
    if torch.device(device).type != "cuda":
        return None
    # The legacy flags: each sets the new fp32_precision settings too (mixing the two APIs raises in this torch).
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    if deterministic is None:
        return describe(tf32)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        # Read when cuBLAS creates its handle (the first matrix product), so it must be set before any.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.utils.deterministic.fill_uninitialized_memory = False  # nothing here reads memory it did not write
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(False)
    return describe(tf32, deterministic)


def describe(tf32, deterministic=None):
    text = "CUDA math: " + ("TF32 allowed (--tf32)" if tf32 else "IEEE float32 (TF32 off; --tf32 allows it)")
    if deterministic is not None:
        text += "; cuDNN " + ("deterministic" if deterministic else "free to pick nondeterministic algorithms")
    return text
