"""What the model zoo shares: the Glorot MLP, a Gaussian head, ``LogWeightModel``, which turns any
``log_weights(x, k) -> [k, B]`` into the IWAE loss and the chunked L_k, and the paper's active-units statistic."""

from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, overload

import torch
from torch import nn

from .. import evaluation
from .. import functional as F
from ..diagnostics import ImportanceDiagnostics


def mlp(sizes: Sequence[int], out_features: int) -> nn.Sequential:
    """Linear + tanh through ``sizes``, then a Linear to ``out_features``; Glorot-uniform weights, zero biases."""
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
    layers.append(nn.Linear(sizes[-1], out_features))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


def gaussian(net: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, logvar = net(inputs).chunk(2, dim=-1)
    return mean, logvar


class LogWeightModel(nn.Module):
    """Base for models that define ``log_weights(x, k) -> [k, B]``: the IWAE loss and the chunked L_k from it.

    Examples::

        >>> import torch
        >>> from iwae_kernels import bernoulli_log_likelihood, gaussian_sample
        >>> from iwae_kernels.models import LogWeightModel
        >>> class TinyVAE(LogWeightModel):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.encoder, self.decoder = torch.nn.Linear(6, 2 * 2), torch.nn.Linear(2, 6)
        ...     def log_weights(self, x, k, eps=None):  # log w [k, B]; eps: the noise of log_likelihood's chunks
        ...         mu, logvar = self.encoder(x).chunk(2, dim=-1)
        ...         z, latent = gaussian_sample(mu, logvar, k, eps=eps)
        ...         return bernoulli_log_likelihood(self.decoder(z), x) + latent
        >>> _ = torch.manual_seed(0)
        >>> model, x = TinyVAE(), torch.rand(3, 6).round()
        >>> model.loss(x, k=5).backward()  # -L_5 averaged over the batch
        >>> model.log_likelihood(x, k=100, chunk=25).shape  # L_100 per example, 25 samples at a time
        torch.Size([3])
    """

    backend: str | None = None
    # Defined by each model: log w [k, B] for k samples of the batch x, ``log_weights(x, k, ...)``.
    log_weights: Callable[..., torch.Tensor]

    def loss(self, x: torch.Tensor, k: int = 5, **options: Any) -> torch.Tensor:
        """-L_k averaged over the batch; ``options`` go to ``log_weights`` (e.g. the sentence VAE's beta)."""
        return -F.iwae_bound(self.log_weights(x, k, **options), backend=self.backend).mean()

    def eval_chunk(self, x: torch.Tensor, k: int, chunk: int | None = None, memory_budget: int | None = None) -> int:
        """Samples per chunk of L_k for the batch x, at most k: ``chunk`` when given, else as many as
        ``memory_budget`` bytes hold (default ``evaluation.MEMORY_BUDGET``), measured on ``log_weights`` of x at a
        few samples (``evaluation.chunk_for_budget``; the probe's draws leave torch's RNG as it was)."""
        devices = [x.device] if x.device.type == "cuda" else []

        def probe(size):
            with torch.random.fork_rng(devices=devices):
                return self.chunk_log_weights(x, size)

        return evaluation.chunk_for_budget(probe, k, device=x.device, chunk=chunk, memory_budget=memory_budget)

    def chunk_log_weights(self, x: torch.Tensor, k: int,
                          eps: torch.Tensor | Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """``log_weights(x, k)`` for one chunk of ``log_likelihood``; ``eps``: that chunk's slice of the noise
        (the keyword the model's ``log_weights`` takes for it)."""
        return self.log_weights(x, k) if eps is None else self.log_weights(x, k, eps=eps)

    @overload
    def log_likelihood(self, x: torch.Tensor, k: int = 5000, chunk: int | None = None, *,
                       eps: torch.Tensor | Sequence[torch.Tensor] | None = None, memory_budget: int | None = None,
                       diagnostics: Literal[False] = False) -> torch.Tensor: ...
    @overload
    def log_likelihood(self, x: torch.Tensor, k: int = 5000, chunk: int | None = None, *,
                       eps: torch.Tensor | Sequence[torch.Tensor] | None = None, memory_budget: int | None = None,
                       diagnostics: Literal[True]) -> tuple[torch.Tensor, ImportanceDiagnostics]: ...
    @overload
    def log_likelihood(self, x: torch.Tensor, k: int = 5000, chunk: int | None = None, *,
                       eps: torch.Tensor | Sequence[torch.Tensor] | None = None, memory_budget: int | None = None,
                       diagnostics: bool = False) -> torch.Tensor | tuple[torch.Tensor, ImportanceDiagnostics]: ...
    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, k: int = 5000, chunk: int | None = None, *,
                       eps: torch.Tensor | Sequence[torch.Tensor] | None = None, memory_budget: int | None = None,
                       diagnostics: bool = False) -> torch.Tensor | tuple[torch.Tensor, ImportanceDiagnostics]:
        """Per-example L_k [B] (float64) for x [B, ...] (the paper's test log-likelihood with k = 5000), in memory
        that does not grow with k: samples are drawn ``chunk`` at a time (default: as many as ``memory_budget``
        bytes hold, ``eval_chunk``) and their log-weights folded by the split-k logsumexp
        (``evaluation.streamed_bound``).

        eps: optional noise that fixes the samples: a [k, B, D] tensor, or for ``PaperModel`` one per stochastic
        layer (its ``noise``); each chunk gets its slice of the k samples.
        diagnostics: also return the weights' ESS and PSIS k-hat per example: (L_k, ``ImportanceDiagnostics``).
        """
        evaluation.check_chunk_and_budget(chunk, memory_budget)

        def chunk_log_weights(start, size):
            if eps is None:
                return self.chunk_log_weights(x, size)
            window = lambda t: t[start : start + size]
            return self.chunk_log_weights(x, size, [window(t) for t in eps] if isinstance(eps, (list, tuple))
                                          else window(eps))

        chunk = self.eval_chunk(x, k, chunk, memory_budget=memory_budget)
        return evaluation.streamed_bound(chunk_log_weights, k, chunk=chunk, batch_size=x.shape[0], device=x.device,
                                         backend=self.backend, diagnostics=diagnostics)


class _LayeredModel(Protocol):
    """What ``active_units`` needs of a model (``PaperModel``, ``SigmoidBeliefNetwork``)."""

    @property
    def latent(self) -> Sequence[int]: ...

    def posterior_means(self, x: torch.Tensor, samples: int) -> list[torch.Tensor]: ...


@torch.no_grad()
def active_units(model: _LayeredModel, data: torch.Tensor, threshold: float = 1e-2, batch_size: int = 1000,
                 samples: int = 10) -> tuple[list[int], list[torch.Tensor]]:
    """The paper's activity statistic (Sec. 5.2): A_u = Var_x(E_q(u|x)[u]); active when A_u > threshold.

    The posterior means come from ``model.posterior_means(x, samples)`` (deeper layers' are estimated with
    ``samples`` draws of the layers below). Returns (active count per layer, [A_u per layer]).

    Examples::

        >>> import torch
        >>> from iwae_kernels.models import active_units, paper_model
        >>> _ = torch.manual_seed(0)
        >>> model = paper_model(2, x_dim=6, hidden=((8, 8), (8, 8)), latent=(4, 3))
        >>> counts, activity = active_units(model, torch.rand(50, 6).round(), batch_size=20)
        >>> len(counts), [a.shape for a in activity]  # one count and one [latent[l]] activity per layer
        (2, [torch.Size([4]), torch.Size([3])])
        >>> all(0 <= count <= size for count, size in zip(counts, model.latent))
        True
    """
    means: list[list[torch.Tensor]] = [[] for _ in model.latent]
    for start in range(0, data.shape[0], batch_size):
        for layer, mean in enumerate(model.posterior_means(data[start : start + batch_size], samples)):
            means[layer].append(mean)
    activity = [torch.cat(layer).double().var(0) for layer in means]
    return [int((a > threshold).sum()) for a in activity], activity
