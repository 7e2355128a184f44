"""AIS and BDMC (iwae_kernels.ais) against the exact log p(x) of a linear-Gaussian model, on a small Bernoulli MLP
decoder, and their argument checks; float64 on the CPU with the torch backend and fixed generators.

What convergence looks like (/work/shared/MATH.md, "AIS and BDMC"): a plain reference AIS (sigmoid schedule, 10
leapfrog steps, adapted step size) on D = 3, P = 6, s^2 = 0.3 with 16 chains has mean |error| 0.17, 0.13, 0.06 nats
at T = 200, 500, 1000 from the prior, and 0.12, 0.07, 0.04 at T = 100, 300, 1000 from a q near the posterior.
"""

import math

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal

from iwae_kernels import evaluation
from iwae_kernels.ais import BDMCBounds, ais_log_likelihood, annealing_schedule, bdmc, simulate_data

D, P, NOISE_VAR, B = 3, 6, 0.3, 8  # the reference's model; 8 examples
CHAINS = 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The chains' tensors are tiny: a second intra-op thread only adds synchronization (several times slower per
    op on a 2-core CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def seeded(seed):
    return torch.Generator().manual_seed(seed)


class LinearGaussian:
    """p(z) = N(0, I), p(x|z) = N(W z + b, s^2 I): exact p(x) = N(b, W W^T + s^2 I) and posterior
    N(S W^T (x - b) / s^2, S), S = (I + W^T W / s^2)^-1; x and z [B, .] simulated from the model."""

    def __init__(self):
        generator = seeded(1)
        self.weight = torch.randn(P, D, generator=generator, dtype=torch.float64)
        self.bias = torch.randn(P, generator=generator, dtype=torch.float64)
        self.x, self.z = simulate_data(self.decoder, B, D, likelihood="gaussian", generator=generator,
                                       dtype=torch.float64)
        covariance = self.weight @ self.weight.T + NOISE_VAR * torch.eye(P, dtype=torch.float64)
        self.exact = MultivariateNormal(self.bias, covariance).log_prob(self.x)
        posterior_cov = torch.linalg.inv(torch.eye(D, dtype=torch.float64) + self.weight.T @ self.weight / NOISE_VAR)
        self.posterior_mu = (self.x - self.bias) @ self.weight / NOISE_VAR @ posterior_cov
        self.posterior_logvar = torch.log(torch.diagonal(posterior_cov)).expand(B, D)

    def decoder(self, z):
        mean = z @ self.weight.T + self.bias
        return mean, torch.full_like(mean, math.log(NOISE_VAR))

    def near_posterior(self):
        """An encoder near the posterior: its mean, and the log of diag(S) widened by 0.1 (the posterior's
        covariance is not diagonal either)."""
        return dict(mu=self.posterior_mu, logvar=self.posterior_logvar + 0.1)


@pytest.fixture(scope="module")
def linear_gaussian():
    return LinearGaussian()


def ais_errors(model, settings, **kwargs):
    """Mean |AIS - exact| over the examples at each (steps, seed)."""
    return [(ais_log_likelihood(model.x, model.decoder, steps=steps, chains=CHAINS, likelihood="gaussian",
                                generator=seeded(seed), backend="torch", **kwargs) - model.exact).abs().mean().item()
            for steps, seed in settings]


def test_ais_from_the_prior_converges_to_the_exact_log_likelihood(linear_gaussian):
    errors = ais_errors(linear_gaussian, [(10, 2), (100, 2), (1000, 2)], latent_dim=D)
    # Measured 1.44, 0.33, 0.051 (the reference: 0.06 at T = 1000).
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.1, errors


def test_ais_from_a_near_posterior_encoder_is_within_005_nats(linear_gaussian):
    errors = ais_errors(linear_gaussian, [(10, 2), (100, 2), (300, 2)], **linear_gaussian.near_posterior())
    # Measured 0.111, 0.045, 0.028 (the reference: 0.12 at T = 100, 0.07 at T = 300).
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.05, errors


def test_iwae_bound_is_below_the_exact_value_and_approaches_it(linear_gaussian):
    model = linear_gaussian
    gaps = [(evaluation.log_likelihood(model.x, k=k, decoder=model.decoder, likelihood="gaussian",
                                       generator=seeded(4), backend="torch", **model.near_posterior())
             - model.exact).mean().item() for k in (1, 1000)]
    # Measured -0.058 and -0.006 nats: a lower bound in expectation whose bias shrinks like 1/k.
    assert gaps[0] < gaps[1] < 0 and abs(gaps[1]) < 0.05, gaps


