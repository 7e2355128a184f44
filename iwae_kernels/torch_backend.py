"""The torch backend: every op of the contract (``iwae_kernels.contract.OPS``) in plain PyTorch. It runs anywhere
(the default for CPU tensors) and documents each op's signature and semantics, which the Triton (``ops/``) and
CUDA (``cuda_backend``) backends match. The tests check every backend against their own float64 oracles
(tests/helpers.py), not against this module. The ops whose formulas other backends share are written in
``torch_math``. Formulas follow ``docs/MATH.md``; half-precision inputs are computed in float32 and float64 stays
float64.

Shapes: k samples, B examples, D latent dimensions, P observed dimensions.
"""

import torch

from ._autograd import once_differentiable
from .contract import ESTIMATOR_CODES, LOG_2PI, Estimator, accumulation_dtype
from .torch_math import (NormalizedWeightsFunction, as_dtype, bernoulli_log_likelihood, bound_from_max_sum,
                         iwae_loss_from_log_weights, max_and_sum, weights_from_log_weight_grad, weights_from_max_sum)
# This backend's ops that live in torch_math: the dense layers' formulas are also the Triton backend's float64
# path, and the (max, sum) fold is the bound's own.
from .torch_math import bernoulli_decoder_log_likelihood, bernoulli_mlp_decoder_log_likelihood  # noqa: F401
from .torch_math import fold_max_sum, local_reparam_linear  # noqa: F401


def _sample_and_latent_term(mu, logvar, eps, *, prior_mu, prior_logvar, include_prior, scale):
    """(z [k, B, D] in mu's dtype, scale * latent log-weight [k, B] in the accumulation dtype): the forward."""
    acc = accumulation_dtype(mu.dtype)
    up = lambda t: as_dtype(t, acc)
    z, _, _, log_weight = _latent_terms(
        up(mu),
        up(logvar),
        up(eps),
        prior_mu=up(prior_mu),
        prior_logvar=up(prior_logvar),
        include_prior=include_prior,
    )
    log_weight = log_weight.sum(-1) if scale is None else scale.to(acc) * log_weight.sum(-1)
    # No no-op .to(): under torch 2.11's dynamo a Function's forward output made by one loses its gradient.
    return (z if z.dtype == mu.dtype else z.to(mu.dtype)), log_weight


def _latent_terms(mu, logvar, eps, *, prior_mu, prior_logvar, include_prior=True):
    """z, d log p(z)/dz, and the per-dimension latent log-weight log p(z) - log q(z|x) (log 2pi cancels);
    without the prior, -log q(z|x) (log 2pi included) and a zero d log p/dz."""
    sigma = torch.exp(0.5 * logvar)
    z = mu + sigma * eps
    if not include_prior:
        dlogp_dz = torch.zeros_like(z)
        log_p = torch.full_like(z, 0.5 * LOG_2PI)
    elif prior_mu is None:
        dlogp_dz = -z
        log_p = -0.5 * z * z
    else:
        precision = torch.exp(-prior_logvar)
        diff = z - prior_mu
        dlogp_dz = -diff * precision
        log_p = -0.5 * prior_logvar + 0.5 * diff * dlogp_dz
    return z, sigma, dlogp_dz, log_p + 0.5 * logvar + 0.5 * eps * eps


def _sum_to(grad, like):
    """Sum a [k, B, D] gradient over samples when the parameter was shared by all k ([B, D])."""
    return grad.sum(0) if like.dim() == 2 else grad


