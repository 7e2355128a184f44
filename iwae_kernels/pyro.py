"""A Pyro front door: ``ImportanceWeightedELBO``, an ELBO for ``pyro.infer.SVI`` whose bound and gradient are this
library's IWAE-family estimators (``estimator_bound``), per example.

Pyro is optional: ``import iwae_kernels`` never imports it; this module needs it (``pip install pyro-ppl``).

How the log-weights are formed. The model and guide run once under a vectorized particle plate
("num_particles_vectorized", size k, at dim -(max_plate_nesting + 1)); the model replays the guide's samples. Each
sample site's log-probability (unscaled, masked) is summed over every dim except the particle dim and the data
plate's dim, giving [k, B]; log w = sum over the model's sites - sum over the guide's sites. Every sample site must
lie inside the data plate: a latent outside it (a global latent) is shared by all examples, so the log-weights do
not factor per example and a per-example logsumexp would be the wrong bound; such models are refused.

How rws and vimco fix the samples. The guide runs with every sample's value detached as it is drawn
(``_FixedSamples``), so later guide sites and the model see the samples as data: the guide's sites need not be
reparameterizable (discrete latents too). log q is scored with the guide's parameters live at those values, and
``estimator_bound(log_w, estimator, log_q=log q)`` gives the model L_k's gradient and the guide wake-phi's (rws) or
VIMCO's score-function gradient (vimco).

How stl and dreg stop the guide's parameters (Pyro issue #2598). log q is scored on a copy of each guide site's
distribution whose tensors (its parameters, the distributions and transforms it wraps) are detached, at the live
reparameterized sample: the path through z stays, the direct dependence on the parameters goes. That is the
stopped-parameter score only when a site's parameters do not depend on an earlier guide sample (then detaching them
would also drop a path term), so stl and dreg refuse such guides. dreg then weights the path by wt_i once more: a
gradient hook on each sample multiplies the gradient reaching z_i by wt_i (Tucker et al. 2018).
"""

import contextlib
import copy
import math
from collections.abc import Callable
from typing import Any

import torch

try:
    import pyro
    from pyro import poutine
    from pyro.distributions.util import scale_and_mask
    from pyro.infer.elbo import ELBO
    from pyro.infer.util import is_validation_enabled
    from pyro.poutine.messenger import Messenger
    from pyro.poutine.util import prune_subsample_sites
    from pyro.util import check_model_guide_match
except ModuleNotFoundError as error:
    raise ImportError("iwae_kernels.pyro needs Pyro: pip install pyro-ppl") from error

from .estimators import FIXED_SAMPLE_ESTIMATORS, PATH_ESTIMATORS, check_estimator_options
from .functional import estimator_bound, normalized_weights

# Not offered: "piwae" and "rws-dreg" need the log-weights again at fixed samples, "iwae-resample" its own sampling.
PYRO_ESTIMATORS = ("iwae", "vae", "stl", "dreg", "miwae", "ciwae", "renyi", "rws", "vimco")
PARTICLE_PLATE = "num_particles_vectorized"

# A Pyro model or guide: called with the data (``*args, **kwargs``), it draws from sample sites.
Program = Callable[..., Any]
# The guide's samples as ``log_weights`` returns them: (value [k, ..., B, ..., *event], the shape laying [k, B] on it).
GuideSamples = list[tuple[torch.Tensor, list[int]]]


class _FixedSamples(Messenger):
    """The guide's latent samples come back detached as they are drawn: no gradient reaches them, and the sites
    after them see them as data (the fixed-sample estimators)."""

    def _pyro_post_sample(self, msg):
        if not msg["is_observed"]:
            msg["value"] = msg["value"].detach()