def test_bdmc_sandwiches_the_exact_value(linear_gaussian):
    model = linear_gaussian
    bounds = [bdmc(model.x, model.z, model.decoder, steps=steps, chains=CHAINS, likelihood="gaussian", latent_dim=D,
                   generator=seeded(3), backend="torch") for steps in (10, 100)]
    exact = model.exact.mean().item()
    # Both bounds hold in expectation only. At T = 100 the spread of one 16-chain AIS estimate from the prior is
    # ~0.29 nats per example (measured over 5 seeds), ~0.07 for the mean over 8 examples: 0.1 nats is ~1.5 of
    # those standard errors, while the upper bound's own slack (0.43 nats measured) is far larger.
    tolerance = 0.1
    for lower, upper in bounds:
        assert lower.dtype == upper.dtype == torch.float64
        assert lower.mean().item() <= exact + tolerance and upper.mean().item() >= exact - tolerance
    gaps = [(upper - lower).mean().item() for lower, upper in bounds]
    assert gaps[0] > gaps[1] > 0, gaps  # measured 1.08, 0.47


class BernoulliMLP(nn.Module):
    """A small decoder z [..., 4] -> logits [..., 50] with weights scaled up (a sharper, non-Gaussian posterior)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 50)).double()
        with torch.no_grad():
            for parameter in self.net.parameters():
                parameter.mul_(3)

    def forward(self, z):
        return self.net(z)


@pytest.fixture(scope="module")
def bernoulli_model():
    """The decoder, simulated data x [16, 50] and latents z [16, 4], and a random linear encoder's (mu, logvar)."""
    decoder = BernoulliMLP()
    x, z = simulate_data(decoder, 16, 4, generator=seeded(5))
    encoder = nn.Linear(50, 8).double()
    with torch.no_grad():
        mu, logvar = encoder(x).chunk(2, -1)
    return decoder, x, z, mu, logvar


def test_bdmc_gap_shrinks_on_a_bernoulli_mlp(bernoulli_model):
    decoder, x, z, _, _ = bernoulli_model
    gaps = []
    for steps in (10, 30, 100):
        lower, upper = bdmc(x, z, decoder, steps=steps, chains=CHAINS, latent_dim=4, generator=seeded(6),
                            backend="torch")
        gaps.append((upper - lower).mean().item())
    assert gaps[0] > gaps[1] > gaps[2] > 0, gaps  # measured 1.49, 0.25, 0.16


def test_ais_beats_the_iwae_bound_of_the_same_encoder(bernoulli_model):
    decoder, x, _, mu, logvar = bernoulli_model
    ais = ais_log_likelihood(x, decoder, mu=mu, logvar=logvar, steps=100, chains=CHAINS, generator=seeded(6),
                             backend="torch").mean()
    for k in (CHAINS, 256):
        bound = evaluation.log_likelihood(x, mu, logvar, decoder, k=k, generator=seeded(4), backend="torch").mean()
        assert ais > bound, (k, ais, bound)  # measured -28.37 against L_16 = -30.83, L_256 = -28.62


def test_one_step_is_importance_sampling_with_chains_samples(bernoulli_model):
    decoder, x, _, mu, logvar = bernoulli_model
    one_step = ais_log_likelihood(x, decoder, mu=mu, logvar=logvar, steps=1, chains=CHAINS, generator=seeded(7))
    eps = torch.randn((CHAINS,) + tuple(mu.shape), generator=seeded(7), dtype=mu.dtype)  # the same noise
    bound = evaluation.log_likelihood(x, mu, logvar, decoder, k=CHAINS, eps=eps, backend="torch")
    torch.testing.assert_close(one_step, bound)


def test_schedules_run_from_0_to_1():
    for schedule in ("sigmoid", "linear"):
        betas = annealing_schedule(50, schedule)
        assert betas.shape == (51,) and betas[0] == 0 and betas[-1] == 1 and bool((betas.diff() > 0).all())
    assert annealing_schedule(1).tolist() == [0.0, 1.0]
    sigmoid_steps = annealing_schedule(100).diff()
    assert sigmoid_steps[0] < 0.01 < sigmoid_steps[50]  # smaller steps than linear's at the ends, larger mid-way


