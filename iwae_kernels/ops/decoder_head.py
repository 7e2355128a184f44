"""Fused decoder head: linear layer + Bernoulli log-likelihood, never writing the [k * B, P] logits.

log p(x|z) [k, B] = sum_j x_j y_j - softplus(y_j) with y = h W^T + b, for the decoder's last hidden
activations h [k, B, H], weight W [P, H], bias b [P] and data x [B, P]. At large k the logits are most of an
IWAE step's bytes; here each program forms a [rows, P-tile] block of them in registers (one matmul tile) and
reduces it in the epilogue, like fused linear + cross-entropy kernels in LLM training.

Backward recomputes the logit tiles instead of storing them: one kernel writes dh (rows in parallel), another
dW and db (P-tiles in parallel, rows split into segments whose partial sums torch adds up).
A row's hidden vector is held as one padded block, so H is limited to contract.DECODER_HEAD_MAX_HIDDEN, and
tile shapes whose blocks would not fit the GPU's shared memory are dropped before they are compiled.
"""

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._autograd import once_differentiable
from .. import torch_backend
from ..contract import accumulation_dtype
from .._env import triton_interpreting
from .utils import (bernoulli_grad, bernoulli_tile_sum, cdiv, dot, dot_precision, library_op, max_shared_bytes,
                    next_power_of_2, triton_accumulation_dtype)

ROW_SEGMENTS = 32
SEGMENT_ALIGN = 64  # a row segment is a whole number of row blocks for every tuned BLOCK_R


def _configs():
    """Tile shapes the autotuner times once per (H, P); one fixed shape under the interpreter (nothing to time)."""
    if triton_interpreting():
        return [triton.Config({"BLOCK_R": 32, "BLOCK_P": 64})]
    tiles = [triton.Config({"BLOCK_R": r, "BLOCK_P": p}, num_warps=w, num_stages=2)
             for r in (32, 64) for p in (32, 64) for w in (4, 8)]
    return tiles + [triton.Config({"BLOCK_R": 16, "BLOCK_P": 16}, num_warps=4, num_stages=1)]


# Shared memory per kernel and tile (BLOCK_R, BLOCK_P), in hidden-length rows of the input dtype: the h block, the
# weight tile over the pipeline stages and their tf32x3 hi/lo copies. It grows linearly in H_PAD; these are the
# largest values benchmarks/aot_report.py measured (sm_80 and sm_90, float32 and bfloat16, H_PAD 64 to 1024, 4 or 8
# warps, Triton 3.9), and it checks them on every run: a config compiled that does not fit fails the report.
SHARED_ROWS = {
    "forward": {(16, 16): 48, (32, 32): 112, (32, 64): 160, (64, 32): 224, (64, 64): 320},
    "grad_hidden": {(16, 16): 64, (32, 32): 129, (32, 64): 192, (64, 32): 257, (64, 64): 385},
    "grad_weight": {(16, 16): 64, (32, 32): 145, (32, 64): 257, (64, 32): 225, (64, 64): 321},
}


def _fitting_configs(rows, configs, named_args, **kwargs):
    """The configs whose estimated shared memory fits the GPU, before any is compiled (autotune's early prune)."""
    row_bytes, limit = kwargs["H_PAD"] * named_args["h_ptr"].element_size(), max_shared_bytes()
    fitting = [c for c in configs if rows[c.kwargs["BLOCK_R"], c.kwargs["BLOCK_P"]] * row_bytes <= limit]
    if not fitting:
        raise ValueError(f"decoder head: no tile fits {limit} B of shared memory at H_PAD={kwargs['H_PAD']} "
                         f"({named_args['h_ptr'].dtype}); contract.DECODER_HEAD_MAX_HIDDEN is too large")
    return fitting


