"""Observation log-likelihoods reduced over P: Bernoulli (logits) and diagonal Gaussian (mean, logvar).

Rows are the k * B (sample, example) pairs; the data row of row r is r % B, so x [B, P] is never
expanded to [k, B, P]. Forward reads the decoder output once and writes [k, B]; backward reads it once
more and writes its gradient, scaled by the upstream g * wt_i per row.
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..contract import Likelihood, accumulation_dtype
from .utils import (HALF_LOG_2PI, Launchers, bernoulli_grad, bernoulli_log_prob, cdiv, library_op, row_tile,
                    triton_accumulation_dtype)

# The likelihood codes (contract.Likelihood), as constexprs the kernels compare against.
BERNOULLI, GAUSSIAN = tl.constexpr(int(Likelihood.BERNOULLI)), tl.constexpr(int(Likelihood.GAUSSIAN))


@triton.jit
def _load_tile(first_ptr, x_ptr, rows, row_mask, x_rows, p0, P, ACC: tl.constexpr, BLOCK_P: tl.constexpr):
    """Columns p0 .. p0 + BLOCK_P of the rows: the mask, flat offsets, x (row r reads data row r % B), first."""
    cols = p0 + tl.arange(0, BLOCK_P)
    mask = row_mask[:, None] & (cols < P)[None, :]
    offsets = rows[:, None] * P + cols[None, :]
    x = tl.load(x_ptr + x_rows[:, None] * P + cols[None, :], mask=mask, other=0.0).to(ACC)
    first = tl.load(first_ptr + offsets, mask=mask, other=0.0).to(ACC)
    return mask, offsets, x, first


@triton.jit
def _log_likelihood_fwd_kernel(
    first_ptr, second_ptr, x_ptr, out_ptr, R, B, P,
    LIKELIHOOD: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """out [R = k * B] = sum_j of the log-density of x [B, P] (row r uses x[r % B]) under the row's parameters:
    BERNOULLI: logits first [R, P], x y - softplus(y); GAUSSIAN: mean first and log-variance second [R, P]
    (docs/MATH.md, "Forward"). Grid: cdiv(R, BLOCK_R), each program walking P in BLOCK_P chunks.
    Reads R * P parameters once (twice that for the Gaussian), x from cache, writes R."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    x_rows = rows % B
    total = tl.zeros([BLOCK_R], ACC)
    for p0 in range(0, P, BLOCK_P):
        mask, offsets, x, first = _load_tile(first_ptr, x_ptr, rows, row_mask, x_rows, p0, P, ACC, BLOCK_P)
        if LIKELIHOOD == BERNOULLI:
            term = bernoulli_log_prob(x, first)
        else:
            logvar = tl.load(second_ptr + offsets, mask=mask, other=0.0).to(ACC)
            diff = x - first
            term = -0.5 * logvar - 0.5 * diff * diff * tl.exp(-logvar)
        total += tl.sum(tl.where(mask, term, 0.0), axis=1)
    if LIKELIHOOD == GAUSSIAN:
        total -= tl.full([], HALF_LOG_2PI, ACC) * P
    tl.store(out_ptr + rows, total, mask=row_mask)


