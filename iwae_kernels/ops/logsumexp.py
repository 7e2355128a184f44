"""Stable logsumexp over the k samples: the IWAE bound L_k, the normalized weights, and the streaming fold.

One pass over log_w [k, B] keeps an online (max, sum of exp(log w - max)) per example, the same
update FlashAttention uses for softmax; that state is also what the streaming evaluator folds chunk by
chunk, so k = 5000 never needs all log-weights at once.

Split-k: one program per 64 examples leaves the GPU almost empty when B is small and k large (B = 20,
k = 5000: one program walking 5000 rows). Then the k rows are cut into splits, each program folds its split
into a partial logsumexp [splits, B], and the same kernel folds those partials (a partial's logsumexp is a
log-weight standing for its whole split, so the fold is exact) into (max, sum) and the bound.
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._autograd import once_differentiable
from .. import torch_math
from ..contract import accumulation_dtype
from .utils import (Launchers, cdiv, library_op, normalized_weight, sample_splits, shifted_max,
                    triton_accumulation_dtype)

BLOCK_EXAMPLES = 64
BLOCK_SAMPLES = 64
BLOCK_ELEMENTS = 1024
# The loss's fold runs as one program that also sums the batch (no torch mean and neg after it) while its last
# launch reads at most this many log-weights: 256 KB in float32, a few microseconds of one SM, about what the two
# kernels it replaces cost (an estimate from the bytes read and one SM's bandwidth).
ONE_PROGRAM_LOSS_ELEMENTS = 65536


@triton.jit
def _max_sum_kernel(
    log_w_ptr, in_max_ptr, in_sum_ptr, out_max_ptr, out_sum_ptr, bound_ptr, partial_ptr, loss_ptr,
    K, B, ROWS_PER_SPLIT, NUM_SAMPLES, loss_divisor,
    ACCUMULATE: tl.constexpr, WRITE_BOUND: tl.constexpr, WRITE_PARTIAL: tl.constexpr, WRITE_LOSS: tl.constexpr,
    ACC: tl.constexpr, FINITE_MAX: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr,
):
    """Fold log_w [K, B] (rows contiguous in B) into (max, sum of exp(log w - max)) per example.

    Grid (cdiv(B, BLOCK_B), splits), or (1, 1) with WRITE_LOSS: program (i, s) folds rows
    [s * ROWS_PER_SPLIT, (s + 1) * ROWS_PER_SPLIT) of examples [i * BLOCK_B, (i + 1) * BLOCK_B) (the single program:
    every example). WRITE_PARTIAL: store that split's logsumexp to partial_ptr [splits, B] (then one split per
    program column is the whole fold); else store max/sum [B] (starting from in_max/in_sum when ACCUMULATE) and,
    with WRITE_BOUND, L = logsumexp - log NUM_SAMPLES; with WRITE_LOSS also the loss -sum_b L_b / loss_divisor to
    loss_ptr []. A +inf log-weight is read as FINITE_MAX,
    ACC's largest finite value (inf - inf would make the shift NaN); NaN stays NaN. Reads K * B elements once.
    """
    split = tl.program_id(1)
    first_row = split * ROWS_PER_SPLIT
    end_row = tl.minimum(first_row + ROWS_PER_SPLIT, K)
    loss_total = tl.zeros([BLOCK_B], ACC)
    # Program i folds example blocks i, i + programs, ...: one block each, except when WRITE_LOSS, whose single
    # program walks every block to sum the batch's bounds itself (deterministic, no atomics).
    for block_start in range(tl.program_id(0) * BLOCK_B, B, tl.num_programs(0) * BLOCK_B):
        cols = block_start + tl.arange(0, BLOCK_B)
        col_mask = cols < B
        if ACCUMULATE:
            running_max = tl.load(in_max_ptr + cols, mask=col_mask, other=float("-inf")).to(ACC)
            running_sum = tl.load(in_sum_ptr + cols, mask=col_mask, other=0.0).to(ACC)
        else:
            running_max = tl.full([BLOCK_B], float("-inf"), ACC)
            running_sum = tl.zeros([BLOCK_B], ACC)
        for k0 in range(first_row, end_row, BLOCK_K):
            rows = k0 + tl.arange(0, BLOCK_K)
            mask = (rows < end_row)[:, None] & col_mask[None, :]
            offsets = rows[:, None].to(tl.int64) * B + cols[None, :]
            chunk = tl.load(log_w_ptr + offsets, mask=mask, other=float("-inf")).to(ACC)
            chunk = tl.where(chunk == float("inf"), tl.full([], FINITE_MAX, ACC), chunk)
            new_max = tl.maximum(running_max, tl.max(chunk, axis=0))
            shift = shifted_max(new_max)
            running_sum = running_sum * tl.exp(running_max - shift) + tl.sum(tl.exp(chunk - shift[None, :]), axis=0)
            running_max = new_max
        if WRITE_PARTIAL:
            # log(0) = -inf for a split whose log-weights are all -inf: it then adds nothing to the fold.
            tl.store(partial_ptr + split.to(tl.int64) * B + cols, shifted_max(running_max) + tl.log(running_sum),
                     mask=col_mask)
        else:
            tl.store(out_max_ptr + cols, running_max, mask=col_mask)
            tl.store(out_sum_ptr + cols, running_sum, mask=col_mask)
            if WRITE_BOUND:
                # log k in ACC from the integer (a Python float argument would arrive as float32).
                log_k = tl.log(tl.zeros([BLOCK_B], ACC) + NUM_SAMPLES)
                bound = shifted_max(running_max) + tl.log(running_sum) - log_k
                tl.store(bound_ptr + cols, bound, mask=col_mask)
                loss_total += tl.where(col_mask, bound, 0.0)
    if WRITE_LOSS:  # the loss's mean (or sum) and sign, here instead of two more kernels
        tl.store(loss_ptr, -tl.sum(loss_total, axis=0) / loss_divisor)


@triton.jit
def _normalized_weights_kernel(
    log_w_ptr, max_ptr, sum_ptr, scale_ptr, out_ptr, N, B,
    HAS_SCALE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """Elementwise over log_w [k, B] (N = k * B): wt = exp(log w - max_b) / sum_b from the fold's (max, sum) [B],
    times scale [B] (the upstream gradient of L_k) when HAS_SCALE; 0 for an all -inf column.
    Grid: cdiv(N, BLOCK). Reads and writes N elements."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < N
    cols = offsets % B
    log_w = tl.load(log_w_ptr + offsets, mask=mask, other=float("-inf")).to(ACC)
    running_max = tl.load(max_ptr + cols, mask=mask, other=0.0)
    running_sum = tl.load(sum_ptr + cols, mask=mask, other=0.0)
    weights = normalized_weight(log_w, running_max, running_sum)
    if HAS_SCALE:
        weights = weights * tl.load(scale_ptr + cols, mask=mask, other=0.0).to(ACC)
    tl.store(out_ptr + offsets, weights.to(out_ptr.dtype.element_ty), mask=mask)