class TorchGaussianSampleFunction(torch.autograd.Function):
    """The torch backend's sampling for the stl and dreg estimators: (mu, logvar, eps, prior_mu, prior_logvar) ->
    (z [k, B, D], scale * (log p(z) - log q(z|x)) [k, B]), computed in the accumulation dtype.

    Their backward is written out (docs/MATH.md, "Backward") because it is not the derivative of the forward: they
    change the encoder-side gradient only. The total-derivative estimators (iwae, vae) use autograd of the same
    forward (``gaussian_sample``).
    """

    @staticmethod
    def forward(ctx, mu, logvar, eps, prior_mu, prior_logvar, estimator, include_prior=True, scale=None):
        ctx.save_for_backward(mu, logvar, eps, prior_mu, prior_logvar, scale)
        ctx.estimator, ctx.include_prior = estimator, include_prior
        ctx.set_materialize_grads(False)
        return _sample_and_latent_term(
            mu,
            logvar,
            eps,
            prior_mu=prior_mu,
            prior_logvar=prior_logvar,
            include_prior=include_prior,
            scale=scale,
        )

    @staticmethod
    @once_differentiable(lambda ctx: f"gaussian_sample (estimator={ctx.estimator!r})")
    def backward(ctx, grad_z, grad_log_weight):
        mu, logvar, eps, prior_mu, prior_logvar, scale = ctx.saved_tensors
        acc = accumulation_dtype(mu.dtype)
        up = lambda t: as_dtype(t, acc)
        z, sigma, dlogp_dz, _ = _latent_terms(
            up(mu),
            up(logvar),
            up(eps),
            prior_mu=up(prior_mu),
            prior_logvar=up(prior_logvar),
            include_prior=ctx.include_prior,
        )
        grad_z = torch.zeros_like(z) if grad_z is None else grad_z.to(acc)
        grad_a = torch.zeros(z.shape[:-1], dtype=acc, device=z.device) if grad_log_weight is None else grad_log_weight.to(acc)
        if scale is not None:
            grad_a = grad_a * scale.to(acc)
        ga = grad_a.unsqueeze(-1)
        eps = up(eps)
        # Path derivative only: d(-log q)/dz = eps / sigma, no score term (the total derivative would add
        # 0.5 * dJ/da to logvar's gradient).
        per_sample = grad_z + ga * (dlogp_dz + eps * torch.exp(-0.5 * up(logvar)))
        if ESTIMATOR_CODES[ctx.estimator] == Estimator.DOUBLY_REPARAMETERIZED:
            per_sample = per_sample * weights_from_log_weight_grad(grad_a).unsqueeze(-1)
        grad_mu, grad_logvar = per_sample, per_sample * 0.5 * sigma * eps
        grad_prior_mu = grad_prior_logvar = None
        if prior_mu is not None:
            precision = torch.exp(-up(prior_logvar))
            diff = z - up(prior_mu)
            grad_prior_mu = _sum_to(ga * diff * precision, prior_mu).to(prior_mu.dtype)
            grad_prior_logvar = _sum_to(ga * (-0.5 + 0.5 * diff * diff * precision), prior_logvar).to(prior_logvar.dtype)
        return (_sum_to(grad_mu, mu).to(mu.dtype), _sum_to(grad_logvar, logvar).to(logvar.dtype), None,
                grad_prior_mu, grad_prior_logvar, None, None, None)


def gaussian_sample(mu, logvar, k, eps, prior_mu, prior_logvar, estimator, generator, include_prior=True,
                    latent_scale=None):
    """z = mu + exp(logvar / 2) * eps and the latent log-weight; eps drawn from ``generator`` when None.

    mu, logvar: [B, D] or [k, B, D]; eps: [k, B, D] or None; prior_mu, prior_logvar: None, [B, D] or [k, B, D].
    Returns z [k, B, D] (mu's dtype) and latent_scale * (log p(z) - log q(z|x)) [k, B] (float32 for half inputs);
    without the prior the latent term is -log q(z|x). latent_scale: None or a 0-dim tensor.
    """
    if eps is None:
        shape = (k,) + tuple(mu.shape[-2:])
        eps = torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
    if ESTIMATOR_CODES[estimator] == Estimator.TOTAL_DERIVATIVE:
        # This estimator's gradient is autograd's derivative of the forward, and autograd's nodes cost less host time
        # than the Function's Python backward (a small loss is host-bound: benchmarks/bench_host.py).
        return _sample_and_latent_term(
            mu,
            logvar,
            eps.detach(),
            prior_mu=prior_mu,
            prior_logvar=prior_logvar,
            include_prior=include_prior,
            scale=latent_scale,
        )
    return TorchGaussianSampleFunction.apply(mu, logvar, eps, prior_mu, prior_logvar, estimator, include_prior, latent_scale)


