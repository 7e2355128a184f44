"""Test setup: run the Triton kernels through the interpreter when no GPU is present.

TRITON_INTERPRET must be set before any @triton.jit function is defined, i.e. before iwae_kernels.ops is
imported; the package imports it lazily, so setting it here is early enough.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


COMPILED_BACKENDS = ["triton", "cuda"]


def backend_device(name):
    """Where backend ``name`` runs in this session, or a skip that says why it cannot.

    torch: the CPU. triton: the GPU, or the CPU under TRITON_INTERPRET=1. cuda: the GPU with the extension.
    """
    from iwae_kernels import backend, cuda_backend

    if name == "torch":
        return torch.device("cpu")
    if name == "triton":
        if not backend.triton_available():
            pytest.skip("triton is not installed")
        if torch.cuda.is_available() and not backend.triton_interpreting():
            return torch.device("cuda")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        pytest.skip("the cuda backend needs a CUDA GPU")
    if not cuda_backend.available():
        pytest.skip(cuda_backend.HOW_TO_BUILD)
    return torch.device("cuda")


@pytest.fixture(params=COMPILED_BACKENDS)
def kernel(request):
    """A compiled backend (name, device) to test against the torch reference; skips where it cannot run."""
    return request.param, backend_device(request.param)
