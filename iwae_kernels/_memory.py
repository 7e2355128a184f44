"""Bytes a call allocates, counted on any device: what large-k evaluation sizes its chunks from.

A ``TorchDispatchMode`` sees every op's outputs. An output whose storage is new (not a view of an input) is an
allocation; it stays live until the last tensor viewing it is freed (a finalizer per tensor). The running total's
maximum over the call is its peak. Scratch a custom op allocates and frees inside itself is not seen (the fused
kernels keep theirs small); allocator rounding and caching are not counted (they are the device's, not the call's).
"""

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
    """(fn(), the peak bytes of the tensors fn allocated that were live at once), on any device. What fn returns
    counts while it is alive inside fn; tensors that existed before the call are not counted."""
    counter = _LiveBytes()
    with counter:
        result = fn()
    return result, counter.peak
