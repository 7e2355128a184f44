"""The encoders' gradient variance of each estimator at k = 50, relative to IWAE's, on the small float64 paper
models of tests/models/test_estimators.py (the setup of its test_encoder_gradient_variance_at_k50): the sum over
encoder parameters of the variance over ``--draws`` gradient draws. Writes estimator_variance.{json,md}.

    python benchmarks/estimator_variance.py [--draws 300] [--k 50] [--device cpu]
"""

import argparse
import sys
from pathlib import Path

import torch

from common import environment, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from models.test_estimators import binary_batch, gradient_draws, small_paper_model  # noqa: E402

ESTIMATOR_OPTIONS = {"iwae": {}, "dreg": {}, "iwae-resample": {}, "miwae": {"groups": 5},
                     "ciwae": {"ciwae_beta": 0.5}, "renyi": {"renyi_alpha": 0.5}, "piwae": {"groups": 5}, "rws": {},
                     "rws-dreg": {}, "vimco": {}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for layers in (1, 2):
        model = small_paper_model(layers, device)
        encoder = torch.tensor([name.startswith("encoders.") for name, p in model.named_parameters()
                                for _ in range(p.numel())])
        x = binary_batch(6, 12, 1, device)
        variance = {}
        for estimator, options in ESTIMATOR_OPTIONS.items():
            draws = gradient_draws(model, lambda: model.loss(x, args.k, estimator, **options), args.draws, seed=3)
            variance[estimator] = draws[:, encoder].var(0).sum().item()
        rows += [{"layers": layers, "estimator": estimator, "options": str(ESTIMATOR_OPTIONS[estimator] or "-"),
                  "encoder variance / iwae": value / variance["iwae"]} for estimator, value in variance.items()]
    write_results("estimator_variance", device, environment(device), rows,
                  ["layers", "estimator", "options", "encoder variance / iwae"],
                  notes=[f"k = {args.k}, {args.draws} gradient draws, float64, the torch backend"])


if __name__ == "__main__":
    main()
