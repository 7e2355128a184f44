"""Fused decoder MLP for evaluation: the paper's decoder (Linear-tanh-Linear-tanh-Linear) and the Bernoulli
log-likelihood in one forward kernel, never writing the [k * B, H] activations or the [k * B, P] logits.

log w [k, B] = sum_j x_j y_j - softplus(y_j) (+ latent [k, B]) with y = W3 tanh(W2 tanh(W1 z + b1) + b2) + b3, for
samples z [k, B, D], weights W1 [H1, D], W2 [H2, H1], W3 [P, H2] and data x [B, P]. The paper's L_5000 needs only
this forward, so one launch per batch replaces three matmuls, two tanh and the likelihood over all k samples, and
what stays in memory is z and the log-weights.

A persistent grid: each program takes row tiles of BLOCK_R rows in turn and keeps their hidden activations in
scratch rows of its own (h1 [BLOCK_R, H1], h2 [BLOCK_R, H2]: 2 x 64 x 200 floats a program at the paper's widths,
a few MB in all, so they stay in L2 and mostly in L1) rather than in registers, where float32 activations took half
the register file at 64 rows and spilled kilobytes. Every layer is then the same loop as the decoder head's: an
output block at a time, the matmul in BLOCK_H slices of its input (ops.utils.linear_tile), so any widths compile to
the same tiles. The output layer's logits never leave registers: the epilogue sums their softplus, and the data
term comes from per-example factors (ops.utils.data_term_factors).
Forward only: ``functional.bernoulli_mlp_decoder_log_likelihood`` refuses inputs that need a gradient.
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .. import torch_math
from .._env import triton_interpreting
from ..contract import accumulation_dtype
from .utils import (cdiv, configs_by_operands, data_term, data_term_factors, dot_precision, library_op, linear_tile,
                    persistent_programs, softplus_tile_sum, tanh, triton_accumulation_dtype)

# Rows a program holds at a time (its scratch rows): 64, the least M wgmma takes on sm_90. Under the interpreter
# 16, so that the tests' sizes run several row tiles per program.
BLOCK_R = 16 if triton_interpreting() else 64


def _configs():
    """Tile shapes by the operands' element size (BLOCK_OUT: a hidden layer's output block, BLOCK_P the logits',
    BLOCK_H the input slices), timed once per layer widths and dtype: the ones that compiled for sm_90 without
    spills, with wgmma (benchmarks/aot_report.py: for float32 only slices of 16 at 8 warps and 64-wide blocks; with
    32-wide slices, 4 warps or 128-wide blocks its tiles spilled up to 812 B). Under the interpreter one (nothing to
    time), narrow enough that every loop runs more than once at the tests' sizes."""
    if triton_interpreting():
        one = [triton.Config({"BLOCK_OUT": 16, "BLOCK_P": 32, "BLOCK_H": 16})]
        return {4: one, 2: one}
    tiles = {4: ((64, 64, 16),), 2: ((64, 64, 32), (64, 128, 32))}
    return {size: [triton.Config({"BLOCK_OUT": o, "BLOCK_P": p, "BLOCK_H": h}, num_warps=8, num_stages=3)
                   for o, p, h in shapes] for size, shapes in tiles.items()}


CONFIGS, _configs_for_operands = configs_by_operands(_configs(), lambda args, _: args["z_ptr"].element_size())


@triton.jit
def _tanh_layer(a_ptr, a_rows, row_mask, n_in, w_ptr, b_ptr, n_out, out_ptr, out_rows, ACC: tl.constexpr,
                PRECISION: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_OUT: tl.constexpr, BLOCK_H: tl.constexpr):
    """out[out_rows] = tanh(a[a_rows] W^T + b) for a row-major a [*, n_in] and out [*, n_out], W [n_out, n_in], in
    BLOCK_OUT-wide output blocks, stored in out's dtype (a Linear's output dtype)."""
    for c0 in range(0, n_out, BLOCK_OUT):
        cols = c0 + tl.arange(0, BLOCK_OUT)
        y = linear_tile(a_ptr, w_ptr, b_ptr, a_rows, row_mask, cols, n_in, n_out, ACC, PRECISION, BLOCK_R, BLOCK_OUT,
                        BLOCK_H)
        tl.store(out_ptr + out_rows[:, None] * n_out + cols[None, :], tanh(y).to(out_ptr.dtype.element_ty),
                 mask=row_mask[:, None] & (cols < n_out)[None, :])


@triton.autotune(configs=CONFIGS, key=["D", "H1", "H2", "P"],
                 prune_configs_by={"early_config_prune": _configs_for_operands}, cache_results=True)
