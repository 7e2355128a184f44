"""The gradient estimators in one place: their names, what each assumes, and the one piece of the stl/dreg
gradient that the sampling kernels cannot compute themselves (docs/MATH.md, "Backward" and "Where DReG's identity holds").

The model's parameters (decoder, learned prior) get L_k's gradient under every estimator except those with an
objective of their own: "vae" gives them the k-sample ELBO's, "miwae", "ciwae" and "renyi" their bound's; the others
change only the gradient that reaches the variational parameters.

- ``"iwae"``, ``"vae"``, ``"iwae-resample"``: the exact derivative of their objective.
- ``"stl"``, ``"dreg"`` (path-derivative estimators): inside log q(z) the variational parameters are stopped,
  the samples are not. The sampling kernels do this by dropping log q's direct dependence on the (mu, logvar)
  they are given. That is right when (mu, logvar) are functions of the encoder's weights alone; when they are
  functions of an earlier sample too (q(h2|h1) in a two-stochastic-layer model), it also drops log q's
  dependence on that sample, which is a path term. ``conditional_density_path`` adds that term back.
  DReG's identity assumes log-weights of the form f(z) / q(z), so neither takes a KL-annealing weight
  beta != 1 (STL with beta is unbiased only at k = 1 and biased above; both are refused to keep the rule simple).
- ``"miwae"`` (``groups=M``), ``"ciwae"`` (``ciwae_beta``), ``"renyi"`` (``renyi_alpha``): the exact derivative of
  their objective, a function of the log-weights alone (``objective_bound``). k is the total sample count M * K.
- ``"piwae"`` (``groups=M``), ``"rws-dreg"``: the encoder and the model follow different objectives on one set of
  samples. The model computes the log-weights twice on the same samples: live, and with the samples and encoders
  stopped (``log_w_fixed``, where only the model's parameters are live); ``objective_bound`` takes the encoder's
  gradient from the first and the model's IWAE gradient from the second (two decoder passes).
- ``"rws"``, ``"vimco"`` (fixed-sample estimators): the samples come from the stopped encoder (no
  reparameterization path) and the model gets L_k's gradient from the log-weights at them; the encoder gets
  sum_i c_i d log q(z_i|x) / d phi at fixed z_i (``fixed_sample_bound``), c_i = wt_i for rws (wake-phi) and
  L_k - L_{-i} - wt_i for vimco (``leave_one_out_bounds``). For Gaussian latents the live log q comes in as
  ``wake_phi_term``, zero-valued with log q's gradient.
- ``"renyi"`` at fixed samples (``log_q`` given; latents with no reparameterization path, e.g. a sigmoid belief
  network's): the encoder gets sum_i (L_a - L_a^{-i} - wt^a_i) d log q(z_i|x), VIMCO's leave-one-out form for the
  Renyi bound (wt^a = softmax((1 - a) log w)); at a = 0 it is vimco's.
"""

import math
from collections.abc import Callable

import torch

from ._autograd import once_differentiable
from .contract import accumulation_dtype
from .torch_math import weights_from_log_weight_grad

# What the sampling kernels' backward can compute (``gaussian_sample``'s estimator); the others are built on them.
SAMPLING_ESTIMATORS = ("iwae", "vae", "stl", "dreg", "iwae-resample")
ESTIMATORS = SAMPLING_ESTIMATORS + ("miwae", "ciwae", "renyi", "piwae", "rws", "rws-dreg", "vimco")
PATH_ESTIMATORS = ("stl", "dreg")
GROUPED_ESTIMATORS = ("miwae", "piwae")
# Encoder gradient from the live log-weights, the model's from log-weights at fixed samples (two decoder passes).
ROUTED_ESTIMATORS = ("piwae", "rws-dreg")
# Samples from the stopped encoder; the encoder's gradient through log q(z_i|x) at the fixed samples alone.
FIXED_SAMPLE_ESTIMATORS = ("rws", "vimco")
# Estimators that also have a fixed-sample (score-function) form, chosen by passing log_q: the latents' own choice.
FIXED_SAMPLE_FORMS = ("renyi",)
# Estimators without a reparameterization path through a flow: rws and vimco need log q(z_K|x) at a fixed z_K (the
# flow's inverse), rws-dreg the stop-gradient that dreg lacks there.
NO_FLOW_ESTIMATORS = ("dreg", "rws", "rws-dreg", "vimco")

