"""Fused decoder head: linear layer + Bernoulli log-likelihood, never writing the [k * B, P] logits.

log p(x|z) [k, B] = sum_j x_j y_j - softplus(y_j) with y = h W^T + b, for the decoder's last hidden
activations h [k, B, H], weight W [P, H], bias b [P] and data x [B, P]. At large k the logits are most of an
IWAE step's bytes; here each program forms a [rows, P-tile] block of them in registers (one matmul tile) and
reduces it in the epilogue, like fused linear + cross-entropy kernels in LLM training.

Forward: a persistent grid of programs, each taking row tiles in turn; a row tile walks all of P, so its sum
never leaves registers, and each logit tile is a loop over H in BLOCK_H slices (no padding of H to a power of
two beyond one slice). The x-term needs no x: sum_j x_j y_j = h . (W^T x_b) + x_b . b, with W^T x_b and x_b . b
formed once per example before the kernel, so the epilogue is only the softplus sum.

Backward is one kernel that recomputes each logit tile once (the logits, dh and dW: three matmul passes, where
separate dh and dW kernels took four). It too is persistent: a program keeps its rows' dh in registers across
P, and adds each tile's dW and db into a partial sum of its own in memory (read, add, write back: no atomics, and
the same order every run); torch adds the programs' partials. There a row's hidden vector is held as one padded
block, so H is limited to contract.DECODER_HEAD_MAX_HIDDEN, and tile shapes whose blocks would not fit the GPU's
shared memory are dropped before they are compiled.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._autograd import once_differentiable
from .. import torch_backend
from ..contract import accumulation_dtype
from .._env import triton_interpreting
from .utils import (bernoulli_grad, cdiv, data_term_factors, data_term_part, dot, dot_precision, library_op,
                    max_shared_bytes, next_power_of_2, persistent_programs, softplus_tile_sum,
                    triton_accumulation_dtype, weight_block_t)


def _configs():
    """The backward's tiles (BLOCK_R rows x BLOCK_P logits), timed once per (H, P): 8 warps, whose register share
    spilled least on sm_90 (benchmarks/aot_report.py; 64 x 16 is the float32 H = 50 tile with wgmma and no spill;
    128 x 16 halves the partial sums' read-add-write traffic per row for a small spill), and 16 x 16 for the
    widest H. One fixed shape under the interpreter (nothing to time)."""
    if triton_interpreting():
        return [triton.Config({"BLOCK_R": 32, "BLOCK_P": 64})]
    tiles = [triton.Config({"BLOCK_R": r, "BLOCK_P": p}, num_warps=8, num_stages=2)
             for r, p in ((64, 16), (128, 16), (32, 32), (32, 64), (64, 32), (64, 64))]
    return tiles + [triton.Config({"BLOCK_R": 16, "BLOCK_P": 16}, num_warps=4, num_stages=1)]


def _forward_configs():
    """The forward's tiles (BLOCK_R rows x BLOCK_P logits, BLOCK_H slices of H), timed once per (H, P): the ones
    that compiled for sm_90 without spills and with wgmma in every dtype and precision mode (benchmarks/
    aot_report.py; slices of 64, and 128 x 128 tiles, spilled). The interpreter's shape has several H slices and P
    tiles at the tests' sizes, so their loops run."""
    if triton_interpreting():
        return [triton.Config({"BLOCK_R": 16, "BLOCK_P": 32, "BLOCK_H": 16})]
    return [triton.Config({"BLOCK_R": r, "BLOCK_P": p, "BLOCK_H": 32}, num_warps=w, num_stages=3)
            for r, p, w in ((64, 64, 4), (128, 64, 8), (64, 128, 8))]


# The backward's shared memory per unit of H_PAD, by tile (BLOCK_R, BLOCK_P) and element size: the h block, the
# weight tile over the pipeline stages, their transposes and float32's tf32x3 hi/lo copies, all H_PAD wide. These
# are the largest values benchmarks/aot_report.py measured (sm_80 and sm_90, every dtype and float32 precision mode,
# H_PAD 64 to 1024, Triton 3.9), and it checks them on every run: a config compiled that does not fit fails it.
BACKWARD_SHARED_BYTES_PER_HIDDEN = {
    4: {(16, 16): 384, (64, 16): 1152, (128, 16): 2304, (32, 32): 704, (32, 64): 832, (64, 32): 1280, (64, 64): 1536},
    2: {(16, 16): 96, (64, 16): 352, (128, 16): 672, (32, 32): 192, (32, 64): 384, (64, 32): 384, (64, 64): 512},
}


def _fitting_configs(configs, named_args, **kwargs):
    """The configs whose estimated shared memory fits the GPU, before any is compiled (autotune's early prune)."""
    per_hidden = BACKWARD_SHARED_BYTES_PER_HIDDEN[named_args["h_ptr"].element_size()]
    limit = max_shared_bytes()
    fitting = [c for c in configs if per_hidden[c.kwargs["BLOCK_R"], c.kwargs["BLOCK_P"]] * kwargs["H_PAD"] <= limit]
    if not fitting:
        raise ValueError(f"decoder head: no tile fits {limit} B of shared memory at H_PAD={kwargs['H_PAD']} "
                         f"({named_args['h_ptr'].dtype}); contract.DECODER_HEAD_MAX_HIDDEN is too large")
    return fitting


@triton.jit
def _hidden_columns(h_ptr, rows, row_mask, hidden, H):
    """h [rows, hidden] of h [R, H]: zero outside it."""
    mask = row_mask[:, None] & (hidden < H)[None, :]
    return tl.load(h_ptr + rows[:, None] * H + hidden[None, :], mask=mask, other=0.0)


@triton.jit
def _logits(h_block, w_tile_t, b_ptr, cols, col_mask, ACC: tl.constexpr, PRECISION: tl.constexpr):
    y = dot(h_block, w_tile_t, ACC, PRECISION)
    return y + tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(ACC)[None, :]


@triton.jit
def _sliced_logits(h_ptr, w_ptr, b_ptr, rows, row_mask, cols, H, P, ACC: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr):
    """y [BLOCK_R, BLOCK_P] = h W^T + b for the rows and columns, the matmul in BLOCK_H slices of H."""
    y = tl.zeros([BLOCK_R, BLOCK_P], ACC)
    for h0 in range(0, H, BLOCK_H):
        hidden = h0 + tl.arange(0, BLOCK_H)
        y += dot(_hidden_columns(h_ptr, rows, row_mask, hidden, H), weight_block_t(w_ptr, cols, P, hidden, H), ACC,
                 PRECISION)
    return y + tl.load(b_ptr + cols, mask=cols < P, other=0.0).to(ACC)[None, :]


@triton.jit
def _data_term(h_ptr, xw_ptr, xb_ptr, rows, row_mask, B, H, ACC: tl.constexpr, BLOCK_H: tl.constexpr):
    """sum_j x_j y_j per row = h . (W^T x_b) + x_b . b, from xw = x W [B, H] and xb = x b [B] (row r: b = r % B)."""
    x_rows = rows % B
    total = tl.load(xb_ptr + x_rows, mask=row_mask, other=0.0)
    for h0 in range(0, H, BLOCK_H):
        hidden = h0 + tl.arange(0, BLOCK_H)
        total += data_term_part(_hidden_columns(h_ptr, rows, row_mask, hidden, H).to(ACC), xw_ptr, x_rows, row_mask,
                                hidden, H)
    return total


@triton.jit
def _grad_logits(y, x_ptr, x_rows, cols, mask, grad_out, P, ACC: tl.constexpr):
    x = tl.load(x_ptr + x_rows[:, None] * P + cols[None, :], mask=mask, other=0.0).to(ACC)
    return tl.where(mask, grad_out[:, None] * bernoulli_grad(x, y), 0.0)


@triton.autotune(configs=_forward_configs(), key=["H", "P"], cache_results=True)
@triton.jit
def _head_fwd_kernel(h_ptr, w_ptr, b_ptr, xw_ptr, xb_ptr, out_ptr, R, B, H, P,
                     ACC: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr):
    """out [R = k * B] = sum_j x_j y_j - softplus(y_j), y = h W^T + b for h [R, H], W [P, H], b [P] (row r is
    example r % B), the x-term from xw = x W [B, H] and xb = x b [B] (_data_term); the logits live only in
    registers. Grid: persistent (autotuned tiles); a program takes row tiles of BLOCK_R rows in turn and walks P
    in BLOCK_P tiles, each a loop over H in BLOCK_H slices. 2 R H P FLOPs on tensor cores."""
    for tile in tl.range(tl.program_id(0), tl.cdiv(R, BLOCK_R), tl.num_programs(0)):
        rows = tile * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)  # int64: rows * H may pass 2**31
        row_mask = rows < R
        softplus_sum = tl.zeros([BLOCK_R], ACC)
        for p0 in range(0, P, BLOCK_P):
            cols = p0 + tl.arange(0, BLOCK_P)
            y = _sliced_logits(h_ptr, w_ptr, b_ptr, rows, row_mask, cols, H, P, ACC, PRECISION, BLOCK_R, BLOCK_P,
                               BLOCK_H)
            softplus_sum += softplus_tile_sum(y, row_mask, cols < P)
        total = _data_term(h_ptr, xw_ptr, xb_ptr, rows, row_mask, B, H, ACC, BLOCK_H) - softplus_sum
        tl.store(out_ptr + rows, total, mask=row_mask)


