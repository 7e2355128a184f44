"""probe_host.py's sections 1-3: what one launch costs the host, below the autograd ops.

  1. launch    an empty @triton.jit kernel with 1 and with 20 arguments (6 constexprs, as the library passes them),
               by keyword and by position, then through its compiled handle (``kernel.warmup(grid=..., **kwargs)``
               returns the cached CompiledKernel): ``compiled[grid](*args)`` and the bare launcher ``compiled.run``
  2. torch     trivial torch calls for scale: torch.empty, a tiny add, the seed draw, is_compiling, current_stream
  3. launcher  each launcher iwae_loss runs (ops/*.py ``Launchers``) alone on preallocated outputs, per backend;
               and each Triton launch they make, replayed by ``kernel[grid](**kwargs)`` and through its handle

Each section adds its rows to a ``probe_host_timing.Probe``. Run them through ``python benchmarks/probe_host.py``:
it sets TRITON_INTERPRET=1 without a GPU before importing this module, whose kernels are defined at import.
"""

import importlib

import torch
import triton
import triton.language as tl

from iwae_kernels._env import triton_interpreting
from launches import kernel_name
from probe_host_timing import captured_launches

GRID = (800,)  # the empty kernels' grid


@triton.jit
def _empty_1(x_ptr):
    """An empty kernel of one argument."""


