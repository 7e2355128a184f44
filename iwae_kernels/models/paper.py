"""The paper's MLP models (Burda et al. 2015, Sec. 5.1 and Appendix C) on the fused ops.

One stochastic layer: x -> 200 -> 200 -> h1 (50) and back, tanh. Two stochastic layers: x -> 200 -> 200 -> h1
(100) -> 100 -> 100 -> h2 (50), with p(h1|h2) through 100 -> 100 and p(x|h1) through 200 -> 200. Diagonal
Gaussian latents with exp variances, Bernoulli output, Glorot init.

The log-weight of a sample is log p(x|h1) + sum_l [log p(h_l|h_{l+1}) - log q(h_l|h_{l-1})], the top prior
standard normal. Each latent term comes from ``gaussian_sample``: q(h2|h1) has per-sample [k, B, D]
parameters, and log p(h1|h2) uses the kernel's diagonal-prior path. Because that prior needs h2, which needs
h1, layer 1's noise is drawn first and handed to the kernel as ``eps``.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .. import _checks
from .. import functional as F
from ..estimators import (FIXED_SAMPLE_ESTIMATORS, PATH_ESTIMATORS, ROUTED_ESTIMATORS, check_estimator_options,
                          sampling_estimator, wake_phi_term)
from .base import LogWeightModel, gaussian, mlp

PAPER_SIZES: dict[int, dict[str, Any]] = {
    1: {"hidden": ((200, 200),), "latent": (50,)},
    2: {"hidden": ((200, 200), (100, 100)), "latent": (100, 50)},
}


class PaperModel(LogWeightModel):
    """An IWAE/VAE with one or two diagonal-Gaussian stochastic layers and a Bernoulli observation model.

    Args:
        x_dim: observation size P.
        hidden: per stochastic layer, the deterministic hidden sizes between it and the layer below.
        latent: per stochastic layer, its size (bottom first).
        backend: kernel backend for the fused ops (None: by device, see ``iwae_kernels.backend``).
        fused_head: True: the decoder's output layer and the Bernoulli likelihood as one op that never stores
            the [k, B, x_dim] logits (bernoulli_decoder_log_likelihood). False (default): the nn.Linear forms
            the logits (cuBLAS) and bernoulli_log_likelihood reduces them. docs/RESULTS.md has both timed per
            device.
        fused_mlp: True: without autograd (``log_likelihood``, evaluation) the whole decoder and the likelihood run
            as one op, bernoulli_mlp_decoder_log_likelihood: one kernel per chunk of samples on the compiled
            backends, with no [k, B, H] activations or logits in memory, so a chunk holds far more samples
            (``eval_chunk``: all 5000 of 100 images in one launch for the 1-layer model). It needs the paper's
            decoder (two tanh hidden layers). Off by default; docs/RESULTS.md has it timed against the layers
            (benchmarks/bench_eval.py). Training is unchanged.

    ``log_likelihood`` (the paper's L_5000, in chunks sized by a memory budget) comes from ``LogWeightModel``.

    Examples::

        >>> import torch
        >>> from iwae_kernels.models import PaperModel
        >>> _ = torch.manual_seed(0)
        >>> model = PaperModel(x_dim=6, hidden=((8, 8),), latent=(3,))  # a small one-stochastic-layer model
        >>> x = torch.rand(4, 6).round()  # B = 4 binary images of P = 6 pixels
        >>> model.loss(x, k=5).backward()  # -L_5 averaged over the batch
        >>> model.bound(x, k=6, estimator="miwae", groups=2).shape  # the objective per example
        torch.Size([4])
        >>> model.log_likelihood(x, k=100, chunk=50).shape  # L_100 per example, float64
        torch.Size([4])
        >>> two = PaperModel(x_dim=6, hidden=((8, 8), (4, 4)), latent=(3, 2))  # two stochastic layers
        >>> two.loss(x, k=5, estimator="dreg").shape, two.sample(2).shape
        (torch.Size([]), torch.Size([2, 6]))
    """

    def __init__(self, x_dim: int = 784, hidden: Sequence[Sequence[int]] = ((200, 200),),
                 latent: Sequence[int] = (50,), backend: str | None = None, fused_head: bool = False,
                 fused_mlp: bool = False) -> None:
        super().__init__()
        self.fused_head, self.fused_mlp = fused_head, fused_mlp
        if len(hidden) != len(latent) or len(latent) not in (1, 2):
            raise ValueError(f"hidden, latent: expected one entry per stochastic layer (1 or 2), got {hidden}, {latent}")
        if fused_mlp and len(hidden[0]) != 2:
            raise ValueError(f"fused_mlp: the fused decoder MLP has two tanh hidden layers (the paper's), got "
                             f"hidden[0] = {hidden[0]}")
        self.x_dim, self.latent, self.backend = x_dim, tuple(latent), backend
        below = (x_dim,) + tuple(latent[:-1])
        # q(h_l | h_{l-1}): bottom-up.
        self.encoders = nn.ModuleList(mlp([below[l], *hidden[l]], 2 * latent[l]) for l in range(len(latent)))
        # p(h_l | h_{l+1}) for l below the top (the top prior is N(0, I)): top-down mirrors of the encoders.
        self.priors = nn.ModuleList(
            mlp([latent[l + 1], *reversed(hidden[l + 1])], 2 * latent[l]) for l in range(len(latent) - 1))
        self.decoder = mlp([latent[0], *reversed(hidden[0])], x_dim)

    @property
    def stochastic_layers(self) -> int:
        return len(self.latent)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(h1|x): (mean, logvar), each [B, latent[0]]."""
        return gaussian(self.encoders[0], x)

    def noise(self, k: int, batch: int, device: F.Device = None,
              dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """Standard-normal noise [k, batch, latent[l]] per stochastic layer (bottom first): ``log_weights``' noise."""
        like: torch.Tensor = self.decoder[0].weight  # type: ignore[assignment]  # nn.Module attributes are untyped
        return [torch.randn(k, batch, size, device=device or like.device, dtype=dtype or like.dtype)
                for size in self.latent]

    def posterior_means(self, x: torch.Tensor, samples: int = 10) -> list[torch.Tensor]:
        """E_q[h_l | x] [B, latent[l]] per stochastic layer: mu1(x), and for h2 E_q(h1|x)[mu2(h1)] estimated with
        ``samples`` draws of h1 (``active_units``)."""
        mu, logvar = self.encode(x)
        if self.stochastic_layers == 1:
            return [mu]
        h1 = mu + torch.exp(0.5 * logvar) * torch.randn((samples,) + tuple(mu.shape), device=mu.device, dtype=mu.dtype)
        return [mu, gaussian(self.encoders[1], h1)[0].mean(0)]

    def log_weights(self, x: torch.Tensor, k: int, estimator: str = "iwae", noise: Sequence[torch.Tensor] | None = None,
                    posterior: tuple[torch.Tensor, torch.Tensor] | None = None,
                    stop_encoders: bool = False) -> torch.Tensor:
        """log w [k, B] for k samples of x [B, x_dim], whose gradient is the sampling estimator's (docs/MATH.md).

        estimator: the samples' gradient is ``sampling_estimator(estimator)``'s; for "rws" and "vimco" the
        log-weights are at samples from the stopped encoders, with the model's gradient only (``bound`` adds the
        encoders' term through log q at those samples).
        noise: optional standard-normal noise, one [k, B, latent[l]] tensor per stochastic layer (bottom first),
        which fixes the samples (common random numbers across estimators or backends); drawn when None.
        posterior: q(h1|x) as ``encode(x)`` returns it, to reuse; computed when None.
        stop_encoders: True: the samples and the encoders' weights get no gradient (only the decoder and the
        learned prior are live): the log-weights piwae and rws-dreg take the model's gradient from.
        """
        return self._log_weights(x, k, estimator, noise=noise, posterior=posterior, stop_encoders=stop_encoders)[0]

    def _log_weights(self, x, k, estimator, *, noise, posterior, stop_encoders=False):
        """(``log_weights``' log w [k, B], ``_samples``' log_q [k, B] or None)."""
        h1, latent, log_q = self._samples(
            x,
            k,
            estimator,
            noise=noise,
            posterior=posterior,
            stop_encoders=stop_encoders,
        )
        if self.fused_mlp and not torch.is_grad_enabled():  # evaluation: the decoder and likelihood as one op
            layers = self.decoder[::2]  # its Linears
            log_w = F.bernoulli_mlp_decoder_log_likelihood(
                h1,
                [layer.weight for layer in layers],
                [layer.bias for layer in layers],
                x=x,
                latent_log_weight=latent,
                backend=self.backend,
            )
            return log_w, log_q
        if self.fused_head:  # the output layer and the likelihood as one op: the logits are never stored
            output = self.decoder[-1]
            log_lik = F.bernoulli_decoder_log_likelihood(
                self.decoder[:-1](h1),
                output.weight,
                output.bias,
                x=x,
                backend=self.backend,
            )
        else:
            log_lik = F.bernoulli_log_likelihood(self.decoder(h1), x, backend=self.backend)
        return log_lik + latent, log_q

    def _frozen_encoder(self, layer):
        """encoders[layer] as a function with its weights detached."""
        frozen = {name: p.detach() for name, p in self.encoders[layer].named_parameters()}
        return lambda h: torch.func.functional_call(self.encoders[layer], frozen, (h,))

    def _samples(self, x, k, estimator, *, noise, posterior, stop_encoders=False):
        """The bottom samples h1 [k, B, latent[0]], the latent term of the log-weights [k, B] and, for the
        fixed-sample estimators (rws, vimco: samples from the stopped encoders), log q(h1|x) + log q(h2|h1) [k, B]
        at the samples with the encoders live (``estimators.wake_phi_term``: zero-valued), else None
        (``log_weights``' arguments)."""
        mu, logvar = self.encode(x) if posterior is None else posterior
        if noise is not None:
            self._check_noise(noise, k, x, like=mu)
        fixed_samples = estimator in FIXED_SAMPLE_ESTIMATORS
        stop_encoders = stop_encoders or fixed_samples
        sampler = sampling_estimator(estimator)
        # The sampled layers' parameters: detached when the encoders are stopped.
        q_mu, q_logvar = (mu.detach(), logvar.detach()) if stop_encoders else (mu, logvar)
        backend = self.backend
        if self.stochastic_layers == 1:
            h1, latent = F.gaussian_sample(q_mu, q_logvar, k, eps=None if noise is None else noise[0],
                                           estimator=sampler, backend=backend)
            return h1, latent, wake_phi_term(h1, mu, logvar) if fixed_samples else None
        eps1 = torch.randn((k,) + tuple(mu.shape), device=mu.device, dtype=mu.dtype) if noise is None else noise[0]
        h1_sample = q_mu + torch.exp(0.5 * q_logvar) * eps1
        encoder2 = self._frozen_encoder(1) if stop_encoders else self.encoders[1]
        mu2, logvar2 = gaussian(encoder2, h1_sample)  # [k, B, D2]
        density = {}
        if sampler in PATH_ESTIMATORS:
            # q(h2|h1) depends on the sample h1: stl/dreg stop its weights, not h1 (docs/MATH.md).
            density["density_mu"], density["density_logvar"] = gaussian(self._frozen_encoder(1), h1_sample)
        h2, latent2 = F.gaussian_sample(mu2, logvar2, k, eps=None if noise is None else noise[1],
                                        estimator=sampler, backend=backend, **density)
        prior_mu, prior_logvar = gaussian(self.priors[0], h2)  # p(h1|h2), [k, B, D1]
        h1, latent1 = F.gaussian_sample(q_mu, q_logvar, k, eps=eps1, prior_mu=prior_mu, prior_logvar=prior_logvar,
                                        estimator=sampler, backend=backend)
        log_q = None
        if fixed_samples:
            log_q = wake_phi_term(h1, mu, logvar) + wake_phi_term(h2, *gaussian(self.encoders[1], h1))
        return h1, latent1 + latent2, log_q

    def bound(self, x: torch.Tensor, k: int = 50, estimator: str = "iwae", noise: Sequence[torch.Tensor] | None = None,
              groups: int | None = None, ciwae_beta: float | None = None,
              renyi_alpha: float | None = None) -> torch.Tensor:
        """Per-example objective [B] whose gradient is the estimator's: L_k, the k-sample ELBO for "vae", MIWAE's
        bound for "miwae" (``groups`` M: k = M * K samples), CIWAE's for "ciwae" (``ciwae_beta``), the Renyi
        bound L_a for "renyi" (``renyi_alpha`` a); "vimco" needs k >= 2.

        noise: optional standard-normal noise, one [k, B, latent[l]] tensor per stochastic layer (bottom first),
        which fixes the samples (common random numbers across estimators or backends); drawn when None.
        """
        _checks.check_choice("estimator", estimator, F.ESTIMATORS)
        groups, ciwae_beta, renyi_alpha = check_estimator_options(
            estimator,
            k,
            groups=groups,
            ciwae_beta=ciwae_beta,
            renyi_alpha=renyi_alpha,
        )
        posterior = self.encode(x)
        if estimator in ("iwae-resample",) + ROUTED_ESTIMATORS:  # the same samples twice: the noise is drawn here
            if noise is None:
                shapes = [(k, x.shape[0], size) for size in self.latent]
                noise = [torch.randn(shape, device=x.device, dtype=posterior[0].dtype) for shape in shapes]
            self._check_noise(noise, k, x, like=posterior[0])
        if estimator == "iwae-resample":
            return F.resampled_iwae_bound(
                lambda n: self.log_weights(x, n[0].shape[0], "iwae", noise=n, posterior=posterior),
                noise,  # type: ignore[arg-type]  # drawn above
                backend=self.backend,
            )
        log_w, log_q = self._log_weights(x, k, estimator, noise=noise, posterior=posterior)
        fixed = None
        if estimator in ROUTED_ESTIMATORS:
            fixed = self.log_weights(x, k, "iwae", noise=noise, posterior=posterior, stop_encoders=True)
        return F.estimator_bound(log_w, estimator, log_w_fixed=fixed, log_q=log_q, groups=groups,
                                 ciwae_beta=ciwae_beta, renyi_alpha=renyi_alpha, backend=self.backend)

    def _check_noise(self, noise, k, x, *, like):
        if not isinstance(noise, (list, tuple)) or len(noise) != self.stochastic_layers:
            raise ValueError(f"noise: expected a list of {self.stochastic_layers} tensors (one per stochastic layer)")
        for layer, (eps, size) in enumerate(zip(noise, self.latent)):
            _checks.check_tensor(f"noise[{layer}]", eps, (3,), like=("the model's parameters", like))
            _checks.check_shape(f"noise[{layer}]", eps, (k, x.shape[0], size))

    def chunk_log_weights(self, x: torch.Tensor, k: int,  # type: ignore[override]
                          eps: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """``log_weights(x, k, noise=eps)``: this model's noise is one tensor per stochastic layer."""
        return self.log_weights(x, k, noise=eps)

    def loss(self, x: torch.Tensor, k: int = 50, estimator: str = "iwae",  # type: ignore[override]
             noise: Sequence[torch.Tensor] | None = None, groups: int | None = None, ciwae_beta: float | None = None,
             renyi_alpha: float | None = None) -> torch.Tensor:
        """The training loss: -bound averaged over the batch x [B, x_dim] (a scalar); ``noise``, ``groups``,
        ``ciwae_beta`` and ``renyi_alpha`` as in ``bound``."""
        if estimator in ("iwae", "stl", "dreg", "rws") and not self.fused_head:
            # The likelihood, bound and mean as one op (bernoulli_iwae_loss): fewer autograd nodes and kernels.
            check_estimator_options(estimator, k, groups=groups, ciwae_beta=ciwae_beta, renyi_alpha=renyi_alpha)
            # rws: wake-phi through log q.
            h1, latent, log_q = self._samples(x, k, estimator, noise=noise, posterior=None)
            return F.bernoulli_iwae_loss(self.decoder(h1), x, latent if log_q is None else latent + log_q,
                                         backend=self.backend)
        objective = self.bound(
            x,
            k,
            estimator,
            noise=noise,
            groups=groups,
            ciwae_beta=ciwae_beta,
            renyi_alpha=renyi_alpha,
        )
        return -objective.mean()

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """n draws from the model: Bernoulli means [n, x_dim]."""
        weight: torch.Tensor = self.decoder[0].weight  # type: ignore[assignment]  # nn.Module attributes are untyped
        h = torch.randn(n, self.latent[-1], device=weight.device, dtype=weight.dtype)
        for prior in reversed(self.priors):
            mean, logvar = gaussian(prior, h)
            h = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        return torch.sigmoid(self.decoder(h))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Bernoulli means [B, x_dim] decoded from the posterior mean of h1."""
        return torch.sigmoid(self.decoder(self.encode(x)[0]))


def paper_model(stochastic_layers: int = 1, x_dim: int = 784, **sizes: Any) -> PaperModel:
    """The paper's 1- or 2-stochastic-layer model; ``hidden``/``latent``/``backend`` override its sizes.

    Examples::

        >>> import torch
        >>> from iwae_kernels.models import paper_model
        >>> model = paper_model(2)  # the paper's two stochastic layers for 28 x 28 images
        >>> model.x_dim, model.latent, [layer.out_features for layer in model.encoders[0][::2]]
        (784, (100, 50), [200, 200, 200])
        >>> small = paper_model(1, x_dim=6, hidden=((8, 8),), latent=(3,), fused_head=True)
        >>> small.loss(torch.rand(4, 6).round(), k=5).shape
        torch.Size([])
    """
    if stochastic_layers not in PAPER_SIZES:
        raise ValueError(f"stochastic_layers: expected 1 or 2, got {stochastic_layers!r}")
    return PaperModel(x_dim=x_dim, **(PAPER_SIZES[stochastic_layers] | sizes))