@triton.autotune(configs=_configs(), key=["H", "P"], prune_configs_by={"early_config_prune": _fitting_configs},
                 cache_results=True)  # timings cached on disk: a new process does not re-tune (~30 s per (H, P))
@triton.jit
def _head_bwd_kernel(h_ptr, w_ptr, b_ptr, x_ptr, grad_out_ptr, grad_h_ptr, partial_w_ptr, partial_b_ptr, R, B, H, P,
                     ACC: tl.constexpr, PRECISION: tl.constexpr, H_PAD: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr):
    """One recompute pass for every gradient. With dy = g_r (x_j - sigmoid(y_rj)) from each logit tile recomputed:
    grad_h [R, H] = sum_j dy_rj W_j, and this program's partial dW [P, H] = sum_r dy_r^T h_r and db [P] = sum_r dy_r
    over its rows, in partial_w [programs, P, H] and partial_b [programs, P] (torch adds them: deterministic).
    Grid: persistent, one program per partial (autotuned tiles); program p takes row tiles p, p + programs, ..., so
    every program needs at least one tile (programs <= cdiv(R, largest BLOCK_R)). 6 R H P FLOPs."""
    program = tl.program_id(0)
    hidden = tl.arange(0, H_PAD)
    hidden_mask = hidden < H
    partial_w = partial_w_ptr + program.to(tl.int64) * P * H
    partial_b = partial_b_ptr + program.to(tl.int64) * P
    for tile in tl.range(program, tl.cdiv(R, BLOCK_R), tl.num_programs(0)):
        rows = tile * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
        row_mask = rows < R
        h_block = _hidden_columns(h_ptr, rows, row_mask, hidden, H)
        grad_out = tl.load(grad_out_ptr + rows, mask=row_mask, other=0.0).to(ACC)
        grad_h = tl.zeros([BLOCK_R, H_PAD], ACC)
        # The last tile's partial-sum writes land before this tile's first reads, which the software pipeline may
        # issue ahead of the loop body's barrier (with one P tile, nothing else lies between them).
        tl.debug_barrier()
        for p0 in range(0, P, BLOCK_P):
            cols = p0 + tl.arange(0, BLOCK_P)
            col_mask = cols < P
            w_tile_t = weight_block_t(w_ptr, cols, P, hidden, H)
            grad_y = _grad_logits(_logits(h_block, w_tile_t, b_ptr, cols, col_mask, ACC, PRECISION), x_ptr, rows % B,
                                  cols, row_mask[:, None] & col_mask[None, :], grad_out, P, ACC)
            grad_h += dot(grad_y.to(w_tile_t.dtype), tl.trans(w_tile_t), ACC, PRECISION)
            # This program's partial sums: its first tile writes them, later tiles read, add and write back.
            grad_w = dot(tl.trans(grad_y.to(h_block.dtype)), h_block, ACC, PRECISION)
            w_mask = col_mask[:, None] & hidden_mask[None, :]
            w_ptrs = partial_w + cols[:, None] * H + hidden[None, :]
            tl.debug_barrier()  # the previous tile's writes, by whichever threads, land before these reads
            later = tile > program  # (a select, not a load mask: the interpreter takes no scalar in a mask)
            tl.store(w_ptrs, tl.where(later, tl.load(w_ptrs, mask=w_mask, other=0.0), 0.0) + grad_w, mask=w_mask)
            b_ptrs = partial_b + cols
            tl.store(b_ptrs, tl.where(later, tl.load(b_ptrs, mask=col_mask, other=0.0), 0.0) + tl.sum(grad_y, axis=0),
                     mask=col_mask)
        tl.store(grad_h_ptr + rows[:, None] * H + hidden[None, :], grad_h.to(grad_h_ptr.dtype.element_ty),
                 mask=row_mask[:, None] & hidden_mask[None, :])


