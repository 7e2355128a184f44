"""-mean L_5000 over MNIST test images with the paper's 1-layer model: naive vs fused, wall time and peak memory.

naive: what a user writes: the encoder once, then chunks of samples through torch.distributions log-probs and
binary_cross_entropy_with_logits (naive.py's naive_log_weights), keeping every chunk's [chunk, B] log-weights and taking
torch.logsumexp over all k at the end (eager, no kernels). naive+compile: torch.compile of it (on a GPU, or --compile).
fused: PaperModel.log_likelihood (encoder once, chunks folded into a (max, sum) state by the kernels, nothing of size k
kept), with the fused head (fused-head) or the fused decoder MLP (fused-mlp). user model: the user's path, an nn.Module
encoder and decoder of the paper's sizes (the same weights) through iwae_kernels.log_likelihood. All see the same model
and images; their NLLs are checked to agree within Monte Carlo error before the times are written. Each variant first
runs one batch as a warm-up, so compiling (Triton kernels, autotuning, torch.compile) stays out of wall_s;
naive+compile's warm-up time is reported apart as compile_s.

AIS rows, on the first batch with the user model's encoder and decoder: ais (iwae_kernels.ais.ais_log_likelihood
from q(z|x)) against naive AIS (benchmarks/naive.py: torch.distributions, the same steps, chains, leapfrog steps
and schedule), median time of the two taking turns and peak memory, their NLLs checked to agree.

    python benchmarks/bench_eval.py                          # CPU default: 200 test images
    python benchmarks/bench_eval.py --images 10000 --device cuda
"""

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, median_ms_each, parse_args, peak_memory_mib, write_results  # noqa: E402
from naive import naive_ais_log_likelihood, naive_iwae_bound, naive_log_weights  # noqa: E402
import iwae_kernels as ik  # noqa: E402
from iwae_kernels.ais import ais_log_likelihood  # noqa: E402
from iwae_kernels.app import data as datasets  # noqa: E402
from iwae_kernels.models import paper_model  # noqa: E402
from iwae_kernels.evaluation import chunk_for_budget  # noqa: E402
from roofline import eval_model, eval_roofline  # noqa: E402


# The naive baseline's samples per chunk (what a user picks by hand) unless --chunk is given.
NAIVE_CHUNK = 500


@torch.no_grad()
def naive_log_likelihood(model, x, k, chunk):
    mu, logvar = model.encode(x)
    log_ws = []
    for start in range(0, k, chunk):
        eps = torch.randn((min(chunk, k - start),) + tuple(mu.shape), device=x.device)
        log_ws.append(naive_log_weights(x, mu, logvar, model.decoder, eps))
    return naive_iwae_bound(torch.cat(log_ws))


class UserVAE(nn.Module):
    """A user's own model: plain nn.Sequential encoder and decoder (copies of ``model``'s, the paper's sizes)."""

    def __init__(self, model):
        super().__init__()
        self.encoder, self.decoder = copy.deepcopy(model.encoders[0]), copy.deepcopy(model.decoder)

    def encode(self, x):
        mu, logvar = self.encoder(x).chunk(2, -1)
        return mu, logvar


@torch.no_grad()
def user_log_likelihood(user, x, k, chunk):
    mu, logvar = user.encode(x)
    return ik.log_likelihood(x, mu, logvar, user.decoder, k, chunk=chunk)


AIS_LEAPFROG = 10  # leapfrog steps per HMC transition, as in Wu et al. 2017


