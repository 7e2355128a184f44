"""ops.utils.CachedLaunch: which launches reuse a cached compiled kernel and which go through Triton.

The fast path only runs compiled kernels on a GPU, so here it drives a stand-in kernel on CPU tensors (the
GPU tests run every real kernel through it); what is checked is the key (a launch that Triton would specialize
differently must not reuse a cached kernel) and the arguments and grid the cached kernel gets.
"""

from types import SimpleNamespace

import pytest
import torch

from iwae_kernels.ops import utils
from iwae_kernels.ops.utils import CachedLaunch


class StandInCompiled:
    """A CompiledKernel: ``compiled[grid](*every_argument)`` launches."""

    def __init__(self, launches):
        self.launches = launches

    def __getitem__(self, grid):
        return lambda *args: self.launches.append((grid, args))


class StandInKernel:
    """A jit kernel (x_ptr, n, BLOCK: constexpr) that records what reaches Triton and what reaches its compiled
    kernel."""

    def __init__(self):
        self.arg_names = ["x_ptr", "n", "BLOCK"]
        self.params = [SimpleNamespace(name=name, is_constexpr=name == "BLOCK") for name in self.arg_names]
        self.through_triton, self.direct = [], []
        self.compiled = StandInCompiled(self.direct)

    def __getitem__(self, grid):
        return lambda *args, **kwargs: (self.through_triton.append((grid, args, kwargs)), self.compiled)[1]


@pytest.fixture
def launcher(monkeypatch):
    monkeypatch.setattr(utils, "triton_interpreting", lambda: False)
    cached = CachedLaunch(StandInKernel())
    cached.device_type = "cpu"
    return cached


def test_second_launch_calls_the_compiled_kernel_with_every_argument(launcher):
    x = torch.zeros(64)
    launcher[(3,)](x, 32, BLOCK=16)
    launcher[lambda meta: (meta["n"] // meta["BLOCK"],)](x_ptr=x, n=64, BLOCK=16)
    assert len(launcher.kernel.through_triton) == 1
    assert launcher.kernel.direct == [((4, 1, 1), (x, 64, 16))]


@pytest.mark.parametrize("change", ["constexpr", "int_class", "one", "dtype", "alignment"])
def test_a_launch_triton_would_specialize_differently_goes_through_triton(launcher, change):
    x = torch.zeros(64)
    launcher[(1,)](x, 32, BLOCK=16)
    other = {"constexpr": (x, 32, 32), "int_class": (x, 33, 16), "one": (x, 1, 16),
             "dtype": (x.double(), 32, 16), "alignment": (x[1:], 32, 16)}[change]
    launcher[(1,)](other[0], other[1], BLOCK=other[2])
    assert len(launcher.kernel.through_triton) == 2 and not launcher.kernel.direct
    launcher[(1,)](x, 48, BLOCK=16)  # same classes as the first launch: 48 % 16 == 0, like 32
    assert len(launcher.kernel.direct) == 1


def test_instrumented_launches_and_other_devices_go_through_triton(launcher, monkeypatch):
    x = torch.zeros(64)
    launcher[(1,)](x, 32, BLOCK=16)
    monkeypatch.setattr(utils.KernelInterface, "__getitem__", lambda kernel, grid: kernel)  # e.g. a launch counter
    launcher[(1,)](x, 32, BLOCK=16)
    monkeypatch.undo()
    monkeypatch.setattr(utils, "triton_interpreting", lambda: False)
    launcher.device_type = "cuda"
    launcher[(1,)](x, 32, BLOCK=16)
    assert len(launcher.kernel.through_triton) == 3 and not launcher.kernel.direct
