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
the same order every run); torch adds the programs' partials. Only dh's block spans H, up to GRAD_HIDDEN_BLOCK
columns (128 for float32 operands, 256 for half): a wider H takes another pass over P per block, recomputing the
logits, so any H compiles to the same tiles and shared memory. Matmuls are tensor-core dots (ops.utils.dot_acc)
following torch's float32 matmul precision.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._autograd import once_differentiable
from .. import torch_math
from ..contract import accumulation_dtype
from .._env import triton_interpreting
from .utils import (bernoulli_grad, cdiv, configs_by_operands, data_term, data_term_factors, dot, dot_acc,
                    dot_precision, library_op, linear_tile, next_power_of_2, persistent_programs, row_block,
                    softplus_tile_sum, triton_accumulation_dtype)


def _backward_configs():
    """The backward's tiles (BLOCK_R rows x BLOCK_P logits, BLOCK_H slices of H for the logits and dW), by the
    operands' element size and whether the dh block is narrow (GRAD_H_BLOCK <= 64, i.e. H <= 64) or wide; timed once
    per (H, P, dtype). Each compiled for sm_90 without spills in every precision mode, with wgmma (benchmarks/
    aot_report.py): at a wide dh block only one tile per element size does. 64 rows give the logits' and dh's
    matmuls M = 64, the least wgmma takes. One fixed shape under the interpreter (nothing to time), with slices and
    blocks narrow enough that the tests' sizes run every loop more than once."""
    if triton_interpreting():
        one = [triton.Config({"BLOCK_R": 16, "BLOCK_P": 32, "BLOCK_H": 16})]
        return {(size, narrow): one for size in (4, 2) for narrow in (True, False)}
    tiles = {(4, True): ((64, 16, 16), (64, 16, 32), (64, 32, 16), (64, 32, 32)), (4, False): ((64, 16, 16),),
             (2, True): ((64, 16, 64), (64, 32, 64), (64, 16, 32), (64, 64, 64), (128, 16, 64), (128, 32, 64)),
             (2, False): ((64, 16, 64),)}
    return {key: [triton.Config({"BLOCK_R": r, "BLOCK_P": p, "BLOCK_H": h}, num_warps=8, num_stages=2)
                  for r, p, h in shapes] for key, shapes in tiles.items()}


BACKWARD_CONFIGS = _backward_configs()
# The backward's early prune keeps the tiles listed for the operands' element size and the dh block's width.
_ALL_BACKWARD_CONFIGS, _configs_for_operands = configs_by_operands(
    BACKWARD_CONFIGS, lambda args, kwargs: (args["h_ptr"].element_size(), kwargs["GRAD_H_BLOCK"] <= 64))

# The width of the dh block a backward pass accumulates in registers, by the operands' element size: [64 rows, 128]
# float32 is 32 registers a thread at 8 warps, [64, 256] 64. float32's operands take more registers (tf32x3 splits
# each in two): at 256 every float32 tile spilled on sm_90. A wider H takes cdiv(H, GRAD_HIDDEN_BLOCK) passes over
# P, each recomputing the logits. Narrow under the interpreter, so that the tests run several passes.
GRAD_HIDDEN_BLOCK = {4: 32, 2: 32} if triton_interpreting() else {4: 128, 2: 256}