def ais_rows(user, x, *, steps, chains, device):
    """The naive AIS row and the ais row (speedup_vs_naive: over the naive AIS) on one batch x [B, 784]."""
    with torch.no_grad():
        mu, logvar = user.encode(x)
    variants = {"naive AIS (torch.distributions)": lambda: naive_ais_log_likelihood(
                    x, mu, logvar, user.decoder, steps=steps, chains=chains, leapfrog=AIS_LEAPFROG),
                "ais": lambda: ais_log_likelihood(x, user.decoder, mu=mu, logvar=logvar, steps=steps, chains=chains,
                                                  leapfrog=AIS_LEAPFROG)}
    # AIS runs steps x (leapfrog + 1) decoder passes: few repeats, or the CPU run takes minutes.
    times = median_ms_each(variants, device, warmup=1, repeats=3)
    rows = []
    for name, fn in variants.items():
        estimate = []  # the call measured for memory also gives the NLL
        peak = peak_memory_mib(lambda: estimate.append(fn()), device)
        rows.append({"variant": name, "images": x.shape[0], "ais_steps": steps, "ais_chains": chains,
                     "test_nll": -estimate[0].double().mean().item(), "median_ms": times[name],
                     "peak_mib_per_batch": peak})
    rows[1]["speedup_vs_naive"] = rows[0]["median_ms"] / rows[1]["median_ms"]
    assert abs(rows[0]["test_nll"] - rows[1]["test_nll"]) < 0.05 * abs(rows[0]["test_nll"]), "the AIS rows disagree"
    return rows


