"""probe_host.py's sections 4-6: the host time of the autograd ops and of the whole loss, and where it goes.

- ``probe_autograd`` (sections "autograd" and "loss"): per backend, each autograd Function's forward and its
  retained-graph ``torch.autograd.grad`` timed apart; then iwae_loss forward and forward+backward (also with gc
  off, and for triton with its launches skipped as bench_host.py does), and the naive loss for scale.
- ``probe_in_loss`` ("in-loss"): the triton and cuda forward+backward with each launch timed where the loss makes
  it, the sum of those per call and the garbage collector's share (gc.callbacks), to set against the isolated
  loops of probe_host_launches.py.
- ``profiles``: a torch.profiler table of the triton forward+backward and cProfile tables of each backend's
  forward+backward and of one empty 20-argument launch (probe_host_profile.txt, probe_host_cprofile.txt).

The first two add rows to a ``probe_host_timing.Probe``. Run them through ``python benchmarks/probe_host.py``
(which sets TRITON_INTERPRET=1 without a GPU before importing this); its docstring describes every item.
"""

import collections
import contextlib
import cProfile
import gc
import io
import pstats
import statistics
import time

import torch

from launches import kernel_name, recorded_launches, wrapped_launches


def without_gc(fn):
    """fn() with the garbage collector off."""
    gc.disable()
    try:
        return fn()
    finally:
        gc.enable()


def skipping_launches(fn):
    """fn() with its Triton launches skipped (launches.py): the host's work without them."""
    with recorded_launches(execute=False):
        return fn()


def probe_autograd(probe, device, backends, shape):
    """Section 4: each op's autograd Function forward and its grad alone, then the whole loss; returns {backend:
    a zero-argument iwae_loss forward+backward} for the triton and cuda backends that run here."""
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
        """Triton's launch for that grid, timed."""
        name = kernel_name(kernel)

        def timed(*args, **kwargs):
            """Make the launch, adding its time to times."""
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
        """``launcher``, its calls timed into times[name]."""
        def call(*args):
            """Call the launcher, adding its time to times."""
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
            """gc.callbacks' hook: add each collection's time and count its generation."""
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


def profiles(probe, steps, launch20, profile_calls, cprofile_calls, header):
    """Section 6: torch.profiler's table of the triton loss, and cProfile's of the loss and of one launch
    (``launch20``, the 20-argument empty kernel's); returns {"profile": text, "cprofile": text}."""
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
        targets.append(("empty kernel, 20 args: kernel[grid](**kwargs)", launch20))
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
