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
def _row_starts(rows, B, P, first_stride_k, first_stride_b, second_stride_k, second_stride_b, STRIDED: tl.constexpr):
    """Where row r = (sample r // B, example r % B) of first and second [k, B, P] starts: decoder outputs may be
    views (mean, logvar = out.chunk(2, -1)), read in place, not copied. Contiguous inputs (not STRIDED) share the
    outputs' offsets r * P: separate address vectors per tensor cost registers (the Gaussian backward went from
    96 to 158 on sm_90, benchmarks/aot_report.py)."""
    if STRIDED:
        first_rows = (rows // B) * first_stride_k + (rows % B) * first_stride_b
        second_rows = (rows // B) * second_stride_k + (rows % B) * second_stride_b
    else:
        first_rows = rows * P
        second_rows = first_rows
    return first_rows, second_rows


@triton.jit
def _load_tile(first_ptr, x_ptr, first_rows, rows, row_mask, x_rows, p0, P, ACC: tl.constexpr,
               BLOCK_P: tl.constexpr):
    """Columns p0 .. p0 + BLOCK_P of the rows: the mask, the columns, flat offsets into a contiguous [R, P]
    output, x (row r reads data row r % B), first (row r starting at first_rows[r])."""
    cols = p0 + tl.arange(0, BLOCK_P)
    mask = row_mask[:, None] & (cols < P)[None, :]
    offsets = rows[:, None] * P + cols[None, :]
    x = tl.load(x_ptr + x_rows[:, None] * P + cols[None, :], mask=mask, other=0.0).to(ACC)
    first = tl.load(first_ptr + first_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
    return mask, cols, offsets, x, first


@triton.jit
def _log_likelihood_fwd_kernel(
    first_ptr, second_ptr, x_ptr, latent_ptr, out_ptr, R, B, P,
    first_stride_k, first_stride_b, second_stride_k, second_stride_b,
    LIKELIHOOD: tl.constexpr, ADD_LATENT: tl.constexpr, STRIDED: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """out [R = k * B] = sum_j of the log-density of x [B, P] (row r uses x[r % B]) under the row's parameters:
    BERNOULLI: logits first [R, P], x y - softplus(y); GAUSSIAN: mean first and log-variance second [R, P]
    (docs/MATH.md, "Forward"); plus latent [R] when ADD_LATENT (then out is the log-weight). first and second
    are [k, B, P] with the given sample and example strides and unit column stride. Grid: cdiv(R, BLOCK_R), each
    program walking P in BLOCK_P chunks.
    Reads R * P parameters once (twice that for the Gaussian), x from cache, writes R."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    x_rows = rows % B
    first_rows, second_rows = _row_starts(rows, B, P, first_stride_k, first_stride_b, second_stride_k,
                                          second_stride_b, STRIDED)
    total = tl.zeros([BLOCK_R], ACC)
    for p0 in range(0, P, BLOCK_P):
        mask, cols, _, x, first = _load_tile(first_ptr, x_ptr, first_rows, rows, row_mask, x_rows, p0, P, ACC,
                                             BLOCK_P)
        if LIKELIHOOD == BERNOULLI:
            term = bernoulli_log_prob(x, first)
        else:
            logvar = tl.load(second_ptr + second_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
            diff = x - first
            term = -0.5 * logvar - 0.5 * diff * diff * tl.exp(-logvar)
        total += tl.sum(tl.where(mask, term, 0.0), axis=1)
    if LIKELIHOOD == GAUSSIAN:
        total -= tl.full([], HALF_LOG_2PI, ACC) * P
    if ADD_LATENT:
        total += tl.load(latent_ptr + rows, mask=row_mask, other=0.0).to(ACC)
    tl.store(out_ptr + rows, total, mask=row_mask)


@triton.jit
def _log_likelihood_bwd_kernel(
    first_ptr, second_ptr, x_ptr, grad_out_ptr, grad_first_ptr, grad_second_ptr,
    log_w_ptr, max_ptr, sum_ptr, grad_log_w_ptr, R, B, P, grad_loss_stride, loss_divisor,
    first_stride_k, first_stride_b, second_stride_k, second_stride_b,
    LIKELIHOOD: tl.constexpr, FROM_BOUND: tl.constexpr, STRIDED: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """grad_first [R, P] (and grad_second for GAUSSIAN) = the row's upstream gradient times the log-density's
    derivative: BERNOULLI x - sigmoid(y); GAUSSIAN (x - m) e^{-s} and 0.5 (x - m)^2 e^{-s} - 0.5 (docs/MATH.md,
    "Backward"). The upstream gradient is grad_out [R]; with FROM_BOUND it is the loss's: g_b wt_r, from
    grad_out = dJ/d loss [B] or [] (grad_loss_stride 0; the loss is -sum_b L_b / loss_divisor, so
    g_b = -grad_out / loss_divisor), the log-weights log_w [R] and their fold's max, sum [B]; it is also written
    to grad_log_w [R] (the latent term's gradient). A +inf log-weight,
    which the fold read as the largest finite value, gets 0 (a clamp's derivative). first and second are strided
    as in the forward; their gradients are contiguous [R, P].
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
    first_rows, second_rows = _row_starts(rows, B, P, first_stride_k, first_stride_b, second_stride_k,
                                          second_stride_b, STRIDED)
    for p0 in range(0, P, BLOCK_P):
        mask, cols, offsets, x, first = _load_tile(first_ptr, x_ptr, first_rows, rows, row_mask, x_rows, p0, P, ACC,
                                                   BLOCK_P)
        if LIKELIHOOD == BERNOULLI:
            grad_first = scale * bernoulli_grad(x, first)
        else:
            logvar = tl.load(second_ptr + second_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
            diff = x - first
            scaled_sq = diff * diff * tl.exp(-logvar)
            grad_first = scale * diff * tl.exp(-logvar)
            grad_logvar = scale * (0.5 * scaled_sq - 0.5)
            tl.store(grad_second_ptr + offsets, grad_logvar.to(grad_second_ptr.dtype.element_ty), mask=mask)
        tl.store(grad_first_ptr + offsets, grad_first.to(grad_first_ptr.dtype.element_ty), mask=mask)


def _strides(first, second):
    """The kernels' sample and example strides of first and second (second None: first's), and STRIDED."""
    second = first if second is None else second
    return dict(first_stride_k=first.stride(0), first_stride_b=first.stride(1), second_stride_k=second.stride(0),
                second_stride_b=second.stride(1), STRIDED=not (first.is_contiguous() and second.is_contiguous()))


def _launch_forward(first, second, x, latent, out, likelihood):
    num_samples, batch, size = first.shape
    block_rows, block_cols = row_tile(size, first.dtype)
    _log_likelihood_fwd_kernel[(cdiv(num_samples * batch, block_rows),)](
        first_ptr=first, second_ptr=first if second is None else second, x_ptr=x,
        latent_ptr=out if latent is None else latent, out_ptr=out, R=num_samples * batch, B=batch, P=size,
        **_strides(first, second), LIKELIHOOD=likelihood, ADD_LATENT=latent is not None,
        ACC=triton_accumulation_dtype(first.dtype), BLOCK_R=block_rows, BLOCK_P=block_cols,
    )


def _launch_backward(first, second, x, grad_out, grad_first, grad_second, likelihood, bound_state=None,
                     loss_divisor=1):
    """bound_state: None (grad_out is per row), or (log_w, max, sum, grad_log_w) for the loss's gradient."""
    num_samples, batch, size = first.shape
    block_rows, block_cols = row_tile(size, first.dtype)
    log_w, running_max, running_sum, grad_log_w = bound_state or (grad_out,) * 4  # unused when bound_state is None
    _log_likelihood_bwd_kernel[(cdiv(num_samples * batch, block_rows),)](
        first_ptr=first, second_ptr=first if second is None else second, x_ptr=x, grad_out_ptr=grad_out,
        grad_first_ptr=grad_first, grad_second_ptr=grad_first if grad_second is None else grad_second,
        log_w_ptr=log_w, max_ptr=running_max, sum_ptr=running_sum, grad_log_w_ptr=grad_log_w,
        R=num_samples * batch, B=batch, P=size, grad_loss_stride=1 if grad_out.dim() else 0,
        loss_divisor=loss_divisor, **_strides(first, second), LIKELIHOOD=likelihood, FROM_BOUND=bound_state is not None,
        ACC=triton_accumulation_dtype(first.dtype), BLOCK_R=block_rows, BLOCK_P=block_cols,
    )


@library_op("triton_log_likelihood_forward", ("out",))
def _triton_forward(first: Tensor, second: Optional[Tensor], x: Tensor, out: Tensor, likelihood: int) -> None:
    _launch_forward(first, second, x, None, out, likelihood)


@library_op("triton_log_likelihood_backward", ("grad_first", "grad_second"))
def _triton_backward(first: Tensor, second: Optional[Tensor], x: Tensor, grad_out: Tensor, grad_first: Tensor,
                     grad_second: Optional[Tensor], likelihood: int) -> None:
    _launch_backward(first, second, x, grad_out, grad_first, grad_second, likelihood)


TRITON_LAUNCHERS = Launchers(_triton_forward, _triton_backward)


@library_op("triton_log_weight_forward", ("log_w",))
def _triton_log_weight_forward(first: Tensor, second: Optional[Tensor], x: Tensor, latent: Tensor, log_w: Tensor,
                               likelihood: int) -> None:
    _launch_forward(first, second, x, latent, log_w, likelihood)


@library_op("triton_iwae_loss_backward", ("grad_first", "grad_second", "grad_log_w"))
def _triton_loss_backward(first: Tensor, second: Optional[Tensor], x: Tensor, log_w: Tensor, running_max: Tensor,
                          running_sum: Tensor, grad_loss: Tensor, grad_first: Tensor, grad_second: Optional[Tensor],
                          grad_log_w: Tensor, likelihood: int, loss_divisor: int) -> None:
    _launch_backward(first, second, x, grad_loss, grad_first, grad_second, likelihood,
                     (log_w, running_max, running_sum, grad_log_w), loss_divisor)


class LogLikelihoodFunction(torch.autograd.Function):
    """(first [k, B, P], second [k, B, P] or None, x [B, P]) -> log p(x|z) [k, B]; x gets no gradient.

    first/second are (logits, None) for Bernoulli and (mean, logvar) for Gaussian; ``launchers`` says whose
    kernels run.
    """

    @staticmethod
    def forward(ctx, first, second, x, likelihood, launchers):
        first, second, x = unit_column_stride(first), unit_column_stride(second), x.contiguous()
        out = torch.empty(first.shape[:2], dtype=accumulation_dtype(first.dtype), device=first.device)
        launchers.forward(first, second, x, out, likelihood)
        ctx.save_for_backward(first, second, x)
        ctx.likelihood, ctx.launchers = likelihood, launchers
        return out

    @staticmethod
    @once_differentiable(lambda ctx: f"{Likelihood(ctx.likelihood).name.lower()}_log_likelihood")
    def backward(ctx, grad_out):
        first, second, x = ctx.saved_tensors
        grad_first, grad_second = dense_empty(first), dense_empty(second)
        ctx.launchers.backward(first, second, x, grad_out.contiguous(), grad_first, grad_second, ctx.likelihood)
        return grad_first, grad_second, None, None, None


def bernoulli_log_likelihood(logits, x, launchers=TRITON_LAUNCHERS):
    """sum_j x_j y_j - softplus(y_j) over the last dim. logits [k, B, P], x [B, P] -> [k, B]."""
    return LogLikelihoodFunction.apply(logits, None, x, int(Likelihood.BERNOULLI), launchers)


def gaussian_log_likelihood(mean, logvar, x, launchers=TRITON_LAUNCHERS):
    """Diagonal-Gaussian log-density of x summed over the last dim. mean, logvar [k, B, P], x [B, P] -> [k, B]."""
    return LogLikelihoodFunction.apply(mean, logvar, x, int(Likelihood.GAUSSIAN), launchers)


class IWAELossFunction(torch.autograd.Function):
    """(first [k, B, P], second [k, B, P] or None, x [B, P], latent [k, B]) -> -L_k reduced over the batch
    ("mean", "sum", or "none" for [B]), where log w = log p(x|z) + latent; x gets no gradient.

    The Triton backend's loss for the total-derivative and path estimators: see the module docstring.
    """

    @staticmethod
    def forward(ctx, first, second, x, latent, likelihood, reduction):
        first, second = unit_column_stride(first), unit_column_stride(second)
        x, latent = x.contiguous(), latent.contiguous()
        log_w = torch.empty(first.shape[:2], dtype=accumulation_dtype(first.dtype), device=first.device)
        _triton_log_weight_forward(first, second, x, latent, log_w, likelihood)
        running_max, running_sum, loss = logsumexp.max_sum_and_loss(log_w, reduction)
        ctx.save_for_backward(first, second, x, log_w, running_max, running_sum)
        ctx.likelihood, ctx.reduction, ctx.latent_dtype = likelihood, reduction, latent.dtype
        return loss

    @staticmethod
    @once_differentiable(lambda ctx: f"{Likelihood(ctx.likelihood).name.lower()}_iwae_loss")
    def backward(ctx, grad_loss):
        first, second, x, log_w, running_max, running_sum = ctx.saved_tensors
        grad_first, grad_second = dense_empty(first), dense_empty(second)
        grad_log_w = torch.empty_like(log_w)
        _triton_loss_backward(first, second, x, log_w, running_max, running_sum, grad_loss.contiguous(), grad_first,
                              grad_second, grad_log_w, ctx.likelihood,
                              logsumexp.loss_divisor(ctx.reduction, log_w.shape[1]))
        grad_latent = grad_log_w if grad_log_w.dtype == ctx.latent_dtype else grad_log_w.to(ctx.latent_dtype)
        return grad_first, grad_second, None, grad_latent, None, None


def bernoulli_iwae_loss(logits, x, latent_log_weight, reduction):
    """-L_k for log w = sum_j (x_j y_j - softplus(y_j)) + latent. logits [k, B, P], x [B, P], latent [k, B] ->
    a scalar ("mean", "sum") or [B] ("none")."""
    return IWAELossFunction.apply(logits, None, x, latent_log_weight, int(Likelihood.BERNOULLI), reduction)


def gaussian_iwae_loss(mean, logvar, x, latent_log_weight, reduction):
    """-L_k for log w = the diagonal-Gaussian log-density of x + latent. mean, logvar [k, B, P], x [B, P],
    latent [k, B] -> a scalar ("mean", "sum") or [B] ("none")."""
    return IWAELossFunction.apply(mean, logvar, x, latent_log_weight, int(Likelihood.GAUSSIAN), reduction)
