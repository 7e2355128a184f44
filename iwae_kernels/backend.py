"""Backend choice and dispatch: ``backend=`` per call, else ``IWAE_KERNELS_BACKEND``, else triton for CUDA tensors
and torch for CPU tensors.

A resolved backend is a namespace with one function per op of ``contract.OPS``, each taken from the module that
``contract.IMPLEMENTATIONS`` names for that op and backend: ``torch_backend`` (torch), ``ops`` (Triton) or
``cuda_backend`` (CUDA C++). The compiled backends load at ``import iwae_kernels`` where they can run (a GPU is
present, or ``TRITON_INTERPRET=1`` is set before the import), else on first use; the namespaces sit in a dict, so
torch.compile traces the dispatch without a graph break.
"""

import importlib
import os
import types

from ._env import triton_available, triton_interpreting
from .contract import IMPLEMENTATIONS, OPS

BACKENDS = tuple(IMPLEMENTATIONS)
MODULES = {"torch": "iwae_kernels.torch_backend", "triton": "iwae_kernels.ops", "cuda": "iwae_kernels.cuda_backend"}
ENV_VAR = "IWAE_KERNELS_BACKEND"


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


def _namespace(name):
    """Backend ``name``'s ops, each from the module the contract's table names (imported on first use)."""
    modules = {impl: importlib.import_module(MODULES[impl]) for impl in set(IMPLEMENTATIONS[name].values())}
    return types.SimpleNamespace(name=name, **{op: getattr(modules[IMPLEMENTATIONS[name][op]], op) for op in OPS})


_LOADED = {"torch": _namespace("torch")}  # compiled backends join at import (preload) or on first use


def get_backend(backend, device):
    """The ops of ``backend`` (see ``backend_name``) on ``device``: a namespace with one function per op.

    Kept in a dict so torch.compile can trace the dispatch (it cannot trace import_module).
    """
    name = backend_name(backend, device)
    if name not in _LOADED:
        _LOADED[name] = _namespace(name)
    return _LOADED[name]


def preload():
    """Load the compiled backends that can run here (called at ``import iwae_kernels``)."""
    import torch

    if triton_available() and (torch.cuda.is_available() or triton_interpreting()):
        _LOADED["triton"] = _namespace("triton")
        if torch.cuda.is_available():
            from . import cuda_backend

            if cuda_backend.available():
                cuda_backend.launchers()
                _LOADED["cuda"] = _namespace("cuda")

