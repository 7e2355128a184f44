"""The sigmoid belief network (binary latents) and the fixed-sample estimators it trains with: vimco, rws, renyi.

The oracle for the expectations is exact: on a model small enough to enumerate every k-tuple of latent
configurations, E_q[L_k] (and E_q[L_a]) is a finite sum whose autograd gradient is the true gradient of the
objective, for the model's and the recognition network's parameters alike; the estimators' mean gradient over
independent draws must match it (Bonferroni-bounded z-scores, as in test_estimators.py). Log-weights come from
torch.distributions on the same uniform noise. Float64 on the torch backend unless named otherwise.
"""

import itertools

import pytest
import torch
from torch.distributions import Bernoulli

import iwae_kernels as ik
from iwae_kernels.models import SigmoidBeliefNetwork, active_units

from helpers import backend_device
from naive import naive_iwae_bound, naive_renyi_bound
from test_estimators import assert_biased, assert_unbiased, binary_batch, gradient_draws

X_DIM = 3


def small_sbn(latent, seed=0, backend="torch"):
    torch.manual_seed(seed)
    model = SigmoidBeliefNetwork(x_dim=X_DIM, latent=latent, backend=backend).double()
    with torch.no_grad():  # spread the weights so that q is far from uniform and the posterior far from q
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter))
    return model


def reference_log_p_and_q(model, x, samples):
    """(log p(x, h), log q(h|x)) [..., B] from torch.distributions for samples h_l [..., B, latent[l]] (bottom first)."""
    log_q = Bernoulli(logits=model.encoders[0](x)).log_prob(samples[0]).sum(-1)
    for encoder, below, h in zip(model.encoders[1:], samples[:-1], samples[1:]):
        log_q = log_q + Bernoulli(logits=encoder(below)).log_prob(h).sum(-1)
    log_p = Bernoulli(logits=model.prior_logits).log_prob(samples[-1]).sum(-1)
    for prior, below, above in zip(model.priors, samples[:-1], samples[1:]):
        log_p = log_p + Bernoulli(logits=prior(above)).log_prob(below).sum(-1)
    log_p = log_p + Bernoulli(logits=model.decoder(samples[0])).log_prob(x).sum(-1)
    return log_p, log_q


def samples_from_noise(model, x, noise):
    """h_l = 1 where u_l < q(h_l = 1 | h_{l-1}), written out layer by layer."""
    below, samples = x, []
    for encoder, uniform in zip(model.encoders, noise):
        below = (uniform < torch.sigmoid(encoder(below))).double()
        samples.append(below)
    return samples


def fixed_sample_surrogate(log_p, log_q, alpha):
    """L_a of log_p - log q with q live, plus sum_i log q_i stop(L_a - L_a^{-i}), L_a^{-i} the bound with sample i
    replaced by the geometric mean of the others, one i at a time [B]. Its recognition gradient is
    sum_i (L_a - L_a^{-i} - wt^a_i) grad log q_i (VIMCO's at a = 0: TFP's csiszar_vimco form), its model gradient
    L_a's."""
    log_w = (log_p - log_q).detach()
    k = log_w.shape[0]
    baselines = []
    for i in range(k):
        others = torch.cat([log_w[:i], log_w[i + 1:]])
        baselines.append(naive_renyi_bound(torch.cat([others, others.mean(0, keepdim=True)]), alpha))
    signal = naive_renyi_bound(log_w, alpha) - torch.stack(baselines)
    return naive_renyi_bound(log_p - log_q, alpha) + (log_q * signal).sum(0)


ESTIMATOR_CASES = [("vimco", {}), ("rws", {}), ("renyi", dict(renyi_alpha=0.5)), ("renyi", dict(renyi_alpha=-1.0))]


def reference_objective(model, x, samples, estimator, options):
    """The objective whose gradient is the estimator's draw at these samples [B]."""
    log_p, log_q = reference_log_p_and_q(model, x, samples)
    if estimator == "rws":
        log_w = log_p - log_q.detach()
        return naive_iwae_bound(log_w) + (torch.softmax(log_w.detach(), 0) * log_q).sum(0)
    return fixed_sample_surrogate(log_p, log_q, options.get("renyi_alpha", 0.0))


