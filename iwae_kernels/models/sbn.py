"""A sigmoid belief network with a recognition network: the Helmholtz machine (Dayan et al. 1995) as reweighted
wake-sleep (Bornschein & Bengio 2015) and VIMCO (Mnih & Rezende 2016) train it.

Layers of binary stochastic units h_1 .. h_L (bottom first), each an affine map of the layer above into Bernoulli
logits: p(h_L) = Bernoulli(sigmoid(b)), p(h_l | h_{l+1}), p(x | h_1); the recognition network mirrors it bottom-up,
q(h_1 | x), q(h_l | h_{l-1}). The log-weight of a sample is log p(x, h) - log q(h | x).

Binary latents have no reparameterization path, so the estimators are the fixed-sample ones: the samples are drawn
without gradient, the model gets the objective's gradient from the log-weights, the recognition network a
score-function gradient through log q at the samples (``iwae_kernels.estimators``): "vimco" (L_k's), "rws"
(wake-phi) and "renyi" (L_a's, with VIMCO's leave-one-out baselines). Sampling is plain torch; the observation
likelihood, the bound and the estimator's weights run on the library's ops.
"""

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as torch_F

from .. import _checks
from .. import functional as F
from ..estimators import check_estimator_options
from .base import LogWeightModel

# The estimators whose gradient needs no reparameterization path (the others would leave q's gradient wrong).
SBN_ESTIMATORS = ("vimco", "rws", "renyi")


