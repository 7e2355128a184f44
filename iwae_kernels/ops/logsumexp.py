"""Stable logsumexp over the k samples: the IWAE bound L_k, the normalized weights, and the streaming fold.

One pass over log_w [k, B] keeps an online (max, sum of exp(log w - max)) per example, the same
update FlashAttention uses for softmax; that state is also what the streaming evaluator folds chunk by
chunk, so k = 5000 never needs all log-weights at once.
"""

import math

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .. import reference
from .utils import shifted_max, triton_accumulation_dtype

BLOCK_EXAMPLES = 64
BLOCK_SAMPLES = 64
BLOCK_ELEMENTS = 1024


@triton.jit
def _max_sum_kernel(
    log_w_ptr, in_max_ptr, in_sum_ptr, out_max_ptr, out_sum_ptr, bound_ptr,
    K, B, log_k,
    ACCUMULATE: tl.constexpr, WRITE_BOUND: tl.constexpr, ACC: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr,
):
    # One program per block of examples walks all k samples: log_w rows are contiguous in B.
    cols = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    col_mask = cols < B
    if ACCUMULATE:
        running_max = tl.load(in_max_ptr + cols, mask=col_mask, other=float("-inf")).to(ACC)
        running_sum = tl.load(in_sum_ptr + cols, mask=col_mask, other=0.0).to(ACC)
    else:
        running_max = tl.full([BLOCK_B], float("-inf"), ACC)
        running_sum = tl.zeros([BLOCK_B], ACC)
    for k0 in range(0, K, BLOCK_K):
        rows = k0 + tl.arange(0, BLOCK_K)
        mask = (rows < K)[:, None] & col_mask[None, :]
        offsets = rows[:, None].to(tl.int64) * B + cols[None, :]
        chunk = tl.load(log_w_ptr + offsets, mask=mask, other=float("-inf")).to(ACC)
        new_max = tl.maximum(running_max, tl.max(chunk, axis=0))
        shift = shifted_max(new_max)
        running_sum = running_sum * tl.exp(running_max - shift) + tl.sum(tl.exp(chunk - shift[None, :]), axis=0)
        running_max = new_max
    tl.store(out_max_ptr + cols, running_max, mask=col_mask)
    tl.store(out_sum_ptr + cols, running_sum, mask=col_mask)
    if WRITE_BOUND:
        tl.store(bound_ptr + cols, shifted_max(running_max) + tl.log(running_sum) - log_k, mask=col_mask)


@triton.jit
def _normalized_weights_kernel(
    log_w_ptr, max_ptr, sum_ptr, scale_ptr, out_ptr, N, B,
    HAS_SCALE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    # Elementwise over [k, B]: wt = exp(log w - max) / sum, times the upstream gradient when given.
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < N
    cols = offsets % B
    log_w = tl.load(log_w_ptr + offsets, mask=mask, other=float("-inf")).to(ACC)
    running_max = tl.load(max_ptr + cols, mask=mask, other=0.0)
    running_sum = tl.load(sum_ptr + cols, mask=mask, other=0.0)
    safe_sum = tl.where(running_sum > 0, running_sum, 1.0)
    weights = tl.where(running_sum > 0, tl.exp(log_w - shifted_max(running_max)) / safe_sum, 0.0)
    if HAS_SCALE:
        weights = weights * tl.load(scale_ptr + cols, mask=mask, other=0.0).to(ACC)
    tl.store(out_ptr + offsets, weights.to(out_ptr.dtype.element_ty), mask=mask)


def _launch_max_sum(log_w, running_max=None, running_sum=None, write_bound=False):
    """Fold log_w [kc, B] into (max, sum) [B]; returns (max, sum, bound or None)."""
    log_w = log_w.contiguous()
    num_samples, batch = log_w.shape
    acc = reference.accumulation_dtype(log_w.dtype)
    accumulate = running_max is not None
    if accumulate:
        acc = running_max.dtype
        running_max, running_sum = running_max.contiguous(), running_sum.contiguous()
    out_max = torch.empty(batch, dtype=acc, device=log_w.device)
    out_sum = torch.empty_like(out_max)
    bound = torch.empty_like(out_max) if write_bound else out_max
    grid = (triton.cdiv(batch, BLOCK_EXAMPLES),)
    _max_sum_kernel[grid](
        log_w, running_max if accumulate else out_max, running_sum if accumulate else out_sum,
        out_max, out_sum, bound, num_samples, batch, math.log(num_samples),
        ACCUMULATE=accumulate, WRITE_BOUND=write_bound, ACC=triton_accumulation_dtype(acc),
        BLOCK_K=BLOCK_SAMPLES, BLOCK_B=BLOCK_EXAMPLES,
    )
    return out_max, out_sum, (bound if write_bound else None)


def _launch_normalized_weights(log_w, running_max, running_sum, scale, out_dtype):
    log_w = log_w.contiguous()
    out = torch.empty(log_w.shape, dtype=out_dtype, device=log_w.device)
    grid = (triton.cdiv(log_w.numel(), BLOCK_ELEMENTS),)
    _normalized_weights_kernel[grid](
        log_w, running_max, running_sum, running_max if scale is None else scale.contiguous(), out,
        log_w.numel(), log_w.shape[1],
        HAS_SCALE=scale is not None, ACC=triton_accumulation_dtype(running_max.dtype), BLOCK=BLOCK_ELEMENTS,
    )
    return out


class IWAEBoundFunction(torch.autograd.Function):
    """log_w [k, B] -> L_k [B] in one pass; backward writes g * normalized weights in one more."""

    @staticmethod
    def forward(ctx, log_w):
        running_max, running_sum, bound = _launch_max_sum(log_w, write_bound=True)
        ctx.save_for_backward(log_w, running_max, running_sum)
        return bound

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_bound):
        log_w, running_max, running_sum = ctx.saved_tensors
        return _launch_normalized_weights(log_w, running_max, running_sum, grad_bound, log_w.dtype)


class NormalizedWeightsFunction(reference.NormalizedWeightsFunction):
    """Kernel forward; the softmax backward is the reference's few [k, B] torch ops."""

    @staticmethod
    def forward(ctx, log_w):
        running_max, running_sum, _ = _launch_max_sum(log_w)
        weights = _launch_normalized_weights(log_w, running_max, running_sum, None, running_max.dtype)
        ctx.save_for_backward(weights)
        ctx.input_dtype = log_w.dtype
        return weights


def iwae_bound(log_w):
    """L_k = logsumexp over dim 0 minus log k. log_w [k, B] -> [B]."""
    return IWAEBoundFunction.apply(log_w)


def normalized_weights(log_w):
    """Self-normalized importance weights, softmax over dim 0. log_w [k, B] -> [k, B]."""
    return NormalizedWeightsFunction.apply(log_w)


def fold_max_sum(running_max, running_sum, log_w):
    """Fold a chunk of log-weights [kc, B] into the running (max, sum) state [B]; no autograd."""
    new_max, new_sum, _ = _launch_max_sum(log_w.detach(), running_max, running_sum)
    return new_max, new_sum
