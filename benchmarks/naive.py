"""The IWAE loss a user writes without iwae_kernels: the baseline every benchmark compares against.

torch.distributions log-probs, binary_cross_entropy_with_logits(reduction="none").sum(-1), torch.logsumexp,
eager autograd, every [k, B, ...] tensor materialized.
"""

import math

import torch
import torch.nn.functional as F
from torch.distributions import Normal


def naive_iwae_loss(x, mu, logvar, decoder, k, eps):
    """-mean_b L_k(x_b) for q = N(mu, exp(logvar)), a standard-normal prior and a Bernoulli decoder.

    x [B, P], mu/logvar [B, D], eps [k, B, D] (the same noise the fused path is given, so both agree).
    """
    std = torch.exp(0.5 * logvar)
    z = mu + std * eps                                                   # [k, B, D]
    log_q = Normal(mu, std).log_prob(z).sum(-1)                          # [k, B]
    log_p = Normal(torch.zeros_like(z), torch.ones_like(z)).log_prob(z).sum(-1)
    logits = decoder(z)                                                  # [k, B, P]
    log_lik = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    log_w = log_lik + log_p - log_q
    return -(torch.logsumexp(log_w, 0) - math.log(k)).mean()


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