def timed_nll(fn, model, images, k, chunk, batch, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    bounds = torch.cat([fn(model, images[i : i + batch], k, chunk) for i in range(0, images.shape[0], batch)])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return -bounds.double().mean().item(), time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=None, help="test images (default: 10000 on GPU, 200 on CPU)")
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--chunk", type=int, default=None,
                        help="samples per chunk (default: 500 for naive; for the others, as many as the 512 MiB "
                             "memory budget holds, measured: all k in one launch per batch for fused-mlp on a GPU)")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--synthetic", action="store_true",
                        help="random binary images at MNIST's mean pixel density instead of MNIST (for a machine "
                             "without the data or a network; the times do not depend on the pixels, the NLL does)")
    parser.add_argument("--ais-steps", type=int, default=10,
                        help="annealing steps of the AIS rows (default small, so the CPU run stays short)")
    parser.add_argument("--ais-chains", type=int, default=4, help="chains per image of the AIS rows")
    parser.add_argument("--checkpoint", default=None, help="a trained checkpoint (default: a fresh model)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="include naive+compile (default: on a GPU only; slow to compile on a CPU)")
    args = parse_args(parser)
    device = torch.device(args.device)
    images = args.images or (10000 if device.type == "cuda" else 200)
    torch.manual_seed(0)
    if args.checkpoint:
        from iwae_kernels.app import load_checkpoint

        model = load_checkpoint(args.checkpoint, args.device).model
    else:
        model = paper_model(1).to(device)
    if args.synthetic:
        test = torch.bernoulli(torch.full((images, 784), 0.13)).to(device)
    else:
        test = datasets.fixed_binarization(datasets.load_mnist()[1][:images]).to(device)
    env = environment(device)
    head_model, mlp_model = copy.deepcopy(model), copy.deepcopy(model)
    head_model.fused_head, mlp_model.fused_mlp = True, True
    naive_chunk = min(args.k, args.chunk or NAIVE_CHUNK)
    first = test[: args.batch]
    variants = {"naive (chunked, eager)": (naive_log_likelihood, naive_chunk)}
    if args.compile if args.compile is not None else device.type == "cuda":
        variants["naive+compile"] = (torch.compile(naive_log_likelihood), naive_chunk)
    for name, owner in (("fused", model), ("fused-head", head_model), ("fused-mlp", mlp_model)):
        variants[name] = (lambda m, x, k, chunk, owner=owner: owner.log_likelihood(x, k=k, chunk=chunk),
                          owner.eval_chunk(first, args.k, args.chunk))
    user = UserVAE(model)
    user_chunk = chunk_for_budget(lambda size: user_log_likelihood(user, first, size, size), args.k, device=device,
                                  chunk=args.chunk)
    variants["user model"] = (lambda m, x, k, chunk: user_log_likelihood(user, x, k, chunk), user_chunk)
    # The same as fused, with the importance diagnostics (ESS, k-hat) streamed beside L_k: their cost.
    variants["fused + diagnostics"] = (
        lambda m, x, k, chunk: model.log_likelihood(x, k=k, chunk=chunk, diagnostics=True)[0],
        variants["fused"][1])
    rows = []
    for name, (fn, chunk) in variants.items():
        # One batch first, the warm-up: compiling (Triton kernels, autotuning, torch.compile) stays out of wall_s.
        _, warmup_s = timed_nll(fn, model, test[: args.batch], args.k, chunk, args.batch, device)
        peak = peak_memory_mib(lambda: fn(model, test[: args.batch], args.k, chunk), device)
        nll, seconds = timed_nll(fn, model, test, args.k, chunk, args.batch, device)
        rows.append({"variant": name, "images": images, "k": args.k, "chunk": chunk, "batch": args.batch,
                     "test_nll": nll, "wall_s": seconds, "peak_mib_per_batch": peak,
                     "compile_s": warmup_s if name == "naive+compile" else None})
        rows[-1]["pct_of_bound"] = eval_roofline(rows[-1], env["device"], eval_model(name, variants)).get(
            "pct_of_bound")
        print(rows[-1], flush=True)
    for row in rows[1:]:
        row["speedup_vs_naive"] = rows[0]["wall_s"] / row["wall_s"]
        assert abs(rows[0]["test_nll"] - row["test_nll"]) < 0.05 * abs(rows[0]["test_nll"]), "the variants disagree"
    by_name = {row["variant"]: row for row in rows}
    by_name["fused + diagnostics"]["diagnostics_cost"] = (by_name["fused + diagnostics"]["wall_s"]
                                                          / by_name["fused"]["wall_s"] - 1)
    rows += ais_rows(user, test[: args.batch], steps=args.ais_steps, chains=args.ais_chains, device=device)
    print(rows[-2:], flush=True)
    notes = ["data: " + ("synthetic binary images (pixel density 0.13)" if args.synthetic else "MNIST test images"),
             "model: " + (args.checkpoint or "a freshly initialised paper 1-layer model (speed does not depend on training)"),
             "peak memory: one batch's evaluation, above what was allocated before (CPU: torch.profiler's memory "
             "accounting, common.peak_memory_mib)",
             "pct_of_bound: 100 x the roofline bound (benchmarks/roofline.py; devices with known peaks only) / wall_s",
             "every variant ran one batch before its timed pass (warm-up); compile_s: naive+compile's warm-up batch, "
             "compilation included",
             "fused: PaperModel.log_likelihood as it comes (fused_head=False: each chunk's logits formed, then "
             "reduced by the likelihood kernel); fused-head: fused_head=True (logits never stored); fused-mlp: "
             "fused_mlp=True (the whole decoder and the likelihood in one kernel per chunk on the Triton "
             "backend, whose chunk is then all k unless --chunk is given; "
             "the torch backend, a CPU's default, runs the same layers); user model: UserVAE (nn.Sequential "
             "encoder and decoder with the same weights) through iwae_kernels.log_likelihood, chunk from its "
             "measured bytes per sample (the 512 MiB budget); fused + diagnostics: fused with diagnostics=True "
             "(ESS and PSIS k-hat streamed beside L_k), diagnostics_cost: its wall time over fused's, minus 1",
             f"AIS rows: the first batch, from the user model's q(z|x), sigmoid schedule, {AIS_LEAPFROG} leapfrog "
             "steps; median_ms: median of 3 calls of each taking turns (CPU) or do_bench (GPU); the ais row's "
             "speedup_vs_naive is over the naive AIS"]
    write_results("bench_eval", device, env, rows,
                  ["variant", "images", "k", "chunk", "ais_steps", "ais_chains", "test_nll", "wall_s", "median_ms",
                   "compile_s", "peak_mib_per_batch", "speedup_vs_naive", "diagnostics_cost", "pct_of_bound"],
                  notes)


if __name__ == "__main__":
    main()