@triton.jit
def _empty_20(a_ptr, b_ptr, c_ptr, d_ptr, e_ptr, f_ptr, g_ptr, h_ptr, R, B, D, n3, n4, n5,
              HAS_A: tl.constexpr, HAS_B: tl.constexpr, MODE: tl.constexpr, ACC: tl.constexpr,
              BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """An empty kernel of 20 arguments (6 constexprs), as the library's kernels take them."""


def positional(kernel, args, kwargs):
    """The launch's arguments in the kernel's parameter order (constexprs included, as Triton passes them)."""
    names = list(getattr(kernel, "arg_names", None) or [p.name for p in kernel.params])
    return list(args) + [kwargs[name] for name in names[len(args):]]


def compiled_handle(kernel, grid, args, kwargs):
    """(compiled[grid](*args), the bare launcher) for a kernel already compiled for these arguments, as two
    zero-argument callables; raises where this Triton has no such handle (the interpreter has none)."""
    if not hasattr(kernel, "warmup"):
        raise AttributeError(f"{type(kernel).__name__} has no warmup()")
    # JITFunction.warmup runs JITFunction.run(..., warmup=True): bind, specialize, look up the cache, and return
    # the CompiledKernel instead of launching it.
    compiled = kernel.warmup(*args, grid=grid, **kwargs)
    if compiled is None:
        raise RuntimeError("kernel.warmup returned no compiled kernel")
    values = positional(kernel, args, kwargs)
    # CompiledKernel.__getitem__ loads the module (_init_handles) and returns a closure that indexes grid[0..2]:
    # unlike kernel[grid], it takes no 1-D or 2-D grid.
    grid3 = tuple(grid) + (1,) * (3 - len(grid))
    runner = compiled[grid3]
    from triton.runtime.driver import driver

    stream = driver.active.get_current_stream(driver.active.get_current_device())
    launcher, function, metadata = compiled.run, compiled.function, compiled.packed_metadata
    return (lambda: runner(*values),
            lambda: launcher(grid3[0], grid3[1], grid3[2], stream, function, metadata, None, None, None, *values))


def probe_launch(probe, device, backends):
    """Section 1: an empty Triton kernel, by keyword, by position, and through its compiled handle; returns a
    zero-argument launch of the 20-argument kernel (for the cProfile table of probe_host_loss.profiles)."""
    x = torch.zeros(1024, device=device)
    ptrs = {name: torch.zeros(1024, device=device) for name in "abcdefgh"}
    kwargs20 = {**{f"{n}_ptr": t for n, t in ptrs.items()}, "R": 6400, "B": 128, "D": 50, "n3": 0, "n4": 50,
                "n5": 784, "HAS_A": False, "HAS_B": True, "MODE": tl.constexpr(0), "ACC": tl.float32,
                "BLOCK_R": 8, "BLOCK_D": 64}
    launch20 = lambda: _empty_20[GRID](**kwargs20)
    if "triton" not in backends:
        probe.skip("launch", "(every item)", "triton", f"Triton cannot launch on {device.type} tensors here")
        return launch20
    for label, kernel, kwargs in (("1 arg", _empty_1, {"x_ptr": x}), ("20 args", _empty_20, kwargs20)):
        probe.add("launch", f"empty kernel, {label}: kernel[grid](**kwargs)", lambda k=kernel, kw=kwargs: k[GRID](**kw),
                  "triton")
        values = positional(kernel, (), kwargs)
        probe.add("launch", f"empty kernel, {label}: kernel[grid](*args)", lambda k=kernel, v=values: k[GRID](*v),
                  "triton")
        handle_rows(probe, "launch", f"empty kernel, {label}", kernel, GRID, (), kwargs)
    return launch20


def handle_rows(probe, section, label, kernel, grid, args, kwargs):
    """Rows for kernel.warmup (Triton's per-call work without the launch) and the two compiled-handle launches."""
    items = [f"{label}: kernel.warmup(grid=, **kwargs) (bind + cache lookup, no launch)",
             f"{label}: compiled[grid](*args)", f"{label}: compiled.run(...) (bare launcher)"]
    try:
        if triton_interpreting():
            raise RuntimeError("the Triton interpreter compiles nothing")
        runner, launcher = compiled_handle(kernel, grid, args, kwargs)
    except Exception as error:  # noqa: BLE001 - the API differs between Triton versions
        why = f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
        for item in items:
            probe.skip(section, item, "triton", why)
        return
    probe.add(section, items[0], lambda: kernel.warmup(*args, grid=grid, **kwargs), "triton")
    probe.add(section, items[1], runner, "triton")
    probe.add(section, items[2], launcher, "triton")


def probe_torch(probe, device, k, batch):
    """Section 2: trivial torch calls, for scale."""
    from iwae_kernels.ops.gaussian_sample import draw_seed
    from iwae_kernels.ops.utils import triton_accumulation_dtype

    a, b = torch.randn(batch, device=device), torch.randn(batch, device=device)
    probe.add("torch", "torch.empty((k, B))", lambda: torch.empty((k, batch), device=device))
    probe.add("torch", "torch.empty_like([B])", lambda: torch.empty_like(a))
    probe.add("torch", "a + b, [B]", lambda: a + b)
    probe.add("torch", "draw_seed: torch.randint(0, 2**31 - 1, ()) on the device", lambda: draw_seed(None, device))
    probe.add("torch", "torch.compiler.is_compiling() (library_op's check)", torch.compiler.is_compiling)
    probe.add("torch", "triton_accumulation_dtype(float32) (every launcher)",
              lambda: triton_accumulation_dtype(torch.float32))
    if probe.cuda:
        from triton.runtime.driver import driver

        probe.add("torch", "torch.cuda.current_stream()", torch.cuda.current_stream)
        probe.add("torch", "triton driver: get_current_device + get_current_stream (every Triton launch)",
                  lambda: driver.active.get_current_stream(driver.active.get_current_device()))


def launcher_calls(device, k, batch, dim, obs):
    """{item: (family, callable taking a Launchers)} with realistic preallocated inputs and outputs."""
    from iwae_kernels.contract import Estimator, Likelihood
    from iwae_kernels.ops.gaussian_sample import draw_seed

    gen = torch.Generator().manual_seed(0)
    new = lambda *shape: torch.randn(*shape, generator=gen).to(device)
    mu, logvar = new(batch, dim), 0.3 * new(batch, dim)
    z, log_weight = torch.empty(k, batch, dim, device=device), torch.empty(k, batch, device=device)
    seed = draw_seed(None, device)
    grad_z, grad_log_weight = new(k, batch, dim), new(k, batch)
    grad_mu, grad_logvar = torch.empty_like(mu), torch.empty_like(logvar)
    logits, x = new(k, batch, obs), torch.bernoulli(torch.full((batch, obs), 0.3), generator=gen).to(device)
    out, grad_out, grad_logits = torch.empty(k, batch, device=device), new(k, batch), torch.empty_like(logits)
    log_w, scale = new(k, batch), new(batch)
    out_max, out_sum, bound = (torch.empty(batch, device=device) for _ in range(3))
    weights = torch.empty(k, batch, device=device)
    bernoulli, total = int(Likelihood.BERNOULLI), int(Estimator.TOTAL_DERIVATIVE)
    return {
        "gaussian_sample forward": ("sample", lambda L: L.forward(mu, logvar, None, None, None, z, log_weight, seed,
                                                                  True, None)),
        "gaussian_sample backward": ("sample", lambda L: L.backward(
            mu, logvar, None, None, None, grad_z, grad_log_weight, grad_mu, grad_logvar, None, None, k, seed, total,
            True, None)),
        "log_likelihood forward": ("likelihood", lambda L: L.forward(logits, None, x, out, bernoulli)),
        "log_likelihood backward": ("likelihood", lambda L: L.backward(logits, None, x, grad_out, grad_logits, None,
                                                                       bernoulli)),
        "max_sum (iwae_bound forward)": ("logsumexp", lambda L: L.forward(log_w, None, None, out_max, out_sum, bound)),
        "normalized_weights (iwae_bound backward)": ("logsumexp", lambda L: L.backward(log_w, out_max, out_sum, scale,
                                                                                       weights)),
    }


def probe_launchers(probe, device, backends, shape):
    """Section 3: each launcher alone, and the Triton launches it makes replayed directly."""
    launchers = {}
    if "triton" in backends:  # ops/__init__ shadows the modules by their functions: import them by name
        family = lambda module: importlib.import_module(f"iwae_kernels.ops.{module}").TRITON_LAUNCHERS
        launchers["triton"] = {"sample": family("gaussian_sample"), "likelihood": family("log_likelihood"),
                               "logsumexp": family("logsumexp")}
    if "cuda" in backends:
        from iwae_kernels import cuda_backend

        launchers["cuda"] = cuda_backend.launchers()
    calls = launcher_calls(device, **shape)
    for item, (family, call) in calls.items():
        for backend, table in launchers.items():
            probe.add("launcher", item, lambda c=call, L=table[family]: c(L), backend)
        if "cuda" not in launchers:
            probe.skip("launcher", item, "cuda", "the cuda backend does not run here")
        if "triton" not in launchers:
            continue
        with captured_launches() as launches:
            call(launchers["triton"][family])
        for kernel, grid, args, kwargs in launches:
            label = f"{item}: {kernel_name(kernel)}"
            probe.add("launcher", f"{label}: kernel[grid](**kwargs)",
                      lambda k=kernel, g=grid, a=args, kw=kwargs: k[g](*a, **kw), "triton")
            handle_rows(probe, "launcher", label, kernel, grid, args, kwargs)
