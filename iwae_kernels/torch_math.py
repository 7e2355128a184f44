"""Plain-PyTorch formulas that more than one backend runs; every backend imports them from here and none
imports another backend.

- The IWAE bound from its (max, sum of exp(log w - max)) state, the loss's reductions over the batch, and the
  normalized weights' backward (``NormalizedWeightsFunction``, whose forward a compiled backend supplies through
  its launcher pair). The torch backend's bound ops are these formulas; the Triton and CUDA backends fold the
  state in kernels and reduce it here.
- DReG's normalized weights read off the gradient that reaches the log-weights (``estimators``).
- The Bernoulli log-likelihood and the dense decoder and local-reparameterization layers: the torch backend's ops,
  and the Triton backend's float64 path (tl.dot takes no float64 operands).

Shapes: k samples, B examples, P observed dimensions, H hidden units. Formulas follow ``docs/MATH.md``;
half-precision inputs are computed in float32 and float64 stays float64.
"""

import math

import torch

from ._autograd import once_differentiable
from .contract import accumulation_dtype


# softplus(y) = y above this: log1p(exp(-40)) = 4e-18 is below half a float64 ulp of 40 (F.softplus's default
# cut-off of 20 would be off by 2e-9 in float64).
SOFTPLUS_LINEAR_ABOVE = 40.0


def as_dtype(tensor, dtype):
    """tensor in dtype (None stays None), skipping the call when it already is: a no-op .to() still costs host
    time, and a small loss is host-bound."""
    return tensor if tensor is None or tensor.dtype == dtype else tensor.to(dtype)


def shifted_max(running_max):
    """The max used as the exp shift: -inf (every log-weight -inf) becomes 0 so exp() gives 0, not NaN."""
    return torch.where(torch.isneginf(running_max), torch.zeros_like(running_max), running_max)


def fold_max_sum(running_max, running_sum, log_w):
    """Fold a chunk of log-weights [kc, B] into the running (max, sum of exp(log w - max)) state [B]."""
    chunk = as_dtype(log_w, running_max.dtype)
    new_max = torch.maximum(running_max, chunk.amax(0))
    shift = shifted_max(new_max)
    new_sum = running_sum * torch.exp(running_max - shift) + torch.exp(chunk - shift).sum(0)
    return new_max, new_sum


def max_and_sum(log_w):
    """The (max, sum of exp(log w - max)) state [B] of log_w [k, B], in the accumulation dtype."""
    acc = accumulation_dtype(log_w.dtype)
    start_max = torch.full(log_w.shape[1:], -math.inf, dtype=acc, device=log_w.device)
    return fold_max_sum(start_max, torch.zeros_like(start_max), log_w)


def bound_from_max_sum(running_max, running_sum, k):
    """L_k = max + log(sum) - log k; -inf when every log-weight was -inf."""
    return shifted_max(running_max) + torch.log(running_sum) - math.log(k)


def weights_from_max_sum(log_w, running_max, running_sum):
    """Normalized weights exp(log w - max) / sum [k, B] from log_w [k, B] and its state [B]; 0 for an all -inf
    column."""
    ratio = torch.exp(as_dtype(log_w, running_max.dtype) - shifted_max(running_max))
    return torch.where(running_sum > 0, ratio / torch.where(running_sum > 0, running_sum, 1), 0)


def normalized_weights_backward(weights, grad_weights):
    """Softmax backward over dim 0: wt * (g - sum_i wt_i g_i). [k, B] -> [k, B]."""
    return weights * (grad_weights - (weights * grad_weights).sum(0, keepdim=True))


class NormalizedWeightsFunction(torch.autograd.Function):
    """log_w [k, B] -> softmax over samples [k, B], all-zero for an all -inf column: by ``weights_from_max_sum``
    (the torch backend), or ``softmax(log_w, launchers)`` (a compiled backend's kernels); the backward is
    ``normalized_weights_backward`` for every backend."""

    @staticmethod
    def forward(ctx, log_w, softmax=None, launchers=None):
        weights = weights_from_max_sum(log_w, *max_and_sum(log_w)) if softmax is None else softmax(log_w, launchers)
        ctx.save_for_backward(weights)
        ctx.input_dtype = log_w.dtype
        return weights

    @staticmethod
    @once_differentiable("normalized_weights")
    def backward(ctx, grad_weights):
        (weights,) = ctx.saved_tensors
        return as_dtype(normalized_weights_backward(weights, grad_weights), ctx.input_dtype), None, None


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


def weights_from_log_weight_grad(grad_log_w):
    """DReG's normalized weights, read off the gradient that reaches the log-weights from ``iwae_bound``:
    dJ/d log w_i = g * wt_i, so wt_i = dJ/d log w_i / sum_j dJ/d log w_j. [k, B] -> [k, B]; a zero sum (g = 0,
    or every log-weight -inf) gives 0."""
    total = grad_log_w.sum(0, keepdim=True)
    return torch.where(total != 0, grad_log_w / torch.where(total != 0, total, 1), 0)


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
        y = as_dtype(logits, accumulation_dtype(logits.dtype))
        x = as_dtype(x, y.dtype)
        ctx.save_for_backward(logits, x)
        return torch.linalg.vecdot(y, x) - torch.nn.functional.softplus(y, threshold=SOFTPLUS_LINEAR_ABOVE).sum(-1)

    @staticmethod
    @once_differentiable("bernoulli_log_likelihood")
    def backward(ctx, grad_log_lik):
        logits, x = ctx.saved_tensors
        grad = torch.sigmoid(as_dtype(logits, x.dtype))
        torch.sub(x, grad, out=grad).mul_(as_dtype(grad_log_lik, x.dtype).unsqueeze(-1))
        return as_dtype(grad, logits.dtype), None


def bernoulli_log_likelihood(logits, x):
    """sum_j x_j y_j - softplus(y_j) over the last dim. logits [k, B, P], x [B, P] -> [k, B]."""
    return BernoulliLogLikelihoodFunction.apply(logits, x)


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
    log_lik = bernoulli_decoder_log_likelihood(hidden, weights[-1], biases[-1], x=x)
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