def gaussian_log_likelihood(mean, logvar, x):
    """Diagonal-Gaussian log-density of x summed over the last dim. mean, logvar [k, B, P], x [B, P] -> [k, B]."""
    acc = accumulation_dtype(mean.dtype)
    m, s = mean.to(acc), logvar.to(acc)
    diff = x.to(acc) - m
    return (-0.5 * LOG_2PI - 0.5 * s - 0.5 * diff * diff * torch.exp(-s)).sum(-1)


class TorchIWAEBoundFunction(torch.autograd.Function):
    """The torch backend's bound: log_w [k, B] -> L_k [B] from torch's (max, sum) reduction (``max_and_sum``), which
    the forward saves; the backward is dJ/dlog_w = g * ``weights_from_max_sum`` (0 for an all -inf column)."""

    @staticmethod
    def forward(ctx, log_w):
        running_max, running_sum = max_and_sum(log_w)
        ctx.save_for_backward(log_w, running_max, running_sum)
        return bound_from_max_sum(running_max, running_sum, log_w.shape[0])

    @staticmethod
    @once_differentiable("iwae_bound")
    def backward(ctx, grad_bound):
        log_w, running_max, running_sum = ctx.saved_tensors
        return as_dtype(grad_bound * weights_from_max_sum(log_w, running_max, running_sum), log_w.dtype)


def iwae_bound(log_w):
    """L_k = logsumexp over dim 0 minus log k. log_w [k, B] -> [B]."""
    return TorchIWAEBoundFunction.apply(log_w)


def bernoulli_iwae_loss(logits, x, latent_log_weight, reduction):
    """-L_k for log w = sum_j (x_j y_j - softplus(y_j)) + latent. logits [k, B, P], x [B, P], latent [k, B] ->
    a scalar ("mean", "sum") or [B] ("none")."""
    return iwae_loss_from_log_weights(bernoulli_log_likelihood(logits, x) + latent_log_weight, iwae_bound, reduction)


def gaussian_iwae_loss(mean, logvar, x, latent_log_weight, reduction):
    """-L_k for log w = the diagonal-Gaussian log-density of x + latent. mean, logvar [k, B, P], x [B, P],
    latent [k, B] -> a scalar ("mean", "sum") or [B] ("none")."""
    return iwae_loss_from_log_weights(gaussian_log_likelihood(mean, logvar, x) + latent_log_weight, iwae_bound,
                                      reduction)


def normalized_weights(log_w):
    """Self-normalized importance weights, softmax over dim 0. log_w [k, B] -> [k, B]."""
    return NormalizedWeightsFunction.apply(log_w)


def categorical_log_likelihood(logits, tokens, mask):
    """sum_t mask[b, t] log softmax(logits[k, b, t])[tokens[b, t]]: logits [k, B, T, V], tokens [B, T] int64,
    mask [B, T] -> [k, B]. Forms the log-probabilities (the kernels do not); a masked position adds 0."""
    kept = (mask != 0).unsqueeze(-1)
    # Masked positions are zeroed before the softmax: padding with -inf logits must give 0, not a NaN gradient.
    logits = torch.where(kept, logits.to(accumulation_dtype(logits.dtype)), 0)
    picked = torch.log_softmax(logits, -1).gather(-1, tokens.expand(logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    return torch.where(mask != 0, mask.to(picked.dtype) * picked, 0).sum(-1)
