"""An out-of-bounds checker for Triton kernels run by the interpreter (TRITON_INTERPRET=1): test infrastructure.

The interpreter runs a kernel's programs one after another in numpy and reads and writes raw host addresses
without checking them, so a load or store a GPU would fault on (or that would silently read a neighbour) passes
every CPU test. Inside ``check_accesses()`` every memory access of every interpreted launch is checked: each
address a kernel touches under its mask (loads, stores, atomics; block pointers and tensor descriptors reach the
interpreter's masked load/store too) must be an element of a tensor passed to that launch, and all active lanes of
one access must be elements of the same tensor. Otherwise ``OutOfBoundsError`` names the kernel, the program id,
the access, the argument it was nearest and the offending element offset.

How tight: an element of a strided view means an address the view indexes (offset = sum of index * stride with
every index inside its size), not merely its storage or its span: a read one past the end of ``mean`` where
``mean, logvar = out.chunk(2, -1)`` lands on ``logvar[..., 0]``, an element of another argument, which the
one-tensor-per-access rule catches whenever that access also touches ``mean`` (a whole block landing inside another
argument passes). Views whose strides overlap (``as_strided`` tricks) fall back to their span, and so does an
access whose element width differs from its tensor's (a reinterpreting pointer cast). What it cannot see: a
wrong index that stays inside the right tensor (the value tests catch that).

Hooks: triton.runtime.interpreter's InterpreterBuilder.create_masked_load/create_masked_store/create_atomic_cas/
create_atomic_rmw (every memory access of the interpreter goes through them, in triton 3.6 and 3.9) and
GridExecutor._init_args_hst/__call__ (a launch's host arguments). A missing hook raises SanitizerUnavailable when
``check_accesses()`` starts.
"""

import contextlib
import inspect
import threading
from dataclasses import dataclass

import numpy as np
import torch


class OutOfBoundsError(AssertionError):
    """A masked-in lane of a Triton load/store addressed memory outside the tensors passed to its launch."""


class SanitizerUnavailable(RuntimeError):
    """The installed Triton's interpreter lacks a hook this checker needs: nothing would be checked."""


