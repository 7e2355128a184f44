"""Backend choice: ``backend=`` per call, else ``IWAE_KERNELS_BACKEND``, else triton for CUDA tensors, torch for CPU.

A backend is a module with the functions of ``iwae_kernels.reference``. The Triton one is imported on first
use, so ``TRITON_INTERPRET`` is read when a kernel is first needed, not at ``import iwae_kernels``.
"""

import importlib
import importlib.util
import os

BACKENDS = ("torch", "triton")
ENV_VAR = "IWAE_KERNELS_BACKEND"


def triton_available():
    return importlib.util.find_spec("triton") is not None


def triton_interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def backend_name(backend, device):
    """The backend a call on tensors of ``device`` runs on, or a ValueError that says why it cannot."""
    name = backend if backend is not None else os.environ.get(ENV_VAR) or None
    source = "backend" if backend is not None else ENV_VAR
    if name is None:
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if name not in BACKENDS:
        raise ValueError(f"{source}: expected one of {BACKENDS}, got {name!r}")
    if name == "triton":
        if not triton_available():
            raise ValueError(f"{source}='triton' needs the triton package: pip install triton")
        if device.type != "cuda" and not triton_interpreting():
            raise ValueError(
                f"{source}='triton' needs CUDA tensors (got {device.type}); "
                "set TRITON_INTERPRET=1 to run it on CPU, or use backend='torch'"
            )
    return name


def get_backend(backend, device):
    """The module implementing the ops for ``backend`` (see ``backend_name``) on ``device``."""
    name = backend_name(backend, device)
    return importlib.import_module("iwae_kernels.ops" if name == "triton" else "iwae_kernels.reference")
