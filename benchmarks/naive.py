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