@dataclass(frozen=True)
class _Region:
    """A tensor argument of a launch: where its elements lie."""

    name: str
    base: int  # data_ptr(), bytes
    itemsize: int
    shape: tuple
    stride: tuple
    span: int  # bytes from base to the end of its last element

    @classmethod
    def of(cls, name, tensor):
        last = sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))
        span = (last + 1) * tensor.element_size()
        return cls(name, tensor.data_ptr(), tensor.element_size(), tuple(tensor.shape), tuple(tensor.stride()), span)

    def _nested_dims(self):
        """(size, stride) by decreasing stride without size-1 and broadcast dims, or None where strides overlap
        (then no index decomposition is unique and only the span is checked)."""
        dims = sorted(((n, s) for n, s in zip(self.shape, self.stride) if n > 1 and s > 0), key=lambda d: -d[1])
        for (_, outer), (size, inner) in zip(dims, dims[1:]):
            if outer < size * inner:
                return None
        return dims

    def contains(self, addresses, width):
        """Whether each byte address (int64 array) starts a ``width``-byte element of this tensor."""
        delta = addresses - self.base
        inside = (delta >= 0) & (delta + width <= self.span)
        dims = self._nested_dims()
        if width != self.itemsize or dims is None:
            return inside
        inside &= delta % self.itemsize == 0
        rest = np.where(inside, delta // self.itemsize, 0)
        for size, stride in dims:
            index = rest // stride
            inside &= index < size
            rest = rest - np.minimum(index, size - 1) * stride
        return inside & (rest == 0)

    def describe(self):
        return f"{self.name} (shape {list(self.shape)}, strides {list(self.stride)}, {self.itemsize} B elements)"


def _tensor_arguments(arg_names, args, kwargs):
    """(name, tensor) for every tensor argument, also inside tuples and as a tensor descriptor's base."""
    found = []

    def visit(name, value):
        if type(value).__name__ in ("TensorWrapper", "TensorDescriptor"):  # a reinterpreted tensor, a descriptor
            value = value.base
        if isinstance(value, torch.Tensor):
            if value.numel():
                found.append(_Region.of(name, value))
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                visit(f"{name}[{i}]", item)

    for name, value in zip(arg_names, args):
        visit(name, value)
    for name, value in kwargs.items():
        visit(name, value)
    return found


class _Launch:
    def __init__(self, kernel):
        self.kernel, self.regions = kernel, []


_state = threading.local()
_counts = []  # per open check_accesses() block: {kernel name: accesses checked}


def _current_launch():
    launch = getattr(_state, "launch", None)
    if launch is None:
        raise OutOfBoundsError("a Triton memory access outside any interpreted launch: the checker cannot tell what "
                               "it may touch")
    return launch


def _check(kind, ptrs, mask):
    """Raise unless every masked-in lane of ``ptrs`` (a pointer TensorHandle) is an element of one argument."""
    from triton.runtime.interpreter import interpreter_builder

    launch = _current_launch()
    addresses = np.asarray(ptrs.data).astype(np.int64).ravel()
    active = (np.ones(addresses.shape, bool) if mask is None
              else np.broadcast_to(np.asarray(mask.data), np.shape(ptrs.data)).ravel().astype(bool))
    for counts in _counts:
        counts[launch.kernel] = counts.get(launch.kernel, 0) + 1
    addresses = addresses[active]
    if not addresses.size:
        return
    bits = ptrs.get_element_ty().primitive_bitwidth
    width = max(1, bits // 8)
    if any(region.contains(addresses, width).all() for region in launch.regions):
        return
    contained = [region.contains(addresses, width) for region in launch.regions]
    nearest = max(range(len(contained)), key=lambda i: contained[i].sum(), default=None)
    if nearest is None:
        raise OutOfBoundsError(f"{launch.kernel}: {kind} at program {interpreter_builder.grid_idx} with no tensor "
                               f"argument to address")
    region, inside = launch.regions[nearest], contained[nearest]
    bad = addresses[~inside]
    offset = int(bad[0]) - region.base
    raise OutOfBoundsError(
        f"{launch.kernel}: {kind} at program {interpreter_builder.grid_idx}: {bad.size} of {addresses.size} masked-in "
        f"lanes outside {region.describe()}, the argument holding most of its lanes; first at {offset} bytes "
        f"(element offset {offset / region.itemsize:g}) from its data_ptr, in a view of {int(np.prod(region.shape))} "
        f"elements"
        + ("" if inside.any() else "; no lane of it inside any argument"))


# (class attribute, parameters its wrapper reads by name): the interpreter's every memory access
_ACCESS_HOOKS = {"create_masked_load": ("ptrs", "mask"), "create_masked_store": ("ptrs", "mask"),
                 "create_atomic_rmw": ("ptr", "mask"), "create_atomic_cas": ("ptr", None)}


def _wrap_access(name, original, ptr_name, mask_name):
    signature = inspect.signature(original)

    def checked(*args, **kwargs):
        bound = signature.bind(*args, **kwargs).arguments
        _check(name.removeprefix("create_").replace("masked_", ""), bound[ptr_name],
               bound[mask_name] if mask_name else None)
        return original(*args, **kwargs)

    return checked


def _hooks():
    """(owner, attribute, replacement) for every hook; SanitizerUnavailable where one is missing."""
    import triton
    from triton.runtime import interpreter

    hooks = []
    missing = [f"{owner}.{attr}" for owner, attr in
               [("InterpreterBuilder", a) for a in _ACCESS_HOOKS] + [("GridExecutor", "_init_args_hst"),
                                                                      ("GridExecutor", "__call__")]
               if not hasattr(getattr(interpreter, owner, None), attr)]
    if missing:
        raise SanitizerUnavailable(f"triton {triton.__version__}'s interpreter has no {', '.join(missing)}: the "
                                   "out-of-bounds checker cannot see its memory accesses")
    builder = interpreter.InterpreterBuilder
    for attr, (ptr_name, mask_name) in _ACCESS_HOOKS.items():
        original = getattr(builder, attr)
        parameters = inspect.signature(original).parameters
        if ptr_name not in parameters or (mask_name and mask_name not in parameters):
            raise SanitizerUnavailable(f"triton {triton.__version__}: InterpreterBuilder.{attr}"
                                       f"{inspect.signature(original)} has no parameter {ptr_name!r} or {mask_name!r}")
        hooks.append((builder, attr, _wrap_access(attr, original, ptr_name, mask_name)))

    executor = interpreter.GridExecutor
    init_args, call = executor._init_args_hst, executor.__call__

    def init_args_recorded(self, args_dev, kwargs):
        args_hst, kwargs_hst = init_args(self, args_dev, kwargs)
        _current_launch().regions = _tensor_arguments(self.arg_names, args_hst, kwargs_hst)
        return args_hst, kwargs_hst

    def call_in_launch(self, *args, **kwargs):
        outer = getattr(_state, "launch", None)
        _state.launch = _Launch(f"{self.fn.__module__.rsplit('.', 1)[-1]}.{self.fn.__name__}")
        try:
            return call(self, *args, **kwargs)
        except Exception as error:
            cause = out_of_bounds_cause(error)
            if cause is None or cause is error:
                raise
            raise cause.with_traceback(None) from error  # not triton's InterpreterError(repr(...)) around it
        finally:
            _state.launch = outer

    hooks += [(executor, "_init_args_hst", init_args_recorded), (executor, "__call__", call_in_launch)]
    return hooks


@contextlib.contextmanager
def check_accesses():
    """Check every interpreted Triton launch inside the block: OutOfBoundsError (an AssertionError) from the launch
    on its first out-of-bounds access. Yields {kernel name "module.function": memory accesses checked}, filled as
    the block runs (for coverage tests)."""
    hooks, counts = _hooks(), {}
    saved = [(owner, attr, owner.__dict__[attr]) for owner, attr, _ in hooks]
    _counts.append(counts)
    try:
        for owner, attr, replacement in hooks:
            setattr(owner, attr, replacement)
        yield counts
    finally:
        for owner, attr, original in saved:
            setattr(owner, attr, original)
        _counts.remove(counts)


def out_of_bounds_cause(error):
    """The OutOfBoundsError behind ``error`` (the interpreter wraps a kernel's exception), or None."""
    while error is not None and not isinstance(error, OutOfBoundsError):
        error = error.__cause__ or error.__context__
    return error