def _launch_max_sum(log_w, in_max, in_sum, *, out_max, out_sum, bound, loss=None, loss_divisor=1):
    num_samples, batch = log_w.shape
    accumulate = in_max is not None
    blocks = cdiv(batch, BLOCK_EXAMPLES)
    splits = sample_splits(num_samples, blocks, log_w.device)
    acc, finite_max = triton_accumulation_dtype(out_max.dtype), torch.finfo(out_max.dtype).max
    folded = log_w
    if splits > 1:  # first each split's logsumexp [splits, B], then the fold below over those
        rows_per_split = cdiv(num_samples, splits)
        folded = torch.empty((splits, batch), dtype=out_max.dtype, device=log_w.device)
        # Pointers a constexpr flag leaves unused get out_max.
        _max_sum_kernel[(blocks, splits)](
            log_w_ptr=log_w, in_max_ptr=out_max, in_sum_ptr=out_sum, out_max_ptr=out_max, out_sum_ptr=out_sum,
            bound_ptr=out_max, partial_ptr=folded, loss_ptr=out_max, K=num_samples, B=batch,
            ROWS_PER_SPLIT=rows_per_split, NUM_SAMPLES=num_samples, loss_divisor=1, ACCUMULATE=False,
            WRITE_BOUND=False, WRITE_PARTIAL=True, WRITE_LOSS=False, ACC=acc, FINITE_MAX=finite_max,
            BLOCK_K=BLOCK_SAMPLES, BLOCK_B=BLOCK_EXAMPLES,
        )
    rows = folded.shape[0]
    _max_sum_kernel[(1 if loss is not None else blocks, 1)](
        log_w_ptr=folded, in_max_ptr=in_max if accumulate else out_max, in_sum_ptr=in_sum if accumulate else out_sum,
        out_max_ptr=out_max, out_sum_ptr=out_sum, bound_ptr=out_max if bound is None else bound, partial_ptr=out_max,
        loss_ptr=out_max if loss is None else loss, K=rows, B=batch, ROWS_PER_SPLIT=rows, NUM_SAMPLES=num_samples,
        loss_divisor=loss_divisor, ACCUMULATE=accumulate, WRITE_BOUND=bound is not None, WRITE_PARTIAL=False,
        WRITE_LOSS=loss is not None, ACC=acc, FINITE_MAX=finite_max, BLOCK_K=BLOCK_SAMPLES, BLOCK_B=BLOCK_EXAMPLES,
    )


