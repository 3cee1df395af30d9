"""CUDA's float32 math and determinism settings (process-wide torch flags, settable without a GPU)."""

import os

import pytest
import torch
import torch.nn.functional as F

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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_convolution_is_float32_accurate(cuda_flags):
    # The case: a 192-channel 3×3 convolution, about 2e-7 off in IEEE float32 (3e-4 with TF32 on Ampere+).
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(4, 192, 28, 28, generator=g), torch.randn(192, 192, 3, 3, generator=g) / 40
    expect = F.conv2d(x.double(), w.double(), padding=1)
    precision.configure("cuda")
    y = F.conv2d(x.cuda(), w.cuda(), padding=1).double().cpu()
    assert ((y - expect).abs().max() / expect.abs().max()).item() < 1e-5
