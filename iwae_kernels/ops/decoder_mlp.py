"""Fused decoder MLP for evaluation: the paper's decoder (Linear-tanh-Linear-tanh-Linear) and the Bernoulli
log-likelihood in one forward kernel, never writing the [k * B, H] activations or the [k * B, P] logits.

log w [k, B] = sum_j x_j y_j - softplus(y_j) (+ latent [k, B]) with y = W3 tanh(W2 tanh(W1 z + b1) + b2) + b3, for
samples z [k, B, D], weights W1 [H1, D], W2 [H2, H1], W3 [P, H2] and data x [B, P]. The paper's L_5000 needs only
this forward, so one launch per batch replaces three matmuls, two tanh and the likelihood over all k samples, and
what stays in memory is z and the log-weights.

Each program holds BLOCK_R rows' activations in registers. A hidden layer is held as 4 chunks [BLOCK_R, CHUNK]
because Triton cannot slice or join register tiles along a dimension, and a whole [H2, H1] weight block loaded at
once would not fit the registers: layer 2 is 16 [CHUNK1, CHUNK2] products, the output layer 4 per P tile. Layer
2's weight blocks come through a tensor descriptor (TMA on sm_90: into shared memory without passing through
registers): in the ahead-of-time report for sm_90 at the paper's widths that took the half-precision tiles' spills
from up to 200 B to at most 24 B and the float32 ones' from 3.7-5.4 KB to 2.9-3.9 KB (sm_80, which has no TMA,
gained for float32 and lost a little for half precision). Layer 1's and the output layer's blocks come by pointer
loads (W1's rows, D = 50 floats, are not the 16-byte multiple TMA needs).
The data term comes from per-example factors (ops.utils.data_term_factors), after the P loop.
Forward only: ``functional.bernoulli_mlp_decoder_log_likelihood`` refuses inputs that need a gradient.
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.tools.tensor_descriptor import TensorDescriptor

from .. import torch_backend
from .._env import triton_interpreting
from ..contract import accumulation_dtype
from .utils import (cdiv, data_term_factors, data_term_part, dot_acc, dot_precision, library_op, next_power_of_2,
                    softplus_tile_sum, tanh, triton_accumulation_dtype, weight_block_t)


def _configs():
    """Tile shapes the autotuner times once per layer widths; under the interpreter one (nothing to time). 8 warps
    only: with 4, 7 of the 8 tile shapes spilled more in the ahead-of-time report (benchmarks/aot_report.py,
    float32 and bfloat16 at H=200), the [BLOCK_R, CHUNK] activations taking twice the registers per thread."""
    if triton_interpreting():
        return [triton.Config({"BLOCK_R": 32, "BLOCK_P": 64})]
    return [triton.Config({"BLOCK_R": r, "BLOCK_P": p}, num_warps=8, num_stages=2) for r in (32, 64) for p in (32, 64)]


@triton.jit
def _bias_row(b_ptr, start, n, SIZE: tl.constexpr, ACC: tl.constexpr):
    """b[start : start + SIZE] as a [1, SIZE] row (zero past n)."""
    i = start + tl.arange(0, SIZE)
    return tl.load(b_ptr + i, mask=i < n, other=0.0).to(ACC)[None, :]


@triton.jit
def _linear_part(acc, a, w, row0, n_out, col0, n_in, IN: tl.constexpr, OUT: tl.constexpr, PRECISION: tl.constexpr,
                 DESCRIPTOR: tl.constexpr):
    """acc + a [BLOCK_R, IN] @ W[row0 : row0 + OUT, col0 : col0 + IN]^T: one input chunk's share of an output chunk
    [BLOCK_R, OUT], added into acc. W is a pointer to a row-major [n_out, n_in] weight, or with DESCRIPTOR a tensor
    descriptor of it whose block is [OUT, IN] (TMA on sm_90 copies the block into shared memory without passing
    through registers; it zero-fills outside W)."""
    if DESCRIPTOR:
        w_t = tl.trans(w.load([row0, col0]))
    else:
        w_t = weight_block_t(w, row0 + tl.arange(0, OUT), n_out, col0 + tl.arange(0, IN), n_in)
    return dot_acc(a, w_t, acc, PRECISION)


@triton.jit
def _tanh_chunk(a0, a1, a2, a3, w, b_ptr, row0, n_out, n_in, IN: tl.constexpr, OUT: tl.constexpr,
                ACC: tl.constexpr, PRECISION: tl.constexpr, DESCRIPTOR: tl.constexpr):
    """Output chunk tanh(a W[row0 : row0 + OUT]^T + b[row0 : row0 + OUT]) [BLOCK_R, OUT] of a Linear + tanh whose
    input is held as 4 chunks a0..a3 [BLOCK_R, IN] (a1 None: the input is a0 alone), in the input's dtype as
    torch's Linear returns it; W as _linear_part takes it."""
    pre = _linear_part(tl.zeros([a0.shape[0], OUT], ACC), a0, w, row0, n_out, 0, n_in, IN, OUT, PRECISION, DESCRIPTOR)
    if a1 is not None:
        pre = _linear_part(pre, a1, w, row0, n_out, IN, n_in, IN, OUT, PRECISION, DESCRIPTOR)
        pre = _linear_part(pre, a2, w, row0, n_out, 2 * IN, n_in, IN, OUT, PRECISION, DESCRIPTOR)
        pre = _linear_part(pre, a3, w, row0, n_out, 3 * IN, n_in, IN, OUT, PRECISION, DESCRIPTOR)
    return tanh(pre + _bias_row(b_ptr, row0, n_out, OUT, ACC)).to(a0.dtype)


