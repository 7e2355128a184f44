"""The paper's properties, on a linear-Gaussian model whose log p(x) and posterior are known exactly.

Model: z ~ N(0, I_D), x | z ~ N(W z + c, s^2 I_P) with W = Q diag(lam), Q orthonormal columns, so
W^T W is diagonal and the exact posterior is a diagonal Gaussian that q can represent:
    cov = 1 / (1 + lam^2 / s^2),  mean = cov * W^T (x - c) / s^2,  p(x) = N(c, W W^T + s^2 I).
Runs on the torch backend in float64 (the kernels are checked equal to it elsewhere).
"""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

import iwae_kernels as ik

DIM, OBS, NOISE_STD = 3, 6, 0.7


def linear_gaussian(seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(OBS, DIM, generator=gen, dtype=torch.float64))
    weight = q * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    offset = torch.randn(OBS, generator=gen, dtype=torch.float64)
    return weight, offset


def sample_data(weight, offset, n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, DIM, generator=gen, dtype=torch.float64)
    return z @ weight.T + offset + NOISE_STD * torch.randn(n, OBS, generator=gen, dtype=torch.float64)


def exact_posterior(weight, offset, x):
    var = 1.0 / (1.0 + (weight**2).sum(0) / NOISE_STD**2)
    return var * ((x - offset) @ weight) / NOISE_STD**2, torch.log(var).expand(x.shape[0], DIM)


def log_marginal(weight, offset, x):
    cov = weight @ weight.T + NOISE_STD**2 * torch.eye(OBS, dtype=torch.float64)
    return MultivariateNormal(offset, cov).log_prob(x)


def decoder_for(weight, offset):
    log_noise_var = 2 * math.log(NOISE_STD)
    return lambda z: (z @ weight.T + offset, torch.full(z.shape[:-1] + (OBS,), log_noise_var, dtype=z.dtype))


def bound(x, mu, logvar, weight, offset, k, **kwargs):
    return -ik.iwae_loss(x, mu, logvar, decoder_for(weight, offset), k=k, likelihood="gaussian", reduction="none",
                         backend="torch", **kwargs)


@pytest.mark.parametrize("k", [1, 5, 50])
def test_exact_posterior_gives_log_marginal_for_every_k(k):
    weight, offset = linear_gaussian()
    x = sample_data(weight, offset, 8)
    mu, logvar = exact_posterior(weight, offset, x)
    torch.testing.assert_close(bound(x, mu, logvar, weight, offset, k), log_marginal(weight, offset, x),
                               rtol=1e-10, atol=1e-10)


def test_bound_tightens_with_k_towards_log_marginal():
    """E[L_1] <= E[L_5] <= E[L_50] <= log p(x), each gap larger than 4 standard errors, the last gap small."""
    weight, offset = linear_gaussian()
    x = sample_data(weight, offset, 4).repeat(2000, 1)  # many independent draws of each example
    mu, logvar = exact_posterior(weight, offset, x)
    mu, logvar = mu + 0.6, logvar + 0.8  # a worse q than the posterior
    torch.manual_seed(0)
    gaps = {}
    for k in (1, 5, 50):
        gap = log_marginal(weight, offset, x) - bound(x, mu, logvar, weight, offset, k)
        gaps[k] = (gap.mean().item(), gap.std().item() / gap.numel() ** 0.5)
    (g1, s1), (g5, s5), (g50, s50) = gaps[1], gaps[5], gaps[50]
    assert g1 - g5 > 4 * math.hypot(s1, s5)
    assert g5 - g50 > 4 * math.hypot(s5, s50)
    assert g50 > -4 * s50  # a lower bound on average
    assert g50 < 0.2 * g1  # and close at k = 50


def encoder_gradients(estimator, k, n=20000, seed=0):
    """n independent single-example gradient draws w.r.t. (mu, logvar), each [n, D]."""
    weight, offset = linear_gaussian()
    x = sample_data(weight, offset, 1).expand(n, OBS)
    mu, logvar = exact_posterior(weight, offset, x)
    mu = (mu + 0.5).clone().requires_grad_()
    logvar = (logvar + 0.5).clone().requires_grad_()
    torch.manual_seed(seed)
    loss = -bound(x, mu, logvar, weight, offset, k, estimator=estimator).sum()
    return torch.cat(torch.autograd.grad(loss, [mu, logvar]), dim=1)


def assert_same_mean(a, b, sigmas=4.5):
    stderr = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    assert ((a.mean(0) - b.mean(0)).abs() < sigmas * stderr).all(), ((a.mean(0) - b.mean(0)) / stderr)


@pytest.mark.parametrize("estimator, k", [("dreg", 5), ("dreg", 20), ("stl", 1), ("iwae-resample", 5)])
def test_estimator_is_unbiased_for_the_iwae_gradient(estimator, k):
    """DReG (any k), STL (k = 1; for k > 1 STL is biased, Tucker et al. 2018) and the paper's resampling
    estimator have the same expectation as the IWAE gradient."""
    assert_same_mean(encoder_gradients(estimator, k, seed=1), encoder_gradients("iwae", k, seed=2))


def test_dreg_lowers_encoder_gradient_variance_more_as_k_grows():
    ratios = {}
    for k in (5, 50):
        iwae, dreg = encoder_gradients("iwae", k, n=4000), encoder_gradients("dreg", k, n=4000)
        ratios[k] = (dreg.var(0).sum() / iwae.var(0).sum()).item()
    assert ratios[5] < 0.5
    assert ratios[50] < ratios[5]


def test_stl_is_biased_for_k_above_one():
    """The flip side, and proof that the test above can fail: STL's IWAE gradient is biased at k = 5."""
    with pytest.raises(AssertionError):
        assert_same_mean(encoder_gradients("stl", 5, seed=1), encoder_gradients("iwae", 5, seed=2))