@library_op("triton_max_sum", ("out_max", "out_sum", "bound"))
def _triton_max_sum(log_w: Tensor, in_max: Optional[Tensor], in_sum: Optional[Tensor], out_max: Tensor, out_sum: Tensor,
                    bound: Optional[Tensor]) -> None:
    _launch_max_sum(log_w, in_max, in_sum, out_max=out_max, out_sum=out_sum, bound=bound)


@library_op("triton_loss_max_sum", ("out_max", "out_sum", "bound", "loss"))
def _triton_loss_max_sum(log_w: Tensor, out_max: Tensor, out_sum: Tensor, bound: Tensor, loss: Tensor,
                         loss_divisor: int) -> None:
    _launch_max_sum(
        log_w,
        None,
        None,
        out_max=out_max,
        out_sum=out_sum,
        bound=bound,
        loss=loss,
        loss_divisor=loss_divisor,
    )


@library_op("triton_normalized_weights", ("out",))
def _triton_normalized_weights(log_w: Tensor, running_max: Tensor, running_sum: Tensor, scale: Optional[Tensor],
                               out: Tensor) -> None:
    _normalized_weights_kernel[(cdiv(log_w.numel(), BLOCK_ELEMENTS),)](
        log_w_ptr=log_w, max_ptr=running_max, sum_ptr=running_sum, scale_ptr=running_max if scale is None else scale,
        out_ptr=out, N=log_w.numel(), B=log_w.shape[1], HAS_SCALE=scale is not None,
        ACC=triton_accumulation_dtype(running_max.dtype), BLOCK=BLOCK_ELEMENTS,
    )


# forward: fold log_w into (max, sum) and optionally write L_k; backward: (scaled) normalized weights.
TRITON_LAUNCHERS = Launchers(_triton_max_sum, _triton_normalized_weights)


def max_sum(log_w, launchers=TRITON_LAUNCHERS, *, running_max=None, running_sum=None, write_bound=False):
    """Fold log_w [kc, B] into (max, sum) [B], starting fresh or from the running state; also L_k if asked."""
    log_w = log_w.contiguous()
    acc = accumulation_dtype(log_w.dtype) if running_max is None else running_max.dtype
    out_max = torch.empty(log_w.shape[1], dtype=acc, device=log_w.device)
    out_sum, bound = torch.empty_like(out_max), (torch.empty_like(out_max) if write_bound else None)
    if running_max is not None:
        running_max, running_sum = running_max.contiguous(), running_sum.contiguous()
    launchers.forward(log_w, running_max, running_sum, out_max, out_sum, bound)
    return out_max, out_sum, bound


