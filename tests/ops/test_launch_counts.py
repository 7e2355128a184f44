"""Kernel launches per call, pinned: a change that adds a launch to the loss or a training step shows here.

Counted on the Triton backend with the launches skipped (benchmarks/launches.py), so it runs anywhere the
backend can be selected (a GPU, or the CPU under TRITON_INTERPRET=1); only Triton kernels are counted (the
decoder's matmuls and Adam are torch's).
"""

import sys

import torch

import iwae_kernels as ik
from iwae_kernels.models import paper_model

from helpers import REPO, backend_device

sys.path.insert(0, str(REPO / "benchmarks"))
from launches import recorded_launches  # noqa: E402

# Forward: sample, log-weights, logsumexp fold; backward: the likelihood's pass (weights formed in it), sampling.
LOSS_LAUNCHES = {"_gaussian_sample_fwd_kernel": 1, "_log_likelihood_fwd_kernel": 1, "_max_sum_kernel": 1,
                 "_log_likelihood_bwd_kernel": 1, "_gaussian_sample_bwd_kernel": 1}


def test_iwae_loss_forward_backward_launches():
    device = backend_device("triton")
    x = torch.rand(4, 7, device=device).round()
    mu = torch.randn(4, 3, device=device, requires_grad=True)
    logvar = torch.randn(4, 3, device=device, requires_grad=True)
    decoder = torch.nn.Linear(3, 7).to(device)
    with recorded_launches(execute=False) as launches:
        ik.iwae_loss(x, mu, logvar, decoder, k=5, backend="triton").backward()
    assert dict(launches) == LOSS_LAUNCHES


def test_loss_reduction_runs_in_the_fold_for_a_large_batch():
    """At B = 200 (4 example blocks of the fold) the loss's mean and sign are still the fold's, not torch ops."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class AtenOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.__name__)
            return func(*args, **(kwargs or {}))

    device = backend_device("triton")
    logits = torch.randn(5, 200, 7, device=device)
    x, latent = torch.rand(200, 7, device=device).round(), torch.randn(5, 200, device=device)
    with recorded_launches(execute=False) as launches, AtenOps() as ops:
        ik.bernoulli_iwae_loss(logits, x, latent, backend="triton")
    assert dict(launches) == {"_log_likelihood_fwd_kernel": 1, "_max_sum_kernel": 1}
    assert not {"mean.default", "neg.default", "sum.default", "div.Tensor"} & set(ops.names), ops.names


def test_paper_model_training_step_launches():
    device = backend_device("triton")
    counts = {}
    for layers in (1, 2):
        model = paper_model(layers, x_dim=12, backend="triton", hidden=((8,),) * layers, latent=(4, 3)[:layers])
        model = model.to(device)
        optimizer = torch.optim.Adam(model.parameters(), fused=True)
        with recorded_launches(execute=False) as launches:
            model.loss(torch.rand(5, 12, device=device).round(), k=4).backward()
            optimizer.step()
        counts[layers] = sum(launches.values())
    # One layer: the loss's five; two layers: a second sampling kernel pair.
    assert counts == {1: 5, 2: 7}
