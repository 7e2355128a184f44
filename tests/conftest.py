"""Test setup: run the Triton kernels through the interpreter when no GPU is present.

TRITON_INTERPRET must be set before any @triton.jit function is defined and before ``import iwae_kernels``, which
preloads the Triton backend only where it can run (a GPU, or the interpreter): otherwise the first call loads it,
and a first call inside torch.compile would trace that import (a graph break).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():  # before helpers imports iwae_kernels, whose import preloads the Triton backend
    os.environ.setdefault("TRITON_INTERPRET", "1")

from helpers import COMPILED_BACKENDS, backend_device  # noqa: E402


@pytest.fixture(params=COMPILED_BACKENDS)
def kernel(request):
    """A compiled backend (name, device) to test against the torch reference; skips where it cannot run."""
    return request.param, backend_device(request.param)
