"""-mean L_5000 over MNIST test images with the paper's 1-layer model: naive vs fused, wall time and peak memory.

naive: what a user writes: the encoder once, then chunks of samples through torch.distributions log-probs and
binary_cross_entropy_with_logits, keeping every chunk's [chunk, B] log-weights and taking torch.logsumexp over
all k at the end (eager, no kernels). naive+compile: torch.compile of it (on a GPU, or --compile). fused:
PaperModel.log_likelihood (encoder once, chunks folded into a (max, sum) state by the kernels, nothing of size k
kept), with the fused head (fused-head) or the fused decoder MLP (fused-mlp). user model: the user's path, an
nn.Module encoder and decoder of the paper's sizes (the same weights) through iwae_kernels.log_likelihood. All see the same model and images; their NLLs are checked to agree within Monte Carlo error before the
times are written. Each variant first runs one batch as a warm-up, so compiling (Triton kernels, autotuning,
torch.compile) stays out of wall_s; naive+compile's warm-up time is reported apart as compile_s.

    python benchmarks/bench_eval.py                          # CPU default: 200 test images
    python benchmarks/bench_eval.py --images 10000 --device cuda
"""

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.distributions import Normal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, parse_args, peak_memory_mib, write_results  # noqa: E402
import iwae_kernels as ik  # noqa: E402
from iwae_kernels.app import data as datasets  # noqa: E402
from iwae_kernels.models import paper_model  # noqa: E402
from iwae_kernels.evaluation import DEFAULT_EVAL_CHUNK, decoder_eval_chunk  # noqa: E402
from roofline import eval_model, eval_roofline  # noqa: E402


@torch.no_grad()
def naive_log_likelihood(model, x, k, chunk):
    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    log_ws = []
    for start in range(0, k, chunk):
        eps = torch.randn((min(chunk, k - start),) + tuple(mu.shape), device=x.device)
        z = mu + std * eps
        logits = model.decoder(z)
        log_lik = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x.expand_as(logits),
                                                                        reduction="none").sum(-1)
        log_ws.append(log_lik + Normal(0.0, 1.0).log_prob(z).sum(-1) - Normal(mu, std).log_prob(z).sum(-1))
    return torch.logsumexp(torch.cat(log_ws), 0) - math.log(k)


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
                        help="samples per chunk (default: 500 for naive, each model's eval_chunk for the others: "
                             "all k in one launch per batch for fused-mlp on a GPU)")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--synthetic", action="store_true",
                        help="random binary images at MNIST's mean pixel density instead of MNIST (for a machine "
                             "without the data or a network; the times do not depend on the pixels, the NLL does)")
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
    naive_chunk = min(args.k, args.chunk or DEFAULT_EVAL_CHUNK)
    variants = {"naive (chunked, eager)": (naive_log_likelihood, naive_chunk)}
    if args.compile if args.compile is not None else device.type == "cuda":
        variants["naive+compile"] = (torch.compile(naive_log_likelihood), naive_chunk)
    for name, owner in (("fused", model), ("fused-head", head_model), ("fused-mlp", mlp_model)):
        variants[name] = (lambda m, x, k, chunk, owner=owner: owner.log_likelihood(x, k=k, chunk=chunk),
                          owner.eval_chunk(args.k, args.batch, args.chunk))
    user = UserVAE(model)
    posterior_mean = torch.empty(args.batch, model.latent[0], device=device)
    variants["user model"] = (lambda m, x, k, chunk: user_log_likelihood(user, x, k, chunk),
                              decoder_eval_chunk(user.decoder, args.k, posterior_mean, chunk=args.chunk))
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
             "decoder's Linear widths"]
    write_results("bench_eval", device, env, rows,
                  ["variant", "images", "k", "chunk", "test_nll", "wall_s", "compile_s", "peak_mib_per_batch",
                   "speedup_vs_naive", "pct_of_bound"],
                  notes)


if __name__ == "__main__":
    main()
