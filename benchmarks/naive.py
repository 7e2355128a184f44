"""The IWAE loss a user writes without iwae_kernels: the baseline every benchmark compares against.

torch.distributions log-probs, binary_cross_entropy_with_logits(reduction="none").sum(-1), torch.logsumexp,
eager autograd, every [k, B, ...] tensor materialized. And AIS as a user writes it (naive_ais_log_likelihood).
"""

import math

import torch
import torch.nn.functional as F
from torch.distributions import Normal


def naive_iwae_loss(x, mu, logvar, decoder, k, eps):
    """-mean_b L_k(x_b) for q = N(mu, exp(logvar)), a standard-normal prior and a Bernoulli decoder.

    x [B, P], mu/logvar [B, D], eps [k, B, D] (the same noise the fused path is given, so both agree).
    """
    return -(torch.logsumexp(naive_log_weights(x, mu, logvar, decoder, eps), 0) - math.log(k)).mean()


def naive_renyi_loss(x, mu, logvar, decoder, k, eps, alpha):
    """-mean_b L_alpha(x_b), the VR-alpha bound (Li & Turner 2016) of the same log-weights as naive_iwae_loss:
    L_alpha = (logsumexp_i((1 - alpha) log w_i) - log k) / (1 - alpha)."""
    log_w = naive_log_weights(x, mu, logvar, decoder, eps)
    return -((torch.logsumexp((1 - alpha) * log_w, 0) - math.log(k)) / (1 - alpha)).mean()


def naive_log_weights(x, mu, logvar, decoder, eps):
    """log w [k, B] = log p(x|z) + log p(z) - log q(z|x) at z = mu + exp(logvar / 2) eps."""
    std = torch.exp(0.5 * logvar)
    z = mu + std * eps                                                   # [k, B, D]
    log_q = Normal(mu, std).log_prob(z).sum(-1)                          # [k, B]
    log_p = Normal(torch.zeros_like(z), torch.ones_like(z)).log_prob(z).sum(-1)
    logits = decoder(z)                                                  # [k, B, P]
    log_lik = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    return log_lik + log_p - log_q


def naive_model_loss(model, x, k):
    """-mean L_k of an iwae_kernels PaperModel (1 or 2 stochastic layers), written the naive way."""
    mu, logvar = model.encoders[0](x).chunk(2, -1)
    std = torch.exp(0.5 * logvar)
    h1 = mu + std * torch.randn((k,) + tuple(mu.shape), device=x.device, dtype=x.dtype)
    log_w = -Normal(mu, std).log_prob(h1).sum(-1)
    if model.stochastic_layers == 1:
        log_w = log_w + Normal(torch.zeros_like(h1), torch.ones_like(h1)).log_prob(h1).sum(-1)
    else:
        mu2, logvar2 = model.encoders[1](h1).chunk(2, -1)
        std2 = torch.exp(0.5 * logvar2)
        h2 = mu2 + std2 * torch.randn_like(mu2)
        prior_mu, prior_logvar = model.priors[0](h2).chunk(2, -1)
        log_w = (log_w + Normal(prior_mu, torch.exp(0.5 * prior_logvar)).log_prob(h1).sum(-1)
                 + Normal(torch.zeros_like(h2), torch.ones_like(h2)).log_prob(h2).sum(-1)
                 - Normal(mu2, std2).log_prob(h2).sum(-1))
    logits = model.decoder(h1)
    log_w = log_w - F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    return -(torch.logsumexp(log_w, 0) - math.log(k)).mean()


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
        logits = decoder(z)
        return prior.log_prob(z).sum(-1) - F.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none").sum(-1)

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
