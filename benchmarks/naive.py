"""The naive references, one per op family: the IWAE loss a user writes without iwae_kernels.

torch.distributions log-probs, binary_cross_entropy_with_logits(reduction="none").sum(-1), torch.logsumexp, eager
autograd, every [k, B, ...] tensor materialized. The one home of these formulas (as fla keeps one naive.py per op
family): the benchmarks' baselines run them, and the tests' float64 oracles import them (pytest puts benchmarks/ on
sys.path, pyproject.toml). Nothing here imports iwae_kernels, so the oracles stay independent of the library's torch
backend.
"""

import math

import torch
import torch.nn.functional as F
from torch.distributions import Categorical, Normal

# --- gaussian_sample: the reparameterized sample and the latent term log p(z) - log q(z|x) ---


def naive_latent(mu, logvar, eps, prior_mu=None, prior_logvar=None, detach_q=False, include_prior=True):
    """z = mu + exp(logvar / 2) eps and log p(z) - log q(z|x) [k, B] (summed over D), from torch.distributions.

    The prior is N(0, I), or N(prior_mu, exp(prior_logvar)) when given; include_prior=False drops it (the term is
    then -log q(z|x), as for flows). detach_q stops q's parameters inside log q (stl, dreg), z staying live.
    """
    sigma = torch.exp(0.5 * logvar)
    z = mu + sigma * eps
    q = Normal(mu.detach(), sigma.detach()) if detach_q else Normal(mu, sigma)
    if not include_prior:
        return z, -q.log_prob(z).sum(-1)
    prior = (Normal(torch.zeros_like(mu), torch.ones_like(mu)) if prior_mu is None
             else Normal(prior_mu, torch.exp(0.5 * prior_logvar)))
    return z, (prior.log_prob(z) - q.log_prob(z)).sum(-1)


# --- log_likelihood, decoder_head, decoder_mlp, categorical: log p(x|z) summed over the event ---


def naive_bernoulli(logits, x):
    """log Bernoulli(x; sigmoid(logits)) summed over the last dim: logits [k, B, P], x [B, P] in [0, 1]."""
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)


def naive_gaussian(mean, logvar, x):
    """log N(x; mean, exp(logvar)) summed over the last dim, mean/logvar and x broadcast against each other (a
    likelihood: mean [k, B, P], x [B, P]; a posterior's log q: mean [B, D], x = z [k, B, D])."""
    return Normal(mean, torch.exp(0.5 * logvar)).log_prob(x).sum(-1)


def naive_categorical(logits, tokens, mask=None):
    """log Cat(tokens; softmax(logits)) summed over the steps, masked positions (mask 0) left out: logits
    [k, B, T, V], tokens [B, T] (int64), mask None or [B, T]."""
    log_p = Categorical(logits=logits).log_prob(tokens.expand(logits.shape[:-1]))
    return (log_p if mask is None else log_p * mask).sum(-1)


# --- local_reparam: Kingma, Salimans & Welling 2015's pre-activations ---


def naive_local_reparam_linear(a, mu, var, noise, bias=None):
    """b = a mu^T (+ bias) + sqrt((a * a) var^T) noise: a sample of x W^T + bias for W ~ N(mu, var), per row."""
    mean = a @ mu.T if bias is None else a @ mu.T + bias
    return mean + ((a * a) @ var.T).sqrt() * noise


# --- logsumexp: the IWAE and Renyi bounds of the log-weights, and the losses built on them ---


def naive_iwae_bound(log_w):
    """L_k [B] = logsumexp_i log w_i - log k, for log_w [k, B]."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def naive_renyi_bound(log_w, alpha):
    """L_alpha [B] = (logsumexp_i((1 - alpha) log w_i) - log k) / (1 - alpha), the VR-alpha bound (Li & Turner 2016,
    Eq. 7), for log_w [k, B]."""
    return (torch.logsumexp((1 - alpha) * log_w, 0) - math.log(log_w.shape[0])) / (1 - alpha)


def naive_log_weights(x, mu, logvar, decoder, eps):
    """log w [k, B] = log p(x|z) + log p(z) - log q(z|x) at z = mu + exp(logvar / 2) eps: q = N(mu, exp(logvar)),
    a standard-normal prior and a Bernoulli decoder (logits = decoder(z) [k, B, P])."""
    z, latent = naive_latent(mu, logvar, eps)
    return naive_bernoulli(decoder(z), x) + latent


def naive_iwae_loss(x, mu, logvar, decoder, k, eps):
    """-mean_b L_k(x_b) of naive_log_weights.

    x [B, P], mu/logvar [B, D], eps [k, B, D] (the same noise the fused path is given, so both agree).
    """
    return -naive_iwae_bound(naive_log_weights(x, mu, logvar, decoder, eps)).mean()


def naive_renyi_loss(x, mu, logvar, decoder, k, eps, alpha):
    """-mean_b L_alpha(x_b), the VR-alpha bound of the same log-weights as naive_iwae_loss."""
    return -naive_renyi_bound(naive_log_weights(x, mu, logvar, decoder, eps), alpha).mean()


# --- iwae_loss's estimators: the objectives whose autograd gives each estimator's gradient ---


def naive_estimator_objective(mu, logvar, eps, weight, x, example_weights, estimator, prior_mu=None, prior_logvar=None):
    """(encoder surrogate, model objective) for a linear Bernoulli decoder z @ weight: autograd of the first gives
    the estimator's dmu, dlogvar (docs/MATH.md); of the second, the gradient every estimator gives the prior and
    decoder (plain IWAE, or the ELBO for vae). example_weights [B] weight (and sign) each example's objective."""
    z, latent = naive_latent(mu, logvar, eps, prior_mu, prior_logvar)
    log_w = naive_bernoulli(z @ weight, x) + latent
    model = log_w.mean(0) if estimator == "vae" else naive_iwae_bound(log_w)
    model = (example_weights * model).sum()
    if estimator in ("iwae", "vae"):
        return model, model
    z, latent = naive_latent(mu, logvar, eps, prior_mu, prior_logvar, detach_q=True)
    path_log_w = naive_bernoulli(z @ weight, x) + latent
    wt = torch.softmax(log_w.detach(), 0)
    power = 1 if estimator == "stl" else 2  # dreg weights each sample's path gradient by wt_i^2 (Tucker et al.)
    surrogate = (example_weights * (wt**power * path_log_w).sum(0)).sum()
    return surrogate, model