def _autotune(kernel):
    """Autotuned over the configs that fit, once per (H, P); the timings are cached on disk (Triton's cache dir),
    so a new process does not spend device time re-tuning (it was ~33 s of compiling per (H, P))."""
    prune = functools.partial(_fitting_configs, SHARED_ROWS[kernel])
    return triton.autotune(configs=_configs(), key=["H", "P"], prune_configs_by={"early_config_prune": prune},
                           cache_results=True)


@triton.jit
def _hidden_block(h_ptr, rows, row_mask, H, H_PAD: tl.constexpr):
    hidden = tl.arange(0, H_PAD)
    mask = row_mask[:, None] & (hidden < H)[None, :]
    return tl.load(h_ptr + rows[:, None] * H + hidden[None, :], mask=mask, other=0.0)


@triton.jit
def _program_rows(h_ptr, R, H, H_PAD: tl.constexpr, BLOCK_R: tl.constexpr):
    """This program's rows, their mask, and their hidden vectors [BLOCK_R, H_PAD]."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    return rows, row_mask, _hidden_block(h_ptr, rows, row_mask, H, H_PAD)


@triton.jit
def _weight_tile_t(w_ptr, cols, col_mask, H, H_PAD: tl.constexpr):
    """W^T for the columns: [H_PAD, BLOCK_P]."""
    hidden = tl.arange(0, H_PAD)
    mask = (hidden < H)[:, None] & col_mask[None, :]
    return tl.load(w_ptr + cols[None, :] * H + hidden[:, None], mask=mask, other=0.0)


@triton.jit
def _logits(h_block, w_tile_t, b_ptr, cols, col_mask, ACC: tl.constexpr, PRECISION: tl.constexpr):
    y = dot(h_block, w_tile_t, ACC, PRECISION)
    return y + tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(ACC)[None, :]


@triton.jit
def _grad_logits(y, x_ptr, x_rows, cols, mask, grad_out, P, ACC: tl.constexpr):
    x = tl.load(x_ptr + x_rows[:, None] * P + cols[None, :], mask=mask, other=0.0).to(ACC)
    return tl.where(mask, grad_out[:, None] * bernoulli_grad(x, y), 0.0)


@_autotune("forward")
@triton.jit
def _head_fwd_kernel(h_ptr, w_ptr, b_ptr, x_ptr, out_ptr, R, B, H, P,
                     ACC: tl.constexpr, PRECISION: tl.constexpr, H_PAD: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr):
    """out [R = k * B] = sum_j x_j y_j - softplus(y_j), y = h W^T + b for h [R, H], W [P, H], b [P], x [B, P]
    (row r uses x[r % B]); the logits live only in registers. Grid: cdiv(R, BLOCK_R) (autotuned); each program
    holds its rows' hidden block [BLOCK_R, H_PAD] and walks P in BLOCK_P tiles of W. Reads h once and W once per
    program; 2 R H P FLOPs on tensor cores."""
    rows, row_mask, h_block = _program_rows(h_ptr, R, H, H_PAD, BLOCK_R)
    total = tl.zeros([BLOCK_R], ACC)
    for p0 in range(0, P, BLOCK_P):
        cols = p0 + tl.arange(0, BLOCK_P)
        col_mask = cols < P
        y = _logits(h_block, _weight_tile_t(w_ptr, cols, col_mask, H, H_PAD), b_ptr, cols, col_mask, ACC, PRECISION)
        total += bernoulli_tile_sum(y, x_ptr, rows, row_mask, cols, col_mask, B, P, ACC)
    tl.store(out_ptr + rows, total, mask=row_mask)


@_autotune("grad_hidden")
@triton.jit
def _head_grad_hidden_kernel(h_ptr, w_ptr, b_ptr, x_ptr, grad_out_ptr, grad_h_ptr, R, B, H, P,
                             ACC: tl.constexpr, PRECISION: tl.constexpr, H_PAD: tl.constexpr,
                             BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr):
    """grad_h [R, H] = sum_j g_r (x_j - sigmoid(y_j)) W_j, recomputing each logit tile instead of reading stored
    logits. Grid: cdiv(R, BLOCK_R) (autotuned). 4 R H P FLOPs (the logits again, then dh)."""
    rows, row_mask, h_block = _program_rows(h_ptr, R, H, H_PAD, BLOCK_R)
    x_rows = rows % B
    grad_out = tl.load(grad_out_ptr + rows, mask=row_mask, other=0.0).to(ACC)
    grad_h = tl.zeros([BLOCK_R, H_PAD], ACC)
    for p0 in range(0, P, BLOCK_P):
        cols = p0 + tl.arange(0, BLOCK_P)
        col_mask = cols < P
        mask = row_mask[:, None] & col_mask[None, :]
        w_tile_t = _weight_tile_t(w_ptr, cols, col_mask, H, H_PAD)
        grad_y = _grad_logits(_logits(h_block, w_tile_t, b_ptr, cols, col_mask, ACC, PRECISION), x_ptr, x_rows, cols,
                              mask, grad_out, P, ACC)
        grad_h += dot(grad_y.to(w_tile_t.dtype), tl.trans(w_tile_t), ACC, PRECISION)
    hidden = tl.arange(0, H_PAD)
    tl.store(grad_h_ptr + rows[:, None] * H + hidden[None, :], grad_h.to(grad_h_ptr.dtype.element_ty),
             mask=row_mask[:, None] & (hidden < H)[None, :])


@_autotune("grad_weight")
@triton.jit
def _head_grad_weight_kernel(h_ptr, w_ptr, b_ptr, x_ptr, grad_out_ptr, grad_w_ptr, grad_b_ptr, R, B, H, P,
                             rows_per_segment,
                             ACC: tl.constexpr, PRECISION: tl.constexpr, H_PAD: tl.constexpr,
                             BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr):
    """Partial dW [segments, P, H] and db [segments, P] over rows_per_segment rows each (torch sums the segments:
    deterministic), recomputing the logits. Grid: (cdiv(P, BLOCK_P), segments) (autotuned). 4 R H P FLOPs."""
    # Program (P-tile, row segment) writes that segment's partial dW [BLOCK_P, H] and db [BLOCK_P].
    cols = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    col_mask = cols < P
    segment = tl.program_id(1)
    w_tile_t = _weight_tile_t(w_ptr, cols, col_mask, H, H_PAD)
    grad_w = tl.zeros([BLOCK_P, H_PAD], ACC)
    grad_b = tl.zeros([BLOCK_P], ACC)
    first = segment.to(tl.int64) * rows_per_segment
    for r0 in range(0, rows_per_segment, BLOCK_R):
        rows = first + r0 + tl.arange(0, BLOCK_R)
        row_mask = (rows < R) & (r0 + tl.arange(0, BLOCK_R) < rows_per_segment)
        mask = row_mask[:, None] & col_mask[None, :]
        h_block = _hidden_block(h_ptr, rows, row_mask, H, H_PAD)
        grad_out = tl.load(grad_out_ptr + rows, mask=row_mask, other=0.0).to(ACC)
        grad_y = _grad_logits(_logits(h_block, w_tile_t, b_ptr, cols, col_mask, ACC, PRECISION), x_ptr, rows % B, cols,
                              mask, grad_out, P, ACC)
        grad_w += dot(tl.trans(grad_y.to(h_block.dtype)), h_block, ACC, PRECISION)
        grad_b += tl.sum(grad_y, axis=0)
    hidden = tl.arange(0, H_PAD)
    out = segment.to(tl.int64) * P * H
    tl.store(grad_w_ptr + out + cols[:, None] * H + hidden[None, :], grad_w,
             mask=col_mask[:, None] & (hidden < H)[None, :])
    tl.store(grad_b_ptr + segment.to(tl.int64) * P + cols, grad_b, mask=col_mask)


def _config(hidden):
    return dict(ACC=triton_accumulation_dtype(hidden.dtype), PRECISION=dot_precision(hidden.dtype),
                H_PAD=max(16, next_power_of_2(hidden.shape[-1])))


@library_op("triton_decoder_head_forward", ("out",))
def _triton_forward(hidden: Tensor, weight: Tensor, bias: Tensor, x: Tensor, out: Tensor) -> None:
    num_samples, batch, width = hidden.shape
    rows = num_samples * batch
    _head_fwd_kernel[lambda meta: (cdiv(rows, meta["BLOCK_R"]),)](
        hidden, weight, bias, x, out, rows, batch, width, weight.shape[0], **_config(hidden))


@library_op("triton_decoder_head_backward", ("grad_hidden", "partial_weight", "partial_bias"))
def _triton_backward(hidden: Tensor, weight: Tensor, bias: Tensor, x: Tensor, grad_out: Tensor, grad_hidden: Tensor,
                     partial_weight: Tensor, partial_bias: Tensor) -> None:
    num_samples, batch, width = hidden.shape
    rows, size, segments = num_samples * batch, weight.shape[0], partial_weight.shape[0]
    config = _config(hidden)
    _head_grad_hidden_kernel[lambda meta: (cdiv(rows, meta["BLOCK_R"]),)](
        hidden, weight, bias, x, grad_out, grad_hidden, rows, batch, width, size, **config)
    rows_per_segment = cdiv(cdiv(rows, segments), SEGMENT_ALIGN) * SEGMENT_ALIGN
    _head_grad_weight_kernel[lambda meta: (cdiv(size, meta["BLOCK_P"]), segments)](
        hidden, weight, bias, x, grad_out, partial_weight, partial_bias, rows, batch, width, size, rows_per_segment,
        **config)


class BernoulliDecoderHeadFunction(torch.autograd.Function):
    """(hidden [k, B, H], weight [P, H], bias [P], x [B, P]) -> log p(x|z) [k, B]; x gets no gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, x):
        hidden, weight, bias, x = hidden.contiguous(), weight.contiguous(), bias.contiguous(), x.contiguous()
        out = torch.empty(hidden.shape[:2], dtype=accumulation_dtype(hidden.dtype), device=hidden.device)
        _triton_forward(hidden, weight, bias, x, out)
        ctx.save_for_backward(hidden, weight, bias, x)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        hidden, weight, bias, x = ctx.saved_tensors
        rows, acc = hidden.shape[0] * hidden.shape[1], accumulation_dtype(hidden.dtype)
        # dW and db: each segment of rows writes a partial sum, added up here.
        segments = min(ROW_SEGMENTS, cdiv(rows, SEGMENT_ALIGN))
        grad_hidden = torch.empty_like(hidden)
        partial_weight = torch.empty((segments,) + tuple(weight.shape), dtype=acc, device=hidden.device)
        partial_bias = torch.empty((segments,) + tuple(bias.shape), dtype=acc, device=hidden.device)
        _triton_backward(hidden, weight, bias, x, grad_out.contiguous(), grad_hidden, partial_weight, partial_bias)
        return grad_hidden, partial_weight.sum(0).to(weight.dtype), partial_bias.sum(0).to(bias.dtype), None


def bernoulli_decoder_log_likelihood(hidden, weight, bias, x):
    """Bernoulli log p(x|z) of logits hidden @ weight.T + bias without materializing them.

    hidden [k, B, H] (H <= contract.decoder_head_max_hidden(dtype)), weight [P, H], bias [P], x [B, P] -> [k, B].
    float64 runs the torch backend: tl.dot takes float32/float16/bfloat16 operands, not float64.
    """
    if hidden.dtype == torch.float64:
        return torch_backend.bernoulli_decoder_log_likelihood(hidden, weight, bias, x)
    return BernoulliDecoderHeadFunction.apply(hidden, weight, bias, x)
