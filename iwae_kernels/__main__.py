"""Command line: python -m iwae_kernels {fetch-data, train, evaluate} --help

    python -m iwae_kernels train --preset quick        # a small IWAE on real MNIST, then its L_5000 test NLL
    python -m iwae_kernels train --schedule paper --k 50 --out runs/iwae50
    python -m iwae_kernels train ... --resume          # continue from runs/.../checkpoint.pt exactly
    torchrun --nproc_per_node 2 -m iwae_kernels evaluate runs/iwae50/checkpoint.pt
"""

import argparse
import dataclasses
import sys
from pathlib import Path

from . import data as datasets
from .evaluate import evaluate
from .functional import ESTIMATORS
from .train import TrainConfig, describe_schedule, model_from_checkpoint, train

# About half a minute on a 2-core CPU: one pass of 1-layer IWAE k=5, then L_5000 on 500 test images.
PRESETS = {
    "quick": {"k": 5, "batch_size": 100, "epochs": 1, "test_subset": 500},
    "paper": {"schedule": "paper", "k": 50, "batch_size": 20},
}


def _eval_arguments(parser):
    parser.add_argument("--eval-k", type=int, default=5000, help="samples for the test L_k (paper: 5000)")
    parser.add_argument("--eval-chunk", type=int, default=500, help="samples per chunk: memory does not grow with k")
    parser.add_argument("--eval-batch", type=int, default=100, help="test examples per batch")
    parser.add_argument("--test-subset", type=int, default=0, help="evaluate on the first N test images (0: all)")
    parser.add_argument("--no-progress", action="store_true")


def _run_evaluation(model, args, dataset, out_dir, history, extra):
    _, test_x = datasets.DATASETS[dataset]()
    if args.test_subset:
        test_x = test_x[: args.test_subset]
    report = evaluate(model, test_x, out_dir, k=args.eval_k, chunk=args.eval_chunk, batch_size=args.eval_batch,
                      history=history, extra=extra, progress=not args.no_progress)
    print(f"test NLL (-mean L_{report['k']} over {report['test_examples']} images): {report['test_nll']:.3f} nats; "
          f"active units {report['active_units']}; report and pictures in {out_dir}")
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m iwae_kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("fetch-data", help="download and verify MNIST into the data cache")

    defaults = TrainConfig()
    train_parser = commands.add_parser("train", help="train a model, then evaluate it")
    train_parser.add_argument("--preset", choices=sorted(PRESETS), help="a named set of the options below")
    train_parser.add_argument("--dataset", choices=sorted(datasets.DATASETS), default=defaults.dataset)
    train_parser.add_argument("--layers", type=int, choices=(1, 2), default=defaults.layers)
    train_parser.add_argument("--estimator", choices=ESTIMATORS, default=defaults.estimator)
    train_parser.add_argument("--k", type=int, default=defaults.k)
    train_parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    train_parser.add_argument("--schedule", choices=("constant", "paper"), default=defaults.schedule,
                              help="paper: 3^i passes at lr 1e-3 * 10^(-i/7) for i < --paper-stages")
    train_parser.add_argument("--epochs", type=int, default=defaults.epochs, help="passes for --schedule constant")
    train_parser.add_argument("--paper-stages", type=int, default=defaults.paper_stages)
    train_parser.add_argument("--lr", type=float, default=defaults.lr)
    train_parser.add_argument("--seed", type=int, default=defaults.seed)
    train_parser.add_argument("--device", default=defaults.device)
    train_parser.add_argument("--backend", choices=("torch", "triton", "cuda"), default=None)
    train_parser.add_argument("--train-subset", type=int, default=0, help="train on the first N images (0: all)")
    train_parser.add_argument("--checkpoint-minutes", type=float, default=defaults.checkpoint_minutes)
    train_parser.add_argument("--checkpoint-steps", type=int, default=0, help="also checkpoint every N steps")
    train_parser.add_argument("--out", default=None, help="run folder (default runs/<dataset>-l<layers>-<estimator>-k<k>)")
    train_parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    train_parser.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    _eval_arguments(train_parser)

    eval_parser = commands.add_parser("evaluate", help="test NLL, active units, report and pictures of a checkpoint")
    eval_parser.add_argument("checkpoint")
    eval_parser.add_argument("--out", default=None, help="report folder (default: the checkpoint's folder)")
    eval_parser.add_argument("--device", default="auto")
    _eval_arguments(eval_parser)

    args = parser.parse_args(argv)
    if args.command == "fetch-data":
        print(f"MNIST ready at {datasets.fetch_mnist()}")
        return 0
    if args.command == "evaluate":
        model, config, state = model_from_checkpoint(args.checkpoint, args.device)
        out_dir = args.out or str(Path(args.checkpoint).parent)
        _run_evaluation(model, args, config.dataset, out_dir, state["history"], {"config": state["config"]})
        return 0

    if args.preset:
        parser_defaults = {a.dest: a.default for a in train_parser._actions}
        for name, value in PRESETS[args.preset].items():
            if getattr(args, name) == parser_defaults[name]:
                setattr(args, name, value)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{name: value for name, value in vars(args).items() if name in fields})
    out_dir = args.out or f"runs/{config.dataset}-l{config.layers}-{config.estimator}-k{config.k}"
    print(f"training {config.layers}-layer {config.estimator} k={config.k} on {config.dataset}: "
          f"{describe_schedule(config)}, batch {config.batch_size}; run folder {out_dir}")
    model, history = train(config, out_dir, resume=args.resume, progress=not args.no_progress)
    if not args.no_eval:
        _run_evaluation(model, args, config.dataset, out_dir, history, {"config": dataclasses.asdict(config)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