@pytest.mark.parametrize("latent", [(4,), (4, 3), (5, 3, 2)])
def test_log_weights_match_torch_distributions(latent):
    model = small_sbn(latent)
    x = binary_batch(4, X_DIM, 1, torch.device("cpu"))
    noise = model.noise(6, 4)
    log_p, log_q = reference_log_p_and_q(model, x, samples_from_noise(model, x, noise))
    torch.testing.assert_close(model.log_weights(x, 6, noise), log_p - log_q, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("estimator, options", ESTIMATOR_CASES)
@pytest.mark.parametrize("latent", [(4,), (4, 3)])
def test_gradient_equals_its_formula_on_shared_noise(latent, estimator, options):
    """One draw, exactly: the value is L_k (L_a for renyi), the gradient the surrogate's."""
    model = small_sbn(latent)
    x = binary_batch(5, X_DIM, 1, torch.device("cpu"))
    noise = model.noise(6, 5)
    loss = model.loss(x, 6, estimator, noise, **options)
    want_objective = reference_objective(model, x, samples_from_noise(model, x, noise), estimator, options)
    params = list(model.parameters())
    for got, want in zip(torch.autograd.grad(loss, params), torch.autograd.grad(-want_objective.mean(), params)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    log_p, log_q = reference_log_p_and_q(model, x, samples_from_noise(model, x, noise))
    value = naive_renyi_bound(log_p - log_q, options.get("renyi_alpha", 0.0))
    torch.testing.assert_close(loss, -value.mean(), rtol=1e-12, atol=1e-12)


def test_renyi_at_alpha_zero_is_vimco_exactly():
    model = small_sbn((4, 3))
    x = binary_batch(5, X_DIM, 1, torch.device("cpu"))
    noise = model.noise(6, 5)
    params = list(model.parameters())
    renyi = model.loss(x, 6, "renyi", noise, renyi_alpha=0.0)
    vimco = model.loss(x, 6, "vimco", noise)
    assert torch.equal(renyi, vimco)
    for a, b in zip(torch.autograd.grad(renyi, params), torch.autograd.grad(vimco, params)):
        assert torch.equal(a, b)


def enumerated_expectations(model, x, k, alpha=0.0):
    """(E_q[L_a], E_q[sum_i stop(wt_i) log q_i] with the weights of the tuple stopped) [B], summed exactly over
    every k-tuple of latent configurations: the first's gradient is the true gradient of E_q[L_a] (L_k at a = 0),
    the second's on the recognition network the wake-phi expectation."""
    configurations = list(itertools.product((0.0, 1.0), repeat=sum(model.latent)))
    flat = torch.tensor(configurations, dtype=torch.float64)  # [C, sum(latent)]
    batch = x.shape[0]
    samples = [layer.unsqueeze(1).expand(-1, batch, -1) for layer in flat.split(list(model.latent), dim=1)]
    log_p, log_q = reference_log_p_and_q(model, x, samples)  # [C, B]
    tuples = torch.tensor(list(itertools.product(range(len(configurations)), repeat=k))).T  # [k, T]
    log_p, log_q = log_p[tuples], log_q[tuples]  # [k, T, B]
    log_w = log_p - log_q
    probability = torch.exp(log_q.sum(0))  # [T, B]
    bound = naive_renyi_bound(log_w, alpha)
    wake_phi = (torch.softmax(log_w.detach(), 0) * log_q).sum(0)
    return (probability * bound).sum(0), (probability.detach() * wake_phi).sum(0)


def exact_gradient(model, x, k, estimator, options):
    """The gradient of -mean of the estimator's target: E_q[L_k] (vimco), E_q[L_a] (renyi); rws: E_q[L_k]'s for the
    model and the wake-phi expectation's for the recognition network."""
    expected_bound, wake_phi = enumerated_expectations(model, x, k, options.get("renyi_alpha", 0.0))
    named = list(model.named_parameters())
    grads = []
    for name, parameter in named:
        objective = wake_phi if estimator == "rws" and name.startswith("encoders.") else expected_bound
        grads.append(torch.autograd.grad(-objective.mean(), parameter, retain_graph=True)[0].flatten())
    return torch.cat(grads)


def sbn_draws(model, x, k, estimator, options, passes=150, seed=1):
    return gradient_draws(model, lambda: model.loss(x, k, estimator, **options), passes, seed)


@pytest.mark.parametrize("estimator, options", ESTIMATOR_CASES)
@pytest.mark.parametrize("latent", [(2,), (2, 1)])
def test_estimator_is_unbiased_for_its_objective(latent, estimator, options):
    """The mean gradient over independent draws equals the exact gradient of the enumerated objective."""
    model = small_sbn(latent)
    x = binary_batch(2, X_DIM, 1, torch.device("cpu"))
    exact = exact_gradient(model, x, 3, estimator, options)
    assert_unbiased(sbn_draws(model, x.repeat(100, 1), 3, estimator, options), exact.expand(2, -1))


def test_unbiasedness_check_can_fail():
    """Without its score-function term (the recognition network's gradient only through log q in log w, as a
    reparameterization estimator would leave it) the gradient is biased for E_q[L_k], and the check says so."""
    model = small_sbn((2,))
    x = binary_batch(2, X_DIM, 1, torch.device("cpu"))
    exact = exact_gradient(model, x, 3, "vimco", {})

    def loss():
        log_p, log_q = reference_log_p_and_q(model, x.repeat(100, 1), samples_from_noise(model, x.repeat(100, 1),
                                                                                          model.noise(3, 200)))
        return -ik.iwae_bound(log_p - log_q, backend="torch").mean()

    assert_biased(gradient_draws(model, loss, 150, seed=1), exact.expand(2, -1))


@pytest.mark.parametrize("estimator, options", ESTIMATOR_CASES[:3])
def test_triton_equals_torch_on_shared_noise(estimator, options):
    device = backend_device("triton")
    models = {backend: small_sbn((4, 3), backend=backend).to(device) for backend in ("torch", "triton")}
    x = binary_batch(5, X_DIM, 1, device)
    noise = [n.to(device) for n in models["torch"].noise(6, 5)]
    results = {}
    for backend, model in models.items():
        loss = model.loss(x, 6, estimator, noise, **options)
        results[backend] = [loss, *torch.autograd.grad(loss, list(model.parameters()))]
    for got, want in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_log_likelihood_streams_in_chunks():
    """L_k in chunks equals L_k of all the log-weights at once on the same noise, and diagnostics come with it."""
    model = small_sbn((4, 3))
    x = binary_batch(3, X_DIM, 1, torch.device("cpu"))
    noise = model.noise(50, 3)
    whole = ik.iwae_bound(model.log_weights(x, 50, noise), backend="torch").double()
    chunked, diagnostics = model.log_likelihood(x, k=50, chunk=7, eps=noise, diagnostics=True)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    assert diagnostics.ess.shape == (3,) and (diagnostics.ess <= 50).all()
    budgeted = model.log_likelihood(x, k=500, memory_budget=2**20)
    assert budgeted.shape == (3,) and torch.isfinite(budgeted).all()


def test_trains_with_each_estimator():
    torch.manual_seed(0)
    x = (torch.rand(64, 10) < torch.linspace(0.1, 0.9, 10)).double()
    for estimator, options in ESTIMATOR_CASES[:3]:
        model = SigmoidBeliefNetwork(x_dim=10, latent=(8, 4), backend="torch").double()
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-2)
        before = -model.log_likelihood(x, k=200).mean()
        for _ in range(60):
            optimizer.zero_grad()
            model.loss(x, 5, estimator, **options).backward()
            optimizer.step()
        after = -model.log_likelihood(x, k=200).mean()
        assert after < before - 0.5, f"{estimator}: -L_200 went from {before:.3f} to {after:.3f}"
    assert model.sample(4).shape == (4, 10) and model.reconstruct(x[:4]).shape == (4, 10)


@pytest.mark.parametrize("estimator, options, match", [
    ("iwae", {}, "binary"), ("dreg", {}, "binary"), ("vimco", {"k": 1}, "k >= 2"), ("renyi", {"k": 1}, "k >= 2"),
    ("renyi", {"renyi_alpha": 1.0}, "renyi_alpha")])
def test_refuses_what_does_not_hold(estimator, options, match):
    model = small_sbn((4,))
    x = binary_batch(2, X_DIM, 1, torch.device("cpu"))
    options = dict(options)
    k = options.pop("k", 4)
    with pytest.raises(ValueError, match=match):
        model.loss(x, k, estimator, **({"renyi_alpha": 0.5} if estimator == "renyi" else {}) | options)


def test_refuses_bad_noise_and_inputs():
    model = small_sbn((4, 3))
    x = binary_batch(2, X_DIM, 1, torch.device("cpu"))
    with pytest.raises(ValueError, match="noise: expected a list of 2"):
        model.log_weights(x, 4, noise=model.noise(4, 2)[:1])
    with pytest.raises(ValueError, match=r"noise\[1\]"):
        model.log_weights(x, 4, noise=[model.noise(4, 2)[0], torch.rand(4, 2, 5, dtype=torch.float64)])
    with pytest.raises(ValueError, match="x"):
        model.log_weights(x[:, :2], 4)
    with pytest.raises(ValueError, match="latent"):
        SigmoidBeliefNetwork(latent=(3, 3, 3, 3))


def test_active_units_count_binary_units_whose_posterior_mean_varies():
    model = small_sbn((4, 3))
    x = binary_batch(300, X_DIM, 1, torch.device("cpu"))
    with torch.no_grad():
        model.encoders[0].weight[0].zero_()  # q(h_1[0] = 1 | x) no longer depends on x
    counts, activity = active_units(model, x)
    assert activity[0][0] == 0 and len(counts) == 2 and activity[1].shape == (3,)
    assert counts == [int((a > 1e-2).sum()) for a in activity] and (activity[0][1:] > 0).all() and counts[0] <= 3
