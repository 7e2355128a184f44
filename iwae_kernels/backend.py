"""Backend choice: ``backend=`` per call, else ``IWAE_KERNELS_BACKEND``, else triton for CUDA tensors, torch for CPU.

A backend is a module with the functions of ``iwae_kernels.reference``: ``reference`` (torch), ``ops``
(Triton) or ``cuda_backend`` (CUDA C++). The compiled ones load at ``import iwae_kernels`` where they can run
(a GPU is present, or ``TRITON_INTERPRET=1`` is set before the import), else on first use; loaded modules sit in
a dict, so torch.compile traces the dispatch without a graph break.
"""

import importlib
import importlib.util
import os

from . import reference

BACKENDS = ("torch", "triton", "cuda")
MODULES = {"torch": "iwae_kernels.reference", "triton": "iwae_kernels.ops", "cuda": "iwae_kernels.cuda_backend"}
ENV_VAR = "IWAE_KERNELS_BACKEND"


_TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None


def triton_available():
    return _TRITON_AVAILABLE


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
    if name == "cuda":
        if device.type != "cuda":
            raise ValueError(f"{source}='cuda' needs CUDA tensors (got {device.type}); use backend='torch' on CPU")
        if "cuda" not in _LOADED:
            from . import cuda_backend

            if not cuda_backend.available():
                raise ValueError(f"{source}='cuda': {cuda_backend.HOW_TO_BUILD}")
    return name


_LOADED = {"torch": reference}  # compiled backends join at import (preload) or on first use


def get_backend(backend, device):
    """The module implementing the ops for ``backend`` (see ``backend_name``) on ``device``.

    Loaded modules are kept in a dict so torch.compile can trace the dispatch (it cannot trace import_module).
    """
    name = backend_name(backend, device)
    if name not in _LOADED:
        _LOADED[name] = importlib.import_module(MODULES[name])
    return _LOADED[name]


def preload():
    """Load the compiled backends that can run here (called at ``import iwae_kernels``)."""
    import torch

    if _TRITON_AVAILABLE and (torch.cuda.is_available() or triton_interpreting()):
        _LOADED["triton"] = importlib.import_module(MODULES["triton"])
        if torch.cuda.is_available():
            from . import cuda_backend

            if cuda_backend.available():
                cuda_backend.launchers()
                _LOADED["cuda"] = cuda_backend