@triton.jit
def _log_likelihood_bwd_kernel(
    first_ptr, second_ptr, x_ptr, grad_out_ptr, grad_first_ptr, grad_second_ptr, R, B, P,
    LIKELIHOOD: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """grad_first [R, P] (and grad_second for GAUSSIAN) = grad_out [R] times the log-density's derivative:
    BERNOULLI x - sigmoid(y); GAUSSIAN (x - m) e^{-s} and 0.5 (x - m)^2 e^{-s} - 0.5 (docs/MATH.md, "Backward").
    Grid: cdiv(R, BLOCK_R). Reads the parameters once and writes their gradients once."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    x_rows = rows % B
    scale = tl.load(grad_out_ptr + rows, mask=row_mask, other=0.0).to(ACC)[:, None]
    for p0 in range(0, P, BLOCK_P):
        mask, offsets, x, first = _load_tile(first_ptr, x_ptr, rows, row_mask, x_rows, p0, P, ACC, BLOCK_P)
        if LIKELIHOOD == BERNOULLI:
            grad_first = scale * bernoulli_grad(x, first)
        else:
            logvar = tl.load(second_ptr + offsets, mask=mask, other=0.0).to(ACC)
            diff = x - first
            scaled_sq = diff * diff * tl.exp(-logvar)
            grad_first = scale * diff * tl.exp(-logvar)
            grad_logvar = scale * (0.5 * scaled_sq - 0.5)
            tl.store(grad_second_ptr + offsets, grad_logvar.to(grad_second_ptr.dtype.element_ty), mask=mask)
        tl.store(grad_first_ptr + offsets, grad_first.to(grad_first_ptr.dtype.element_ty), mask=mask)


@library_op("triton_log_likelihood_forward", ("out",))
def _triton_forward(first: Tensor, second: Optional[Tensor], x: Tensor, out: Tensor, likelihood: int) -> None:
    num_samples, batch, size = first.shape
    block_rows, block_cols = row_tile(size, first.dtype)
    _log_likelihood_fwd_kernel[(cdiv(num_samples * batch, block_rows),)](
        first_ptr=first, second_ptr=first if second is None else second, x_ptr=x, out_ptr=out,
        R=num_samples * batch, B=batch, P=size, LIKELIHOOD=likelihood, ACC=triton_accumulation_dtype(first.dtype),
        BLOCK_R=block_rows, BLOCK_P=block_cols,
    )


@library_op("triton_log_likelihood_backward", ("grad_first", "grad_second"))
def _triton_backward(first: Tensor, second: Optional[Tensor], x: Tensor, grad_out: Tensor, grad_first: Tensor,
                     grad_second: Optional[Tensor], likelihood: int) -> None:
    num_samples, batch, size = first.shape
    block_rows, block_cols = row_tile(size, first.dtype)
    _log_likelihood_bwd_kernel[(cdiv(num_samples * batch, block_rows),)](
        first_ptr=first, second_ptr=first if second is None else second, x_ptr=x, grad_out_ptr=grad_out,
        grad_first_ptr=grad_first, grad_second_ptr=grad_first if grad_second is None else grad_second,
        R=num_samples * batch, B=batch, P=size, LIKELIHOOD=likelihood, ACC=triton_accumulation_dtype(first.dtype),
        BLOCK_R=block_rows, BLOCK_P=block_cols,
    )


TRITON_LAUNCHERS = Launchers(_triton_forward, _triton_backward)


class LogLikelihoodFunction(torch.autograd.Function):
    """(first [k, B, P], second [k, B, P] or None, x [B, P]) -> log p(x|z) [k, B]; x gets no gradient.

    first/second are (logits, None) for Bernoulli and (mean, logvar) for Gaussian; ``launchers`` says whose
    kernels run.
    """

    @staticmethod
    def forward(ctx, first, second, x, likelihood, launchers):
        first, x = first.contiguous(), x.contiguous()
        second = None if second is None else second.contiguous()
        out = torch.empty(first.shape[:2], dtype=accumulation_dtype(first.dtype), device=first.device)
        launchers.forward(first, second, x, out, likelihood)
        ctx.save_for_backward(first, second, x)
        ctx.likelihood, ctx.launchers = likelihood, launchers
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        first, second, x = ctx.saved_tensors
        grad_first = torch.empty_like(first)
        grad_second = None if second is None else torch.empty_like(second)
        ctx.launchers.backward(first, second, x, grad_out.contiguous(), grad_first, grad_second, ctx.likelihood)
        return grad_first, grad_second, None, None, None


def bernoulli_log_likelihood(logits, x, launchers=TRITON_LAUNCHERS):
    """sum_j x_j y_j - softplus(y_j) over the last dim. logits [k, B, P], x [B, P] -> [k, B]."""
    return LogLikelihoodFunction.apply(logits, None, x, int(Likelihood.BERNOULLI), launchers)


def gaussian_log_likelihood(mean, logvar, x, launchers=TRITON_LAUNCHERS):
    """Diagonal-Gaussian log-density of x summed over the last dim. mean, logvar [k, B, P], x [B, P] -> [k, B]."""
    return LogLikelihoodFunction.apply(mean, logvar, x, int(Likelihood.GAUSSIAN), launchers)