@triton.jit
def _mlp_decoder_fwd_kernel(z_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, xw_ptr, xb_ptr, latent_ptr,
                            h1_ptr, h2_ptr, out_ptr, R, B, D, H1, H2, P,
                            ADD_LATENT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                            BLOCK_R: tl.constexpr, BLOCK_OUT: tl.constexpr, BLOCK_P: tl.constexpr,
                            BLOCK_H: tl.constexpr):
    """out [R = k * B] = sum_j x_j y_j - softplus(y_j) (+ latent [R]) for the decoder MLP's logits y of z [R, D]
    (row r is example r % B), the data term from xw = x W3 [B, H2] and xb = x b3 [B]. Scratch h1 [programs *
    BLOCK_R, H1] and h2 [programs * BLOCK_R, H2]: each program's own rows. Grid: persistent (autotuned tiles); a
    program takes row tiles in turn: layer 1 into its h1 rows, layer 2 into its h2 rows, then the output layer
    over P in BLOCK_P tiles, each a loop over H2 in BLOCK_H slices, whose softplus the epilogue sums.
    2 R (D H1 + H1 H2 + H2 P) FLOPs on tensor cores."""
    program = tl.program_id(0)
    local = program.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # this program's scratch rows
    for tile in tl.range(program, tl.cdiv(R, BLOCK_R), tl.num_programs(0)):
        rows = tile * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
        row_mask = rows < R
        # Each barrier: the scratch rows' writes (or the last tile's reads), by whichever threads, are done first.
        tl.debug_barrier()
        _tanh_layer(z_ptr, rows, row_mask, D, w1_ptr, b1_ptr, H1, h1_ptr, local, ACC, PRECISION, BLOCK_R, BLOCK_OUT,
                    BLOCK_H)
        tl.debug_barrier()
        _tanh_layer(h1_ptr, local, row_mask, H1, w2_ptr, b2_ptr, H2, h2_ptr, local, ACC, PRECISION, BLOCK_R,
                    BLOCK_OUT, BLOCK_H)
        tl.debug_barrier()
        total = data_term(h2_ptr, local, xw_ptr, xb_ptr, rows % B, row_mask, H2, ACC, BLOCK_H)
        for p0 in range(0, P, BLOCK_P):
            cols = p0 + tl.arange(0, BLOCK_P)
            y = linear_tile(h2_ptr, w3_ptr, b3_ptr, local, row_mask, cols, H2, P, ACC, PRECISION, BLOCK_R, BLOCK_P,
                            BLOCK_H)
            total -= softplus_tile_sum(y, row_mask, cols < P)
        if ADD_LATENT:
            total += tl.load(latent_ptr + rows, mask=row_mask, other=0.0).to(ACC)
        tl.store(out_ptr + rows, total, mask=row_mask)


@library_op("triton_mlp_decoder_forward", ("out",))
def _triton_forward(z: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, w3: Tensor, b3: Tensor, x: Tensor,
                    latent: Optional[Tensor], out: Tensor) -> None:
    num_samples, batch, dim = z.shape
    rows = num_samples * batch
    programs = min(persistent_programs(z.device), cdiv(rows, BLOCK_R))
    h1 = torch.empty((programs * BLOCK_R, w1.shape[0]), dtype=z.dtype, device=z.device)  # scratch rows
    h2 = torch.empty((programs * BLOCK_R, w2.shape[0]), dtype=z.dtype, device=z.device)
    x_weight, x_bias = data_term_factors(x, w3, b3, acc=out.dtype)
    _mlp_decoder_fwd_kernel[(programs,)](
        z, w1, b1, w2, b2, w3, b3, x_weight, x_bias, out if latent is None else latent, h1, h2, out, rows, batch, dim,
        w1.shape[0], w2.shape[0], w3.shape[0], ADD_LATENT=latent is not None, ACC=triton_accumulation_dtype(z.dtype),
        PRECISION=dot_precision(z.dtype), BLOCK_R=BLOCK_R)


def bernoulli_mlp_decoder_log_likelihood(z, weights, biases, x, latent_log_weight=None):
    """log p(x|z) [k, B] (+ latent_log_weight [k, B]) through the decoder Linear-tanh-Linear-tanh-Linear, forward
    only. z [k, B, D]; weights [H1, D], [H2, H1], [P, H2]; biases [H1], [H2], [P]; x [B, P]. Returns float32 for
    half inputs. float64 runs the plain-torch formula (``torch_math``): tl.dot takes no float64
    operands."""
    if z.dtype == torch.float64:
        return torch_math.bernoulli_mlp_decoder_log_likelihood(
            z,
            weights,
            biases,
            x=x,
            latent_log_weight=latent_log_weight,
        )
    out = torch.empty(z.shape[:2], dtype=accumulation_dtype(z.dtype), device=z.device)
    tensors = [t.contiguous() for t in (z, *[p for layer in zip(weights, biases) for p in layer], x)]
    latent = None if latent_log_weight is None else latent_log_weight.to(out.dtype).contiguous()
    _triton_forward(*tensors, latent, out)
    return out
