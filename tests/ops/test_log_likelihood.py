"""Bernoulli and Gaussian log-likelihoods reduced over P, against torch.distributions in float64."""

import pytest
import torch

import iwae_kernels as ik

from helpers import COMPILED_BACKENDS, backend_device
from helpers import LOW_PRECISION, assert_close, assert_close_as_torch, naive_bernoulli, naive_gaussian

# (k, B, P): k=1, B=1, P=1, odd sizes, P=784 (MNIST) spanning one block, P above one block.
SHAPES = [(1, 3, 5), (4, 1, 1), (3, 5, 33), (2, 3, 784), (2, 2, 1500)]
LIKELIHOODS = ["bernoulli", "gaussian"]


def make_inputs(likelihood, k, batch, size, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    first = scale * torch.randn(k, batch, size, generator=gen, dtype=torch.float64)
    if likelihood == "bernoulli":
        # Real-valued targets in [0, 1] are legal (the Bernoulli "continuous" use); some exact 0 and 1.
        x = torch.rand(batch, size, generator=gen, dtype=torch.float64)
        x[:, ::3] = x[:, ::3].round()
        return [first], x
    return [first, torch.randn(k, batch, size, generator=gen, dtype=torch.float64)], torch.randn(batch, size, generator=gen, dtype=torch.float64)


def run(likelihood, tensors, x, backend, device, dtype, seed=4):
    leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in tensors]
    fn = ik.bernoulli_log_likelihood if likelihood == "bernoulli" else ik.gaussian_log_likelihood
    out = fn(*leaves, x.to(device=device, dtype=dtype), backend=backend)
    upstream = torch.rand(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grads = torch.autograd.grad(out, leaves, upstream.to(device=device, dtype=out.dtype))
    return [out, *grads]


def naive(likelihood, tensors, x):
    leaves = [t.clone().requires_grad_() for t in tensors]
    out = naive_bernoulli(leaves[0], x) if likelihood == "bernoulli" else naive_gaussian(*leaves, x)
    upstream = torch.rand(out.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    return [out, *torch.autograd.grad(out, leaves, upstream)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_reference_matches_distributions(likelihood, shape):
    tensors, x = make_inputs(likelihood, *shape)
    for got, want in zip(run(likelihood, tensors, x, "torch", "cpu", torch.float64), naive(likelihood, tensors, x)):
        assert_close(got, want)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_reference_gradcheck(likelihood):
    tensors, x = make_inputs(likelihood, 2, 3, 5)
    fn = ik.bernoulli_log_likelihood if likelihood == "bernoulli" else ik.gaussian_log_likelihood
    assert torch.autograd.gradcheck(lambda *t: fn(*t, x, backend="torch"), [t.requires_grad_() for t in tensors])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matches_reference(kernel, dtype, likelihood, shape):
    tensors, x = make_inputs(likelihood, *shape)
    expected = run(likelihood, tensors, x, "torch", "cpu", torch.float64)
    actual = run(likelihood, tensors, x, *kernel, dtype)
    assert actual[0].dtype == dtype
    for got, want in zip(actual, expected):
        assert got.shape == want.shape
        assert_close(got, want, dtype)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_kernel_low_precision(kernel, likelihood, dtype):
    tensors, x = make_inputs(likelihood, 3, 4, 100, scale=1.0)
    # The oracle sees the same rounded inputs, so only the kernel's own arithmetic is measured.
    rounded = [t.to(dtype).double() for t in tensors]
    oracle = run(likelihood, rounded, x.to(dtype).double(), "torch", "cpu", torch.float64)
    torch_low = run(likelihood, tensors, x, "torch", "cpu", dtype)
    actual = run(likelihood, tensors, x, *kernel, dtype)
    assert actual[0].dtype == torch.float32, "half inputs give a float32 log-likelihood"
    for got, ref, want in zip(actual, torch_low, oracle):
        assert_close_as_torch(got, ref, want)


@pytest.mark.parametrize("backend", ["torch", *COMPILED_BACKENDS])
def test_bernoulli_extreme_logits_are_exact_and_finite(backend):
    """softplus must not underflow: logits of +-100 give log-likelihoods near 0 or -100, never -inf/NaN."""
    device = backend_device(backend)
    logits = torch.tensor([[[100.0, -100.0, 30.0, -30.0, 0.0, 1e-8]]], device=device)
    x = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0, 0.0]], device=device)
    logits.requires_grad_()
    out = ik.bernoulli_log_likelihood(logits, x, backend=backend)
    (grad,) = torch.autograd.grad(out.sum(), logits)
    expected = naive_bernoulli(logits.detach().double().cpu(), x.double().cpu())
    torch.testing.assert_close(out.double().cpu(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad.double().cpu(), (x - torch.sigmoid(logits.detach())).double().cpu())
    assert torch.isfinite(grad).all()
