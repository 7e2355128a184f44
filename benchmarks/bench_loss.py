"""The IWAE loss, forward and forward+backward, fused vs naive, given encoder outputs and a linear decoder.

Variants: naive (benchmarks/naive.py, eager), naive+compile (torch.compile of it; compile time reported
apart), iwae_kernels.iwae_loss on each backend that runs here (torch everywhere; triton and cuda on a GPU), and
on a GPU fused-head: the sampling kernel plus the fused decoder head (bernoulli_decoder_log_likelihood), which
never writes the [k, B, P] logits. Before timing, every variant's loss and gradients are checked against naive on
the same noise. A variant that runs out of device memory at a shape is recorded as such (times left empty).

Other estimators (--estimators, default renyi and vimco): iwae_loss(estimator=...) on the fused backends (torch on
a CPU; triton and cuda on a GPU), variants fused-<backend>-<estimator>, timed in the same run at the same shapes,
with vs_iwae = their forward+backward time over fused-<backend>'s (the IWAE loss). renyi (renyi_alpha, default 0.5)
is checked against naive's log-weights through the VR-alpha bound, loss and gradients; vimco's loss and decoder
gradients against naive's (its encoder gets a score-function gradient, no naive counterpart); vimco needs k >= 2.

Bytes: the minimal traffic of the loss around the decoder matmul, in the input dtype: forward writes z and reads
it back into the matmul, and writes and reads the [k, B, P] logits once (2 k B D + 2 k B P elements);
forward+backward adds reading the logits again, writing their gradient and reading dz (4 k B P + 3 k B D).
GB/s is that count over the median time, and % of the device bandwidth measured by a large copy in the same run.
fused-head moves far fewer bytes than this count (no logits at all), so its GB/s is an effective rate, not traffic.

    python benchmarks/bench_loss.py                   # CPU: a small grid; GPU: the full grid of the issue
    python benchmarks/bench_loss.py --k 50 500 --batch 128 --dim 50
    python benchmarks/bench_loss.py --k 50 5000 --batch 128 --dim 50 --estimators renyi vimco --renyi-alpha 0.5
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import iwae_kernels as ik  # noqa: E402
from common import backend_runs, environment, median_ms, median_ms_each, parse_args, peak_memory_mib, write_results  # noqa: E402
from naive import naive_iwae_loss, naive_renyi_loss  # noqa: E402
from roofline import loss_roofline  # noqa: E402

GPU_GRID = {"k": [1, 5, 50, 500, 5000], "batch": [20, 128, 1024], "dim": [50, 100]}
CPU_GRID = {"k": [1, 5, 50], "batch": [20, 128], "dim": [50]}
OTHER_ESTIMATORS = ("renyi", "vimco")  # timed beside iwae with --estimators


def copy_bandwidth_gbps(device):
    """Device bandwidth measured by copying 256 MiB (read + write)."""
    source = torch.empty(64 * 2**20, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    ms = median_ms(lambda: target.copy_(source), device)
    return 2 * source.numel() * 4 / ms / 1e6


def problem(k, batch, dim, obs, device, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.bernoulli(torch.full((batch, obs), 0.3), generator=gen).to(device, dtype)
    mu = torch.randn(batch, dim, generator=gen).to(device, dtype).requires_grad_()
    logvar = (0.3 * torch.randn(batch, dim, generator=gen)).to(device, dtype).requires_grad_()
    decoder = torch.nn.Linear(dim, obs).to(device, dtype)
    eps = torch.randn(k, batch, dim, generator=gen).to(device, dtype)
    return x, mu, logvar, decoder, eps


def fused_loss(x, mu, logvar, decoder, k, eps, backend, head=False):
    """iwae_loss's computation through the composable ops (eps=None: in-kernel noise); ``head``: the linear decoder
    and the Bernoulli log-likelihood as one fused decoder-head op."""
    z, latent = ik.gaussian_sample(mu, logvar, k, eps=eps, backend=backend)
    if head:
        log_lik = ik.bernoulli_decoder_log_likelihood(z, decoder.weight, decoder.bias, x, backend=backend)
    else:
        log_lik = ik.bernoulli_log_likelihood(decoder(z), x, backend=backend)
    return -ik.iwae_bound(log_lik + latent, backend=backend).mean()


def fused_variant(backend, head=False, noise=True):
    """A variant with the benchmark's signature; ``noise=False`` ignores eps and samples in the kernel."""
    return lambda x, mu, lv, dec, k, eps: fused_loss(x, mu, lv, dec, k, eps if noise else None, backend, head)


