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

The sections live by what they measure: 1-3 (launch, torch, launcher) in probe_host_launches.py, 4-6 (autograd, loss,
in-loss, profiles) in probe_host_loss.py, the timer and its columns in probe_host_timing.py; this script runs them
in rounds and writes the results.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton and iwae_kernels define their kernels

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from probe_host_launches import probe_launch, probe_launchers, probe_torch  # noqa: E402
from probe_host_loss import probe_autograd, probe_in_loss, profiles  # noqa: E402
from probe_host_timing import Probe  # noqa: E402

COLUMNS = ["section", "item", "backend", "host_us", "host_us_min", "host_us_max", "host_mean_us", "wall_us", "gpu_us",
           "triton_launches", "note"]


def main():
    """Run every section in --rounds rounds, then the profiles; write probe_host.{json,md} and the tables."""
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
        launch20 = probe_launch(probe, device, backends)
        probe_torch(probe, device, args.k, args.batch)
        probe_launchers(probe, device, backends, shape)
        steps = probe_autograd(probe, device, backends, shape)
        probe_in_loss(probe, {b: step for b, step in steps.items()}, args.calls, args.warmup)
    header = (f"probe_host on {env['device']}: torch {env['torch']}, triton {env['triton']}, commit "
              f"{env['git_commit']}, {env['date']}; k={args.k}, B={args.batch}, D={args.dim}, P={args.obs}, float32")
    texts = profiles(probe, steps, launch20, args.profile_calls, args.calls, header)
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
