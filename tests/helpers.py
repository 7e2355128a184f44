"""Float64 oracles written from docs/MATH.md with torch.distributions and naive autograd, independent of
the library's torch backend, plus dtype-aware comparisons."""

import math
import sys
from pathlib import Path

import pytest
import torch
from torch.distributions import Bernoulli, Normal

import iwae_kernels

# The repository root (tests/ is one level down): for the examples, benchmarks and scripts the tests run.
REPO = Path(__file__).resolve().parent.parent

LOW_PRECISION = (torch.float16, torch.bfloat16)


def kernel_noise(backend, shape, seed, dtype, device):
    """The eps a compiled backend's in-kernel sampling draws for ``seed`` (Philox keyed on element index)."""
    from iwae_kernels import cuda_backend
    from iwae_kernels.ops.gaussian_sample import TRITON_LAUNCHERS, sample_noise

    launchers = TRITON_LAUNCHERS if backend == "triton" else cuda_backend.launchers()["sample"]
    return sample_noise(shape, seed, dtype, device, launchers)


def naive_latent(mu, logvar, eps, prior_mu=None, prior_logvar=None, detach_q=False):
    """z and log p(z) - log q(z|x) [k, B] from torch.distributions; detach_q stops q's parameters (stl/dreg)."""
    sigma = torch.exp(0.5 * logvar)
    z = mu + sigma * eps
    q = Normal(mu.detach(), sigma.detach()) if detach_q else Normal(mu, sigma)
    prior = Normal(torch.zeros_like(z), torch.ones_like(z)) if prior_mu is None else Normal(prior_mu, torch.exp(0.5 * prior_logvar))
    return z, (prior.log_prob(z) - q.log_prob(z)).sum(-1)


def naive_bernoulli(logits, x):
    return Bernoulli(logits=logits, validate_args=False).log_prob(x.expand_as(logits)).sum(-1)


def naive_gaussian(mean, logvar, x):
    return Normal(mean, torch.exp(0.5 * logvar)).log_prob(x.expand_as(mean)).sum(-1)


def naive_estimator_objective(mu, logvar, eps, weight, x, example_weights, estimator, prior_mu=None, prior_logvar=None):
    """(encoder surrogate, model objective): autograd of the first gives the estimator's dmu, dlogvar (docs/MATH.md);
    of the second, the gradient every estimator gives the prior and decoder (plain IWAE, or the ELBO for vae)."""
    k = eps.shape[0]
    z, latent = naive_latent(mu, logvar, eps, prior_mu, prior_logvar)
    log_w = naive_bernoulli(z @ weight, x) + latent
    if estimator == "vae":
        model = log_w.mean(0)
    else:
        model = torch.logsumexp(log_w, 0) - math.log(k)
    model = (example_weights * model).sum()
    if estimator in ("iwae", "vae"):
        return model, model
    z, latent = naive_latent(mu, logvar, eps, prior_mu, prior_logvar, detach_q=True)
    path_log_w = naive_bernoulli(z @ weight, x) + latent
    wt = torch.softmax(log_w.detach(), 0)
    power = 1 if estimator == "stl" else 2  # dreg weights each sample's path gradient by wt_i^2 (Tucker et al.)
    surrogate = (example_weights * (wt**power * path_log_w).sum(0)).sum()
    return surrogate, model


def tolerance(dtype):
    return {torch.float64: (1e-9, 1e-9), torch.float32: (2e-5, 2e-4)}.get(dtype, (2e-2, 2e-2))


def assert_close(actual, expected, dtype=None):
    """Compare in float64 with the tolerance of ``dtype`` (default: actual's dtype)."""
    rtol, atol = tolerance(dtype or actual.dtype)
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), rtol=rtol, atol=atol)


def assert_close_as_torch(actual, torch_low, oracle, slack=2.0):
    """FlashAttention-style check for half precision: the kernel's error against the float64 oracle is at
    most ``slack`` times the torch backend's own error in the same dtype, plus one rounding unit of the
    output's dtype at the tensor's scale (float32 outputs, e.g. log-weights, get float32's unit)."""
    actual_err = (actual.double().cpu() - oracle.double().cpu()).abs().max().item()
    torch_err = (torch_low.double().cpu() - oracle.double().cpu()).abs().max().item()
    unit = torch.finfo(actual.dtype).eps * (oracle.abs().max().item() + 1.0)
    assert actual_err <= slack * torch_err + unit, f"kernel error {actual_err:.3g} vs torch {torch_err:.3g}, unit {unit:.3g}"


def assert_log_weights_match(model, inputs, k, eps, expected, backend, device):
    """``model.log_weights(inputs, k, eps=eps)`` on ``device`` equals the float64 oracle ``expected`` [k, B] (built
    on the CPU from the model's own layers), and so do the parameter gradients of -sum L_k."""
    params = list(model.parameters())
    want = torch.autograd.grad(-(torch.logsumexp(expected, 0) - math.log(k)).sum(), params)
    model.to(device)
    log_w = model.log_weights(inputs.to(device), k, eps=eps.to(device))
    assert_close(log_w, expected)
    for got, wanted in zip(torch.autograd.grad(-iwae_kernels.iwae_bound(log_w, backend=backend).sum(), params), want):
        assert_close(got, wanted)


def peak_bytes(fn, device):
    """Peak bytes of one fn() call: the GPU allocator's peak, or on a CPU torch.profiler's memory accounting (the
    benchmarks' measurement, benchmarks/common.py)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from common import peak_memory_mib
    finally:
        sys.path.pop(0)
    return peak_memory_mib(fn, device) * 2**20


def train_and_check_loss_drops(model, inputs, k, steps, drop, beta=None):
    """Adam at lr 1e-2 on ``model.loss(inputs, k)`` for ``steps`` steps (``beta(step)`` anneals if given): the
    loss (in eval mode, no annealing) ends at least ``drop`` nats below where it started."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.loss(inputs, k=k).item()
    for step in range(steps):
        optimizer.zero_grad()
        (model.loss(inputs, k=k) if beta is None else model.loss(inputs, k=k, beta=beta(step))).backward()
        optimizer.step()
    model.eval()
    last = model.loss(inputs, k=k).item()
    assert last < first - drop, f"loss went from {first:.3f} to {last:.3f}, expected a drop of {drop}"


COMPILED_BACKENDS = ["triton", "cuda"]


def backend_device(name):
    """Where backend ``name`` runs in this session, or a skip that says why it cannot.

    torch: the CPU. triton: the GPU, or the CPU under TRITON_INTERPRET=1. cuda: the GPU with the extension.
    """
    from iwae_kernels import backend, cuda_backend

    if name == "torch":
        return torch.device("cpu")
    if name == "triton":
        if not backend.triton_available():
            pytest.skip("triton is not installed")
        if torch.cuda.is_available() and not backend.triton_interpreting():
            return torch.device("cuda")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        pytest.skip("the cuda backend needs a CUDA GPU")
    if not cuda_backend.available():
        pytest.skip(cuda_backend.HOW_TO_BUILD)
    return torch.device("cuda")
