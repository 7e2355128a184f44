"""The torch backend: every op of the contract (``iwae_kernels.contract.OPS``) in plain PyTorch. It runs anywhere
(the default for CPU tensors) and documents each op's signature and semantics, which the Triton (``ops/``) and
CUDA (``cuda_backend``) backends match. The tests check every backend against their own float64 oracles
(tests/helpers.py), not against this module. Formulas follow ``docs/MATH.md``; half-precision inputs are
computed in float32 and float64 stays float64.

Shapes: k samples, B examples, D latent dimensions, P observed dimensions.
"""

import math

import torch

from ._autograd import once_differentiable
from .contract import ESTIMATOR_CODES, LOG_2PI, Estimator, accumulation_dtype

# softplus(y) = y above this: log1p(exp(-40)) = 4e-18 is below half a float64 ulp of 40 (F.softplus's default
# cut-off of 20 would be off by 2e-9 in float64).
SOFTPLUS_LINEAR_ABOVE = 40.0


def _as_dtype(tensor, dtype):
    """tensor in dtype (None stays None), skipping the call when it already is: a no-op .to() still costs host
    time, and a small loss is host-bound."""
    return tensor if tensor is None or tensor.dtype == dtype else tensor.to(dtype)


def _sample_and_latent_term(mu, logvar, eps, prior_mu, prior_logvar, include_prior, scale):
    """(z [k, B, D] in mu's dtype, scale * latent log-weight [k, B] in the accumulation dtype): the forward."""
    acc = accumulation_dtype(mu.dtype)
    up = lambda t: _as_dtype(t, acc)
    z, _, _, log_weight = _latent_terms(up(mu), up(logvar), up(eps), up(prior_mu), up(prior_logvar), include_prior)
    log_weight = log_weight.sum(-1) if scale is None else scale.to(acc) * log_weight.sum(-1)
    # No no-op .to(): under torch 2.11's dynamo a Function's forward output made by one loses its gradient.
    return (z if z.dtype == mu.dtype else z.to(mu.dtype)), log_weight


def _shifted_max(running_max):
    """The max used as the exp shift: -inf (every log-weight -inf) becomes 0 so exp() gives 0, not NaN."""
    return torch.where(torch.isneginf(running_max), torch.zeros_like(running_max), running_max)


def _latent_terms(mu, logvar, eps, prior_mu, prior_logvar, include_prior=True):
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


def weights_from_log_weight_grad(grad_log_w):
    """DReG's normalized weights, read off the gradient that reaches the log-weights from ``iwae_bound``:
    dJ/d log w_i = g * wt_i, so wt_i = dJ/d log w_i / sum_j dJ/d log w_j. [k, B] -> [k, B]; a zero sum (g = 0,
    or every log-weight -inf) gives 0."""
    total = grad_log_w.sum(0, keepdim=True)
    return torch.where(total != 0, grad_log_w / torch.where(total != 0, total, 1), 0)


def _sum_to(grad, like):
    """Sum a [k, B, D] gradient over samples when the parameter was shared by all k ([B, D])."""
    return grad.sum(0) if like.dim() == 2 else grad


class GaussianSampleFunction(torch.autograd.Function):
    """(mu, logvar, eps, prior_mu, prior_logvar) -> (z [k, B, D], log p(z) - log q(z|x) [k, B]) for the stl and
    dreg estimators.

    Their backward is written out (docs/MATH.md, "Backward") because it is not the derivative of the forward: they
    change the encoder-side gradient only. The total-derivative estimators (iwae, vae) use autograd of the same
    forward (``gaussian_sample``).
    """

    @staticmethod
    def forward(ctx, mu, logvar, eps, prior_mu, prior_logvar, estimator, include_prior=True, scale=None):
        ctx.save_for_backward(mu, logvar, eps, prior_mu, prior_logvar, scale)
        ctx.estimator, ctx.include_prior = estimator, include_prior
        ctx.set_materialize_grads(False)
        return _sample_and_latent_term(mu, logvar, eps, prior_mu, prior_logvar, include_prior, scale)

    @staticmethod
    @once_differentiable(lambda ctx: f"gaussian_sample (estimator={ctx.estimator!r})")
    def backward(ctx, grad_z, grad_log_weight):
        mu, logvar, eps, prior_mu, prior_logvar, scale = ctx.saved_tensors
        acc = accumulation_dtype(mu.dtype)
        up = lambda t: _as_dtype(t, acc)
        z, sigma, dlogp_dz, _ = _latent_terms(up(mu), up(logvar), up(eps), up(prior_mu), up(prior_logvar),
                                              ctx.include_prior)
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
        return _sample_and_latent_term(mu, logvar, eps.detach(), prior_mu, prior_logvar, include_prior, latent_scale)
    return GaussianSampleFunction.apply(mu, logvar, eps, prior_mu, prior_logvar, estimator, include_prior, latent_scale)


