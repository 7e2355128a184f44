"""Layers built on the kernels: a variational-dropout linear layer with the local reparameterization trick."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import functional

# Molchanov, Ashukha & Vetrov (2017), Eq. 14: -KL(q || log-uniform prior) ~ k1 sigmoid(k2 + k3 log alpha)
# - 0.5 log1p(1 / alpha) - k1, accurate for every alpha (Kingma et al. 2015's polynomial holds for alpha <= 1).
KL_K1, KL_K2, KL_K3 = 0.63576, 1.87320, 1.48695


class LocalReparamLinear(nn.Module):
    """A linear layer with factorized Gaussian weights W ~ N(mu, sigma^2) (Kingma, Salimans & Welling 2015).

    Training: pre-activations sampled by the local reparameterization trick, independent noise per input row
    (one fused kernel on the compiled backends). Eval: the mean weights. ``kl()`` is the variational-dropout KL
    to the log-uniform prior, to add to the loss divided by the training-set size. input [..., in] -> [..., out].
    """

    def __init__(self, in_features, out_features, bias=True, init_log_sigma2=-10.0, backend=None):
        super().__init__()
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight_mu, a=math.sqrt(5))
        self.weight_log_sigma2 = nn.Parameter(torch.full((out_features, in_features), init_log_sigma2))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.backend = backend

    def forward(self, input, noise=None):
        if not self.training:
            return F.linear(input, self.weight_mu, self.bias)
        return functional.local_reparam_linear(
            input,
            self.weight_mu,
            torch.exp(self.weight_log_sigma2),
            bias=self.bias,
            noise=noise,
            backend=self.backend,
        )

    def log_alpha(self):
        """log(sigma^2 / mu^2) per weight [out, in], clamped to [-10, 10] as in sparse variational dropout."""
        return (self.weight_log_sigma2 - torch.log(self.weight_mu**2 + 1e-8)).clamp(-10, 10)

    def kl(self):
        """KL(q(W) || log-uniform prior) summed over the weights (Molchanov et al.'s approximation)."""
        log_alpha = self.log_alpha()
        return -(KL_K1 * torch.sigmoid(KL_K2 + KL_K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - KL_K1).sum()