# Estimators whose gradient is a claim about the plain bound (beta = 1): the stl/dreg identities hold for
# log-weights f(z) / q(z), the resampling estimator's value and gradient are L_k's, and wake-phi's target is the
# posterior of the plain model (rws-dreg's identity is DReG's); vimco's -wt_i is d log w_i / d log q(z_i|x) = -1,
# which an annealed latent term makes -beta.
PLAIN_BOUND_ESTIMATORS = PATH_ESTIMATORS + ("iwae-resample", "rws", "rws-dreg", "vimco")

# A backend's iwae_bound ([k, B] -> [B]) or normalized_weights ([k, B] -> [k, B]), as the functions below take them.
LogWeightOp = Callable[[torch.Tensor], torch.Tensor]


def sampling_estimator(estimator: str) -> str:
    """The sampling kernels' estimator under ``estimator``: rws-dreg's encoder gradient is a weighted path
    derivative (stl's); rws samples with its encoder stopped, so any exact one serves; the others are their own or
    the exact derivative."""
    if estimator in SAMPLING_ESTIMATORS:
        return estimator
    return "stl" if estimator == "rws-dreg" else "iwae"


def check_estimator_options(estimator: str, k: int, groups: int | None = None, ciwae_beta: float | None = None,
                            renyi_alpha: float | None = None) -> tuple[int | None, float | None, float | None]:
    """Check ``groups`` (miwae, piwae: M groups of K = k / M samples), ``ciwae_beta`` (ciwae: in [0, 1]) and
    ``renyi_alpha`` (renyi: a finite real != 1) against the estimator, and k >= 2 for vimco; returns (groups,
    ciwae_beta, renyi_alpha) as (int or None, float or None, float or None)."""
    if estimator == "vimco" and k < 2:
        raise ValueError(f"k: estimator='vimco' needs k >= 2 samples (sample i's baseline is formed from the other "
                         f"k - 1), got k={k}")
    if estimator in GROUPED_ESTIMATORS:
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups: estimator={estimator!r} needs groups=M, an int >= 1 (k = M * K samples in "
                             f"M groups of K), got {groups!r}")
        if k % groups:
            raise ValueError(f"groups: k={k} samples do not split into groups={groups} groups of equal size "
                             "(k is the total M * K)")
    elif groups is not None:
        raise ValueError(f"groups: only estimator='miwae' or 'piwae' takes groups, got estimator={estimator!r}")
    if estimator == "ciwae":
        if isinstance(ciwae_beta, bool) or not isinstance(ciwae_beta, (int, float)) or not 0 <= ciwae_beta <= 1:
            raise ValueError(f"ciwae_beta: estimator='ciwae' needs ciwae_beta, a number in [0, 1] (the ELBO's share), "
                             f"got {ciwae_beta!r}")
        ciwae_beta = float(ciwae_beta)
    elif ciwae_beta is not None:
        raise ValueError(f"ciwae_beta: only estimator='ciwae' takes ciwae_beta, got estimator={estimator!r}")
    if estimator == "renyi":
        if (isinstance(renyi_alpha, bool) or not isinstance(renyi_alpha, (int, float))
                or not math.isfinite(renyi_alpha) or 1 - float(renyi_alpha) == 0):
            raise ValueError(f"renyi_alpha: estimator='renyi' needs renyi_alpha, a finite number other than 1 "
                             f"(0: L_k; the ELBO is the limit at 1), got {renyi_alpha!r}")
        renyi_alpha = float(renyi_alpha)
    elif renyi_alpha is not None:
        raise ValueError(f"renyi_alpha: only estimator='renyi' takes renyi_alpha, got estimator={estimator!r}")
    return groups, ciwae_beta, renyi_alpha


