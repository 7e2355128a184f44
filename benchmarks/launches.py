"""Count (and optionally skip) Triton kernel launches: the launch-count test and bench_host.py use it.

Works on a GPU and under TRITON_INTERPRET=1 alike, by wrapping ``KernelInterface.__getitem__`` (``kernel[grid]``),
which every @triton.jit kernel and autotuner goes through. Imports no iwae_kernels code, so it can measure any
checkout of the library.
"""

import collections
import contextlib

from triton.runtime.jit import KernelInterface


@contextlib.contextmanager
def recorded_launches(execute=True):
    """Count the Triton kernel launches made inside the block by kernel name (yields a Counter); with
    ``execute=False`` the launches are skipped, so what remains is the host's work."""
    counts = collections.Counter()
    original = KernelInterface.__getitem__

    def getitem(kernel, grid):
        launch = original(kernel, grid)
        name = getattr(getattr(kernel, "fn", kernel), "__name__", repr(kernel))

        def record(*args, **kwargs):
            counts[name] += 1
            return launch(*args, **kwargs) if execute else None

        return record

    KernelInterface.__getitem__ = getitem
    try:
        yield counts
    finally:
        KernelInterface.__getitem__ = original