# --- models.paper: the paper's 1- and 2-stochastic-layer model ---


def naive_paper_log_weights(model, x, noise):
    """log w [k, B] of an iwae_kernels PaperModel, written from its definition with the model's own layers: noise
    [eps1 [k, B, D1]] or [eps1, eps2 [k, B, D2]]. Two layers: log p(x|h1) + log p(h1|h2) + log p(h2) - log q(h1|x)
    - log q(h2|h1)."""
    mu, logvar = model.encoders[0](x).chunk(2, -1)
    two_layers = model.stochastic_layers == 2
    h1, latent = naive_latent(mu, logvar, noise[0], include_prior=not two_layers)
    if two_layers:
        mu2, logvar2 = model.encoders[1](h1).chunk(2, -1)
        h2, latent2 = naive_latent(mu2, logvar2, noise[1])
        prior_mu, prior_logvar = model.priors[0](h2).chunk(2, -1)
        latent = latent + naive_gaussian(prior_mu, prior_logvar, h1) + latent2
    return naive_bernoulli(model.decoder(h1), x) + latent


def naive_model_loss(model, x, k):
    """-mean L_k of an iwae_kernels PaperModel (1 or 2 stochastic layers), written the naive way: fresh noise from
    torch's generator, layer by layer."""
    noise = [torch.randn((k, x.shape[0], size), device=x.device, dtype=x.dtype) for size in model.latent]
    return -naive_iwae_bound(naive_paper_log_weights(model, x, noise)).mean()


# --- ais: annealed importance sampling ---


def naive_ais_log_likelihood(x, mu, logvar, decoder, *, steps, chains, leapfrog=10, step_size=0.05,
                             target_acceptance=0.65):
    """AIS log p(x) [B] as a user writes it: q = N(mu, exp(logvar)) annealed to p(z) p(x|z) (standard-normal prior,
    Bernoulli decoder) along the sigmoid schedule (delta = 4), one batch of ``chains`` chains [chains, B, D], HMC
    with ``leapfrog`` steps and per-chain step sizes adapted as iwae_kernels.ais does; torch.distributions
    log-probs, every log f recomputed where it is needed.
    """
    q = Normal(mu, torch.exp(0.5 * logvar))
    prior = Normal(torch.zeros_like(mu), torch.ones_like(mu))

    def log_joint(z):  # log p(z) + log p(x|z)
        return prior.log_prob(z).sum(-1) + naive_bernoulli(decoder(z), x)

    def log_f(z, beta):
        return (1 - beta) * q.log_prob(z).sum(-1) + beta * log_joint(z)

    def grad_log_f(z, beta):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            return torch.autograd.grad(log_f(z, beta).sum(), z)[0]

    fraction = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    s = torch.sigmoid(4 * (2 * fraction - 1))
    betas = ((s - s[0]) / (s[-1] - s[0])).tolist()
    z = q.sample((chains,))
    step = torch.full((chains, mu.shape[0], 1), step_size, dtype=mu.dtype, device=mu.device)
    log_w = torch.zeros((chains, mu.shape[0]), dtype=torch.float64, device=mu.device)
    with torch.no_grad():
        for t in range(1, steps + 1):
            log_w += (betas[t] - betas[t - 1]) * (log_joint(z) - q.log_prob(z).sum(-1)).double()
            if t == steps:
                break
            momentum = torch.randn_like(z)
            proposal = z
            velocity = momentum + 0.5 * step * grad_log_f(proposal, betas[t])
            for index in range(leapfrog):
                proposal = proposal + step * velocity
                kick = step if index < leapfrog - 1 else 0.5 * step
                velocity = velocity + kick * grad_log_f(proposal, betas[t])
            log_accept = (log_f(proposal, betas[t]) - 0.5 * (velocity ** 2).sum(-1)
                          - log_f(z, betas[t]) + 0.5 * (momentum ** 2).sum(-1))
            accepted = torch.rand_like(log_accept).log() < log_accept
            z = torch.where(accepted.unsqueeze(-1), proposal, z)
            step = (step * torch.exp(0.05 * (accepted.unsqueeze(-1).to(step.dtype) - target_acceptance))).clamp(1e-4, 1.0)
    return torch.logsumexp(log_w, 0) - math.log(chains)
