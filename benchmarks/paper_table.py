"""A reduced Table 1 of the paper (MNIST, 1 stochastic layer): VAE k=1, VAE k=50, IWAE k=50, same epochs and seed.

Each model trains with the same schedule, batch size and seed, then its test NLL (-mean L_5000) and active
units are measured on the same fixed binarization of the first --test-subset test images. Nothing is tuned on
the test set. Writes benchmarks/results/<device>/paper_table.{json,md}.

    python benchmarks/paper_table.py --epochs 5 --test-subset 2000        # the committed CPU run
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from iwae_kernels import data as datasets
from iwae_kernels.evaluate import evaluate
from iwae_kernels.train import TrainConfig, resolve_device, train

ROWS = [("VAE", "vae", 1), ("VAE", "vae", 50), ("IWAE", "iwae", 50)]
PAPER_NLL = {("VAE", 1): 86.76, ("VAE", 50): 86.35, ("IWAE", 50): 84.78}  # 3,280 passes, all 10,000 test images
PAPER_ACTIVE = {("VAE", 1): 19, ("VAE", 50): 20, ("IWAE", 50): 25}


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--test-subset", type=int, default=2000, help="first N test images (0: all 10,000)")
    parser.add_argument("--eval-k", type=int, default=5000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="runs/paper_table")
    args = parser.parse_args()

    device = resolve_device(args.device)
    _, test_x = datasets.load_mnist()
    if args.test_subset:
        test_x = test_x[: args.test_subset]
    rows = []
    for name, estimator, k in ROWS:
        config = TrainConfig(estimator=estimator, k=k, batch_size=args.batch_size, epochs=args.epochs, seed=args.seed,
                             device=args.device)
        out_dir = Path(args.runs) / f"{name.lower()}-k{k}"
        started = time.perf_counter()
        model, history = train(config, out_dir, resume=True, progress=False)
        train_wall = time.perf_counter() - started
        report = evaluate(model, test_x, out_dir, k=args.eval_k, history=history, progress=False)
        rows.append({"model": name, "k": k, "epochs": args.epochs, "test_nll": report["test_nll"],
                     "active_units": report["active_units"][0], "train_wall_s": train_wall,
                     "eval_wall_s": report["eval_wall_s"], "paper_nll": PAPER_NLL[(name, k)],
                     "paper_active_units": PAPER_ACTIVE[(name, k)]})
        print(json.dumps(rows[-1]), flush=True)

    result = {
        "device": device_name(device), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
        "command": "python " + " ".join(sys.argv), "batch_size": args.batch_size, "seed": args.seed,
        "test_images": int(test_x.shape[0]), "eval_k": args.eval_k, "rows": rows,
    }
    out = Path("benchmarks/results") / result["device"].split(" (")[0].replace(" ", "_")
    out.mkdir(parents=True, exist_ok=True)
    (out / "paper_table.json").write_text(json.dumps(result, indent=1))
    lines = [
        f"# Reduced Table 1 (MNIST, 1 stochastic layer) on {result['device']}",
        "",
        f"- date {result['date']}, torch {result['torch']}, command `{result['command']}`",
        f"- {args.epochs} passes per model (the paper: 3,280), batch {args.batch_size}, Adam lr 1e-3, seed {args.seed}",
        f"- test NLL = -mean L_{args.eval_k} over the first {result['test_images']} test images, one fixed binarization",
        "",
        "| model | k | passes | test NLL (nats) | active units | train wall (s) | eval wall (s) | paper NLL | paper active |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {r['model']} | {r['k']} | {r['epochs']} | {r['test_nll']:.2f} | {r['active_units']} | "
              f"{r['train_wall_s']:.0f} | {r['eval_wall_s']:.0f} | {r['paper_nll']} | {r['paper_active_units']} |"
              for r in rows]
    (out / "paper_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
