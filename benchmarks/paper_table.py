"""A reduced Table 1 of the paper (MNIST, 1 stochastic layer): VAE k=1, VAE k=50, IWAE k=50, same epochs and seed;
``--objectives`` adds other estimators at k=50 beside them (DReG, MIWAE(5, 10), CIWAE(0.5), PIWAE(5, 10), RWS,
RWS with DReG wake-phi) and a sigmoid belief network (200 binary units) trained with VIMCO and with RWS.

Each model trains with the same schedule, batch size and seed, then its test NLL (-mean L_5000) and active
units are measured on the same fixed binarization of the first --test-subset test images. Nothing is tuned on
the test set. Writes benchmarks/results/<device>/paper_table.{json,md} (paper_table_objectives.* with
--objectives).

    python benchmarks/paper_table.py --epochs 5 --test-subset 2000        # the committed CPU run
    python benchmarks/paper_table.py --objectives --rows IWAE DReG MIWAE CIWAE PIWAE RWS RWS-DReG \
        --epochs 3 --test-subset 1000                                     # the estimator family (50 minutes)
    python benchmarks/paper_table.py --objectives --rows SBN-VIMCO SBN-RWS --epochs 3 --test-subset 1000 \
        --results-name paper_table_sbn                                    # the binary-latent rows beside them
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_results  # noqa: E402
from iwae_kernels.app import data as datasets  # noqa: E402
from iwae_kernels.app.evaluate import evaluate  # noqa: E402
from iwae_kernels.app.device import resolve_device  # noqa: E402
from iwae_kernels.app.train import TrainConfig, train  # noqa: E402

ROWS = [("VAE", "vae", 1, {}), ("VAE", "vae", 50, {}), ("IWAE", "iwae", 50, {})]
# The estimator family at k = 50 (groups: M = 5 groups of K = 10; ciwae_beta: the ELBO's share).
OBJECTIVE_ROWS = [("DReG", "dreg", 50, {}), ("MIWAE", "miwae", 50, {"groups": 5}),
                  ("CIWAE", "ciwae", 50, {"ciwae_beta": 0.5}), ("PIWAE", "piwae", 50, {"groups": 5}),
                  ("RWS", "rws", 50, {}), ("RWS-DReG", "rws-dreg", 50, {}),
                  ("SBN-VIMCO", "vimco", 50, {"model": "sbn"}), ("SBN-RWS", "rws", 50, {"model": "sbn"})]
PAPER_NLL = {("VAE", 1): 86.76, ("VAE", 50): 86.35, ("IWAE", 50): 84.78}  # 3,280 passes, all 10,000 test images
PAPER_ACTIVE = {("VAE", 1): 19, ("VAE", 50): 20, ("IWAE", 50): 25}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--test-subset", type=int, default=2000, help="first N test images (0: all 10,000)")
    parser.add_argument("--eval-k", type=int, default=5000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="runs/paper_table")
    parser.add_argument("--objectives", action="store_true", help="also the estimator family's rows")
    parser.add_argument("--rows", nargs="+", help="only these rows, by model name (e.g. IWAE RWS)")
    parser.add_argument("--train-subset", type=int, default=0, help="train on the first N images (0: all)")
    parser.add_argument("--results-name", help="the results files' name (default paper_table, or "
                                               "paper_table_objectives with --objectives)")
    args = parser.parse_args()
    table = ROWS + (OBJECTIVE_ROWS if args.objectives else [])
    if args.rows:
        unknown = sorted(set(args.rows) - {row[0] for row in table})
        if unknown:
            parser.error(f"--rows: unknown {unknown}, expected names from {[row[0] for row in table]}")
        table = [row for row in table if row[0] in args.rows]

    device = resolve_device(args.device)
    env = environment(device)  # the tree and date the run starts from (a run takes an hour; commits may land meanwhile)
    _, test_x = datasets.load_mnist()
    if args.test_subset:
        test_x = test_x[: args.test_subset]
    rows = []
    for name, estimator, k, options in table:
        config = TrainConfig(estimator=estimator, k=k, batch_size=args.batch_size, epochs=args.epochs, seed=args.seed,
                             device=args.device, train_subset=args.train_subset, **options)
        out_dir = Path(args.runs) / f"{name.lower()}-k{k}"
        started = time.perf_counter()
        model, history, step_log = train(config, out_dir, resume="if-exists", progress=False)
        train_wall = time.perf_counter() - started
        report = evaluate(model, test_x, out_dir, k=args.eval_k, history=history, step_log=step_log, progress=False)
        rows.append({"model": name, "estimator": estimator, "options": options, "k": k, "epochs": args.epochs,
                     "test_nll": report["test_nll"], "active_units": report["active_units"][0],
                     "train_wall_s": train_wall, "eval_wall_s": report["eval_wall_s"],
                     "paper_nll": PAPER_NLL.get((name, k)), "paper_active_units": PAPER_ACTIVE.get((name, k))})
        print(json.dumps(rows[-1]), flush=True)

    trained_on = f"the first {args.train_subset} training images" if args.train_subset else "all training images"
    notes = [f"{args.epochs} passes per model (the paper: 3,280) over {trained_on}, batch {args.batch_size}, "
             f"Adam lr 1e-3, seed {args.seed}",
             f"test NLL = -mean L_{args.eval_k} over the first {test_x.shape[0]} test images, one fixed binarization",
             "paper: 3,280 passes, all 10,000 test images (Burda et al. 2015, Table 1)"]
    name = args.results_name or ("paper_table_objectives" if args.objectives else "paper_table")
    write_results(name, device, env, rows,
                  ["model", "estimator", "options", "k", "epochs", "test_nll", "active_units", "train_wall_s",
                   "eval_wall_s", "paper_nll",
                   "paper_active_units"], notes)


if __name__ == "__main__":
    main()