def estimator_variant(backend, estimator, renyi_alpha, noise=True):
    """iwae_loss with ``estimator`` on ``backend``, in the benchmark's signature; ``noise=False`` ignores eps and
    samples in the kernel (as the timed IWAE rows do)."""
    options = {"renyi_alpha": renyi_alpha} if estimator == "renyi" else {}
    return lambda x, mu, lv, dec, k, eps: ik.iwae_loss(x, mu, lv, dec, k=k, estimator=estimator, backend=backend,
                                                       eps=eps if noise else None, **options)


def check_agreement(args_, k, variants, estimators=(), renyi_alpha=None):
    """Each of ``variants`` (the IWAE loss) against naive on the same noise, loss and gradients; each of
    ``estimators`` ({name: (estimator, fn)}): renyi against naive's VR-alpha bound, loss and gradients; vimco's loss
    and decoder gradients against naive's L_k (its encoder's gradient is a score-function estimator)."""
    x, mu, logvar, decoder, eps = args_
    inputs = [mu, logvar, *decoder.parameters()]
    expected = naive_iwae_loss(x, mu, logvar, decoder, k, eps)
    expected_grads = torch.autograd.grad(expected, inputs)
    tol = 1e-4 if x.dtype == torch.float32 else 5e-2

    def agrees(name, fn, expected, expected_grads, compared=slice(None)):
        loss = fn(x, mu, logvar, decoder, k, eps)
        grads = torch.autograd.grad(loss, inputs)
        scale = expected.abs().item() + 1
        assert abs(loss.item() - expected.item()) <= tol * scale, (name, loss.item(), expected.item())
        for got, want in list(zip(grads, expected_grads))[compared]:
            assert (got - want).abs().max().item() <= tol * (want.abs().max().item() + 1), name

    for name, fn in variants.items():
        agrees(name, fn, expected, expected_grads)
    for name, (estimator, fn) in estimators.items():
        if estimator == "renyi":
            renyi = naive_renyi_loss(x, mu, logvar, decoder, k, eps, renyi_alpha)
            agrees(name, fn, renyi, torch.autograd.grad(renyi, inputs))
        else:  # vimco: the decoder's parameters only (inputs[2:])
            agrees(name, fn, expected, expected_grads, compared=slice(2, None))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--k", type=int, nargs="+")
    parser.add_argument("--batch", type=int, nargs="+")
    parser.add_argument("--dim", type=int, nargs="+")
    parser.add_argument("--obs", type=int, default=784)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="include naive+compile (default: on a GPU only; slow to compile on a CPU)")
    parser.add_argument("--estimators", nargs="*", default=list(OTHER_ESTIMATORS), choices=OTHER_ESTIMATORS,
                        help="estimators timed beside iwae on the fused backends (default: %(default)s; none: the "
                             "IWAE rows alone); vimco needs k >= 2 and is left out at k = 1")
    parser.add_argument("--renyi-alpha", type=float, default=0.5, help="renyi's alpha (default: %(default)s)")
    args = parse_args(parser)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    grid = GPU_GRID if device.type == "cuda" else CPU_GRID
    ks, batches, dims = args.k or grid["k"], args.batch or grid["batch"], args.dim or grid["dim"]
    bandwidth = copy_bandwidth_gbps(device)
    env = {**environment(device), "copy_gbps": bandwidth}

    backends = ["torch"] + [b for b in ("triton", "cuda") if device.type == "cuda" and backend_runs(b, device)]
    heads = ["triton"] if "triton" in backends else []
    variants = {f"fused-{b}": fused_variant(b) for b in backends}
    variants.update({f"fused-head-{b}": fused_variant(b, head=True) for b in heads})
    timed = {"naive": naive_iwae_loss}
    if args.compile if args.compile is not None else device.type == "cuda":
        timed["naive+compile"] = torch.compile(naive_iwae_loss)
    # The timed fused paths sample in the kernel (eps unused), as users run them: iwae_loss, and the head variant.
    timed.update({f"fused-{b}": (lambda b: lambda x, mu, lv, dec, k, eps: ik.iwae_loss(x, mu, lv, dec, k=k, backend=b))(b)
                  for b in backends})
    timed.update({f"fused-head-{b}": fused_variant(b, head=True, noise=False) for b in heads})
    # The other estimators on the fused backends: torch on a CPU (its only one), the kernels' backends on a GPU.
    estimator_backends = [b for b in backends if b != "torch"] or ["torch"]
    estimators = {f"fused-{b}-{e}": (e, b) for b in estimator_backends for e in args.estimators}

    notes = [f"device copy bandwidth measured in this run: {bandwidth:.1f} GB/s",
             "every variant's loss and gradients were checked against naive on the same noise before timing "
             "(checked=False: the check itself ran out of device memory at that shape)",
             "out_of_memory=True: that variant could not run the shape on this device (no times)",
             "times: median; GPU via triton.testing.do_bench, CPU via perf_counter after warm-up calls, the variants of "
             "a shape taking turns call by call (common.median_ms_each; not with naive+compile)",
             "fused-torch is the library's torch backend (the CPU fallback), not a fused kernel",
             "pct_of_bound: 100 x the forward+backward's roofline bound (benchmarks/roofline.py; devices with known "
             "peaks only) / its time",
             "naive+compile: first_call_ms in the JSON is its first forward+backward at each shape (compiling, or "
             "recompiling when torch.compile does), apart from the timed calls"]
    if estimators:
        notes.append(f"fused-<backend>-<estimator>: iwae_loss(estimator=...) on that backend (in-kernel noise), "
                     f"renyi with renyi_alpha={args.renyi_alpha:g}; vs_iwae: its fwd_bwd_ms over fused-<backend>'s (the "
                     "IWAE loss) at the same shape, in the same run; its speedup_vs_naive is against the naive IWAE "
                     "loss; vimco is left out at k = 1 (it needs k >= 2); the estimator rows' loss (and renyi's "
                     "gradients, vimco's decoder gradients) were checked against naive's objective on the same noise")
    if device.type != "cuda":
        notes.append("CPU run: peak_mib from torch.profiler's memory accounting (common.peak_memory_mib); GPU figures "
                     "come only from GPU runs")
    columns = ["k", "B", "D", "variant", "fwd_ms", "fwd_bwd_ms", "peak_mib", "gb_per_s", "pct_bandwidth",
               "speedup_vs_naive", "pct_of_bound", "out_of_memory"] + (["estimator", "vs_iwae"] if estimators else [])
    # Saved after every shape, so a run cut short keeps what it measured.
    save = lambda show: write_results("bench_loss", device, env, rows, columns, notes, show=show)

    rows = []
    for dim in dims:
        for batch in batches:
            for k in ks:
                data = problem(k, batch, dim, args.obs, device, dtype)
                here = {name: (e, b) for name, (e, b) in estimators.items() if e != "vimco" or k >= 2}
                checked = {name: (e, estimator_variant(b, e, args.renyi_alpha)) for name, (e, b) in here.items()}
                agreed = runs_in_memory(lambda: check_agreement(data, k, variants, checked, args.renyi_alpha), device)
                x, mu, logvar, decoder, eps = data
                inputs = [mu, logvar, *decoder.parameters()]
                element = torch.finfo(dtype).bits // 8
                bytes_fwd = element * (2 * k * batch * dim + 2 * k * batch * args.obs)
                bytes_fwd_bwd = bytes_fwd + element * (4 * k * batch * args.obs + 3 * k * batch * dim)
                baseline = None
                calls = {}  # (variant, "fwd" | "fwd_bwd") -> a zero-argument call
                shape_timed = {**timed, **{name: estimator_variant(b, e, args.renyi_alpha, noise=False)
                                           for name, (e, b) in here.items()}}
                for name, fn in shape_timed.items():
                    forward = (lambda fn: lambda: fn(x, mu, logvar, decoder, k, eps))(fn)
                    calls[name, "fwd"] = forward
                    calls[name, "fwd_bwd"] = (lambda forward: lambda: torch.autograd.grad(forward(), inputs))(forward)
                interleaved = {}
                if device.type != "cuda" and "naive+compile" not in timed:  # the variants take turns call by call
                    interleaved = median_ms_each(calls, device)
                for name in shape_timed:
                    forward, both = calls[name, "fwd"], calls[name, "fwd_bwd"]
                    row = {"k": k, "B": batch, "D": dim, "P": args.obs, "dtype": args.dtype, "variant": name,
                           "min_bytes_fwd_bwd": bytes_fwd_bwd, "checked": agreed}
                    if estimators:
                        row["estimator"] = here[name][0] if name in here else "iwae"
                    if row.get("estimator") == "renyi":
                        row["renyi_alpha"] = args.renyi_alpha

                    def measure():
                        if name == "naive+compile":  # compiling (again, when torch.compile recompiles for a new shape)
                            row["first_call_ms"] = wall_ms(both, device)
                        if interleaved:
                            row["fwd_ms"], row["fwd_bwd_ms"] = interleaved[name, "fwd"], interleaved[name, "fwd_bwd"]
                        else:
                            row["fwd_ms"], row["fwd_bwd_ms"] = median_ms(forward, device), median_ms(both, device)
                        row["peak_mib"] = peak_memory_mib(both, device)

                    row["out_of_memory"] = not runs_in_memory(measure, device)
                    if name == "naive":
                        baseline = row.get("fwd_bwd_ms")
                    if row.get("fwd_bwd_ms"):
                        row["gb_per_s"] = bytes_fwd_bwd / row["fwd_bwd_ms"] / 1e6
                        row["pct_bandwidth"] = 100 * row["gb_per_s"] / bandwidth
                        row["speedup_vs_naive"] = baseline / row["fwd_bwd_ms"] if baseline else None
                        row["pct_of_bound"] = loss_roofline(row, env["device"], bandwidth).get("pct_of_bound")
                    if name in here:  # against the IWAE loss on the same backend, at this shape
                        iwae = f"fused-{here[name][1]}"
                        iwae_ms = next((r.get("fwd_bwd_ms") for r in rows[::-1]
                                        if (r["variant"], r["k"], r["B"], r["D"]) == (iwae, k, batch, dim)), None)
                        row["vs_iwae"] = row["fwd_bwd_ms"] / iwae_ms if row.get("fwd_bwd_ms") and iwae_ms else None
                    rows.append(row)
                    print(row, flush=True)
                save(False)
    folder = save(True)
    plot(rows, folder / "bench_loss.png", env["device"])


def wall_ms(fn, device):
    """One call's wall time in ms, device work included."""
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1000 * (time.perf_counter() - start)


def runs_in_memory(fn, device):
    """Run fn(); False if it ran out of device memory (the memory is released for the next variant), else True."""
    try:
        fn()
    except torch.OutOfMemoryError:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return False
    return True


def plot(rows, path, device):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for variant in sorted({r["variant"] for r in rows if r.get("estimator", "iwae") == "iwae"} - {"naive"}):
        for batch in sorted({r["B"] for r in rows}):
            points = [(r["k"], r["speedup_vs_naive"]) for r in rows if r["variant"] == variant and r["B"] == batch
                      and r["D"] == rows[0]["D"] and r.get("speedup_vs_naive")]
            if not points:
                continue
            axis.plot(*zip(*points), marker="o", label=f"{variant}, B={batch}")
    axis.axhline(1.0, color="grey", lw=0.8)
    axis.set_xscale("log")
    axis.set_xlabel("k (samples)")
    axis.set_ylabel("forward+backward speedup over naive")
    axis.set_title(f"IWAE loss, D={rows[0]['D']}, P={rows[0]['P']}: {device}", fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
