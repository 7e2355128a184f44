"""Bytes a call allocates at its peak, on any device: what large-k evaluation sizes its chunks from.

Two instruments watch the same call, and the larger peak counts:
- a ``TorchDispatchMode`` sees every op's outputs. An output whose storage is new (not a view of an input) is an
  allocation; it stays live until the last tensor viewing it is freed (a finalizer per tensor). It works
  everywhere, but cannot see what an op allocates and frees inside itself (a transposed convolution's column
  buffer, the intermediates of a fused attention layer).
- torch.profiler's allocation events (``profile_memory``): every allocation and free of the device's allocator,
  inside ops too, in time order. It is skipped while another profiler runs (the user's: starting a second
  would end that one's session).
Neither sees memory that bypasses torch's allocators (oneDNN's scratchpads, cuDNN's own handles) nor allocator
rounding and caching: the caller leaves room for them.
"""

import contextlib
import os
import sys
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of the storages ops allocate while it is active, and their running peak."""

    def __init__(self):
        super().__init__()
        self.live = {}  # storage address -> [bytes, tensors that view it]
        self.current = 0
        self.peak = 0

    def _release(self, address):
        entry = self.live.get(address)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[address]

    def _hold(self, tensor, address):
        self.live[address][1] += 1
        weakref.finalize(tensor, self._release, address)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            address = storage.data_ptr()
            if address in self.live:  # a view of (or in place on) an allocation made during the call
                self._hold(tensor, address)
            elif address not in inputs and storage.nbytes() > 0:
                self.live[address] = [storage.nbytes(), 0]
                self.current += storage.nbytes()
                self._hold(tensor, address)
        self.peak = max(self.peak, self.current)
        return out


def peak_live_bytes(fn):
    """(fn(), the peak bytes of the tensors fn allocated that were live at once, by op outputs alone). What fn
    returns counts while it is alive inside fn; tensors that existed before the call are not counted."""
    counter = _LiveBytes()
    with counter:
        result = fn()
    return result, counter.peak


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null: some torch builds print a line on every profiler start and stop."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _allocator_events_peak(events, device):
    """The running peak of the allocation (+) and free (-) events of ``device`` among a profile's raw events."""
    kind = torch.autograd.DeviceType.CUDA if device.type == "cuda" else torch.autograd.DeviceType.CPU
    index = (device.index or 0) if device.type == "cuda" else None
    allocations = [event for event in events if event.name() == "[memory]" and event.device_type() == kind
                   and (index is None or event.device_index() == index)]
    current = peak = 0
    for event in sorted(allocations, key=lambda event: event.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def peak_allocated_bytes(fn, device):
    """(fn(), the peak bytes fn allocated on ``device`` above what existed before): the larger of the op-output
    count (``peak_live_bytes``) and the profiler's allocation timeline, which also sees allocations inside ops."""
    if torch._C._autograd._profiler_enabled():  # the user's profiler: a second would end its session
        return peak_live_bytes(fn)
    # The autograd profiler itself: torch.profiler.profile's wrapper warns about its event cycles on some versions.
    profiler = torch.autograd.profiler.profile(profile_memory=True, use_kineto=True)
    with _quiet_stderr():
        profiler.__enter__()
    try:
        result, counted = peak_live_bytes(fn)
    finally:
        with _quiet_stderr():
            profiler.__exit__(None, None, None)
    return result, max(counted, _allocator_events_peak(profiler.kineto_results.events(), device))
