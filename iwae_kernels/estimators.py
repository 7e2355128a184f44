"""The gradient estimators in one place: their names, what each assumes, and the one piece of the stl/dreg
gradient that the sampling kernels cannot compute themselves (docs/MATH.md, "Backward" and "Where DReG's identity holds").

An estimator changes only the gradient that reaches the variational parameters; every estimator gives the
model's parameters (decoder, learned prior) the IWAE gradient.

- ``"iwae"``, ``"vae"``, ``"iwae-resample"``: the exact derivative of their objective.
- ``"stl"``, ``"dreg"`` (path-derivative estimators): inside log q(z) the variational parameters are stopped,
  the samples are not. The sampling kernels do this by dropping log q's direct dependence on the (mu, logvar)
  they are given. That is right when (mu, logvar) are functions of the encoder's weights alone; when they are
  functions of an earlier sample too (q(h2|h1) in a two-stochastic-layer model), it also drops log q's
  dependence on that sample, which is a path term. ``conditional_density_path`` adds that term back.
  DReG's identity assumes log-weights of the form f(z) / q(z), so neither takes a KL-annealing weight
  beta != 1 (STL with beta is unbiased only at k = 1 and biased above; both are refused to keep the rule simple).
"""

import torch

from ._autograd import once_differentiable
from .contract import accumulation_dtype
from .torch_backend import weights_from_log_weight_grad

ESTIMATORS = ("iwae", "vae", "stl", "dreg", "iwae-resample")
PATH_ESTIMATORS = ("stl", "dreg")


# Estimators whose gradient is a claim about the plain bound (beta = 1): the stl/dreg identities hold for
# log-weights f(z) / q(z), and the resampling estimator's value and gradient are L_k's.
PLAIN_BOUND_ESTIMATORS = PATH_ESTIMATORS + ("iwae-resample",)


def check_latent_scale(name, estimator, scale):
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


def conditional_density_path(z, density_mu, density_logvar, estimator):
    """The path term a path estimator needs when q's parameters depend on earlier samples: a [k, B] tensor of
    zeros to add to the log-weights, whose gradient flows into (density_mu, density_logvar) only for "stl" and
    "dreg" (None for the exact estimators, which need no correction).

    z: the samples [k, B, D] drawn from N(mu, exp(logvar)); density_mu, density_logvar [k, B, D]: the same values
    as (mu, logvar) recomputed with the encoder's weights detached, from the live earlier sample.
    """
    if estimator not in PATH_ESTIMATORS:
        return None
    return ConditionalDensityPathFunction.apply(z.detach(), density_mu, density_logvar, estimator)