def bernoulli_log_prob(logits: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """sum_j log Bernoulli(h_j; sigmoid(logits_j)) over the last dim: [..., D] -> [...]; logits broadcast to h."""
    return -torch_F.binary_cross_entropy_with_logits(logits.expand_as(h), h, reduction="none").sum(-1)


class SigmoidBeliefNetwork(LogWeightModel):
    """A sigmoid belief network of one to three binary stochastic layers with a Bernoulli recognition network.

    Args:
        x_dim: observation size P (binary or in [0, 1]).
        latent: per stochastic layer, its number of binary units (bottom first); Mnih & Rezende's MNIST models are
            (200,), (200, 200) and (200, 200, 200).
        backend: kernel backend for the fused ops (None: by device, see ``iwae_kernels.backend``).

    ``loss``/``bound`` take estimator "vimco" (default), "rws" or "renyi" (``renyi_alpha``); ``log_likelihood``
    (L_k in chunks sized by a memory budget) comes from ``LogWeightModel``.

    Examples::

        >>> import torch
        >>> from iwae_kernels.models import SigmoidBeliefNetwork
        >>> _ = torch.manual_seed(0)
        >>> model = SigmoidBeliefNetwork(x_dim=6, latent=(4, 3))  # two binary stochastic layers
        >>> x = torch.rand(5, 6).round()  # B = 5 binary images of P = 6 pixels
        >>> model.loss(x, k=4).backward()  # vimco: -L_4 averaged over the batch
        >>> model.bound(x, k=4, estimator="renyi", renyi_alpha=0.5).shape
        torch.Size([5])
        >>> model.log_likelihood(x, k=100, chunk=50).shape, model.sample(2).shape
        (torch.Size([5]), torch.Size([2, 6]))
    """

    def __init__(self, x_dim: int = 784, latent: Sequence[int] = (200,), backend: str | None = None) -> None:
        super().__init__()
        if not 1 <= len(latent) <= 3 or any(int(size) != size or size < 1 for size in latent):
            raise ValueError(f"latent: expected one to three positive layer sizes, got {latent!r}")
        self.x_dim, self.latent, self.backend = x_dim, tuple(latent), backend
        below = (x_dim,) + self.latent[:-1]
        self.encoders = nn.ModuleList(nn.Linear(below[l], size) for l, size in enumerate(self.latent))
        self.priors = nn.ModuleList(nn.Linear(self.latent[l + 1], self.latent[l]) for l in range(len(latent) - 1))
        self.decoder = nn.Linear(self.latent[0], x_dim)
        self.prior_logits = nn.Parameter(torch.zeros(self.latent[-1]))

    @property
    def stochastic_layers(self) -> int:
        return len(self.latent)

    def noise(self, k: int, batch: int, device: F.Device = None,
              dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """Uniform noise [k, batch, latent[l]] per stochastic layer (bottom first): it fixes the samples,
        h_l = 1 where u_l < q(h_l = 1 | h_{l-1})."""
        like = self.decoder.weight
        return [torch.rand(k, batch, size, device=device or like.device, dtype=dtype or like.dtype)
                for size in self.latent]

    @torch.no_grad()
    def posterior_means(self, x: torch.Tensor, samples: int = 10) -> list[torch.Tensor]:
        """E_q[h_l | x] [B, latent[l]] per stochastic layer: q(h_1 = 1 | x), and for the layers above the mean of
        q(h_l = 1 | h_{l-1}) over ``samples`` ancestral draws (``active_units``)."""
        probability = torch.sigmoid(self.encoders[0](x))
        means, h = [probability], torch.bernoulli(probability.expand(samples, -1, -1))
        for encoder in self.encoders[1:]:
            probability = torch.sigmoid(encoder(h))
            means.append(probability.mean(0))
            h = torch.bernoulli(probability)
        return means

    def log_weights(self, x: torch.Tensor, k: int, noise: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """log w [k, B] for k samples of x [B, x_dim] from the stopped recognition network: its gradient is the
        model's only. noise: optional ``noise(k, B)``, which fixes the samples; drawn when None."""
        return self._log_weights(x, k, noise)[0]

    def _log_weights(self, x, k, noise):
        """(log w [k, B] with the recognition network stopped, log q(h|x) [k, B] with it live) at k samples."""
        _checks.check_tensor("x", x, (2,), like=("the model's parameters", self.decoder.weight))
        _checks.check_shape("x", x, (x.shape[0], self.x_dim))
        batch = x.shape[0]
        if noise is None:
            noise = self.noise(k, batch)
        self._check_noise(noise, k, batch)
        below, samples, log_q = x, [], 0
        for encoder, uniform in zip(self.encoders, noise):
            logits = encoder(below)  # [B, D] for the first layer, [k, B, D] above it
            h = (uniform < torch.sigmoid(logits.detach())).to(uniform.dtype)
            log_q = log_q + bernoulli_log_prob(logits, h)
            samples.append(h)
            below = h
        log_p = bernoulli_log_prob(self.prior_logits, samples[-1])
        for prior, h_below, h_above in zip(self.priors, samples[:-1], samples[1:]):
            log_p = log_p + bernoulli_log_prob(prior(h_above), h_below)
        log_p = log_p + F.bernoulli_log_likelihood(self.decoder(samples[0]), x, backend=self.backend)
        return log_p - log_q.detach(), log_q

    def _check_noise(self, noise, k, batch):
        if not isinstance(noise, (list, tuple)) or len(noise) != self.stochastic_layers:
            raise ValueError(f"noise: expected a list of {self.stochastic_layers} tensors (one per stochastic layer)")
        for layer, (uniform, size) in enumerate(zip(noise, self.latent)):
            _checks.check_tensor(f"noise[{layer}]", uniform, (3,), like=("the model's parameters", self.decoder.weight))
            _checks.check_shape(f"noise[{layer}]", uniform, (k, batch, size))

    def chunk_log_weights(self, x: torch.Tensor, k: int,  # type: ignore[override]
                          eps: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """``log_weights(x, k, noise=eps)``: this model's noise is one uniform tensor per stochastic layer."""
        return self.log_weights(x, k, noise=eps)

    def bound(self, x: torch.Tensor, k: int = 50, estimator: str = "vimco", noise: Sequence[torch.Tensor] | None = None,
              renyi_alpha: float | None = None) -> torch.Tensor:
        """Per-example objective [B] whose gradient is the estimator's: L_k for "vimco" and "rws", the Renyi bound
        L_a for "renyi" (``renyi_alpha`` a); k >= 2 for vimco and renyi. noise: as in ``log_weights``."""
        if estimator not in SBN_ESTIMATORS:
            raise ValueError(f"estimator: the sigmoid belief network's latents are binary (no reparameterization "
                             f"path), so it takes one of {SBN_ESTIMATORS}, got {estimator!r}")
        _, _, renyi_alpha = check_estimator_options(estimator, k, renyi_alpha=renyi_alpha)
        log_w, log_q = self._log_weights(x, k, noise)
        return F.estimator_bound(log_w, estimator, log_q=log_q, renyi_alpha=renyi_alpha, backend=self.backend)

    def loss(self, x: torch.Tensor, k: int = 50, estimator: str = "vimco",  # type: ignore[override]
             noise: Sequence[torch.Tensor] | None = None, renyi_alpha: float | None = None) -> torch.Tensor:
        """The training loss: -bound averaged over the batch x [B, x_dim] (a scalar)."""
        return -self.bound(x, k, estimator, noise=noise, renyi_alpha=renyi_alpha).mean()

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """n draws from the model: Bernoulli means [n, x_dim] given ancestral samples of the latents."""
        h = torch.bernoulli(torch.sigmoid(self.prior_logits).expand(n, -1))
        for prior in reversed(self.priors):
            h = torch.bernoulli(torch.sigmoid(prior(h)))
        return torch.sigmoid(self.decoder(h))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Bernoulli means [B, x_dim] decoded from one sample of q(h_1|x)."""
        return torch.sigmoid(self.decoder(torch.bernoulli(torch.sigmoid(self.encoders[0](x)))))
