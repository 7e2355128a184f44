"""Does L_k's memory budget hold for a decoder that is not a stack of nn.Linear layers? A convolutional decoder
(the kind a third-party VAE has: Linear, then transposed convolutions up to C x S x S images, Gaussian likelihood)
or an attention one (``--decoder attention``: tokens through a Transformer layer) through
``iwae_kernels.log_likelihood`` at k = 5000 with ``memory_budget=``: its peak memory above what was allocated
before the call, against the budget. The chunk comes from the decoder's measured bytes per sample.

Peak: on a GPU, torch.cuda.max_memory_allocated above what was allocated before the call (the caching
allocator's peak); on a CPU, the process's peak resident set during the call above its resident set at the start
(VmHWM after resetting it through /proc/self/clear_refs; Linux), after a warm-up call of one sample (it loads what
every call needs). Without chunks, k = 5000 samples of 16
images of 3 x 64 x 64 would need about 40 GB. The model (model_mib) was allocated before the call.

    python benchmarks/eval_memory.py                                   # CPU: 64 x 64 RGB, B = 16, k = 5000
    python benchmarks/eval_memory.py --device cuda --batch 100 --budget-mib 512   # a conv VAE's test batch
    python benchmarks/eval_memory.py --decoder attention --size 32
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, parse_args, write_results  # noqa: E402
import iwae_kernels as ik  # noqa: E402
from iwae_kernels.evaluation import chunk_for_budget  # noqa: E402


def conv_decoder(latent, channels, size, width):
    """z [N, latent] -> (mean, logvar) [N, channels * size * size]: a Linear to width x (size / 8)^2, then three
    stride-2 transposed convolutions (width -> width / 2 -> width / 4 -> 2 * channels)."""
    base = size // 8
    return nn.Sequential(
        nn.Linear(latent, width * base * base), nn.ReLU(), nn.Unflatten(1, (width, base, base)),
        nn.ConvTranspose2d(width, width // 2, 4, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(width // 2, width // 4, 4, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(width // 4, 2 * channels, 4, stride=2, padding=1),
        nn.Unflatten(1, (2, channels)), nn.Flatten(2))


def attention_decoder(latent, channels, size, width, tokens=64):
    """z [N, latent] -> (mean, logvar) [N, 2, channels * size * size]: a Linear to ``tokens`` tokens of ``width``
    features, a Transformer encoder layer (4-head self-attention and its MLP), then a Linear from the tokens to
    the image's two halves."""
    return nn.Sequential(
        nn.Linear(latent, tokens * width), nn.Unflatten(1, (tokens, width)),
        nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=2 * width, dropout=0.0, batch_first=True),
        nn.Flatten(), nn.Linear(tokens * width, 2 * channels * size * size), nn.Unflatten(1, (2, -1)))


DECODERS = {"conv": conv_decoder, "attention": attention_decoder}


def gaussian_output(decoder):
    """[N, D] -> (mean, logvar) [N, P] from the decoder's two halves."""
    return lambda z: tuple(decoder(z).unbind(1))


def _status_kib(field):
    """A field of /proc/self/status in KiB (VmRSS: resident now, VmHWM: the peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_above_start_mib(fn, device):
    """(fn(), its peak memory above what was in use before it, MiB): the CUDA allocator's peak, or on a CPU the
    peak resident set (VmHWM, reset to the current RSS just before fn through /proc/self/clear_refs; Linux)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, (torch.cuda.max_memory_allocated(device) - before) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_kib("VmRSS")
    result = fn()
    return result, (_status_kib("VmHWM") - before) / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--decoder", choices=sorted(DECODERS), default="conv")
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="image side (a multiple of 8)")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--width", type=int, default=64, help="channels after the Linear")
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--budget-mib", type=float, default=64.0, help="memory_budget in MiB (one per process)")
    parser.add_argument("--no-write", action="store_true", help="print the table only (the tests' use)")
    args = parse_args(parser)
    device = torch.device(args.device)
    torch.manual_seed(0)
    decoder = DECODERS[args.decoder](args.latent, args.channels, args.size, args.width).to(device).eval()
    model_mib = sum(p.numel() * p.element_size() for p in decoder.parameters()) / 2**20
    x = torch.randn(args.batch, args.channels * args.size * args.size, device=device)
    mu = 0.1 * torch.randn(args.batch, args.latent, device=device)
    logvar = torch.full_like(mu, -1.0)
    call = lambda k, **options: ik.log_likelihood(x, mu, logvar, gaussian_output(decoder), k, likelihood="gaussian",
                                                  flatten_samples=True, **options)
    budget = int(args.budget_mib * 2**20)
    chunk = chunk_for_budget(lambda size: call(size, chunk=size), args.k, device=device, memory_budget=budget)
    call(1, chunk=1)  # warm-up: what every call loads (a GPU's kernels, a CPU's convolution libraries)
    started = time.perf_counter()
    _, peak = peak_above_start_mib(lambda: call(args.k, memory_budget=budget), device)
    rows = [{"decoder": args.decoder, "k": args.k, "batch": args.batch, "image": f"{args.channels}x{args.size}x{args.size}",
             "budget_mib": args.budget_mib, "chunk": chunk, "peak_mib": round(peak, 2), "model_mib": round(model_mib, 2),
             "peak_over_budget": round(peak / args.budget_mib, 3), "wall_s": round(time.perf_counter() - started, 2)}]
    print(rows[0], flush=True)
    columns = ["decoder", "k", "batch", "image", "budget_mib", "chunk", "peak_mib", "model_mib", "peak_over_budget", "wall_s"]
    if not args.no_write:
        write_results(f"eval_memory_{args.decoder}", device, environment(device), rows, columns,
                      notes=["peak: CUDA allocator peak above the start, or the CPU's peak RSS during the call above "
                             "its RSS at the start (VmHWM reset just before); the budget holds when peak_over_budget <= 1 (the issue asks <= 1.25 "
                             "plus the model)"])


if __name__ == "__main__":
    main()
