"""Host time of one iwae_loss forward+backward and of one paper-model training step: what Python, autograd and
dispatch cost around the kernels.

Below about 100K rows (k * B) the loss is host-bound on a GPU: its kernels take microseconds, the calls around
them milliseconds. This measures that overhead on any machine: the Triton kernel launches are skipped
(benchmarks/launches.py), so what is timed is everything else; the torch backend and the naive loss run for real
at a tiny shape (k=5, B=4, D=3, P=7; the model's hidden layer 8 wide), where their arithmetic is negligible. The
training step is zero_grad, loss, backward and Adam: the naive loss with torch's default Adam, as a user writes it,
against PaperModel.loss with the fused Adam the paper app uses. It also counts the kernel launches.

    python benchmarks/bench_host.py                               # this checkout
    python benchmarks/bench_host.py --baseline-tree ../old        # and another checkout of the library, same run

Without a GPU the Triton backend runs on CPU tensors (TRITON_INTERPRET=1, set here), its kernels never launched.
"""

import argparse
import json
import os
import statistics
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
BLOCK = 20  # calls per timed block


def measure(device, repeats):
    """Rows {workload, variant, host_us (median per call), triton_launches} for this process's iwae_kernels: the
    loss's forward+backward, and a paper-model training step (zero_grad, loss, backward, Adam)."""
    import iwae_kernels as ik
    from iwae_kernels.models import paper_model
    from naive import naive_iwae_loss, naive_model_loss

    gen = torch.Generator().manual_seed(0)
    k, batch, dim, obs = SHAPE["k"], SHAPE["B"], SHAPE["D"], SHAPE["P"]
    x = torch.bernoulli(torch.full((batch, obs), 0.3), generator=gen).to(device)
    mu = torch.randn(batch, dim, generator=gen).to(device).requires_grad_()
    logvar = torch.randn(batch, dim, generator=gen).to(device).requires_grad_()
    decoder = torch.nn.Linear(dim, obs).to(device)
    eps = torch.randn(k, batch, dim, generator=gen).to(device)
    losses = {"naive": lambda: naive_iwae_loss(x, mu, logvar, decoder, k, eps)}
    for backend in ("torch", "triton"):
        losses[f"iwae_loss-{backend}"] = (lambda b: lambda: ik.iwae_loss(x, mu, logvar, decoder, k=k, backend=b))(backend)
    steps = {("loss", name): (lambda fn: lambda: fn().backward())(fn) for name, fn in losses.items()}
    # The training step: naive loss and Adam as a user writes them; the library's model and the app's fused Adam.
    for name, backend in (("naive", None), ("PaperModel-torch", "torch"), ("PaperModel-triton", "triton")):
        torch.manual_seed(0)
        model = paper_model(1, x_dim=obs, hidden=((8,),), latent=(dim,), backend=backend or "torch").to(device)
        loss = (lambda m=model: naive_model_loss(m, x, k)) if backend is None else (lambda m=model: m.loss(x, k))
        steps[("train step", name)] = _training_step(loss, torch.optim.Adam(model.parameters(), fused=backend is not None))
    counted = {}
    with recorded_launches(execute=False) as launches:
        for name, step in steps.items():
            launches.clear()
            step()
            counted[name] = sum(launches.values())
            for _ in range(10):
                step()
    # The variants take turns in blocks of BLOCK calls, so a slow spell of the machine (this 2-core VM has them:
    # medians of the same code moved 1.7x between back-to-back runs) falls on all of them alike.
    times = {name: [] for name in steps}
    with recorded_launches(execute=False):
        for _ in range(max(1, repeats // BLOCK)):
            for name, step in steps.items():
                start = time.perf_counter()
                for _ in range(BLOCK):
                    step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[name].append((time.perf_counter() - start) / BLOCK)
    return [{"workload": workload, "variant": name, "host_us": 1e6 * statistics.median(block),
             "triton_launches": counted[workload, name]} for (workload, name), block in times.items()]


def _training_step(loss, optimizer):
    # Not bench_train_step.make_step: that module imports iwae_kernels.app (through common), which the baseline trees
    # measured here may predate; this process imports only the library's functional API and models.
    def step():
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="rounds in which the trees take turns")
    parser.add_argument("--baseline-tree", help="another checkout of the library, measured in a subprocess")
    parser.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.measure_only:
        print(json.dumps(measure(device, args.repeats)))
        return
    torch.set_num_threads(1)  # host overhead is serial; threads only add noise
    tree = Path(args.baseline_tree).resolve() if args.baseline_tree else None
    measured = {}  # (tree, variant) -> rows, one per round
    for _ in range(args.rounds):  # the trees take turns too
        for row in measure(device, args.repeats):
            measured.setdefault(("this checkout", row["workload"], row["variant"]), []).append(row)
        if tree:
            out = subprocess.run([sys.executable, __file__, "--measure-only", "--device", args.device, "--repeats",
                                  str(args.repeats)], env={**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"},
                                 capture_output=True, text=True, check=True).stdout
            for row in json.loads(out.splitlines()[-1]):
                measured.setdefault((f"baseline {tree.name}", row["workload"], row["variant"]), []).append(row)
    rows = []
    for (tree_name, workload, variant), runs in measured.items():
        host = sorted(row["host_us"] for row in runs)
        rows.append({"tree": tree_name, "workload": workload, "variant": variant, "host_us": statistics.median(host),
                     "host_us_min": host[0], "host_us_max": host[-1], "triton_launches": runs[0]["triton_launches"]})
    notes = [f"shape: {SHAPE}, float32, one thread; per round, the variants take turns in blocks of {BLOCK} "
             f"calls ({args.repeats} calls each, after 10 warm-up calls) and host_us is the median block's time per "
             f"call; then the median over {args.rounds} rounds, in which this checkout and the baseline take turns "
             "(host_us_min/max: the rounds' range); Triton launches skipped (their count is per call)",
             "workload loss: one forward+backward; train step: zero_grad, loss, backward, Adam step (naive: "
             "naive_model_loss and torch.optim.Adam's default; PaperModel-*: PaperModel.loss on a 1-layer model "
             "(hidden 8) and Adam(fused=True), as the paper app runs it); vs_naive: against the same workload's naive"]
    if tree:
        notes.append(f"baseline: the library at {tree} (commit {_commit(tree)}), measured in a subprocess per round")
    naive = {(row["tree"], row["workload"]): row["host_us"] for row in rows if row["variant"] == "naive"}
    for row in rows:
        row["vs_naive"] = row["host_us"] / naive[row["tree"], row["workload"]]

    from common import environment, write_results

    write_results("bench_host", device, environment(device), rows,
                  ["tree", "workload", "variant", "host_us", "host_us_min", "host_us_max", "vs_naive",
                   "triton_launches"], notes)


def _commit(tree):
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