def _map_tensors(obj, fn):
    """``obj`` with ``fn`` applied to every tensor in it: a distribution or transform is shallow-copied with its
    attributes mapped (the distributions and transforms it wraps too), a list or tuple elementwise. A learnable
    transform (an nn.Module) raises NotImplementedError: its parameters are not attributes to detach."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, torch.nn.Module):
        raise NotImplementedError(f"a guide distribution with a learnable {type(obj).__name__} (an nn.Module): "
                                  "its parameters cannot be stopped for stl/dreg")
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(item, fn) for item in obj)
    if isinstance(obj, (torch.distributions.Distribution, torch.distributions.Transform)):
        copied = copy.copy(obj)
        copied.__dict__.update({name: _map_tensors(value, fn) for name, value in vars(obj).items()})
        return copied
    return obj


def _tensors_of(distribution):
    """The tensors in ``distribution`` (its parameters and whatever it wraps), as a list."""
    tensors = []
    _map_tensors(distribution, lambda t: tensors.append(t) or t)
    return tensors


def _computed_from(tensors, sources):
    """Whether any of ``tensors`` is computed from any of ``sources``, by a walk of the autograd graph."""
    source_nodes = {s.grad_fn for s in sources if s.grad_fn is not None}
    pending = [t.grad_fn for t in tensors if t.grad_fn is not None]
    seen = set()
    while pending:
        node = pending.pop()
        if node in source_nodes:
            return True
        if node not in seen:
            seen.add(node)
            pending.extend(child for child, _ in node.next_functions if child is not None)
    return False


class ImportanceWeightedELBO(ELBO):
    """-sum over the batch of an IWAE-family bound per example, for ``pyro.infer.SVI`` as ``Trace_ELBO`` is used.

    Each example b gets its own k log-weights log w [k, B] (see the module docstring) and its own bound
    L_k(b) = logsumexp_i log w[i, b] - log k (or the estimator's objective); the loss is -scale * sum_b L_k(b), where
    scale = N / B when the data plate subsamples B of N examples (``pyro.plate(..., N, subsample_size=B)``), Pyro's
    convention; 1 otherwise. Pyro's vectorized ``RenyiELBO(alpha=0)`` gives the same when every site is in the data
    plate; without a data plate (the batch in the event shape) it takes one logsumexp of log-weights summed over the
    batch, a looser bound, which this class refuses.

    Args:
        num_particles: k, the importance samples per example (vectorized).
        estimator: one of ``PYRO_ESTIMATORS``: "iwae", "vae", "stl", "dreg", "miwae" (``groups=M``), "ciwae"
            (``ciwae_beta``), "renyi" (``renyi_alpha``), whose guide sites must be reparameterizable
            (``has_rsample``); or "rws", "vimco" (k >= 2), which fix the samples and take any guide site, a discrete
            one too (docs/ESTIMATORS.md).
        data_plate: the name of the vectorized plate over examples; every sample site must lie inside it.
        max_plate_nesting: the number of plates the model nests (the particle plate sits left of them); None:
            guessed by running the model and guide once, as Pyro's ELBOs do.
        backend: the library's backend for the bound (None: from the tensors' device).

    Refused: enumerated sites, sample sites outside the data plate (global latents), a sequential data plate,
    model latents the guide does not sample, sites scaled other than by the data plate's subsampling
    (``poutine.scale``), non-reparameterizable guide sites; for stl and dreg, guide sites whose parameters depend on
    an earlier guide sample (checked on the autograd graph, so when gradients are taken) or that hold learnable
    transforms.

    Examples::

        >>> import pyro, pyro.distributions as dist, torch
        >>> from iwae_kernels.pyro import ImportanceWeightedELBO
        >>> def model(x):  # z ~ N(0, 1), x ~ N(z, 1), per example
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):
        ...     loc = pyro.param("loc", torch.zeros(x.shape[0]))
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("z", dist.Normal(loc, 1.0))
        >>> pyro.clear_param_store()
        >>> _ = torch.manual_seed(0)
        >>> elbo = ImportanceWeightedELBO(num_particles=8, estimator="dreg", max_plate_nesting=1)
        >>> x = torch.tensor([0.5, -1.0, 2.0])  # B = 3 examples
        >>> loss = elbo.loss_and_grads(model, guide, x)  # what SVI(model, guide, optim, loss=elbo).step(x) runs
        >>> type(loss), pyro.param("loc").grad.shape  # -sum_b L_8(b), and the guide's gradient
        (<class 'float'>, torch.Size([3]))
        >>> log_w, samples, scale = elbo.log_weights(model, guide, x)  # the [k, B] log-weights
        >>> log_w.shape, scale
        (torch.Size([8, 3]), 1.0)
        >>> pyro.clear_param_store()
    """

    def __init__(self, num_particles: int = 1, estimator: str = "iwae", data_plate: str = "data",
                 groups: int | None = None, ciwae_beta: float | None = None, renyi_alpha: float | None = None,
                 max_plate_nesting: int | None = None, backend: str | None = None) -> None:
        if estimator not in PYRO_ESTIMATORS:
            why = ("needs more than one set of log-weights (a second model pass at fixed samples, or its own "
                   "sampling)")
            raise NotImplementedError(f"estimator: {estimator!r} is not offered by ImportanceWeightedELBO ({why}); "
                                      f"choose one of {PYRO_ESTIMATORS}")
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"num_particles: expected an int >= 1, got {num_particles!r}")
        self.groups, self.ciwae_beta, self.renyi_alpha = check_estimator_options(
            estimator,
            num_particles,
            groups=groups,
            ciwae_beta=ciwae_beta,
            renyi_alpha=renyi_alpha,
        )
        super().__init__(num_particles=num_particles,
                         max_plate_nesting=math.inf if max_plate_nesting is None else max_plate_nesting)
        self.estimator = estimator
        self.data_plate = data_plate
        self.backend = backend

    def _get_trace(self, model, guide, args, kwargs):
        """(model trace, guide trace) of one run under the particle plate, the model replaying the guide's samples,
        with the subsample sites pruned."""
        if self.max_plate_nesting == math.inf:
            self._guess_max_plate_nesting(model, guide, args, kwargs)
        particles = pyro.plate(PARTICLE_PLATE, self.num_particles, dim=-self.max_plate_nesting - 1)
        # Outside the trace, _FixedSamples detaches each value before the trace records it and the guide goes on.
        fixed = _FixedSamples() if self.estimator in FIXED_SAMPLE_ESTIMATORS else contextlib.nullcontext()
        with fixed:
            guide_trace = poutine.trace(particles(guide)).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(particles(model), trace=guide_trace)).get_trace(*args, **kwargs)
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting + 1)
        return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)

    def _data_frame(self, site):
        """The data plate's frame in a sample site's plates; refuses a site outside it or a sequential one."""
        frames = [f for f in site["cond_indep_stack"] if f.name == self.data_plate]
        if not frames:
            raise ValueError(
                f"site {site['name']!r} lies outside the data plate {self.data_plate!r} (or the model has no such "
                "plate): the log-weights must factor per example, and a global site shared by every example does "
                "not; put every sample site inside pyro.plate(data_plate, ...), or name the plate with data_plate=")
        if not frames[0].vectorized:
            raise NotImplementedError(f"site {site['name']!r}: the data plate {self.data_plate!r} is sequential; "
                                      "use a vectorized pyro.plate (with a dim)")
        return frames[0]

    def _check_site(self, site):
        """Refuse a sample site that is enumerated, outside the data plate or scaled other than by its subsampling;
        returns the data plate's frame."""
        if site["infer"].get("enumerate"):
            raise NotImplementedError(f"site {site['name']!r} is enumerated "
                                      f"(infer={{'enumerate': {site['infer']['enumerate']!r}}}): not supported")
        frame = self._data_frame(site)
        if site["scale"] != frame.full_size / frame.size:
            raise ValueError(f"site {site['name']!r} is scaled by {site['scale']} (poutine.scale?): only the data "
                             f"plate's subsampling scale {frame.full_size / frame.size} is supported")
        return frame

    def _site_log_prob(self, site, distribution, frame):
        """log ``distribution``(site's value), masked, summed to [k, B]: over every dim but the particle dim and the
        data plate's (``frame``)."""
        log_prob = scale_and_mask(distribution.log_prob(site["value"], *site["args"], **site["kwargs"]),
                                  mask=site["mask"])
        ndim = log_prob.dim()
        kept = (ndim - self.max_plate_nesting - 1, ndim + frame.dim)
        summed = [d for d in range(ndim) if d not in kept]
        log_prob = log_prob.sum(summed) if summed else log_prob
        return log_prob.expand(self.num_particles, frame.size)

    def log_weights(self, model: Program, guide: Program, *args: Any,
                    **kwargs: Any) -> tuple[torch.Tensor, GuideSamples, float]:
        """Per-particle, per-example log-weights of one vectorized run of the guide and the model.

        Returns (log_w [k, B]; the guide's samples, one (value [k, ..., B, ..., *event], the shape that lays
        [k, B] over it) per latent site; scale: N / B of the data plate's subsampling, else 1, every site's). For
        stl and dreg, log q is scored with the guide's distribution parameters detached; for rws and vimco the
        samples are fixed and log q's gradient is left out (``log_weights_and_log_q`` keeps it).
        """
        log_w, _, samples, scale = self.log_weights_and_log_q(model, guide, *args, **kwargs)
        return log_w, samples, scale

    def log_weights_and_log_q(self, model: Program, guide: Program, *args: Any,
                              **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None, GuideSamples, float]:
        """``log_weights``' (log_w, log_q, samples, scale), log_q [k, B] the guide's log q at the fixed samples with
        its parameters live for rws and vimco (``estimator_bound``'s log_q; log_w holds it detached), else None."""
        fixed = self.estimator in FIXED_SAMPLE_ESTIMATORS
        model_trace, guide_trace = self._get_trace(model, guide, args, kwargs)
        log_w: Any = 0.0  # a tensor from the first site on
        for site in model_trace.nodes.values():
            if site["type"] != "sample":
                continue
            frame = self._check_site(site)
            if not site["is_observed"] and site["name"] not in guide_trace.nodes:
                raise ValueError(f"site {site['name']!r}: a latent of the model that the guide does not sample")
            log_w = log_w + self._site_log_prob(site, site["fn"], frame)
        log_q: Any  # as log_w
        samples, log_q = [], 0.0
        for site in guide_trace.nodes.values():
            if site["type"] != "sample":
                continue
            frame = self._check_site(site)
            if fixed:
                log_q = log_q + self._site_log_prob(site, site["fn"], frame)
                samples.append((site["value"], self._weight_shape(site, frame)))
                continue
            if not site["fn"].has_rsample:
                raise NotImplementedError(
                    f"site {site['name']!r}: {type(site['fn']).__name__} is not reparameterizable (no rsample); "
                    f"estimator={self.estimator!r} takes path gradients through the guide's samples only (rws and "
                    "vimco take any guide site)")
            distribution = site["fn"]
            if self.estimator in PATH_ESTIMATORS:
                if _computed_from(_tensors_of(distribution), [z for z, _ in samples]):
                    raise NotImplementedError(
                        f"site {site['name']!r}: its parameters depend on an earlier guide sample; stopping them for "
                        f"estimator={self.estimator!r} would also stop that path term")
                distribution = _map_tensors(distribution, torch.Tensor.detach)
            log_w = log_w - self._site_log_prob(site, distribution, frame)
            samples.append((site["value"], self._weight_shape(site, frame)))
        if not samples:
            raise ValueError("the guide samples no latent: there is nothing to weight")
        if fixed:
            return log_w - log_q.detach(), log_q, samples, frame.full_size / frame.size
        return log_w, None, samples, frame.full_size / frame.size

    def _weight_shape(self, site, frame):
        """The shape that lays [k, B] over a guide site's value [k, ..., B, ..., *event], ``frame`` its data plate's:
        1 in every other dim."""
        ndim = site["value"].dim() - site["fn"].event_dim
        shape = [1] * site["value"].dim()
        shape[ndim - self.max_plate_nesting - 1] = self.num_particles
        shape[ndim + frame.dim] = frame.size
        return shape

    def _weight_path_by_normalized_weights(self, samples, log_w):
        """dreg: multiply the gradient reaching each guide sample z_i by wt_i (of log_w [k, B]): L_k's path
        gradient sum_i wt_i d log w_i/d z_i becomes DReG's sum_i wt_i^2 d log w_i/d z_i."""
        weights = normalized_weights(log_w.detach(), backend=self.backend)
        for z, shape in samples:
            if z.requires_grad:
                z.register_hook(lambda grad, w=weights.reshape(shape): grad * w)

    def differentiable_loss(self, model: Program, guide: Program, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The loss -scale * sum_b objective_b (a scalar tensor) whose gradient is the estimator's."""
        log_w, log_q, samples, scale = self.log_weights_and_log_q(model, guide, *args, **kwargs)
        objective = estimator_bound(log_w, self.estimator, log_q=log_q, groups=self.groups,
                                    ciwae_beta=self.ciwae_beta, renyi_alpha=self.renyi_alpha, backend=self.backend)
        if self.estimator == "dreg" and torch.is_grad_enabled():
            self._weight_path_by_normalized_weights(samples, log_w)
        return -scale * objective.sum()

    def loss(self, model: Program, guide: Program, *args: Any, **kwargs: Any) -> float:
        """The loss as a float, with no autograd graph."""
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model: Program, guide: Program, *args: Any, **kwargs: Any) -> float:
        """The loss as a float; its gradient accumulates into the parameters' ``.grad`` (what ``SVI.step`` calls)."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return loss.item()
