"""Normalizing-flow posteriors (Rezende & Mohamed 2015) on the fused sampling kernel.

q0 = N(mu, diag exp(logvar)) is sampled by ``gaussian_sample(..., include_prior=False)``, which returns z0 and
-log q0(z0) in one pass; K flows map z0 to z_K and add their log|det J|. The log-weight is then
log p(x|z_K) + log p(z_K) - log q0(z0) + sum_t log|det J_t|. Flows act on the last dim of [k, B, D] tensors.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .. import _checks, functional
from .base import LogWeightModel
from ..contract import LOG_2PI
from ..estimators import ESTIMATORS, NO_FLOW_ESTIMATORS, ROUTED_ESTIMATORS, check_estimator_options, sampling_estimator

# What FlowIWAE.loss takes: every estimator with a reparameterization path through the flow (``flow_latent``).
FLOW_ESTIMATORS = tuple(e for e in ESTIMATORS if e not in NO_FLOW_ESTIMATORS)


class PlanarFlow(nn.Module):
    """f(z) = z + u_hat tanh(w.z + b), log|det J| = log|1 + u_hat.psi(z)|, psi = (1 - tanh^2(w.z + b)) w.

    u_hat = u + (m(w.u) - w.u) w / |w|^2 with m(a) = -1 + softplus(a) keeps w.u_hat >= -1, so f is invertible.
    """

    def __init__(self, dim):
        super().__init__()
        self.u = nn.Parameter(0.01 * torch.randn(dim))
        self.w = nn.Parameter(0.01 * torch.randn(dim))
        self.b = nn.Parameter(torch.zeros(()))

    def u_hat(self):
        wu = self.w @ self.u
        return self.u + (F.softplus(wu) - 1 - wu) * self.w / (self.w @ self.w)

    def forward(self, z):
        """z [..., D] -> (f(z) [..., D], log|det J| [...])."""
        u_hat = self.u_hat()
        activation = torch.tanh(z @ self.w + self.b)
        psi_u = (1 - activation**2) * (self.w @ u_hat)
        return z + activation.unsqueeze(-1) * u_hat, torch.log(torch.abs(1 + psi_u))


class RadialFlow(nn.Module):
    """f(z) = z + beta h(r) (z - z0), h = 1 / (alpha + r), r = |z - z0|; alpha > 0 and beta >= -alpha keep it
    invertible. log|det J| = (D - 1) log(1 + beta h) + log(1 + beta h + beta h'(r) r)."""

    def __init__(self, dim):
        super().__init__()
        self.z0 = nn.Parameter(0.01 * torch.randn(dim))
        self.alpha_raw = nn.Parameter(torch.zeros(()))
        self.beta_raw = nn.Parameter(torch.zeros(()))

    def forward(self, z):
        """z [..., D] -> (f(z) [..., D], log|det J| [...])."""
        alpha = F.softplus(self.alpha_raw)
        beta = -alpha + F.softplus(self.beta_raw)
        diff = z - self.z0
        r = diff.norm(dim=-1)
        h = 1 / (alpha + r)
        beta_h = beta * h
        log_det = (z.shape[-1] - 1) * torch.log1p(beta_h) + torch.log1p(beta_h - beta * h * h * r)
        return z + beta_h.unsqueeze(-1) * diff, log_det


class Flow(nn.Sequential):
    """Flows applied in order: z [..., D] -> (z_K, sum of log|det J| [...])."""

    def forward(self, z):
        total = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        for flow in self:
            z, log_det = flow(z)
            total = total + log_det
        return z, total


def make_flow(kind, dim, length):
    """``length`` planar or radial flows on a D = ``dim`` latent."""
    layer = {"planar": PlanarFlow, "radial": RadialFlow}[kind]
    return Flow(*[layer(dim) for _ in range(length)])


def standard_normal_log_prob(z):
    """log N(z; 0, I) summed over the last dim."""
    return -0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI


def flow_latent(mu, logvar, k, flow, eps=None, estimator="iwae", backend=None):
    """z_K [k, B, D] and its latent log-weight log p(z_K) - log q0(z0) + sum log|det J| [k, B].

    estimator: "iwae" (and "vae", "iwae-resample", "miwae", "ciwae", "renyi", "piwae": the exact derivative; form their
    objective with ``functional.estimator_bound``) or "stl" (unbiased at k = 1, biased above, as without a flow).
    "dreg" and "rws-dreg" are refused: their stop-gradient would have to cover the flow's parameters inside
    log|det J| and weight their path terms by wt^2, which this composition does not do; "rws" and "vimco" too: their
    encoder gradient needs log q(z_K|x) at a fixed z_K, which needs the flow's inverse.
    """
    if estimator in NO_FLOW_ESTIMATORS:
        raise ValueError(f"estimator: {estimator!r} is not supported with a flow posterior (the flow's parameters are "
                         "variational parameters the sampling kernel cannot stop, and a planar flow has no "
                         "closed-form inverse for log q(z_K|x) at fixed z_K); use 'iwae'")
    z0, neg_log_q0 = functional.gaussian_sample(mu, logvar, k, eps=eps, estimator=sampling_estimator(estimator),
                                                include_prior=False, backend=backend)
    z, log_det = flow(z0)
    return z, standard_normal_log_prob(z) + neg_log_q0 + log_det


class FlowIWAE(LogWeightModel):
    """An MLP IWAE whose posterior is q0 followed by planar or radial flows; Bernoulli decoder.

    x [B, x_dim] -> loss / bound / log_likelihood like ``models.PaperModel``; its estimators are FLOW_ESTIMATORS.
    """

    def __init__(self, x_dim=784, hidden=200, latent=20, flow="planar", length=4, backend=None):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(x_dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, x_dim))
        self.flow = make_flow(flow, latent, length)
        self.latent = latent
        self.backend = backend

    def log_weights(self, x, k, eps=None, estimator="iwae"):
        """log w [k, B] for k samples (eps: their noise [k, B, latent]), with ``estimator``'s sampling gradient."""
        return self._log_weights(x, *self._flow_latent(x, k, eps, estimator=estimator))

    def _flow_latent(self, x, k, eps, *, estimator):
        mu, logvar = self.encoder(x).chunk(2, -1)
        return flow_latent(mu, logvar, k, flow=self.flow, eps=eps, estimator=estimator, backend=self.backend)

    def _log_weights(self, x, z, latent):
        return functional.bernoulli_log_likelihood(self.decoder(z), x, backend=self.backend) + latent

    def bound(self, x, k=5, estimator="iwae", eps=None, groups=None, ciwae_beta=None, renyi_alpha=None):
        """Per-example objective [B] whose gradient is the estimator's (``functional.estimator_bound``): L_k, the
        ELBO for "vae", MIWAE's bound for "miwae" (``groups`` M: k = M * K), CIWAE's for "ciwae" (``ciwae_beta``),
        the Renyi bound L_a for "renyi" (``renyi_alpha`` a).
        eps: optional noise [k, B, latent] that fixes the samples."""
        _checks.check_choice("estimator", estimator, ESTIMATORS)  # flow_latent refuses NO_FLOW_ESTIMATORS, saying why
        groups, ciwae_beta, renyi_alpha = check_estimator_options(
            estimator,
            k,
            groups=groups,
            ciwae_beta=ciwae_beta,
            renyi_alpha=renyi_alpha,
        )
        if estimator == "iwae-resample":
            if eps is None:
                weight = self.decoder[0].weight
                eps = torch.randn(k, x.shape[0], self.latent, device=weight.device, dtype=weight.dtype)
            return functional.resampled_iwae_bound(lambda noise: self.log_weights(x, noise[0].shape[0], noise[0]),
                                                   [eps], backend=self.backend)
        z, latent = self._flow_latent(x, k, eps, estimator=estimator)
        log_w = self._log_weights(x, z, latent)
        # piwae's model gradient: the same samples with the encoder and flow stopped, through the decoder again.
        fixed = self._log_weights(x, z.detach(), latent.detach()) if estimator in ROUTED_ESTIMATORS else None
        return functional.estimator_bound(log_w, estimator, log_w_fixed=fixed, groups=groups, ciwae_beta=ciwae_beta,
                                          renyi_alpha=renyi_alpha, backend=self.backend)

    def loss(self, x, k=5, estimator="iwae", eps=None, groups=None, ciwae_beta=None, renyi_alpha=None):
        """The training loss: -bound averaged over the batch x [B, x_dim] (a scalar); arguments as in ``bound``."""
        objective = self.bound(
            x,
            k,
            estimator,
            eps=eps,
            groups=groups,
            ciwae_beta=ciwae_beta,
            renyi_alpha=renyi_alpha,
        )
        return -objective.mean()
