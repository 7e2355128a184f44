"""How far L_k can be trusted: per-example effective sample size and the PSIS Pareto k-hat of the importance
weights, computed all at once or streamed chunk by chunk beside L_k (docs/MATH.md, "Diagnostics for L_k").

- ESS (Kish): (sum_i w_i)^2 / sum_i w_i^2, in [1, k]; from two (max, sum) folds, of log w and of 2 log w, whose
  maxima differ by exactly a factor 2.
- k-hat (Vehtari, Simpson, Gelman, Yao & Gabry, "Pareto Smoothed Importance Sampling", JMLR 2024), as Pyro's
  ``psis_diagnostic`` computes it: a generalized Pareto fitted (Zhang & Stephens 2009, with the weakly informative
  prior) to the M = ceil(min(k / 5, 3 sqrt(k))) largest weights above the next largest. Streaming keeps only those
  M + 1 largest log-weights per example. k-hat > 0.7: L_k is unreliable for that example (more samples, or a
  better q, are needed); k-hat < 0.5: fine.
"""

import math
from typing import NamedTuple

import torch

from . import _checks
from .backend import get_backend
from .functional import Device, StreamingIWAEBound

# A tail of fewer weights than this gives no fit: k-hat is inf (as Pyro's psis_diagnostic, which warns).
MIN_TAIL = 10
# Weights below this fraction of the largest are never part of the tail (Pyro's floor, log 1e-15).
LOG_TAIL_FLOOR = math.log(1e-15)
# Log-weights are clamped here: 2 log w must stay finite in float64 (+inf counts as the largest weight).
LARGEST_LOG_WEIGHT = torch.finfo(torch.float64).max / 4
# Unreliable above this k-hat (Vehtari et al.).
UNRELIABLE_PARETO_K = 0.7


class ImportanceDiagnostics(NamedTuple):
    """Per-example diagnostics of k importance weights: ``ess`` [B] (0 for a column of all -inf log-weights) and
    ``pareto_k`` [B] (inf where the tail is too short to fit), both float64."""

    ess: torch.Tensor
    pareto_k: torch.Tensor


def tail_size(k: int) -> int:
    """M, the number of largest weights the Pareto fit uses for k samples: ceil(min(k / 5, 3 sqrt(k)))."""
    return int(math.ceil(min(0.2 * k, 3.0 * math.sqrt(k))))


