"""Where the host time of a small iwae_loss goes: a one-shot probe of each layer between Python and the GPU.

A small loss (default k=50, B=128, D=50, P=784) is host-bound on a GPU: its kernels take far less time than the
calls around them. This times, bottom up, at that shape, what each layer between Python and the GPU costs
(docs/RESULTS.md has the measured figures):

  1. launch  an empty @triton.jit kernel with 1 and with 20 arguments (6 constexprs: bools, ints, a tl.constexpr,
             a tl.dtype, as the library passes them), by keyword and by position; then the same kernel through
             its compiled handle (``kernel.warmup(grid=..., **kwargs)`` returns the cached CompiledKernel):
             ``compiled[grid](*args)`` and the bare launcher ``compiled.run(gx, gy, gz, stream, function,
             packed_metadata, None, None, None, *args)``: what a launch costs without Triton's per-call binding,
             specialization and cache-key work ('n/a' where this Triton has no such handle, e.g. the interpreter)
  2. torch   trivial torch calls for scale: torch.empty, a tiny add, the seed draw, is_compiling, current_stream
  3. launcher  each launcher iwae_loss runs (ops/*.py ``Launchers``: gaussian_sample forward/backward,
             log-likelihood forward/backward, max_sum, normalized_weights) alone on preallocated outputs, for the
             triton and (when built) cuda backends; and each Triton kernel launch they make, replayed with the
             launcher's own arguments by ``kernel[grid](**kwargs)`` and through its compiled handle
  4. autograd  each backend's op (the autograd Function: gaussian_sample, bernoulli_log_likelihood, iwae_bound)
             forward alone and ``torch.autograd.grad`` of a retained graph alone
     loss    iwae_loss forward and forward+backward for torch / triton / cuda (and with the garbage collector
             off; and for triton with its launches skipped, launches.py, as bench_host.py does), and the naive loss
  5. in-loss inside the triton and cuda forward+backward: each launch timed where it is made (Triton's
             ``kernel[grid](...)`` call, the cuda launcher call), their sum per call, and the garbage collector's
             time per call (gc.callbacks): the launches' cost in context, against their isolated loops above
  6. torch.profiler table (self CPU time, top 25) of 20 triton iwae_loss forward+backward calls, and cProfile's
             top functions (by tottime and cumulative) of the triton and cuda forward+backward and of the
             20-argument launch

Columns: host_us, the median of the per-call perf_counter deltas over --calls calls with no synchronize inside
(then one synchronize); host_mean_us, their mean; wall_us, the whole loop to after that synchronize, per call
(wall_us ~ host_us: host-bound); gpu_us, CUDA events around --gpu-calls calls queued behind torch.cuda._sleep,
so the host has enqueued them all before the GPU starts: the device time per call back to back (0 for calls that
launch nothing; flagged in the note where the queueing outlasted the sleep, e.g. a call that synchronizes);
triton_launches, the Triton kernel launches one call makes. Every item is measured in --rounds rounds taken in
turn; each field is the median over rounds, host_us_min/max the rounds' range.

    python benchmarks/probe_host.py                                 # on a GPU, about a minute
    python benchmarks/probe_host.py --rounds 1 --calls 50 --warmup 5  # quicker

Results: benchmarks/results/<device>/probe_host.{json,md}, probe_host_profile.txt, probe_host_cprofile.txt.
Without a GPU, Triton runs under its interpreter (TRITON_INTERPRET=1, set here as bench_host.py does) and the cuda
backend is skipped: every item still runs, so the script cannot rot, but its numbers say nothing about GPU launches.
"""

import argparse
import collections
import contextlib
import cProfile
import gc
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton and iwae_kernels define their kernels

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from iwae_kernels._env import triton_interpreting  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from launches import kernel_name, recorded_launches, wrapped_launches  # noqa: E402

COLUMNS = ["section", "item", "backend", "host_us", "host_us_min", "host_us_max", "host_mean_us", "wall_us", "gpu_us",
           "triton_launches", "note"]