class BernoulliLogLikelihoodFunction(torch.autograd.Function):
    """logits y [k, B, P], x [B, P] -> sum_j x_j y_j - softplus(y_j) [k, B]; backward g (x - sigmoid(y)).

    Written out so that the CPU path costs less than the naive BCE-with-logits (3x less on a 2-core CPU at
    k=50, B=128, P=784): sum_j x_j y_j is one vecdot, softplus one vectorized kernel, and the backward one
    sigmoid plus two in-place passes (autograd of the formula took five [k, B, P] passes; logsigmoid and
    logaddexp run 2-3x slower than softplus here). binary_cross_entropy_with_logits itself turns a -inf logit
    with x = 1 into NaN.
    """

    @staticmethod
    def forward(ctx, logits, x):
        y = _as_dtype(logits, accumulation_dtype(logits.dtype))
        x = _as_dtype(x, y.dtype)
        ctx.save_for_backward(logits, x)
        return torch.linalg.vecdot(y, x) - torch.nn.functional.softplus(y, threshold=SOFTPLUS_LINEAR_ABOVE).sum(-1)

    @staticmethod
    @once_differentiable("bernoulli_log_likelihood")
    def backward(ctx, grad_log_lik):
        logits, x = ctx.saved_tensors
        grad = torch.sigmoid(_as_dtype(logits, x.dtype))
        torch.sub(x, grad, out=grad).mul_(_as_dtype(grad_log_lik, x.dtype).unsqueeze(-1))
        return _as_dtype(grad, logits.dtype), None


def bernoulli_log_likelihood(logits, x):
    """sum_j x_j y_j - softplus(y_j) over the last dim. logits [k, B, P], x [B, P] -> [k, B]."""
    return BernoulliLogLikelihoodFunction.apply(logits, x)


def gaussian_log_likelihood(mean, logvar, x):
    """Diagonal-Gaussian log-density of x summed over the last dim. mean, logvar [k, B, P], x [B, P] -> [k, B]."""
    acc = accumulation_dtype(mean.dtype)
    m, s = mean.to(acc), logvar.to(acc)
    diff = x.to(acc) - m
    return (-0.5 * LOG_2PI - 0.5 * s - 0.5 * diff * diff * torch.exp(-s)).sum(-1)


def fold_max_sum(running_max, running_sum, log_w):
    """Fold a chunk of log-weights [kc, B] into the running (max, sum of exp(log w - max)) state [B]."""
    chunk = _as_dtype(log_w, running_max.dtype)
    new_max = torch.maximum(running_max, chunk.amax(0))
    shift = _shifted_max(new_max)
    new_sum = running_sum * torch.exp(running_max - shift) + torch.exp(chunk - shift).sum(0)
    return new_max, new_sum


def bound_from_max_sum(running_max, running_sum, k):
    """L_k = max + log(sum) - log k; -inf when every log-weight was -inf."""
    return _shifted_max(running_max) + torch.log(running_sum) - math.log(k)


def _max_sum(log_w):
    acc = accumulation_dtype(log_w.dtype)
    start_max = torch.full(log_w.shape[1:], -math.inf, dtype=acc, device=log_w.device)
    return fold_max_sum(start_max, torch.zeros_like(start_max), log_w)


def _weights_from_max_sum(log_w, running_max, running_sum):
    ratio = torch.exp(_as_dtype(log_w, running_max.dtype) - _shifted_max(running_max))
    return torch.where(running_sum > 0, ratio / torch.where(running_sum > 0, running_sum, 1), 0)


class IWAEBoundFunction(torch.autograd.Function):
    """log_w [k, B] -> L_k [B]; backward: dJ/dlog_w = g * normalized weights (0 for an all -inf column)."""

    @staticmethod
    def forward(ctx, log_w):
        running_max, running_sum = _max_sum(log_w)
        ctx.save_for_backward(log_w, running_max, running_sum)
        return bound_from_max_sum(running_max, running_sum, log_w.shape[0])

    @staticmethod
    @once_differentiable("iwae_bound")
    def backward(ctx, grad_bound):
        log_w, running_max, running_sum = ctx.saved_tensors
        return _as_dtype(grad_bound * _weights_from_max_sum(log_w, running_max, running_sum), log_w.dtype)


def normalized_weights_backward(weights, grad_weights):
    """Softmax backward over dim 0: wt * (g - sum_i wt_i g_i). [k, B] -> [k, B]."""
    return weights * (grad_weights - (weights * grad_weights).sum(0, keepdim=True))


