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


def pytest_make_parametrize_id(config, val, argname):
    """Readable ids for dtypes, wherever they are parametrized: ``float32``, ``bfloat16`` (not ``dtype0``)."""
    if isinstance(val, torch.dtype):
        return str(val).removeprefix("torch.")
    return None


def shape_ids(*names):
    """An ``ids=`` function for parametrized shapes: with names ``"k", "B", "D"`` the shape (5, 3, 17) reads
    ``k5-B3-D17`` (the ops' dimension letters: iwae_kernels/contract.py); without names, ``5x3x17``. Other values
    (the rest of a multi-argument parametrize) keep pytest's own ids.

    ``-k`` matches substrings: ``k5-B3-D17`` also selects ``k15-B3-D170``, so the GPU plan's selections are
    checked to collect exactly what they mean (tests/integration/test_gpu_plan.py)."""

    def shape_id(value):
        if not (isinstance(value, tuple) and all(isinstance(size, int) for size in value)):
            return None
        if not names:
            return "x".join(map(str, value))
        if len(value) != len(names):
            raise ValueError(f"shape {value} has {len(value)} dimensions, its id names {len(names)}: {names}")
        return "-".join(f"{name}{size}" for name, size in zip(names, value))

    return shape_id