@triton.jit
def _empty_1(x_ptr):
    pass


@triton.jit
def _empty_20(a_ptr, b_ptr, c_ptr, d_ptr, e_ptr, f_ptr, g_ptr, h_ptr, R, B, D, n3, n4, n5,
              HAS_A: tl.constexpr, HAS_B: tl.constexpr, MODE: tl.constexpr, ACC: tl.constexpr,
              BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    pass


@contextlib.contextmanager
def captured_launches():
    """The Triton launches made inside the block, as (kernel, grid, args, kwargs), still executed."""
    launches = []

    def wrap(kernel, grid, launch):
        def record(*args, **kwargs):
            launches.append((kernel, grid, args, kwargs))
            return launch(*args, **kwargs)

        return record

    with wrapped_launches(wrap):
        yield launches


def without_gc(fn):
    gc.disable()
    try:
        return fn()
    finally:
        gc.enable()


def skipping_launches(fn):
    with recorded_launches(execute=False):
        return fn()


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


class Probe:
    """Times callables (see the module docstring) and collects the rows; called again in later rounds, an item's
    measurements join its row, and ``results`` reports their medians."""

    FIELDS = ("host_us", "host_mean_us", "wall_us", "gpu_us", "gpu_queued_us", "gpu_slept_us")

    def __init__(self, device, calls, warmup, gpu_calls):
        self.device, self.calls, self.warmup, self.gpu_calls = device, calls, warmup, gpu_calls
        self.rows = {}  # (section, item, backend) -> row, with each round's measurements in row["rounds"]
        self.cuda = device.type == "cuda"
        self.cycles_per_us = self._calibrate_sleep() if self.cuda else None

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _calibrate_sleep(self):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        cycles = 20_000_000
        for _ in range(5):  # warm-up: the clocks ramp up
            torch.cuda._sleep(cycles)
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        return cycles / (1000 * start.elapsed_time(end))

    def _row(self, section, item, backend, note=""):
        key = (section, item, backend)
        if key not in self.rows:
            self.rows[key] = {"section": section, "item": item, "backend": backend, "note": note, "rounds": []}
        return self.rows[key]

    def add(self, section, item, fn, backend="-", note=""):
        row = self._row(section, item, backend, note)
        if row["note"].startswith("error"):
            return  # it broke in an earlier round
        try:
            with captured_launches() as launches:
                fn()
            row["triton_launches"] = len(launches)
            for _ in range(self.warmup):
                fn()
            self.sync()
            stamps = [0.0] * (self.calls + 1)
            stamps[0] = time.perf_counter()
            for i in range(1, self.calls + 1):
                fn()
                stamps[i] = time.perf_counter()
            self.sync()
            end = time.perf_counter()
            deltas = sorted(b - a for a, b in zip(stamps, stamps[1:]))
            measured = {"host_us": 1e6 * deltas[len(deltas) // 2],
                        "host_mean_us": 1e6 * (stamps[-1] - stamps[0]) / self.calls,
                        "wall_us": 1e6 * (end - stamps[0]) / self.calls}
            if self.cuda:
                measured["gpu_us"], measured["gpu_queued_us"], measured["gpu_slept_us"] = self._gpu_us(
                    fn, measured["host_mean_us"])
        except Exception as error:  # noqa: BLE001 - one broken item must not lose the rest of a one-shot run
            row["note"] = f"error: {type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"
            print(f"{section} / {item} / {backend}: {row['note']}", file=sys.stderr)
            return
        row["rounds"].append(measured)

    def _gpu_us(self, fn, host_us):
        """(device time per call, host time queueing the calls, the sleep's device time): the calls queued back to
        back behind a sleep meant to outlast their queueing (exact where the sleep did)."""
        before, start, end = (torch.cuda.Event(enable_timing=True) for _ in range(3))
        sleep_us = 3 * host_us * self.gpu_calls + 500
        self.sync()
        before.record()
        torch.cuda._sleep(int(sleep_us * self.cycles_per_us))
        start.record()
        begin = time.perf_counter()
        for _ in range(self.gpu_calls):
            fn()
        end.record()
        queued_us = 1e6 * (time.perf_counter() - begin)
        end.synchronize()
        return 1000 * start.elapsed_time(end) / self.gpu_calls, queued_us, 1000 * before.elapsed_time(start)

    def record(self, section, item, backend, note="", **measured):
        """A row measured by the caller (the in-loss timers); the last round's note stands."""
        row = self._row(section, item, backend)
        row["note"] = note
        row["rounds"].append(measured)

    def skip(self, section, item, backend, why):
        self._row(section, item, backend, f"n/a: {why}")

    def results(self):
        """The rows: each field the median over rounds; host_us_min/max the range of the rounds' host_us."""
        rows = []
        for row in self.rows.values():
            rounds = row["rounds"]
            out = {key: value for key, value in row.items() if key != "rounds"}
            for field in self.FIELDS:
                values = [m[field] for m in rounds if m.get(field) is not None]
                if values:
                    out[field] = statistics.median(values)
            host = [m["host_us"] for m in rounds if m.get("host_us") is not None]
            if host:
                out.update(host_us_min=min(host), host_us_max=max(host), rounds=len(host))
            short = [m for m in rounds if m.get("gpu_queued_us", 0) > m.get("gpu_slept_us", float("inf"))]
            if short:
                worst = max(short, key=lambda m: m["gpu_queued_us"] - m["gpu_slept_us"])
                out["note"] = (out["note"] + "; " if out["note"] else "") + (
                    f"gpu_us inexact in {len(short)} of {len(rounds)} rounds: queueing {self.gpu_calls} calls took up "
                    f"to {worst['gpu_queued_us']:.0f} us, the sleep ahead of them {worst['gpu_slept_us']:.0f} us "
                    "(a device sync inside?)")
            rows.append(out)
        return rows


def probe_launch(probe, device, backends):
    """Section 1: an empty Triton kernel, by keyword, by position, and through its compiled handle."""
    x = torch.zeros(1024, device=device)
    ptrs = {name: torch.zeros(1024, device=device) for name in "abcdefgh"}
    kwargs20 = {**{f"{n}_ptr": t for n, t in ptrs.items()}, "R": 6400, "B": 128, "D": 50, "n3": 0, "n4": 50,
                "n5": 784, "HAS_A": False, "HAS_B": True, "MODE": tl.constexpr(0), "ACC": tl.float32,
                "BLOCK_R": 8, "BLOCK_D": 64}
    grid = (800,)
    if "triton" not in backends:
        probe.skip("launch", "(every item)", "triton", f"Triton cannot launch on {device.type} tensors here")
        return kwargs20
    for label, kernel, kwargs in (("1 arg", _empty_1, {"x_ptr": x}), ("20 args", _empty_20, kwargs20)):
        probe.add("launch", f"empty kernel, {label}: kernel[grid](**kwargs)", lambda k=kernel, kw=kwargs: k[grid](**kw),
                  "triton")
        values = positional(kernel, (), kwargs)
        probe.add("launch", f"empty kernel, {label}: kernel[grid](*args)", lambda k=kernel, v=values: k[grid](*v),
                  "triton")
        handle_rows(probe, "launch", f"empty kernel, {label}", kernel, grid, (), kwargs)
    return kwargs20


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
    probe.add(section, f"{label}: compiled.run(...) (bare launcher)", launcher, "triton")


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
    import importlib

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


def probe_autograd(probe, device, backends, shape):
    """Section 4: each op's autograd Function forward and its grad alone, then the whole loss."""
    import iwae_kernels as ik
    from naive import naive_iwae_loss

    k, batch, dim, obs = shape["k"], shape["batch"], shape["dim"], shape["obs"]
    gen = torch.Generator().manual_seed(1)
    new = lambda *shape_: torch.randn(*shape_, generator=gen).to(device)
    leaf = lambda t: t.detach().requires_grad_()
    mu, logvar = leaf(new(batch, dim)), leaf(0.3 * new(batch, dim))
    logits, log_w = leaf(new(k, batch, obs)), leaf(new(k, batch))
    x = torch.bernoulli(torch.full((batch, obs), 0.3), generator=gen).to(device)
    grad_z, grad_latent, grad_ll, grad_bound = new(k, batch, dim), new(k, batch), new(k, batch), new(batch)
    grad_loss = torch.ones((), device=device)
    decoder = torch.nn.Linear(dim, obs).to(device)
    eps = new(k, batch, dim)
    inputs = [mu, logvar, *decoder.parameters()]
    for backend in ("torch", "triton", "cuda"):
        if backend not in backends:
            probe.skip("autograd", "(every item)", backend, f"the {backend} backend does not run here")
            continue
        ops = ik.backend.get_backend(backend, device)
        sample = lambda o=ops: o.gaussian_sample(mu, logvar, k, None, None, None, "iwae", None, True, None)
        functions = {
            "gaussian_sample": (sample, (mu, logvar), (grad_z, grad_latent)),
            "bernoulli_log_likelihood": (lambda o=ops: (o.bernoulli_log_likelihood(logits, x),), (logits,), (grad_ll,)),
            "iwae_bound": (lambda o=ops: (o.iwae_bound(log_w),), (log_w,), (grad_bound,)),
            "bernoulli_iwae_loss (likelihood + bound + mean)": (
                lambda o=ops: (o.bernoulli_iwae_loss(logits, x, log_w, "mean"),), (logits, log_w), (grad_loss,)),
        }
        for name, (forward, wrt, grads) in functions.items():
            probe.add("autograd", f"{name}: forward (the Function's apply)", forward, backend)
            outputs = forward()
            probe.add("autograd", f"{name}: torch.autograd.grad alone (retained graph)",
                      lambda o=outputs, w=wrt, g=grads: torch.autograd.grad(o, w, g, retain_graph=True), backend)
    for backend in ("torch", "triton", "cuda"):
        if backend not in backends:
            probe.skip("loss", "(every item)", backend, f"the {backend} backend does not run here")
            continue
        loss = lambda b=backend: ik.iwae_loss(x, mu, logvar, decoder, k=k, backend=b)
        probe.add("loss", "iwae_loss forward", loss, backend)
        step = lambda f=loss: torch.autograd.grad(f(), inputs)
        probe.add("loss", "iwae_loss forward+backward (autograd.grad)", step, backend)
        probe.add("loss", "iwae_loss forward+backward, gc disabled while timed", lambda f=step: without_gc(f), backend)
        if backend == "triton":  # everything but the Triton launches (bench_host.py's measure)
            for label, fn in (("forward", loss), ("forward+backward", step)):
                probe.add("loss", f"iwae_loss {label}, Triton launches skipped (launches.py)",
                          lambda f=fn: skipping_launches(f), backend)
    naive = lambda: naive_iwae_loss(x, mu, logvar, decoder, k, eps)
    probe.add("loss", "naive loss forward", naive, "naive")
    probe.add("loss", "naive loss forward+backward (autograd.grad)", lambda: torch.autograd.grad(naive(), inputs),
              "naive")
    return {backend: (lambda b=backend: torch.autograd.grad(ik.iwae_loss(x, mu, logvar, decoder, k=k, backend=b),
                                                             inputs))
            for backend in ("triton", "cuda") if backend in backends}


@contextlib.contextmanager
def timed_triton_launches(times):
    """Inside the block, each Triton launch's ``kernel[grid](...)`` call (JITFunction.run: bind, specialize, look up,
    launch) is timed into times[kernel name]."""

    def wrap(kernel, grid, launch):
        name = kernel_name(kernel)

        def timed(*args, **kwargs):
            begin = time.perf_counter()
            out = launch(*args, **kwargs)
            times[f"{name}: kernel[grid](...)"].append(time.perf_counter() - begin)
            return out

        return timed

    with wrapped_launches(wrap):
        yield


@contextlib.contextmanager
def timed_cuda_launchers(times):
    """Inside the block, each cuda backend launcher call (library_op wrapper, pybind, the kernel launch) is timed
    into times[family.direction]: the backend looks its Launchers up in cuda_backend's dict at every op call."""
    from iwae_kernels import cuda_backend
    from iwae_kernels.ops.utils import Launchers

    table = cuda_backend.launchers()
    saved = dict(table)

    def timed(name, launcher):
        def call(*args):
            begin = time.perf_counter()
            out = launcher(*args)
            times[name].append(time.perf_counter() - begin)
            return out

        return call

    for family, pair in saved.items():
        table[family] = Launchers(timed(f"{family}.forward: launcher", pair.forward),
                                  timed(f"{family}.backward: launcher", pair.backward))
    try:
        yield
    finally:
        table.update(saved)


def probe_in_loss(probe, steps, calls, warmup):
    """Section 5: inside iwae_loss forward+backward, each launch timed where it runs, and the garbage collector's
    time (gc.callbacks): what the launches cost in context, against the launcher rows' isolated loops."""
    for backend, step in steps.items():
        times, collected, began = collections.defaultdict(list), collections.Counter(), [0.0]
        gc_seconds = [0.0]

        def on_gc(phase, info):
            if phase == "start":
                began[0] = time.perf_counter()
            else:
                gc_seconds[0] += time.perf_counter() - began[0]
                collected[info["generation"]] += 1

        for _ in range(warmup):
            step()
        probe.sync()
        timer = timed_triton_launches(times) if backend == "triton" else timed_cuda_launchers(times)
        per_call = []
        gc.callbacks.append(on_gc)
        try:
            with timer:
                for _ in range(calls):
                    begin = time.perf_counter()
                    step()
                    per_call.append(time.perf_counter() - begin)
                probe.sync()
        finally:
            gc.callbacks.remove(on_gc)
        section = "in-loss"
        for name, values in sorted(times.items()):
            probe.record(section, f"{name}, one call inside iwae_loss forward+backward", backend,
                         note=f"{len(values) / calls:g} per forward+backward", host_us=1e6 * statistics.median(values),
                         host_mean_us=1e6 * statistics.mean(values))
        total = sum(sum(values) for values in times.values())
        probe.record(section, "all those launches of one forward+backward, summed", backend,
                     host_mean_us=1e6 * total / calls)
        gens = ", ".join(f"gen{g} {collected[g] / calls:.2f}" for g in range(3))
        probe.record(section, "garbage collection per forward+backward (gc.callbacks)", backend,
                     note=f"collections per forward+backward: {gens}", host_mean_us=1e6 * gc_seconds[0] / calls)
        probe.record(section, "the forward+backward itself, under these timers", backend,
                     host_us=1e6 * statistics.median(per_call), host_mean_us=1e6 * statistics.mean(per_call))


def profiles(probe, steps, kwargs20, profile_calls, cprofile_calls, header):
    """Section 6: torch.profiler's table of the triton loss, and cProfile's of the loss and of one launch."""
    from torch.profiler import ProfilerActivity, profile

    texts = {}
    if "triton" in steps:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if probe.cuda else [])
        steps["triton"]()
        probe.sync()
        with profile(activities=activities) as prof:
            for _ in range(profile_calls):
                steps["triton"]()
            probe.sync()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        texts["profile"] = (f"{header}\ntorch.profiler: {profile_calls} iwae_loss(backend='triton') forward+backward "
                            f"calls (torch.autograd.grad), sorted by self CPU time, top 25\n\n{table}\n")
    blocks = [header]
    targets = [(f"iwae_loss(backend={b!r}) forward+backward", step) for b, step in steps.items()]
    if "triton" in steps:
        targets.append(("empty kernel, 20 args: kernel[grid](**kwargs)", lambda: _empty_20[(800,)](**kwargs20)))
    for label, fn in targets:
        fn()
        probe.sync()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(cprofile_calls):
            fn()
        probe.sync()
        profiler.disable()
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream)
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats(30)
        blocks.append(f"== cProfile: {cprofile_calls} calls of {label}: sorted by tottime (top 40), then by "
                      f"cumulative time (top 30)\n{stream.getvalue()}")
    texts["cprofile"] = "\n".join(blocks)
    return texts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--obs", type=int, default=784)
    parser.add_argument("--calls", type=int, default=200, help="timed calls per item")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls per item first")
    parser.add_argument("--gpu-calls", type=int, default=10,
                        help="calls queued behind a sleep for gpu_us (few: the launch queue must not fill)")
    parser.add_argument("--profile-calls", type=int, default=20, help="loss calls under torch.profiler")
    parser.add_argument("--rounds", type=int, default=3, help="times every item is measured, the rounds in turn")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(1)  # host overhead is serial; threads only add noise
    from common import backend_runs, environment, write_results

    env = environment(device)
    backends = [b for b in ("torch", "triton", "cuda") if backend_runs(b, device)]
    shape = {"k": args.k, "batch": args.batch, "dim": args.dim, "obs": args.obs}
    probe = Probe(device, args.calls, args.warmup, args.gpu_calls)
    start = time.perf_counter()
    for _ in range(args.rounds):  # the rounds in turn, so a drift of the machine shows as a spread, not a bias
        kwargs20 = probe_launch(probe, device, backends)
        probe_torch(probe, device, args.k, args.batch)
        probe_launchers(probe, device, backends, shape)
        steps = probe_autograd(probe, device, backends, shape)
        probe_in_loss(probe, {b: step for b, step in steps.items()}, args.calls, args.warmup)
    header = (f"probe_host on {env['device']}: torch {env['torch']}, triton {env['triton']}, commit "
              f"{env['git_commit']}, {env['date']}; k={args.k}, B={args.batch}, D={args.dim}, P={args.obs}, float32")
    texts = profiles(probe, steps, kwargs20, args.profile_calls, args.calls, header)
    notes = [f"k={args.k}, B={args.batch}, D={args.dim}, P={args.obs}, float32, one thread; backends that run here: "
             f"{', '.join(backends)}; TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}",
             f"host_us: median per-call perf_counter delta over {args.calls} calls after {args.warmup} warm-up calls, "
             "no synchronize inside the loop; host_mean_us: their mean; wall_us: the loop through one final "
             f"synchronize, per call; each the median over {args.rounds} rounds (host_us_min/max: the rounds' range)",
             f"gpu_us: CUDA events around {args.gpu_calls} calls queued behind torch.cuda._sleep (device time per "
             "call, back to back); triton_launches: Triton kernel launches per call",
             "launch rows: an empty @triton.jit kernel; 'compiled' rows launch the CompiledKernel that "
             "kernel.warmup(grid=..., **kwargs) returns, skipping Triton's per-call binding and cache lookup",
             "launcher rows: ops/*.py launchers on preallocated outputs; their 'kernel[grid]' and 'compiled' rows "
             "replay each Triton launch the launcher makes with the same arguments",
             "in-loss rows: each launch timed where iwae_loss forward+backward makes it (Triton: the kernel[grid] "
             "call; cuda: the launcher call), their sum per call, and the garbage collector's time per call",
             "torch.profiler table: probe_host_profile.txt; cProfile tables: probe_host_cprofile.txt (beside this)",
             f"whole probe: {time.perf_counter() - start:.1f} s"]
    if device.type != "cuda":
        notes.append("CPU run: Triton runs under its interpreter, so these numbers say nothing about GPU launches")
    rows = probe.results()
    folder = write_results("probe_host", device, env, rows, COLUMNS, notes)
    for name, text in texts.items():
        (folder / f"probe_host_{name}.txt").write_text(text)
    print(f"probe_host: {len(rows)} rows in {time.perf_counter() - start:.1f} s; results in {folder}")


if __name__ == "__main__":
    main()
