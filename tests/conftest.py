"""Fixtures shared by every test folder."""

import pytest
import torch


@pytest.fixture
def cuda_flags(monkeypatch):
    """torch's process-wide CUDA math settings (caffecam.engine.precision sets them), restored after the test."""
    b = torch.backends
    saved = (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.benchmark, b.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.benchmark, b.cudnn.deterministic = saved[:4]
    torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])
    torch.utils.deterministic.fill_uninitialized_memory = saved[6]