def loss_divisor(reduction, batch):
    """What the loss -sum_b L_b is divided by: B for "mean", else 1 ("sum"; "none" keeps [B], negated)."""
    return batch if reduction == "mean" else 1


def _last_fold_rows(num_samples, batch, device):
    """Log-weight rows per example that _launch_max_sum's last launch reads: the split partials, or all k."""
    splits = sample_splits(num_samples, cdiv(batch, BLOCK_EXAMPLES), device)
    return splits if splits > 1 else num_samples


def max_sum_and_loss(log_w, reduction):
    """The loss -L_k reduced over the batch, from log_w [k, B] contiguous: (max, sum, loss). The fold kernel
    writes the reduced loss itself when one program can read its last launch's log-weights cheaply
    (ONE_PROGRAM_LOSS_ELEMENTS); else torch reduces the bound."""
    num_samples, batch = log_w.shape
    if reduction == "none" or _last_fold_rows(num_samples, batch, log_w.device) * batch > ONE_PROGRAM_LOSS_ELEMENTS:
        out_max, out_sum, bound = max_sum(log_w, write_bound=True)
        return out_max, out_sum, torch_math.reduced_loss(bound, reduction)
    out_max = torch.empty(log_w.shape[1], dtype=log_w.dtype, device=log_w.device)
    out_sum, bound = torch.empty_like(out_max), torch.empty_like(out_max)
    loss = torch.empty((), dtype=log_w.dtype, device=log_w.device)
    _triton_loss_max_sum(log_w, out_max, out_sum, bound, loss, loss_divisor(reduction, log_w.shape[1]))
    return out_max, out_sum, loss


def _weights(log_w, running_max, running_sum, *, scale, out_dtype, launchers):
    out = torch.empty(log_w.shape, dtype=out_dtype, device=log_w.device)
    launchers.backward(log_w, running_max, running_sum, None if scale is None else scale.contiguous(), out)
    return out


class KernelIWAEBoundFunction(torch.autograd.Function):
    """The compiled backends' bound: log_w [k, B] -> L_k [B] by ``launchers`` (the Triton or CUDA kernels). The
    forward folds (max, sum) and writes L_k in one pass over log_w; the backward writes g * normalized weights in
    one more."""

    @staticmethod
    def forward(ctx, log_w, launchers):
        log_w = log_w.contiguous()
        running_max, running_sum, bound = max_sum(log_w, launchers, write_bound=True)
        ctx.save_for_backward(log_w, running_max, running_sum)
        ctx.launchers = launchers
        return bound

    @staticmethod
    @once_differentiable("iwae_bound")
    def backward(ctx, grad_bound):
        log_w, running_max, running_sum = ctx.saved_tensors
        weights = _weights(
            log_w,
            running_max,
            running_sum,
            scale=grad_bound,
            out_dtype=log_w.dtype,
            launchers=ctx.launchers,
        )
        return weights, None


def _kernel_softmax(log_w, launchers):
    """Normalized weights [k, B] by the kernels: the fold, then one elementwise pass."""
    log_w = log_w.contiguous()
    running_max, running_sum, _ = max_sum(log_w, launchers)
    return _weights(log_w, running_max, running_sum, scale=None, out_dtype=running_max.dtype, launchers=launchers)


def iwae_bound(log_w, launchers=TRITON_LAUNCHERS):
    """L_k = logsumexp over dim 0 minus log k. log_w [k, B] -> [B]."""
    return KernelIWAEBoundFunction.apply(log_w, launchers)


def normalized_weights(log_w, launchers=TRITON_LAUNCHERS):
    """Self-normalized importance weights, softmax over dim 0. log_w [k, B] -> [k, B]."""
    return torch_math.NormalizedWeightsFunction.apply(log_w, _kernel_softmax, launchers)


def fold_max_sum(running_max, running_sum, log_w, launchers=TRITON_LAUNCHERS):
    """Fold a chunk of log-weights [kc, B] into the running (max, sum) state [B]; no autograd."""
    new_max, new_sum, _ = max_sum(log_w.detach(), launchers, running_max=running_max, running_sum=running_sum)
    return new_max, new_sum