def grouped_bound(log_w: torch.Tensor, groups: int, bound: LogWeightOp) -> torch.Tensor:
    """MIWAE(M, K): the mean over M = ``groups`` consecutive groups of K samples of their K-sample bounds.
    log_w [M * K, B] -> [B]; ``bound`` is a backend's iwae_bound ([K, N] -> [N])."""
    k, batch = log_w.shape
    per_group = log_w.reshape(groups, k // groups, batch).transpose(0, 1).reshape(k // groups, groups * batch)
    return bound(per_group).reshape(groups, batch).mean(0)


def value_with_gradient(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """value [B] with surrogate's gradient; where the surrogate is not finite (-inf log-weights), value alone
    (zero gradient, never NaN)."""
    finite = torch.isfinite(surrogate)
    return torch.where(finite, surrogate + (value - torch.where(finite, surrogate, 0)).detach(), value)


def _weighted_sum(weights: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    """sum_i weights_i log w_i [B]; a zero weight on a -inf log-weight adds 0, not NaN."""
    return torch.where(weights > 0, weights * log_w, 0).sum(0)


def renyi_bound(log_w: torch.Tensor, renyi_alpha: float, bound: LogWeightOp) -> torch.Tensor:
    """The Renyi (VR-alpha) bound L_a = (logsumexp_i((1 - a) log w_i) - log k) / (1 - a) [B] of log_w [k, B]
    (Li & Turner 2016): L_k at a = 0, the ELBO in the limit a -> 1, above L_k (not a bound) for a < 0. Its
    gradient is sum_i softmax((1 - a) log w)_i d log w_i. ``bound``: a backend's iwae_bound."""
    scale = 1 - renyi_alpha
    value = bound(scale * log_w) / scale
    if scale < 0:  # an impossible sample (w_i = 0) makes w_i^(1 - a) infinite: L_a = -inf, as for the ELBO
        value = torch.where(torch.isneginf(log_w).any(0), -math.inf, value)
    return value


def leave_one_out_bounds(log_w: torch.Tensor) -> torch.Tensor:
    """VIMCO's baselines L_{-i} = log((sum_{j != i} w_j + G_{-i}) / k) [k, B] for log_w [k, B], k >= 2, with
    G_{-i} = exp(mean_{j != i} log w_j), the geometric mean of the others in sample i's place (Mnih & Rezende 2016).
    O(k B): the others' sum is the total less w_i, both scaled by the largest weight; the largest sample's
    is summed without it, since subtracting it would cancel the rest. An impossible sample (log w_j = -inf) makes
    G_{-i} = 0 for every i != j; an example with no possible sample gets -inf throughout, never NaN."""
    k = log_w.shape[0]
    top = log_w.amax(0)
    shift = torch.where(torch.isfinite(top), top, 0)
    scaled = torch.exp(log_w - shift)  # w_j / w_max, 0 for an impossible sample
    is_top = torch.zeros_like(log_w, dtype=torch.bool).scatter_(0, log_w.argmax(0, keepdim=True), True)
    others = torch.where(is_top, torch.where(is_top, 0, scaled).sum(0), scaled.sum(0) - scaled)
    # The mean of the other log-weights: -inf when one of them is impossible.
    possible = torch.isfinite(log_w)
    finite_sum = torch.where(possible, log_w, 0).sum(0)
    impossible_others = (~possible).sum(0) - (~possible).to(torch.int64)
    others_mean = torch.where(impossible_others > 0, -math.inf,
                              (finite_sum - torch.where(possible, log_w, 0)) / (k - 1))
    return shift + torch.log(others + torch.exp(others_mean - shift)) - math.log(k)


def fixed_sample_bound(estimator, log_w, log_q, bound, normalized_weights, renyi_alpha=None):
    """rws's, vimco's and fixed-sample renyi's objective [B]: its value (L_k; L_a for renyi) of log_w [k, B], the
    log-weights at fixed samples with the encoder stopped (its gradient the model's: wake-theta), plus the encoder's
    gradient sum_i c_i d log_q_i, log_q [k, B] the live log q(z_i|x) at those samples (only its gradient is used):
    c_i = wt_i (wake-phi) for "rws"; for "vimco" c_i = L_k - L_{-i} - wt_i (``leave_one_out_bounds``), VIMCO's
    score-function term plus L_k's own gradient through log w_i = log p(x, z_i) - log q(z_i|x) at fixed z_i; for
    "renyi" the same with L_a, its leave-one-out bounds and wt^a = softmax((1 - a) log w). A coefficient that is not
    finite (no possible sample; vimco's lone possible sample, whose baseline is -inf) is 0."""
    scale = 1 if estimator != "renyi" else 1 - renyi_alpha
    value = bound(log_w) if estimator != "renyi" else renyi_bound(log_w, renyi_alpha, bound)
    log_w = log_w.detach().to(value.dtype)
    weights = normalized_weights(scale * log_w)
    if estimator == "rws":
        coefficients = weights
    else:
        # L_a^{-i}: the geometric mean of w^(1 - a) is that of w raised to 1 - a, so the baselines are L_k's of
        # (1 - a) log w, divided by 1 - a.
        coefficients = value.detach() - leave_one_out_bounds(scale * log_w) / scale - weights
    coefficients = torch.where(torch.isfinite(coefficients), coefficients, 0)
    return value + (coefficients * (log_q - log_q.detach())).sum(0)


def objective_bound(estimator, log_w, bound, normalized_weights, *, log_w_fixed=None, groups=None, ciwae_beta=None,
                    renyi_alpha=None, log_q=None):
    """The per-example objective [B] of ``estimator`` (arguments already checked) whose gradient is its estimator.

    log_w [k, B]: the log-weights, their gradient the sampling kernels' (``sampling_estimator``); for rws and vimco
    (and renyi when log_q is given) at fixed samples with the encoder stopped, and log_q [k, B] the live log q(z_i|x)
    there (``fixed_sample_bound``).
    log_w_fixed [k, B]: the same values with the samples and encoders stopped, for piwae and rws-dreg. bound,
    normalized_weights: a backend's ops. Values: MIWAE's bound, CIWAE's ciwae_beta * ELBO + (1 - ciwae_beta) L_k,
    the Renyi bound L_a for renyi (``renyi_bound``), the k-sample ELBO for vae, L_k for the others (piwae's and
    rws-dreg's gradient: the encoder's from log_w, MIWAE's or (wt_i - wt_i^2) times the path derivative; the
    model's, L_k's, from log_w_fixed).
    """
    if estimator == "vae":
        return log_w.mean(0)
    if estimator == "miwae":
        return grouped_bound(log_w, groups, bound)
    if estimator == "ciwae":
        return ciwae_beta * log_w.mean(0) + (1 - ciwae_beta) * bound(log_w)
    if estimator in FIXED_SAMPLE_ESTIMATORS or log_q is not None:
        return fixed_sample_bound(
            estimator,
            log_w,
            log_q,
            bound=bound,
            normalized_weights=normalized_weights,
            renyi_alpha=renyi_alpha,
        )
    if estimator == "renyi":
        return renyi_bound(log_w, renyi_alpha, bound)
    if estimator not in ROUTED_ESTIMATORS:
        return bound(log_w)
    if estimator == "piwae":
        encoder_objective = lambda lw: grouped_bound(lw, groups, bound)
    else:
        weights = normalized_weights(log_w.detach())
        # Tucker et al. 2019: E[sum_i wt_i d log q(z_i)/d phi] = E[sum_i (wt_i - wt_i^2) (d log w_i/d z_i) dz_i/d phi]
        encoder_objective = lambda lw: _weighted_sum(weights - weights * weights, lw)
    value = bound(log_w_fixed)
    # The model's parameters get encoder_objective's gradient from log_w and L_k's minus it from log_w_fixed.
    surrogate = encoder_objective(log_w) + value - encoder_objective(log_w_fixed)
    return value_with_gradient(value.detach(), surrogate)


def check_latent_scale(name: str, estimator: str, scale: torch.Tensor | None) -> None:
    """Refuse a latent weight (beta != 1, already reduced to None when it is 1) with a plain-bound estimator."""
    if scale is not None and estimator in PLAIN_BOUND_ESTIMATORS:
        raise ValueError(
            f"{name}: estimator={estimator!r} needs the plain bound (beta = 1), not an annealed latent term; "
            "use estimator='iwae' (or 'vae') during KL warm-up")


class ConditionalDensityPathFunction(torch.autograd.Function):
    """Value 0 [k, B]; backward: the derivative of -log N(z; density_mu, density_logvar) at fixed z, sent into
    (density_mu, density_logvar) and weighted as the estimator weights a path term (g wt_i for stl, g wt_i^2 for
    dreg). docs/MATH.md, "Two stochastic layers".

    z [k, B, D] (detached); density_mu, density_logvar [k, B, D].
    """

    @staticmethod
    def forward(ctx, z, density_mu, density_logvar, estimator):
        ctx.save_for_backward(z, density_mu, density_logvar)
        ctx.estimator = estimator
        return torch.zeros(z.shape[:-1], dtype=accumulation_dtype(z.dtype), device=z.device)

    @staticmethod
    @once_differentiable(lambda ctx: f"gaussian_sample (estimator={ctx.estimator!r}, density_mu/density_logvar)")
    def backward(ctx, grad_log_w):
        z, mu, logvar = ctx.saved_tensors
        acc = accumulation_dtype(mu.dtype)
        weight = grad_log_w.to(acc)
        if ctx.estimator == "dreg":
            weight = weight * weights_from_log_weight_grad(weight)
        weight = weight.unsqueeze(-1)
        precision = torch.exp(-logvar.to(acc))
        diff = z.to(acc) - mu.to(acc)
        # -log N(z; m, s) = 0.5 s + 0.5 (z - m)^2 e^{-s} + const: d/dm = -(z - m) e^{-s}, d/ds = 0.5 - 0.5 (z - m)^2 e^{-s}
        grad_mu = weight * (-diff * precision)
        grad_logvar = weight * (0.5 - 0.5 * diff * diff * precision)
        return None, grad_mu.to(mu.dtype), grad_logvar.to(logvar.dtype), None


def wake_phi_term(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log q(z_i|x) at fixed samples as the fixed-sample estimators use it (``fixed_sample_bound``'s log_q): a [k, B]
    tensor of zeros whose incoming gradient g_i goes into (mu, logvar) as g_i d log N(z_i; mu, exp(logvar)) /
    d(mu, logvar) at fixed z_i. Added to log-weights at fixed samples, L_k's g wt_i reaches it: wake-phi, so
    minimizing -L_k raises sum_i wt_i log q(z_i|x) (Bornschein & Bengio 2015).

    z [k, B, D] (detached); mu, logvar [B, D] or [k, B, D], q's parameters with the encoder live.
    """
    shape = z.shape
    return -ConditionalDensityPathFunction.apply(z.detach(), mu.expand(shape), logvar.expand(shape), "stl")


def conditional_density_path(z: torch.Tensor, density_mu: torch.Tensor, density_logvar: torch.Tensor,
                             estimator: str) -> torch.Tensor | None:
    """The path term a path estimator needs when q's parameters depend on earlier samples: a [k, B] tensor of
    zeros to add to the log-weights, whose gradient flows into (density_mu, density_logvar) only for "stl" and
    "dreg" (None for the exact estimators, which need no correction).

    z: the samples [k, B, D] drawn from N(mu, exp(logvar)); density_mu, density_logvar [k, B, D]: the same values
    as (mu, logvar) recomputed with the encoder's weights detached, from the live earlier sample.
    """
    if estimator not in PATH_ESTIMATORS:
        return None
    return ConditionalDensityPathFunction.apply(z.detach(), density_mu, density_logvar, estimator)
