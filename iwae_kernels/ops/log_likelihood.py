"""Observation log-likelihoods reduced over P: Bernoulli (logits) and diagonal Gaussian (mean, logvar), and the
IWAE loss that ends in them.

Rows are the k * B (sample, example) pairs; the data row of row r is r % B, so x [B, P] is never
expanded to [k, B, P]. Forward reads the decoder output once and writes [k, B]; backward reads it once
more and writes its gradient, scaled by the upstream g * wt_i per row.

The loss (``IWAELossFunction``): forward writes the log-weights log p(x|z) + latent term in the likelihood's
pass and folds them with the logsumexp kernel; backward is the likelihood's pass alone, each row's g * wt_i
formed from the fold's saved (max, sum). One autograd node and three kernels for what the composed ops do in
six nodes and four kernels: a small loss is host-bound (benchmarks/bench_host.py).
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._autograd import once_differentiable
from ..contract import Likelihood, accumulation_dtype
from . import logsumexp
from .utils import (HALF_LOG_2PI, Launchers, bernoulli_grad, bernoulli_log_prob, cdiv, dense_empty, library_op,
                    normalized_weight, row_tile, triton_accumulation_dtype, unit_column_stride)

# The likelihood codes (contract.Likelihood), as constexprs the kernels compare against.
BERNOULLI, GAUSSIAN = tl.constexpr(int(Likelihood.BERNOULLI)), tl.constexpr(int(Likelihood.GAUSSIAN))


@triton.jit
def _row_starts(rows, B, P, logits_or_mean_stride_k, logits_or_mean_stride_b, logvar_stride_k, logvar_stride_b,
                STRIDED: tl.constexpr):
    """Where row r = (sample r // B, example r % B) of logits_or_mean and logvar [k, B, P] starts: decoder outputs
    may be views (mean, logvar = out.chunk(2, -1)), read in place, not copied. Contiguous inputs (not STRIDED)
    share the outputs' offsets r * P: separate address vectors per tensor cost registers (the Gaussian backward went
    from 96 to 158 on sm_90, benchmarks/aot_report.py)."""
    if STRIDED:
        logits_or_mean_rows = (rows // B) * logits_or_mean_stride_k + (rows % B) * logits_or_mean_stride_b
        logvar_rows = (rows // B) * logvar_stride_k + (rows % B) * logvar_stride_b
    else:
        logits_or_mean_rows = rows * P
        logvar_rows = logits_or_mean_rows
    return logits_or_mean_rows, logvar_rows


@triton.jit
def _load_tile(logits_or_mean_ptr, x_ptr, logits_or_mean_rows, rows, row_mask, x_rows, p0, P, ACC: tl.constexpr,
               BLOCK_P: tl.constexpr):
    """Columns p0 .. p0 + BLOCK_P of the rows: the mask, the columns, flat offsets into a contiguous [R, P]
    output, x (row r reads data row r % B), logits_or_mean (row r starting at logits_or_mean_rows[r])."""
    cols = p0 + tl.arange(0, BLOCK_P)
    mask = row_mask[:, None] & (cols < P)[None, :]
    offsets = rows[:, None] * P + cols[None, :]
    x = tl.load(x_ptr + x_rows[:, None] * P + cols[None, :], mask=mask, other=0.0).to(ACC)
    logits_or_mean = tl.load(logits_or_mean_ptr + logits_or_mean_rows[:, None] + cols[None, :], mask=mask,
                             other=0.0).to(ACC)
    return mask, cols, offsets, x, logits_or_mean


@triton.jit
def _log_likelihood_fwd_kernel(
    logits_or_mean_ptr, logvar_ptr, x_ptr, latent_ptr, out_ptr, R, B, P,
    logits_or_mean_stride_k, logits_or_mean_stride_b, logvar_stride_k, logvar_stride_b,
    LIKELIHOOD: tl.constexpr, ADD_LATENT: tl.constexpr, STRIDED: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """out [R = k * B] = sum_j of the log-density of x [B, P] (row r uses x[r % B]) under the row's parameters:
    BERNOULLI: logits_or_mean [R, P] holds the logits y, x y - softplus(y); GAUSSIAN: it holds the mean and logvar
    [R, P] the log-variance (docs/MATH.md, "Forward"); plus latent [R] when ADD_LATENT (then out is the log-weight).
    logits_or_mean and logvar are [k, B, P] with the given sample and example strides and unit column stride.
    Grid: cdiv(R, BLOCK_R), each program walking P in BLOCK_P chunks.
    Reads R * P parameters once (twice that for the Gaussian), x from cache, writes R."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    x_rows = rows % B
    logits_or_mean_rows, logvar_rows = _row_starts(rows, B, P, logits_or_mean_stride_k, logits_or_mean_stride_b,
                                                   logvar_stride_k, logvar_stride_b, STRIDED)
    total = tl.zeros([BLOCK_R], ACC)
    for p0 in range(0, P, BLOCK_P):
        mask, cols, _, x, logits_or_mean = _load_tile(logits_or_mean_ptr, x_ptr, logits_or_mean_rows, rows, row_mask,
                                                      x_rows, p0, P, ACC, BLOCK_P)
        if LIKELIHOOD == BERNOULLI:
            term = bernoulli_log_prob(x, logits_or_mean)
        else:
            logvar = tl.load(logvar_ptr + logvar_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
            diff = x - logits_or_mean
            term = -0.5 * logvar - 0.5 * diff * diff * tl.exp(-logvar)
        total += tl.sum(tl.where(mask, term, 0.0), axis=1)
    if LIKELIHOOD == GAUSSIAN:
        total -= tl.full([], HALF_LOG_2PI, ACC) * P
    if ADD_LATENT:
        total += tl.load(latent_ptr + rows, mask=row_mask, other=0.0).to(ACC)
    tl.store(out_ptr + rows, total, mask=row_mask)


@triton.jit
def _log_likelihood_bwd_kernel(
    logits_or_mean_ptr, logvar_ptr, x_ptr, grad_out_ptr, grad_logits_or_mean_ptr, grad_logvar_ptr,
    log_w_ptr, max_ptr, sum_ptr, grad_log_w_ptr, R, B, P, grad_loss_stride, loss_divisor,
    logits_or_mean_stride_k, logits_or_mean_stride_b, logvar_stride_k, logvar_stride_b,
    LIKELIHOOD: tl.constexpr, FROM_BOUND: tl.constexpr, STRIDED: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """grad_logits_or_mean [R, P] (and grad_logvar for GAUSSIAN) = the row's upstream gradient times the
    log-density's derivative: BERNOULLI x - sigmoid(y); GAUSSIAN (x - m) e^{-s} and 0.5 (x - m)^2 e^{-s} - 0.5
    (docs/MATH.md, "Backward"). The upstream gradient is grad_out [R]; with FROM_BOUND it is the loss's: g_b wt_r, from
    grad_out = dJ/d loss [B] or [] (grad_loss_stride 0; the loss is -sum_b L_b / loss_divisor, so
    g_b = -grad_out / loss_divisor), the log-weights log_w [R] and their fold's max, sum [B]; it is also written
    to grad_log_w [R] (the latent term's gradient). A +inf log-weight, which the fold read as the largest finite
    value, gets 0 (a clamp's derivative). logits_or_mean and logvar are strided as in the forward; their gradients
    are contiguous [R, P].
    Grid: cdiv(R, BLOCK_R). Reads the parameters once and writes their gradients once."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    x_rows = rows % B
    if FROM_BOUND:
        log_w = tl.load(log_w_ptr + rows, mask=row_mask, other=0.0).to(ACC)
        weight = normalized_weight(log_w, tl.load(max_ptr + x_rows, mask=row_mask, other=0.0).to(ACC),
                                   tl.load(sum_ptr + x_rows, mask=row_mask, other=0.0).to(ACC))
        grad_bound = -tl.load(grad_out_ptr + x_rows * grad_loss_stride, mask=row_mask, other=0.0).to(ACC) / loss_divisor
        scale = tl.where(log_w == float("inf"), 0.0, weight) * grad_bound
        tl.store(grad_log_w_ptr + rows, scale.to(grad_log_w_ptr.dtype.element_ty), mask=row_mask)
    else:
        scale = tl.load(grad_out_ptr + rows, mask=row_mask, other=0.0).to(ACC)
    scale = scale[:, None]
    logits_or_mean_rows, logvar_rows = _row_starts(rows, B, P, logits_or_mean_stride_k, logits_or_mean_stride_b,
                                                   logvar_stride_k, logvar_stride_b, STRIDED)
    for p0 in range(0, P, BLOCK_P):
        mask, cols, offsets, x, logits_or_mean = _load_tile(logits_or_mean_ptr, x_ptr, logits_or_mean_rows, rows,
                                                            row_mask, x_rows, p0, P, ACC, BLOCK_P)
        if LIKELIHOOD == BERNOULLI:
            grad_logits_or_mean = scale * bernoulli_grad(x, logits_or_mean)
        else:
            logvar = tl.load(logvar_ptr + logvar_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
            diff = x - logits_or_mean
            scaled_sq = diff * diff * tl.exp(-logvar)
            grad_logits_or_mean = scale * diff * tl.exp(-logvar)
            grad_logvar = scale * (0.5 * scaled_sq - 0.5)
            tl.store(grad_logvar_ptr + offsets, grad_logvar.to(grad_logvar_ptr.dtype.element_ty), mask=mask)
        tl.store(grad_logits_or_mean_ptr + offsets, grad_logits_or_mean.to(grad_logits_or_mean_ptr.dtype.element_ty),
                 mask=mask)


def _strides(logits_or_mean, logvar):
    """The kernels' sample and example strides of logits_or_mean and logvar (logvar None: logits_or_mean's), and
    STRIDED."""
    logvar = logits_or_mean if logvar is None else logvar
    return dict(logits_or_mean_stride_k=logits_or_mean.stride(0), logits_or_mean_stride_b=logits_or_mean.stride(1),
                logvar_stride_k=logvar.stride(0), logvar_stride_b=logvar.stride(1),
                STRIDED=not (logits_or_mean.is_contiguous() and logvar.is_contiguous()))


def _launch_forward(logits_or_mean, logvar, x, *, latent, out, likelihood):
    num_samples, batch, size = logits_or_mean.shape
    block_rows, block_cols = row_tile(size, logits_or_mean.dtype)
    _log_likelihood_fwd_kernel[(cdiv(num_samples * batch, block_rows),)](
        logits_or_mean_ptr=logits_or_mean, logvar_ptr=logits_or_mean if logvar is None else logvar, x_ptr=x,
        latent_ptr=out if latent is None else latent, out_ptr=out, R=num_samples * batch, B=batch, P=size,
        **_strides(logits_or_mean, logvar), LIKELIHOOD=likelihood, ADD_LATENT=latent is not None,
        ACC=triton_accumulation_dtype(logits_or_mean.dtype), BLOCK_R=block_rows, BLOCK_P=block_cols,
    )


def _launch_backward(logits_or_mean, logvar, x, *, grad_out, grad_logits_or_mean, grad_logvar, likelihood,
                     bound_state=None, loss_divisor=1):
    """bound_state: None (grad_out is per row), or (log_w, max, sum, grad_log_w) for the loss's gradient."""
    num_samples, batch, size = logits_or_mean.shape
    block_rows, block_cols = row_tile(size, logits_or_mean.dtype)
    log_w, running_max, running_sum, grad_log_w = bound_state or (grad_out,) * 4  # unused when bound_state is None
    _log_likelihood_bwd_kernel[(cdiv(num_samples * batch, block_rows),)](
        logits_or_mean_ptr=logits_or_mean, logvar_ptr=logits_or_mean if logvar is None else logvar, x_ptr=x,
        grad_out_ptr=grad_out, grad_logits_or_mean_ptr=grad_logits_or_mean,
        grad_logvar_ptr=grad_logits_or_mean if grad_logvar is None else grad_logvar,
        log_w_ptr=log_w, max_ptr=running_max, sum_ptr=running_sum, grad_log_w_ptr=grad_log_w,
        R=num_samples * batch, B=batch, P=size, grad_loss_stride=1 if grad_out.dim() else 0,
        loss_divisor=loss_divisor, **_strides(logits_or_mean, logvar), LIKELIHOOD=likelihood,
        FROM_BOUND=bound_state is not None, ACC=triton_accumulation_dtype(logits_or_mean.dtype), BLOCK_R=block_rows,
        BLOCK_P=block_cols,
    )


@library_op("triton_log_likelihood_forward", ("out",))
def _triton_forward(logits_or_mean: Tensor, logvar: Optional[Tensor], x: Tensor, out: Tensor, likelihood: int) -> None:
    _launch_forward(logits_or_mean, logvar, x, latent=None, out=out, likelihood=likelihood)


@library_op("triton_log_likelihood_backward", ("grad_logits_or_mean", "grad_logvar"))
def _triton_backward(logits_or_mean: Tensor, logvar: Optional[Tensor], x: Tensor, grad_out: Tensor,
                     grad_logits_or_mean: Tensor, grad_logvar: Optional[Tensor], likelihood: int) -> None:
    _launch_backward(
        logits_or_mean,
        logvar,
        x,
        grad_out=grad_out,
        grad_logits_or_mean=grad_logits_or_mean,
        grad_logvar=grad_logvar,
        likelihood=likelihood,
    )


TRITON_LAUNCHERS = Launchers(_triton_forward, _triton_backward)


@library_op("triton_log_weight_forward", ("log_w",))
def _triton_log_weight_forward(logits_or_mean: Tensor, logvar: Optional[Tensor], x: Tensor, latent: Tensor,
                               log_w: Tensor, likelihood: int) -> None:
    _launch_forward(logits_or_mean, logvar, x, latent=latent, out=log_w, likelihood=likelihood)


@library_op("triton_iwae_loss_backward", ("grad_logits_or_mean", "grad_logvar", "grad_log_w"))
def _triton_loss_backward(logits_or_mean: Tensor, logvar: Optional[Tensor], x: Tensor, log_w: Tensor,
                          running_max: Tensor, running_sum: Tensor, grad_loss: Tensor, grad_logits_or_mean: Tensor,
                          grad_logvar: Optional[Tensor], grad_log_w: Tensor, likelihood: int,
                          loss_divisor: int) -> None:
    _launch_backward(
        logits_or_mean,
        logvar,
        x,
        grad_out=grad_loss,
        grad_logits_or_mean=grad_logits_or_mean,
        grad_logvar=grad_logvar,
        likelihood=likelihood,
        bound_state=(log_w, running_max, running_sum, grad_log_w),
        loss_divisor=loss_divisor,
    )


class LogLikelihoodFunction(torch.autograd.Function):
    """(logits_or_mean [k, B, P], logvar [k, B, P] or None, x [B, P]) -> log p(x|z) [k, B]; x gets no gradient.

    (logits_or_mean, logvar) are (logits, None) for Bernoulli and (mean, logvar) for Gaussian; ``launchers`` says
    whose kernels run.
    """

    @staticmethod
    def forward(ctx, logits_or_mean, logvar, x, likelihood, launchers):
        logits_or_mean, logvar, x = unit_column_stride(logits_or_mean), unit_column_stride(logvar), x.contiguous()
        out = torch.empty(logits_or_mean.shape[:2], dtype=accumulation_dtype(logits_or_mean.dtype),
                          device=logits_or_mean.device)
        launchers.forward(logits_or_mean, logvar, x, out, likelihood)
        ctx.save_for_backward(logits_or_mean, logvar, x)
        ctx.likelihood, ctx.launchers = likelihood, launchers
        return out

    @staticmethod
    @once_differentiable(lambda ctx: f"{Likelihood(ctx.likelihood).name.lower()}_log_likelihood")
    def backward(ctx, grad_out):
        logits_or_mean, logvar, x = ctx.saved_tensors
        grad_logits_or_mean, grad_logvar = dense_empty(logits_or_mean), dense_empty(logvar)
        ctx.launchers.backward(logits_or_mean, logvar, x, grad_out.contiguous(), grad_logits_or_mean, grad_logvar,
                               ctx.likelihood)
        return grad_logits_or_mean, grad_logvar, None, None, None


def bernoulli_log_likelihood(logits, x, launchers=TRITON_LAUNCHERS):
    """sum_j x_j y_j - softplus(y_j) over the last dim. logits [k, B, P], x [B, P] -> [k, B]."""
    return LogLikelihoodFunction.apply(logits, None, x, int(Likelihood.BERNOULLI), launchers)


def gaussian_log_likelihood(mean, logvar, x, launchers=TRITON_LAUNCHERS):
    """Diagonal-Gaussian log-density of x summed over the last dim. mean, logvar [k, B, P], x [B, P] -> [k, B]."""
    return LogLikelihoodFunction.apply(mean, logvar, x, int(Likelihood.GAUSSIAN), launchers)


class IWAELossFunction(torch.autograd.Function):
    """(logits_or_mean [k, B, P], logvar [k, B, P] or None, x [B, P], latent [k, B]) -> -L_k reduced over the
    batch ("mean", "sum", or "none" for [B]), where log w = log p(x|z) + latent; x gets no gradient.

    The Triton backend's loss for the total-derivative and path estimators: see the module docstring.
    """

    @staticmethod
    def forward(ctx, logits_or_mean, logvar, x, latent, likelihood, reduction):
        logits_or_mean, logvar = unit_column_stride(logits_or_mean), unit_column_stride(logvar)
        x, latent = x.contiguous(), latent.contiguous()
        log_w = torch.empty(logits_or_mean.shape[:2], dtype=accumulation_dtype(logits_or_mean.dtype),
                            device=logits_or_mean.device)
        _triton_log_weight_forward(logits_or_mean, logvar, x, latent, log_w, likelihood)
        running_max, running_sum, loss = logsumexp.max_sum_and_loss(log_w, reduction)
        ctx.save_for_backward(logits_or_mean, logvar, x, log_w, running_max, running_sum)
        ctx.likelihood, ctx.reduction, ctx.latent_dtype = likelihood, reduction, latent.dtype
        return loss

    @staticmethod
    @once_differentiable(lambda ctx: f"{Likelihood(ctx.likelihood).name.lower()}_iwae_loss")
    def backward(ctx, grad_loss):
        logits_or_mean, logvar, x, log_w, running_max, running_sum = ctx.saved_tensors
        grad_logits_or_mean, grad_logvar = dense_empty(logits_or_mean), dense_empty(logvar)
        grad_log_w = torch.empty_like(log_w)
        _triton_loss_backward(logits_or_mean, logvar, x, log_w, running_max, running_sum, grad_loss.contiguous(),
                              grad_logits_or_mean, grad_logvar, grad_log_w, ctx.likelihood,
                              logsumexp.loss_divisor(ctx.reduction, log_w.shape[1]))
        grad_latent = grad_log_w if grad_log_w.dtype == ctx.latent_dtype else grad_log_w.to(ctx.latent_dtype)
        return grad_logits_or_mean, grad_logvar, None, grad_latent, None, None


def bernoulli_iwae_loss(logits, x, latent_log_weight, reduction):
    """-L_k for log w = sum_j (x_j y_j - softplus(y_j)) + latent. logits [k, B, P], x [B, P], latent [k, B] ->
    a scalar ("mean", "sum") or [B] ("none")."""
    return IWAELossFunction.apply(logits, None, x, latent_log_weight, int(Likelihood.BERNOULLI), reduction)


def gaussian_iwae_loss(mean, logvar, x, latent_log_weight, reduction):
    """-L_k for log w = the diagonal-Gaussian log-density of x + latent. mean, logvar [k, B, P], x [B, P],
    latent [k, B] -> a scalar ("mean", "sum") or [B] ("none")."""
    return IWAELossFunction.apply(mean, logvar, x, latent_log_weight, int(Likelihood.GAUSSIAN), reduction)