def _forward_configs():
    """The forward's tiles (BLOCK_R rows x BLOCK_P logits, BLOCK_H slices of H), timed once per (H, P): the ones
    that compiled for sm_90 without spills and with wgmma in every dtype and precision mode (benchmarks/
    aot_report.py; slices of 64, and 128 x 128 tiles, spilled). The interpreter's shape has several H slices and P
    tiles at the tests' sizes, so their loops run."""
    if triton_interpreting():
        return [triton.Config({"BLOCK_R": 16, "BLOCK_P": 32, "BLOCK_H": 16})]
    return [triton.Config({"BLOCK_R": r, "BLOCK_P": p, "BLOCK_H": 32}, num_warps=w, num_stages=3)
            for r, p, w in ((64, 64, 4), (128, 64, 8), (64, 128, 8))]


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
    example r % B), the x-term from xw = x W [B, H] and xb = x b [B] (ops.utils.data_term); the logits live only in
    registers. Grid: persistent (autotuned tiles); a program takes row tiles of BLOCK_R rows in turn and walks P
    in BLOCK_P tiles, each a loop over H in BLOCK_H slices. 2 R H P FLOPs on tensor cores."""
    for tile in tl.range(tl.program_id(0), tl.cdiv(R, BLOCK_R), tl.num_programs(0)):
        rows = tile * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)  # int64: rows * H may pass 2**31
        row_mask = rows < R
        softplus_sum = tl.zeros([BLOCK_R], ACC)
        for p0 in range(0, P, BLOCK_P):
            cols = p0 + tl.arange(0, BLOCK_P)
            y = linear_tile(h_ptr, w_ptr, b_ptr, rows, row_mask, cols, H, P, ACC, PRECISION, BLOCK_R, BLOCK_P,
                            BLOCK_H)
            softplus_sum += softplus_tile_sum(y, row_mask, cols < P)
        total = data_term(h_ptr, rows, xw_ptr, xb_ptr, rows % B, row_mask, H, ACC, BLOCK_H) - softplus_sum
        tl.store(out_ptr + rows, total, mask=row_mask)


@triton.jit
def _add_weight_grad(h_ptr, grad_y, rows, row_mask, cols, col_mask, partial_wt, partial_b, later, H, P,
                     ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_H: tl.constexpr):
    """Adds dW^T [H, cols] = h_rows^T dy and db [cols] = sum_rows dy into this program's partial sums (written, not
    added, when ``later`` is false: its first row tile), dW^T in BLOCK_H slices of H."""
    tl.debug_barrier()  # the previous row tile's writes, by whichever threads, land before these reads
    for h0 in range(0, H, BLOCK_H):
        hidden = h0 + tl.arange(0, BLOCK_H)
        h_slice = row_block(h_ptr, rows, row_mask, hidden, H)
        grad_wt = dot(tl.trans(h_slice), grad_y.to(h_slice.dtype), ACC, PRECISION)
        mask = (hidden < H)[:, None] & col_mask[None, :]
        ptrs = partial_wt + hidden[:, None] * P + cols[None, :]
        # (a select, not a load mask: the interpreter takes no scalar in a mask)
        tl.store(ptrs, tl.where(later, tl.load(ptrs, mask=mask, other=0.0), 0.0) + grad_wt, mask=mask)
    b_ptrs = partial_b + cols
    tl.store(b_ptrs, tl.where(later, tl.load(b_ptrs, mask=col_mask, other=0.0), 0.0) + tl.sum(grad_y, axis=0),
             mask=col_mask)


@triton.autotune(configs=_ALL_BACKWARD_CONFIGS, key=["H", "P"],
                 prune_configs_by={"early_config_prune": _configs_for_operands},
                 cache_results=True)  # timings cached on disk: a new process does not re-tune
@triton.jit
def _head_bwd_kernel(h_ptr, w_ptr, b_ptr, x_ptr, grad_out_ptr, grad_h_ptr, partial_wt_ptr, partial_b_ptr, R, B, H, P,
                     ACC: tl.constexpr, PRECISION: tl.constexpr, GRAD_H_BLOCK: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr):
    """Every gradient from recomputed logits. With dy = g_r (x_j - sigmoid(y_rj)) from each logit tile: grad_h
    [R, H] = sum_j dy_rj W_j, and this program's partial dW^T [H, P] = sum_r h_r^T dy_r and db [P] = sum_r dy_r
    over its rows, in partial_wt [programs, H, P] and partial_b [programs, P] (torch adds them: deterministic).
    Grid: persistent, one program per partial (autotuned tiles); program p takes row tiles p, p + programs, ..., so
    every program needs at least one tile (programs <= cdiv(R, largest BLOCK_R)). A row tile's dh block of
    GRAD_H_BLOCK columns stays in registers over a pass across P; H > GRAD_H_BLOCK takes more passes, each
    recomputing the logits (dW and db in the first). 6 R H P FLOPs in one pass, 2 R H P more a pass after it."""
    program = tl.program_id(0)
    partial_wt = partial_wt_ptr + program.to(tl.int64) * H * P
    partial_b = partial_b_ptr + program.to(tl.int64) * P
    for tile in tl.range(program, tl.cdiv(R, BLOCK_R), tl.num_programs(0)):
        rows = tile * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)  # int64: rows * H may pass 2**31
        row_mask = rows < R
        grad_out = tl.load(grad_out_ptr + rows, mask=row_mask, other=0.0).to(ACC)
        later = tile > program
        for g0 in range(0, H, GRAD_H_BLOCK):
            grad_hidden = g0 + tl.arange(0, GRAD_H_BLOCK)
            grad_h = tl.zeros([BLOCK_R, GRAD_H_BLOCK], ACC)
            for p0 in range(0, P, BLOCK_P):
                cols = p0 + tl.arange(0, BLOCK_P)
                col_mask = cols < P
                y = linear_tile(h_ptr, w_ptr, b_ptr, rows, row_mask, cols, H, P, ACC, PRECISION, BLOCK_R, BLOCK_P,
                                BLOCK_H)
                grad_y = _grad_logits(y, x_ptr, rows % B, cols, row_mask[:, None] & col_mask[None, :], grad_out, P,
                                      ACC)
                w_tile = row_block(w_ptr, cols, col_mask, grad_hidden, H)
                grad_h = dot_acc(grad_y.to(w_tile.dtype), w_tile, grad_h, PRECISION)
                if g0 == 0:
                    _add_weight_grad(h_ptr, grad_y, rows, row_mask, cols, col_mask, partial_wt, partial_b, later, H, P,
                                     ACC, PRECISION, BLOCK_H)
            tl.store(grad_h_ptr + rows[:, None] * H + grad_hidden[None, :], grad_h.to(grad_h_ptr.dtype.element_ty),
                     mask=row_mask[:, None] & (grad_hidden < H)[None, :])


@library_op("triton_decoder_head_forward", ("out",))
def _triton_forward(hidden: Tensor, weight: Tensor, bias: Tensor, x: Tensor, out: Tensor) -> None:
    num_samples, batch, width = hidden.shape
    rows = num_samples * batch
    x_weight, x_bias = data_term_factors(x, weight, bias, acc=out.dtype)
    programs = persistent_programs(hidden.device)
    _head_fwd_kernel[lambda meta: (min(cdiv(rows, meta["BLOCK_R"]), programs),)](
        hidden, weight, bias, x_weight, x_bias, out, rows, batch, width, weight.shape[0],
        ACC=triton_accumulation_dtype(hidden.dtype), PRECISION=dot_precision(hidden.dtype))


@library_op("triton_decoder_head_backward", ("grad_hidden", "partial_weight_t", "partial_bias"))
def _triton_backward(hidden: Tensor, weight: Tensor, bias: Tensor, x: Tensor, grad_out: Tensor, grad_hidden: Tensor,
                     partial_weight_t: Tensor, partial_bias: Tensor) -> None:
    num_samples, batch, width = hidden.shape
    _head_bwd_kernel[(partial_weight_t.shape[0],)](
        hidden, weight, bias, x, grad_out, grad_hidden, partial_weight_t, partial_bias, num_samples * batch, batch,
        width, weight.shape[0], ACC=triton_accumulation_dtype(hidden.dtype), PRECISION=dot_precision(hidden.dtype),
        GRAD_H_BLOCK=min(GRAD_HIDDEN_BLOCK[hidden.element_size()], max(16, next_power_of_2(width))))


_LARGEST_BACKWARD_BLOCK_R = max(config.kwargs["BLOCK_R"] for config in _ALL_BACKWARD_CONFIGS)


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
    @once_differentiable("bernoulli_decoder_log_likelihood")
    def backward(ctx, grad_out):
        hidden, weight, bias, x = ctx.saved_tensors
        rows, acc = hidden.shape[0] * hidden.shape[1], accumulation_dtype(hidden.dtype)
        # dW and db: each program writes a partial sum, added up here.
        programs = backward_programs(rows, hidden.device)
        grad_hidden = torch.empty_like(hidden)
        partial_weight_t = torch.empty((programs,) + tuple(weight.T.shape), dtype=acc, device=hidden.device)
        partial_bias = torch.empty((programs,) + tuple(bias.shape), dtype=acc, device=hidden.device)
        _triton_backward(hidden, weight, bias, x, grad_out.contiguous(), grad_hidden, partial_weight_t, partial_bias)
        grad_weight = partial_weight_t.sum(0).T.to(weight.dtype, memory_format=torch.contiguous_format)
        return grad_hidden, grad_weight, partial_bias.sum(0).to(bias.dtype), None


def bernoulli_decoder_log_likelihood(hidden, weight, bias, x):
    """Bernoulli log p(x|z) of logits hidden @ weight.T + bias without materializing them.

    hidden [k, B, H], weight [P, H], bias [P], x [B, P] -> [k, B].
    float64 runs the plain-torch formula (``torch_math``): tl.dot takes float32/float16/bfloat16 operands, not
    float64.
    """
    if hidden.dtype == torch.float64:
        return torch_math.bernoulli_decoder_log_likelihood(hidden, weight, bias, x=x)
    return BernoulliDecoderHeadFunction.apply(hidden, weight, bias, x)
