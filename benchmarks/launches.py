"""Count (and optionally skip) Triton kernel launches: the launch-count test and bench_host.py use it.

Works on a GPU and under TRITON_INTERPRET=1 alike, by wrapping ``KernelInterface.__getitem__`` (``kernel[grid]``),
which every @triton.jit kernel and autotuner goes through. Imports no iwae_kernels code, so it can measure any
checkout of the library.
"""

import collections
import contextlib

from triton.runtime.jit import KernelInterface


def kernel_name(kernel):
    """A jit kernel's or autotuner's function name."""
    name = getattr(getattr(kernel, "fn", kernel), "__name__", None)
    return repr(kernel) if name is None else name  # repr only when needed: it runs at every counted launch


@contextlib.contextmanager
def wrapped_launches(wrap):
    """Inside the block every ``kernel[grid](...)`` runs ``wrap(kernel, grid, launch)(...)`` instead, where
    ``launch`` is Triton's own launcher for that grid."""
    original = KernelInterface.__getitem__
    KernelInterface.__getitem__ = lambda kernel, grid: wrap(kernel, grid, original(kernel, grid))
    try:
        yield
    finally:
        KernelInterface.__getitem__ = original


@contextlib.contextmanager
def recorded_launches(execute=True):
    """Count the Triton kernel launches made inside the block by kernel name (yields a Counter); with
    ``execute=False`` the launches are skipped, so what remains is the host's work."""
    counts = collections.Counter()

    def wrap(kernel, grid, launch):
        def record(*args, **kwargs):
            counts[kernel_name(kernel)] += 1
            return launch(*args, **kwargs) if execute else None

        return record

    with wrapped_launches(wrap):
        yield counts
