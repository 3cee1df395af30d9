"""CUDA's float32 math and determinism settings (process-wide torch flags, settable without a GPU)."""

import os

import torch

from caffecam.engine import precision


def test_this_torch_defaults_cudnn_to_tf32():
    # Why precision.configure exists: left alone, cuDNN convolutions round float32 to TF32.
    assert torch.backends.cudnn.allow_tf32


def test_cuda_float32_is_ieee_unless_tf32_is_asked_for(cuda_flags):
    line = precision.configure(torch.device("cuda", 1))
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.get_float32_matmul_precision() == "highest"
    assert line == "CUDA math: IEEE float32 (TF32 off; --tf32 allows it)"
    assert not torch.are_deterministic_algorithms_enabled()  # None: left as it was
    line = precision.configure("cuda", tf32=True)
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    assert line.startswith("CUDA math: TF32 allowed")


def test_deterministic_cudnn_and_algorithms(cuda_flags):
    torch.backends.cudnn.benchmark = True
    line = precision.configure("cuda", deterministic=True)
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert line.endswith("; cuDNN deterministic")
    precision.configure("cuda", deterministic=False)
    assert not torch.backends.cudnn.deterministic and not torch.are_deterministic_algorithms_enabled()


def test_a_cpu_device_changes_nothing(cuda_flags):
    assert precision.configure("cpu", deterministic=True) is None
    assert torch.backends.cudnn.allow_tf32 and not torch.backends.cudnn.deterministic
    assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
