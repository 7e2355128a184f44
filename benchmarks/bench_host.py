"""Host time of one iwae_loss forward+backward: what Python, autograd and dispatch cost around the kernels.

Below about 100K rows (k * B) the loss is host-bound on a GPU: its kernels take microseconds, the calls around
them milliseconds. This measures that overhead on any machine: the Triton kernel launches are skipped
(benchmarks/launches.py), so what is timed is everything else; the torch backend and the naive loss run for real
at a tiny shape (k=5, B=4, D=3, P=7), where their arithmetic is negligible. It also counts the kernel launches.

    python benchmarks/bench_host.py                               # this checkout
    python benchmarks/bench_host.py --baseline-tree ../old        # and another checkout of the library, same run

Without a GPU the Triton backend runs on CPU tensors (TRITON_INTERPRET=1, set here), its kernels never launched.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before iwae_kernels loads its Triton kernels

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from launches import recorded_launches  # noqa: E402

SHAPE = {"k": 5, "B": 4, "D": 3, "P": 7}


def measure(device, repeats):
    """Rows {variant, host_us (median per forward+backward), launches} for this process's iwae_kernels."""
    import iwae_kernels as ik
    from naive import naive_iwae_loss

    gen = torch.Generator().manual_seed(0)
    k, batch, dim, obs = SHAPE["k"], SHAPE["B"], SHAPE["D"], SHAPE["P"]
    x = torch.bernoulli(torch.full((batch, obs), 0.3), generator=gen).to(device)
    mu = torch.randn(batch, dim, generator=gen).to(device).requires_grad_()
    logvar = torch.randn(batch, dim, generator=gen).to(device).requires_grad_()
    decoder = torch.nn.Linear(dim, obs).to(device)
    eps = torch.randn(k, batch, dim, generator=gen).to(device)
    variants = {"naive": lambda: naive_iwae_loss(x, mu, logvar, decoder, k, eps)}
    for backend in ("torch", "triton"):
        variants[f"iwae_loss-{backend}"] = (lambda b: lambda: ik.iwae_loss(x, mu, logvar, decoder, k=k, backend=b))(backend)
    rows = []
    for name, loss_fn in variants.items():
        step = lambda: loss_fn().backward()
        with recorded_launches(execute=False) as launches:
            step()
        counted = sum(launches.values())
        with recorded_launches(execute=False):
            for _ in range(10):
                step()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - start)
        times.sort()
        rows.append({"variant": name, "host_us": 1e6 * times[len(times) // 2], "triton_launches": counted})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--baseline-tree", help="another checkout of the library, measured in a subprocess")
    parser.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.measure_only:
        print(json.dumps(measure(device, args.repeats)))
        return
    torch.set_num_threads(1)  # host overhead is serial; threads only add noise
    rows = [dict(row, tree="this checkout") for row in measure(device, args.repeats)]
    notes = [f"shape: {SHAPE}, float32, one thread; median of {args.repeats} forward+backward calls after 10 "
             "warm-up calls; Triton launches skipped (their count is per forward+backward)"]
    if args.baseline_tree:
        tree = Path(args.baseline_tree).resolve()
        out = subprocess.run([sys.executable, __file__, "--measure-only", "--device", args.device, "--repeats",
                              str(args.repeats)], env={**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"},
                             capture_output=True, text=True, check=True).stdout
        rows += [dict(row, tree=f"baseline {tree.name}") for row in json.loads(out.splitlines()[-1])]
        notes.append(f"baseline: the library at {tree} (commit {_commit(tree)}), measured in a subprocess of this run")
    naive = {row["tree"]: row["host_us"] for row in rows if row["variant"] == "naive"}
    for row in rows:
        row["vs_naive"] = row["host_us"] / naive[row["tree"]]

    from common import environment, write_results

    write_results("bench_host", device, environment(device), rows,
                  ["tree", "variant", "host_us", "vs_naive", "triton_launches"], notes)


def _commit(tree):
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