@library_op("triton_decoder_head_forward", ("out",))
def _triton_forward(hidden: Tensor, weight: Tensor, bias: Tensor, x: Tensor, out: Tensor) -> None:
    num_samples, batch, width = hidden.shape
    rows = num_samples * batch
    x_weight, x_bias = data_term_factors(x, weight, bias, out.dtype)
    programs = persistent_programs(hidden.device)
    _head_fwd_kernel[lambda meta: (min(cdiv(rows, meta["BLOCK_R"]), programs),)](
        hidden, weight, bias, x_weight, x_bias, out, rows, batch, width, weight.shape[0],
        ACC=triton_accumulation_dtype(hidden.dtype), PRECISION=dot_precision(hidden.dtype))


@library_op("triton_decoder_head_backward", ("grad_hidden", "partial_weight", "partial_bias"))
def _triton_backward(hidden: Tensor, weight: Tensor, bias: Tensor, x: Tensor, grad_out: Tensor, grad_hidden: Tensor,
                     partial_weight: Tensor, partial_bias: Tensor) -> None:
    num_samples, batch, width = hidden.shape
    _head_bwd_kernel[(partial_weight.shape[0],)](
        hidden, weight, bias, x, grad_out, grad_hidden, partial_weight, partial_bias, num_samples * batch, batch,
        width, weight.shape[0], ACC=triton_accumulation_dtype(hidden.dtype), PRECISION=dot_precision(hidden.dtype),
        H_PAD=max(16, next_power_of_2(width)))


_LARGEST_BACKWARD_BLOCK_R = max(config.kwargs["BLOCK_R"] for config in _configs())


def backward_programs(rows, device):
    """The backward's persistent programs (and partial sums of dW, db): at most one per tile of the largest BLOCK_R,
    so that each has a tile whichever tile shape the autotuner picks."""
    return min(persistent_programs(device), cdiv(rows, _LARGEST_BACKWARD_BLOCK_R))


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
        # dW and db: each program writes a partial sum, added up here.
        programs = backward_programs(rows, hidden.device)
        grad_hidden = torch.empty_like(hidden)
        partial_weight = torch.empty((programs,) + tuple(weight.shape), dtype=acc, device=hidden.device)
        partial_bias = torch.empty((programs,) + tuple(bias.shape), dtype=acc, device=hidden.device)
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
