"""One training step (loss, backward, Adam) of the paper's 1- and 2-layer models: naive vs fused, and samples/s.

naive: benchmarks/naive.py's naive_model_loss on the same modules (torch.distributions, BCE with logits,
torch.logsumexp, eager). fused: PaperModel.loss (the fused ops; the torch backend on a CPU). Both train the same
initial weights; their losses on the same batch are checked to agree within Monte Carlo error first.
On a GPU each is also timed as one captured CUDA graph per step (+graph: loss, backward and a capturable Adam
replayed, which removes the launch gaps that dominate small batches). The fused kernels read their noise seed
from the device, so every replay draws fresh noise; the naive graph runs with torch.distributions' argument
validation off (its checks synchronize with the host, which a capture forbids).

    python benchmarks/bench_train_step.py                   # CPU: B = 20; GPU: B in {20, 128}
"""

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, median_ms_each, parse_args, peak_memory_mib, write_results  # noqa: E402
from iwae_kernels.models import paper_model  # noqa: E402
from naive import naive_model_loss  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 50])
    parser.add_argument("--batch", type=int, nargs="+")
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--variants", nargs="+", default=["naive", "fused", "fused-head"],
                        choices=["naive", "fused", "fused-head"], help="naive must come first (the speedups' base)")
    args = parse_args(parser)
    device = torch.device(args.device)
    batches = args.batch or ([20, 128] if device.type == "cuda" else [20])
    env = environment(device)
    rows = []
    for layers in args.layers:
        for batch in batches:
            for k in args.k:
                torch.manual_seed(0)
                x = torch.bernoulli(torch.full((batch, 784), 0.3)).to(device)
                base = paper_model(layers).to(device)
                with torch.no_grad():
                    naive_value = sum(naive_model_loss(base, x, k).item() for _ in range(20)) / 20
                    fused_value = sum(base.loss(x, k).item() for _ in range(20)) / 20
                assert abs(naive_value - fused_value) < 0.02 * abs(naive_value) + 1.0, (naive_value, fused_value)
                baseline = None
                # fused: the model's default (fused_head=False); fused-head: with the fused decoder head.
                losses = {"naive": (lambda m: naive_model_loss(m, x, k), False),
                          "fused": (lambda m: m.loss(x, k), False), "fused-head": (lambda m: m.loss(x, k), True)}
                losses = {name: losses[name] for name in args.variants}
                graphs = [False, True] if device.type == "cuda" else [False]
                steps = {}
                for name, (loss_fn, fused_head) in losses.items():
                    for graphed in graphs:
                        model = copy.deepcopy(base)
                        model.fused_head = fused_head
                        steps[name + ("+graph" if graphed else "")] = make_step(model, loss_fn, graphed,
                                                                                fused_adam=name != "naive")
                for variant, ms in median_ms_each(steps, device).items():
                    baseline = ms if variant == "naive" else baseline
                    rows.append({"layers": layers, "B": batch, "k": k, "variant": variant, "step_ms": ms,
                                 "samples_per_s": 1000 * batch / ms, "peak_mib": peak_memory_mib(steps[variant], device),
                                 "speedup_vs_naive": baseline / ms})
                    print(rows[-1], flush=True)
    notes = ["a step: zero_grad, loss, backward, Adam (lr 1e-3, eps 1e-4; naive: torch's default Adam, as a user "
             "writes it; fused, fused-head: Adam(fused=True), as the paper app runs it); median over repeats after "
             "warm-up (on a CPU the variants of a shape take turns call by call: benchmarks/common.py median_ms_each)",
             "speedup_vs_naive: against naive eager at the same shape, measured in the same run",
             "+graph: the whole step captured once as a CUDA graph and replayed (peak memory excludes the graph's pool)",
             "peak_mib on a CPU: torch.profiler's memory accounting (common.peak_memory_mib)",
             "fused: PaperModel.loss as it comes (fused_head=False: logits from the nn.Linear, reduced by the "
             "likelihood kernel); fused-head: fused_head=True (the fused decoder head, logits never stored)",
             "fused on a CPU is the torch backend (the fallback), not a fused kernel"]
    write_results("bench_train_step", device, env, rows,
                  ["layers", "B", "k", "variant", "step_ms", "samples_per_s", "peak_mib", "speedup_vs_naive"], notes)


def make_step(model, loss_fn, graphed, fused_adam):
    """A zero-argument training step; ``graphed``: captured once as a CUDA graph, each call replays it;
    ``fused_adam``: Adam's update as one kernel (the paper app's optimizer)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-4, capturable=graphed, fused=fused_adam)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model).backward()
        optimizer.step()

    if not graphed:
        return step
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (kernel compilation, Adam's state) outside the capture
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            loss_fn(model).backward()
            optimizer.step()
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)
    return graph.replay


if __name__ == "__main__":
    main()