def test_no_grad_flatten_samples_and_no_parameter_grads(bernoulli_model):
    decoder, x, z, mu, logvar = bernoulli_model
    kwargs = dict(mu=mu, logvar=logvar, steps=5, chains=3, leapfrog=2)
    reference = ais_log_likelihood(x, decoder, generator=seeded(8), **kwargs)
    with torch.no_grad():
        torch.testing.assert_close(ais_log_likelihood(x, decoder, generator=seeded(8), **kwargs), reference)

    def flat_decoder(z):
        assert z.dim() == 2  # [C * B, D]
        return decoder(z)

    flat = ais_log_likelihood(x, flat_decoder, generator=seeded(8), flatten_samples=True, **kwargs)
    torch.testing.assert_close(flat, reference)
    bounds = bdmc(x, z, decoder, generator=seeded(8), **kwargs)
    assert isinstance(bounds, BDMCBounds) and bounds.lower.shape == bounds.upper.shape == (16,)
    assert all(parameter.grad is None for parameter in decoder.parameters())


def test_simulate_data_draws_from_the_model():
    decoder = BernoulliMLP()
    x, z = simulate_data(decoder, 5, 4, generator=seeded(9))
    assert x.shape == (5, 50) and z.shape == (5, 4) and x.dtype == z.dtype == torch.float64
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    flat_x, flat_z = simulate_data(decoder, 5, 4, generator=seeded(9), flatten_samples=True)
    assert torch.equal(flat_x, x) and torch.equal(flat_z, z)
    model = LinearGaussian()
    x, z = simulate_data(model.decoder, 2000, D, likelihood="gaussian", generator=seeded(9), dtype=torch.float64)
    residual = x - model.decoder(z)[0]
    assert abs(residual.var().item() - NOISE_VAR) < 0.02


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(steps=0), ValueError, "steps"),
    (dict(steps=2.5), TypeError, "steps"),
    (dict(chains=0), ValueError, "chains"),
    (dict(leapfrog=True), TypeError, "leapfrog"),
    (dict(step_size=0.0), ValueError, "step_size"),
    (dict(step_size=float("inf")), ValueError, "step_size"),
    (dict(target_acceptance=1.0), ValueError, "target_acceptance"),
    (dict(schedule="cosine"), ValueError, "schedule"),
    (dict(likelihood="poisson"), ValueError, "likelihood"),
    (dict(logvar=None), ValueError, "mu, logvar"),
    (dict(mu=None, logvar=None), ValueError, "latent_dim"),
    (dict(mu=None, logvar=None, latent_dim=0), ValueError, "latent_dim"),
    (dict(latent_dim=4), ValueError, "latent_dim"),
    (dict(mu=torch.zeros(3, 4, dtype=torch.float64), logvar=torch.zeros(3, 4, dtype=torch.float64)), ValueError, "x"),
    (dict(logvar=torch.zeros(2, 3, dtype=torch.float64)), ValueError, "logvar"),
    (dict(generator=0), TypeError, "generator"),
    (dict(decoder=None), TypeError, "decoder"),
    (dict(z=torch.zeros(2, 3, dtype=torch.float64)), ValueError, "z"),
    (dict(z=torch.zeros(2, 4)), TypeError, "z"),
])
def test_bad_arguments_raise_naming_the_argument(kwargs, error, name):
    def decoder(z):
        raise AssertionError("the checks come before any work")

    arguments = dict(x=torch.full((2, 5), 0.5, dtype=torch.float64), z=torch.zeros(2, 4, dtype=torch.float64),
                     decoder=decoder, mu=torch.zeros(2, 4, dtype=torch.float64),
                     logvar=torch.zeros(2, 4, dtype=torch.float64))
    arguments.update(kwargs)
    x, z, decoder = arguments.pop("x"), arguments.pop("z"), arguments.pop("decoder")
    with pytest.raises(error, match=f"^{name}:"):
        bdmc(x, z, decoder, **arguments)
    if "z" not in kwargs:
        with pytest.raises(error, match=f"^{name}:"):
            ais_log_likelihood(x, decoder, **arguments)
