"""How a CUDA device computes float32, whether a run repeats itself bit for bit, and bfloat16 autocast: torch's
process-wide settings, made where a net goes onto a device (the Solver, CamModel, extract_features, the bench).
TF32 and determinism concern CUDA only.

TF32. This torch lets cuDNN round float32 convolution inputs to TensorFloat-32 (a 10-bit mantissa) by default: a
192-channel 3×3 convolution is then off by about 3e-4 relative, against 2e-7 in true float32. Caffe computed in
float32, so TF32 is off for convolutions and matrix products alike unless asked for (`tf32=True`, `--tf32`).

Determinism. cuDNN picks its algorithms by heuristics (or by timing them, in benchmark mode), and some backward
algorithms accumulate with atomics, so two runs differ in the low bits. With `deterministic=True` (the Solver asks
for it when random_seed >= 0) cuDNN uses deterministic algorithms with benchmark mode off, torch switches the ops
that have one to their deterministic version (the loss's gather backward) and warns about any that has none, and
cuBLAS gets the fixed workspace it needs to be reproducible.

bfloat16 (`--bf16`, off by default). Autocast runs convolutions and matrix products in bfloat16 (8-bit mantissa,
float32's range): parameters, their gradients and the solver's update stay float32, and the layers Net.forward
keeps in float32 run there. On the CPU only where the CPU computes bfloat16 natively (AVX512-BF16 or AMX, Arm's
BF16): elsewhere oneDNN emulates it, slower than float32, so --bf16 is refused with one line.
"""

import contextlib
import os

import torch

from caffecam.errors import CaffeCamError

# /proc/cpuinfo flag -> name; Arm lists "bf16" among its Features.
_CPU_BF16_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16", "bf16": "BF16"}


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


def cpu_bf16_support():
    """Names of this CPU's native bfloat16 instruction sets (e.g. ['AMX-BF16', 'AVX512-BF16']); [] when none."""
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):  # the first core's: all cores have the same
                    flags.update(line.split(":", 1)[1].split())
                    break
    except OSError:  # not Linux: torch's own probe of the x86 instructions
        probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        return ["AVX512-BF16"] if probe is not None and probe() else []
    return [name for flag, name in _CPU_BF16_FLAGS.items() if flag in flags]


def check_bf16(device, option="--bf16"):
    """One line (CaffeCamError) when bfloat16 autocast is asked for on a device that does not compute it natively;
    returns how it will run, for the log (e.g. 'bfloat16 autocast (AMX-BF16, AVX512-BF16)')."""
    device = torch.device(device)
    if device.type == "cpu":
        found = cpu_bf16_support()
        if not found:
            raise CaffeCamError(f"{option}: this CPU has no native bfloat16 (no AVX512-BF16 or AMX in /proc/cpuinfo), "
                                "where it would run slower than float32; leave out --bf16")
        return f"bfloat16 autocast ({', '.join(found)})"
    return "bfloat16 autocast"


def autocast(device, bf16):
    """The context the forward (and the loss) run in: bfloat16 autocast when `bf16`, else nothing."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
