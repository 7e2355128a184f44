"""Test setup: run the Triton kernels through the interpreter when no GPU is present.

TRITON_INTERPRET must be set before any @triton.jit function is defined, i.e. before iwae_kernels.ops is
imported; the package imports it lazily, so setting it here is early enough.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (compiled Triton); skipped without one")


@pytest.fixture
def triton_device():
    """Where the triton backend runs in this session: the GPU, or the CPU under TRITON_INTERPRET=1."""
    from iwae_kernels.backend import triton_available, triton_interpreting

    if not triton_available():
        pytest.skip("triton is not installed")
    if torch.cuda.is_available() and not triton_interpreting():
        return torch.device("cuda")
    return torch.device("cpu")
