"""Test setup: run the Triton kernels through the interpreter when no GPU is present.

TRITON_INTERPRET must be set before any @triton.jit function is defined, i.e. before iwae_kernels.ops is
imported; the package imports it lazily, so setting it here is early enough.
"""

import os

import pytest
import torch

from helpers import COMPILED_BACKENDS, backend_device

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(params=COMPILED_BACKENDS)
def kernel(request):
    """A compiled backend (name, device) to test against the torch reference; skips where it cannot run."""
    return request.param, backend_device(request.param)
