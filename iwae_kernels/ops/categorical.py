"""Categorical (softmax) log-likelihood of token sequences, without the [k, B, T, V] log-probabilities.

Rows are the k * B * T (sample, example, position) triples; row r reads token and mask r % (B * T). Forward
walks a row's V logits once in chunks with an online (max, sum of exp) (as FlashAttention's softmax) and reads
the target logit directly: log p = mask * (y_token - logsumexp(y)), written per row with the row's logsumexp.
Backward walks the logits again: dy = g * mask * (onehot(token) - exp(y - logsumexp)), the fused
log-softmax + gather backward of Liger-Kernel's cross entropy.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._autograd import once_differentiable
from ..contract import accumulation_dtype
from .utils import cdiv, library_op, shifted_max, triton_accumulation_dtype

BLOCK_ROWS, BLOCK_VOCAB = 16, 256


@triton.jit
def _categorical_fwd_kernel(logits_ptr, tokens_ptr, mask_ptr, out_ptr, lse_ptr, R, BT, V,
                            ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr):
    """Per row r of logits [R = k * B * T, V]: lse_r = logsumexp_v y_rv (online max/sum over V in BLOCK_V
    chunks) and out_r = mask_r (y_r,token_r - lse_r). tokens, mask: [B * T = BT], row r uses r % BT.
    Grid: cdiv(R, BLOCK_R). Reads the logits once (R * V elements), writes 2 R; the log-probabilities never."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    running_max = tl.full([BLOCK_R], float("-inf"), ACC)
    running_sum = tl.zeros([BLOCK_R], ACC)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        y = tl.load(logits_ptr + rows[:, None] * V + cols[None, :], mask=row_mask[:, None] & (cols < V)[None, :],
                    other=float("-inf")).to(ACC)
        new_max = tl.maximum(running_max, tl.max(y, axis=1))
        shift = shifted_max(new_max)
        running_sum = running_sum * tl.exp(running_max - shift) + tl.sum(tl.exp(y - shift[:, None]), axis=1)
        running_max = new_max
    lse = shifted_max(running_max) + tl.log(running_sum)
    token = tl.load(tokens_ptr + rows % BT, mask=row_mask, other=0)
    weight = tl.load(mask_ptr + rows % BT, mask=row_mask, other=0.0).to(ACC)
    target = tl.load(logits_ptr + rows * V + token, mask=row_mask, other=0.0).to(ACC)
    # A masked-out position contributes 0 whatever its logits (even -inf ones).
    tl.store(out_ptr + rows, tl.where(weight != 0, weight * (target - lse), 0.0), mask=row_mask)
    tl.store(lse_ptr + rows, lse, mask=row_mask)


@triton.jit
def _categorical_bwd_kernel(logits_ptr, tokens_ptr, mask_ptr, lse_ptr, grad_out_ptr, grad_logits_ptr, R, BT, V,
                            ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr):
    """grad_logits [R, V] = g_r mask_r (onehot(token_r) - softmax(y_r)), softmax from the saved lse [R].
    Grid: cdiv(R, BLOCK_R). Reads the logits once and writes their gradient once (2 R * V elements)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    token = tl.load(tokens_ptr + rows % BT, mask=row_mask, other=0)
    scale = tl.load(mask_ptr + rows % BT, mask=row_mask, other=0.0).to(ACC)
    scale = scale * tl.load(grad_out_ptr + rows, mask=row_mask, other=0.0).to(ACC)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        mask = row_mask[:, None] & (cols < V)[None, :]
        offsets = rows[:, None] * V + cols[None, :]
        y = tl.load(logits_ptr + offsets, mask=mask, other=float("-inf")).to(ACC)
        onehot = (cols[None, :] == token[:, None]).to(ACC)
        grad = tl.where(scale[:, None] != 0, scale[:, None] * (onehot - tl.exp(y - lse[:, None])), 0.0)
        tl.store(grad_logits_ptr + offsets, grad.to(grad_logits_ptr.dtype.element_ty), mask=mask)


@library_op("triton_categorical_forward", ("out", "lse"))
def _triton_forward(logits: Tensor, tokens: Tensor, mask: Tensor, out: Tensor, lse: Tensor) -> None:
    rows, vocab = logits.shape
    _categorical_fwd_kernel[(cdiv(rows, BLOCK_ROWS),)](
        logits_ptr=logits, tokens_ptr=tokens, mask_ptr=mask, out_ptr=out, lse_ptr=lse, R=rows, BT=tokens.numel(),
        V=vocab, ACC=triton_accumulation_dtype(logits.dtype), BLOCK_R=BLOCK_ROWS, BLOCK_V=BLOCK_VOCAB)


@library_op("triton_categorical_backward", ("grad_logits",))
def _triton_backward(logits: Tensor, tokens: Tensor, mask: Tensor, lse: Tensor, grad_out: Tensor,
                     grad_logits: Tensor) -> None:
    rows, vocab = logits.shape
    _categorical_bwd_kernel[(cdiv(rows, BLOCK_ROWS),)](
        logits_ptr=logits, tokens_ptr=tokens, mask_ptr=mask, lse_ptr=lse, grad_out_ptr=grad_out,
        grad_logits_ptr=grad_logits, R=rows, BT=tokens.numel(), V=vocab,
        ACC=triton_accumulation_dtype(logits.dtype), BLOCK_R=BLOCK_ROWS, BLOCK_V=BLOCK_VOCAB)


class CategoricalLogLikelihoodFunction(torch.autograd.Function):
    """(logits [k, B, T, V], tokens [B, T] int64, mask [B, T] in the accumulation dtype) -> [k, B, T]."""

    @staticmethod
    def forward(ctx, logits, tokens, mask):
        logits = logits.contiguous()
        acc = accumulation_dtype(logits.dtype)
        flat = logits.reshape(-1, logits.shape[-1])
        out = torch.empty(logits.shape[:-1], dtype=acc, device=logits.device)
        lse = torch.empty(logits.shape[:-1], dtype=acc, device=logits.device)
        _triton_forward(flat, tokens.contiguous(), mask.contiguous(), out, lse)
        ctx.save_for_backward(logits, tokens, mask, lse)
        return out

    @staticmethod
    @once_differentiable("categorical_log_likelihood")
    def backward(ctx, grad_out):
        logits, tokens, mask, lse = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        _triton_backward(logits.reshape(-1, logits.shape[-1]), tokens.contiguous(), mask.contiguous(), lse,
                         grad_out.contiguous(), grad_logits.reshape(-1, logits.shape[-1]))
        return grad_logits, None, None


def categorical_log_likelihood(logits, tokens, mask):
    """sum_t mask[b, t] log softmax(logits[k, b, t])[tokens[b, t]] -> [k, B] (float32 for half logits)."""
    return CategoricalLogLikelihoodFunction.apply(logits, tokens, mask).sum(-1)