class NormalizedWeightsFunction(torch.autograd.Function):
    """log_w [k, B] -> softmax over samples [k, B], all-zero for an all -inf column: this backend's, or
    ``softmax(log_w, launchers)`` (a compiled backend's kernels); the backward is ``normalized_weights_backward``
    for every backend."""

    @staticmethod
    def forward(ctx, log_w, softmax=None, launchers=None):
        weights = _weights_from_max_sum(log_w, *_max_sum(log_w)) if softmax is None else softmax(log_w, launchers)
        ctx.save_for_backward(weights)
        ctx.input_dtype = log_w.dtype
        return weights

    @staticmethod
    @once_differentiable("normalized_weights")
    def backward(ctx, grad_weights):
        (weights,) = ctx.saved_tensors
        return _as_dtype(normalized_weights_backward(weights, grad_weights), ctx.input_dtype), None, None


def iwae_bound(log_w):
    """L_k = logsumexp over dim 0 minus log k. log_w [k, B] -> [B]."""
    return IWAEBoundFunction.apply(log_w)


def largest_finite(log_w):
    """log_w with +inf taken as its dtype's largest finite value: logsumexp's shift by the max would otherwise
    compute inf - inf = NaN. Its derivative there is 0."""
    return log_w.clamp(max=torch.finfo(log_w.dtype).max)


def reduced_loss(bound, reduction):
    """The loss -bound [B] reduced over the batch: "mean", "sum", or "none" ([B])."""
    if reduction == "mean":
        return -bound.mean()
    return -bound.sum() if reduction == "sum" else -bound


def iwae_loss_from_log_weights(log_w, bound, reduction):
    """-L_k reduced (``reduced_loss``) of log_w [k, B], by the backend's ``bound`` (its iwae_bound op)."""
    return reduced_loss(bound(largest_finite(log_w)), reduction)


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


def bernoulli_decoder_log_likelihood(hidden, weight, bias, x):
    """Bernoulli log p(x|z) of logits hidden @ weight.T + bias (materialized here; the kernels never write them).

    hidden [k, B, H], weight [P, H], bias [P], x [B, P] -> [k, B].
    """
    return bernoulli_log_likelihood(torch.nn.functional.linear(hidden, weight, bias), x)


def bernoulli_mlp_decoder_log_likelihood(z, weights, biases, x, latent_log_weight=None):
    """Bernoulli log p(x|z) through the decoder MLP Linear-tanh-Linear-tanh-Linear (+ latent_log_weight).

    z [k, B, D]; weights [H1, D], [H2, H1], [P, H2]; biases [H1], [H2], [P]; x [B, P];
    latent_log_weight [k, B] or None -> [k, B].
    """
    hidden = z
    for weight, bias in zip(weights[:-1], biases[:-1]):
        hidden = torch.tanh(torch.nn.functional.linear(hidden, weight, bias))
    log_lik = bernoulli_decoder_log_likelihood(hidden, weights[-1], biases[-1], x)
    return log_lik if latent_log_weight is None else log_lik + latent_log_weight


def local_reparam_linear(a, mu, var, bias, noise, generator):
    """Local reparameterization: b = a mu^T + sqrt((a * a) var^T) * noise + bias, noise ~ N(0, 1) [M, N] drawn
    from ``generator`` when None. a [M, K], mu and var [N, K], bias [N] or None -> [M, N]. d sqrt/d var at 0 is 0."""
    mean = torch.nn.functional.linear(a, mu, bias)
    var_out = (a * a) @ var.t()
    if noise is None:
        noise = torch.randn(var_out.shape, generator=generator, device=a.device, dtype=a.dtype)
    positive = var_out > 0
    return mean + torch.where(positive, torch.sqrt(torch.where(positive, var_out, 1)) * noise, 0)


def categorical_log_likelihood(logits, tokens, mask):
    """sum_t mask[b, t] log softmax(logits[k, b, t])[tokens[b, t]]: logits [k, B, T, V], tokens [B, T] int64,
    mask [B, T] -> [k, B]. Forms the log-probabilities (the kernels do not); a masked position adds 0."""
    kept = (mask != 0).unsqueeze(-1)
    # Masked positions are zeroed before the softmax: padding with -inf logits must give 0, not a NaN gradient.
    logits = torch.where(kept, logits.to(accumulation_dtype(logits.dtype)), 0)
    picked = torch.log_softmax(logits, -1).gather(-1, tokens.expand(logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    return torch.where(mask != 0, mask.to(picked.dtype) * picked, 0).sum(-1)