def generalized_pareto_shape(exceedances: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Zhang & Stephens' (2009) estimate of the generalized Pareto shape, with PSIS's weakly informative prior,
    per column, as ``pyro.ops.stats.fit_generalized_pareto`` computes it for one.

    exceedances: [R, B] float64, each column ascending, its first R - counts[b] entries padding (any value, they
    are zeroed); counts: [B] int64, the exceedances per column (>= 1). Returns the shape k [B].
    """
    rows = exceedances.shape[0]
    first = rows - counts  # index of each column's first real exceedance
    padding = torch.arange(rows, device=exceedances.device)[:, None] < first[None, :]
    x = exceedances.masked_fill(padding, 0.0)  # log1p(-b * 0) = 0: padding adds nothing to the sums below
    n = counts.to(torch.float64)
    quartile = x.gather(0, (first + (n / 4 - 0.5).long())[None, :])[0]  # Pyro's X[int(N / 4 - 0.5)]
    largest = x[-1]
    grid_sizes = 30 + n.sqrt().floor()  # 30 + int(sqrt(N)) candidate values of b = shape / scale
    m = torch.arange(1, int(grid_sizes.max().item()) + 1, dtype=torch.float64, device=x.device)[:, None]
    on_grid = m <= grid_sizes[None, :]  # [G, B]
    b = (1.0 - torch.sqrt(grid_sizes / (m - 0.5))) / (3.0 * quartile) + 1.0 / largest
    b = torch.where(on_grid, b, torch.zeros_like(b))
    shapes = torch.log1p(-b[:, None, :] * x[None]).sum(1) / n  # [G, B]
    profile = n * (torch.log(-b / shapes) - (shapes + 1.0))
    profile = torch.where(on_grid, profile, torch.full_like(profile, -math.inf))
    # Each grid point's weight 1 / sum_j exp(L_j - L_i), then Pyro's cut of weights <= 1e-30.
    weights = 1.0 / torch.exp(profile[None, :, :] - profile[:, None, :]).nan_to_num(0.0).sum(1)
    weights = torch.where(on_grid & (weights > 1e-30), weights, torch.zeros_like(weights))
    b_hat = (b * weights).sum(0) / weights.sum(0)
    shape = torch.log1p(-b_hat * x).sum(0) / n
    return shape * n / (n + 10.0) + 5.0 / (n + 10.0)


class StreamingImportanceDiagnostics:
    """ESS and k-hat of k log-weights per example, folded chunk by chunk in memory that does not grow with k:
    two (max, sum) states (of log w and 2 log w) and the M + 1 largest log-weights per example.

    Examples::

        >>> import torch
        >>> from iwae_kernels import StreamingImportanceDiagnostics, importance_diagnostics
        >>> _ = torch.manual_seed(0)
        >>> log_w = torch.randn(1000, 2)  # k = 1000 log-weights of B = 2 examples
        >>> diagnostics = StreamingImportanceDiagnostics(1000, batch_size=2)
        >>> for chunk in log_w.split(100):  # each [100, B]
        ...     diagnostics.update(chunk)
        >>> streamed, at_once = diagnostics.result(), importance_diagnostics(log_w)
        >>> torch.allclose(streamed.ess, at_once.ess), torch.allclose(streamed.pareto_k, at_once.pareto_k)
        (True, True)
    """

    largest: torch.Tensor

    def __init__(self, num_samples: int, batch_size: int, *, device: Device = None,
                 backend: str | None = None) -> None:
        self.num_samples = _checks.check_positive_int("num_samples", num_samples)
        self.keep = tail_size(self.num_samples) + 1  # the tail and the cutoff below it
        self.weights = StreamingIWAEBound(batch_size, device=device, dtype=torch.float64, backend=backend)
        self.squares = StreamingIWAEBound(batch_size, device=device, dtype=torch.float64, backend=backend)
        self.largest = torch.empty((0, batch_size), dtype=torch.float64, device=device)
        self.backend = backend

    def _keep_largest(self, log_w: torch.Tensor) -> None:
        rows = torch.cat([self.largest, log_w])
        self.largest = rows.topk(min(self.keep, rows.shape[0]), dim=0).values

    def update(self, log_w: torch.Tensor) -> None:
        """Fold log-weights [kc, B] (any kc >= 1) into the state."""
        _checks.check_tensor("log_w", log_w, (2,))
        _checks.check_shape("log_w", log_w, (log_w.shape[0], self.largest.shape[1]))
        log_w = log_w.detach().double().clamp(max=LARGEST_LOG_WEIGHT)
        self.weights.update(log_w)
        self.squares.update(2.0 * log_w)
        self._keep_largest(log_w)

    def merge(self, other: "StreamingImportanceDiagnostics") -> None:
        """Fold in another state's (the same examples, other samples of the same k in all)."""
        self.weights.merge(other.weights)
        self.squares.merge(other.squares)
        self._keep_largest(other.largest)

    def result(self) -> ImportanceDiagnostics:
        """``ImportanceDiagnostics`` over every sample folded so far (all k of them)."""
        folded = self.weights.num_samples
        if folded != self.num_samples:
            raise ValueError(f"StreamingImportanceDiagnostics.result: {folded} of num_samples={self.num_samples} "
                             f"log-weights were folded in")
        # Both folds shift by the same max (2 max(log w) is max(2 log w) exactly): ESS = sum^2 / sum of squares.
        empty = torch.isneginf(self.weights.running_max)
        ess = torch.where(empty, torch.zeros_like(self.weights.running_sum),
                          self.weights.running_sum**2 / self.squares.running_sum.clamp(min=torch.finfo(torch.float64).tiny))
        return ImportanceDiagnostics(ess=ess, pareto_k=self._pareto_k(empty))

    def _pareto_k(self, empty: torch.Tensor) -> torch.Tensor:
        largest = self.largest.flip(0)  # ascending, as Pyro sorts
        if largest.shape[0] < self.keep:  # k = 1: no cutoff below the tail
            return torch.full_like(largest[0], math.inf)
        top = torch.where(empty, torch.zeros_like(largest[-1]), largest[-1])
        shifted = largest - top
        cutoff = shifted[0].clamp(min=LOG_TAIL_FLOOR)
        in_tail = shifted > cutoff
        counts = in_tail.sum(0)
        fits = counts >= MIN_TAIL
        exceedances = torch.where(in_tail, torch.exp(shifted) - torch.exp(cutoff), torch.zeros_like(shifted))
        shape = generalized_pareto_shape(exceedances, counts.clamp(min=1))
        shape = torch.where(fits & ~torch.isnan(shape), shape, torch.full_like(shape, math.inf))
        return shape


def importance_diagnostics(log_w: torch.Tensor, *, backend: str | None = None) -> ImportanceDiagnostics:
    """Per-example effective sample size and PSIS Pareto k-hat of the importance weights exp(log_w).

    Args:
        log_w: log-weights [k, B] (any floating dtype; computed in float64). -inf entries are legal (zero
            weights); +inf counts as the largest weight.
        backend: for the (max, sum) folds, as elsewhere.

    Returns:
        ``ImportanceDiagnostics(ess [B], pareto_k [B])``, float64: ESS = (sum w)^2 / sum w^2 in [1, k] (0 for an
        all -inf column); k-hat as Pyro's ``psis_diagnostic`` computes it, inf where fewer than 10 weights make the
        tail (k below about 50, or weights below 1e-15 of the largest). k-hat > 0.7: unreliable.

    Examples::

        >>> import torch
        >>> from iwae_kernels import importance_diagnostics
        >>> importance_diagnostics(torch.zeros(100, 2)).ess  # equal weights: ESS = k
        tensor([100., 100.], dtype=torch.float64)
        >>> log_w = torch.zeros(100, 2)
        >>> log_w[0] = 50.0  # one weight dominates: ESS ~ 1
        >>> importance_diagnostics(log_w).ess
        tensor([1., 1.], dtype=torch.float64)
        >>> importance_diagnostics(torch.zeros(20, 2)).pareto_k  # k = 20: a tail of 4 weights is too short to fit
        tensor([inf, inf], dtype=torch.float64)
    """
    _checks.check_tensor("log_w", log_w, (2,))
    get_backend(backend, log_w.device)  # a backend that cannot run here says so before any work
    diagnostics = StreamingImportanceDiagnostics(log_w.shape[0], log_w.shape[1], device=log_w.device,
                                                 backend=backend)
    diagnostics.update(log_w)
    return diagnostics.result()