@triton.autotune(configs=_configs(), key=["D", "H1", "H2", "P"], cache_results=True)
@triton.jit
def _mlp_decoder_fwd_kernel(z_ptr, w1_ptr, b1_ptr, w2_desc, b2_ptr, w3_ptr, b3_ptr, xw_ptr, xb_ptr, latent_ptr,
                            out_ptr, R, B, D, H1, H2, P,
                            ADD_LATENT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                            D_PAD: tl.constexpr, CHUNK1: tl.constexpr, CHUNK2: tl.constexpr,
                            BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr):
    """out [R = k * B] = sum_j x_j y_j - softplus(y_j) (+ latent [R]) for the decoder MLP's logits y of z [R, D]
    (row r is example r % B), the data term sum_j x_j y_j = h2 . (W3^T x_b) + x_b . b3 from xw = x W3 [B, H2] and
    xb = x b3 [B]; W2 comes as a tensor descriptor with [CHUNK2, CHUNK1] blocks. Grid: cdiv(R, BLOCK_R)
    (autotuned). Each program: z block [BLOCK_R, D_PAD], layers 1 and 2 as 4 chunks [BLOCK_R, CHUNK] each in
    registers, then the output layer over P in BLOCK_P tiles whose softplus the epilogue sums. Reads z once and the
    weights once per program; 2 R (D H1 + H1 H2 + H2 P) FLOPs on tensor cores."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    latent_cols = tl.arange(0, D_PAD)
    z = tl.load(z_ptr + rows[:, None] * D + latent_cols[None, :], mask=row_mask[:, None] & (latent_cols < D)[None, :],
                other=0.0)
    h1_0 = _tanh_chunk(z, None, None, None, w1_ptr, b1_ptr, 0, H1, D, D_PAD, CHUNK1, ACC, PRECISION, False)
    h1_1 = _tanh_chunk(z, None, None, None, w1_ptr, b1_ptr, CHUNK1, H1, D, D_PAD, CHUNK1, ACC, PRECISION, False)
    h1_2 = _tanh_chunk(z, None, None, None, w1_ptr, b1_ptr, 2 * CHUNK1, H1, D, D_PAD, CHUNK1, ACC, PRECISION, False)
    h1_3 = _tanh_chunk(z, None, None, None, w1_ptr, b1_ptr, 3 * CHUNK1, H1, D, D_PAD, CHUNK1, ACC, PRECISION, False)
    h2_0 = _tanh_chunk(h1_0, h1_1, h1_2, h1_3, w2_desc, b2_ptr, 0, H2, H1, CHUNK1, CHUNK2, ACC, PRECISION,
                       True)
    h2_1 = _tanh_chunk(h1_0, h1_1, h1_2, h1_3, w2_desc, b2_ptr, CHUNK2, H2, H1, CHUNK1, CHUNK2, ACC, PRECISION,
                       True)
    h2_2 = _tanh_chunk(h1_0, h1_1, h1_2, h1_3, w2_desc, b2_ptr, 2 * CHUNK2, H2, H1, CHUNK1, CHUNK2, ACC, PRECISION,
                       True)
    h2_3 = _tanh_chunk(h1_0, h1_1, h1_2, h1_3, w2_desc, b2_ptr, 3 * CHUNK2, H2, H1, CHUNK1, CHUNK2, ACC, PRECISION,
                       True)
    total = tl.zeros([BLOCK_R], ACC)
    for p0 in range(0, P, BLOCK_P):
        y = _linear_part(tl.zeros([BLOCK_R, BLOCK_P], ACC), h2_0, w3_ptr, p0, P, 0, H2, CHUNK2, BLOCK_P, PRECISION, False)
        y = _linear_part(y, h2_1, w3_ptr, p0, P, CHUNK2, H2, CHUNK2, BLOCK_P, PRECISION, False)
        y = _linear_part(y, h2_2, w3_ptr, p0, P, 2 * CHUNK2, H2, CHUNK2, BLOCK_P, PRECISION, False)
        y = _linear_part(y, h2_3, w3_ptr, p0, P, 3 * CHUNK2, H2, CHUNK2, BLOCK_P, PRECISION, False)
        y += _bias_row(b3_ptr, p0, P, BLOCK_P, ACC)
        total -= softplus_tile_sum(y, row_mask, p0 + tl.arange(0, BLOCK_P) < P)
    # The data term after the P loop, when no logit tile is live (before it, ptxas kept its loads and spilled more).
    x_rows = rows % B
    total += tl.load(xb_ptr + x_rows, mask=row_mask, other=0.0)
    total += data_term_part(h2_0, xw_ptr, x_rows, row_mask, tl.arange(0, CHUNK2), H2)
    total += data_term_part(h2_1, xw_ptr, x_rows, row_mask, CHUNK2 + tl.arange(0, CHUNK2), H2)
    total += data_term_part(h2_2, xw_ptr, x_rows, row_mask, 2 * CHUNK2 + tl.arange(0, CHUNK2), H2)
    total += data_term_part(h2_3, xw_ptr, x_rows, row_mask, 3 * CHUNK2 + tl.arange(0, CHUNK2), H2)
    if ADD_LATENT:
        total += tl.load(latent_ptr + rows, mask=row_mask, other=0.0).to(ACC)
    tl.store(out_ptr + rows, total, mask=row_mask)


def _chunk(width):
    """The padded width of each of the 4 chunks a hidden layer of ``width`` is held in (a power of two, at least
    tl.dot's 16)."""
    return max(16, next_power_of_2(cdiv(width, 4)))


def _weight_descriptor(weight, out_block, in_block):
    """A tensor descriptor of a row-major Linear weight [n_out, n_in] whose loads are [out_block, in_block] blocks.
    TMA needs a 16-byte aligned base and row stride: a weight without them is copied into zero-padded rows."""
    n_out, n_in = weight.shape
    per_16_bytes = 16 // weight.element_size()
    if n_in % per_16_bytes or weight.data_ptr() % 16:
        padded = weight.new_zeros((n_out, cdiv(n_in, per_16_bytes) * per_16_bytes))
        padded[:, :n_in] = weight
        weight = padded
    return TensorDescriptor(weight, shape=[n_out, n_in], strides=[weight.stride(0), 1],
                            block_shape=[out_block, in_block])


@library_op("triton_mlp_decoder_forward", ("out",))
def _triton_forward(z: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, w3: Tensor, b3: Tensor, x: Tensor,
                    latent: Optional[Tensor], out: Tensor) -> None:
    num_samples, batch, dim = z.shape
    rows = num_samples * batch
    chunk1, chunk2 = _chunk(w1.shape[0]), _chunk(w2.shape[0])
    x_weight, x_bias = data_term_factors(x, w3, b3, out.dtype)
    _mlp_decoder_fwd_kernel[lambda meta: (cdiv(rows, meta["BLOCK_R"]),)](
        z, w1, b1, _weight_descriptor(w2, chunk2, chunk1), b2, w3, b3, x_weight, x_bias,
        out if latent is None else latent, out, rows, batch, dim, w1.shape[0], w2.shape[0], w3.shape[0],
        ADD_LATENT=latent is not None, ACC=triton_accumulation_dtype(z.dtype), PRECISION=dot_precision(z.dtype),
        D_PAD=max(16, next_power_of_2(dim)), CHUNK1=chunk1, CHUNK2=chunk2)


def bernoulli_mlp_decoder_log_likelihood(z, weights, biases, x, latent_log_weight=None):
    """log p(x|z) [k, B] (+ latent_log_weight [k, B]) through the decoder Linear-tanh-Linear-tanh-Linear, forward
    only. z [k, B, D]; weights [H1, D], [H2, H1], [P, H2]; biases [H1], [H2], [P]; x [B, P]. Returns float32 for
    half inputs. float64 runs the torch backend: tl.dot takes no float64 operands."""
    if z.dtype == torch.float64:
        return torch_backend.bernoulli_mlp_decoder_log_likelihood(z, weights, biases, x, latent_log_weight)
    out = torch.empty(z.shape[:2], dtype=accumulation_dtype(z.dtype), device=z.device)
    tensors = [t.contiguous() for t in (z, *[p for layer in zip(weights, biases) for p in layer], x)]
    latent = None if latent_log_weight is None else latent_log_weight.to(out.dtype).contiguous()
    _triton_forward(*tensors, latent, out)
    return out
