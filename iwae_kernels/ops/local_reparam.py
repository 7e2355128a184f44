"""Local reparameterization (Kingma, Salimans & Welling 2015): sample a linear layer's pre-activations directly.

For factorized Gaussian weights W ~ N(mu, var) [N, K] and inputs A [M, K], b = A mu^T + sqrt((A * A) var^T) * zeta
+ bias with zeta ~ N(0, 1) per (row, output): each row gets its own weight noise at the cost of one more matmul.
One kernel forms both matmul tiles, draws zeta (Philox, keyed on (seed, element index), or the caller's noise)
and writes b; it also writes zeta / (2 std), all the backward needs from the noise.
Backward: d/dA = g mu + 2 A ((g zeta / 2std) var), d/dmu = g^T A, d/dvar = (g zeta / 2std)^T (A * A), by cuBLAS.
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._autograd import once_differentiable
from .. import torch_math
from .gaussian_sample import draw_seed
from .utils import cdiv, dot_acc, dot_precision, library_op, triton_accumulation_dtype

BLOCK_M, BLOCK_N, BLOCK_K = 32, 32, 32


@triton.jit
def _local_reparam_fwd_kernel(
    a_ptr, mu_ptr, var_ptr, bias_ptr, noise_ptr, seed_ptr, out_ptr, noise_over_2std_ptr, M, N, K,
    HAS_BIAS: tl.constexpr, HAS_NOISE: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out [M, N] = a mu^T + sqrt((a * a) var^T) zeta + bias for a [M, K], mu and var [N, K], bias [N]; zeta [M, N]
    read from noise_ptr (HAS_NOISE) or drawn as Philox normals keyed on (seed, element index). Also writes
    zeta / (2 std) [M, N] for the backward. Grid: (cdiv(M, BLOCK_M), cdiv(N, BLOCK_N)); both matmuls share the
    K loop (tensor cores at the precision of ``dot_precision``). Reads a once per N tile, mu and var once per
    M tile; writes 2 M N."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask, col_mask = rows < M, cols < N
    mean = tl.zeros([BLOCK_M, BLOCK_N], ACC)
    var = tl.zeros([BLOCK_M, BLOCK_N], ACC)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        a = tl.load(a_ptr + rows[:, None] * K + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w_mask = k_mask[:, None] & col_mask[None, :]
        mu_t = tl.load(mu_ptr + cols[None, :] * K + ks[:, None], mask=w_mask, other=0.0)  # mu^T tile [K, N]
        var_t = tl.load(var_ptr + cols[None, :] * K + ks[:, None], mask=w_mask, other=0.0)
        mean = dot_acc(a, mu_t, mean, PRECISION)
        var = dot_acc(a * a, var_t, var, PRECISION)
    mask = row_mask[:, None] & col_mask[None, :]
    offsets = rows[:, None] * N + cols[None, :]
    if HAS_NOISE:
        zeta = tl.load(noise_ptr + offsets, mask=mask, other=0.0).to(ACC)
    else:
        zeta = tl.randn(tl.load(seed_ptr), offsets).to(ACC)
    positive = var > 0
    std = tl.sqrt(tl.where(positive, var, 1.0))
    out = mean + tl.where(positive, std * zeta, 0.0)
    if HAS_BIAS:
        out += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)
    # d sqrt(var)/d var at var = 0 is taken as 0 (a zero input row has no weight noise to differentiate).
    tl.store(noise_over_2std_ptr + offsets, tl.where(positive, zeta / (2.0 * std), 0.0), mask=mask)


@library_op("triton_local_reparam_forward", ("out", "noise_over_2std"))
def _triton_forward(a: Tensor, mu: Tensor, var: Tensor, bias: Optional[Tensor], noise: Optional[Tensor], seed: Tensor,
                    out: Tensor, noise_over_2std: Tensor) -> None:
    (rows, inner), outputs = a.shape, mu.shape[0]
    _local_reparam_fwd_kernel[(cdiv(rows, BLOCK_M), cdiv(outputs, BLOCK_N))](
        a_ptr=a, mu_ptr=mu, var_ptr=var, bias_ptr=out if bias is None else bias,
        noise_ptr=out if noise is None else noise, seed_ptr=seed, out_ptr=out, noise_over_2std_ptr=noise_over_2std,
        M=rows, N=outputs, K=inner, HAS_BIAS=bias is not None, HAS_NOISE=noise is not None,
        ACC=triton_accumulation_dtype(a.dtype), PRECISION=dot_precision(a.dtype),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
    )


class LocalReparamFunction(torch.autograd.Function):
    """(A [M, K], mu [N, K], var [N, K], bias [N] or None, noise [M, N] or None, seed) -> b [M, N]."""

    @staticmethod
    def forward(ctx, a, mu, var, bias, noise, seed):
        a, mu, var = a.contiguous(), mu.contiguous(), var.contiguous()
        out = torch.empty((a.shape[0], mu.shape[0]), dtype=a.dtype, device=a.device)
        noise_over_2std = torch.empty(out.shape, dtype=torch.float64 if a.dtype == torch.float64 else torch.float32,
                                      device=a.device)
        _triton_forward(a, mu, var, None if bias is None else bias.contiguous(),
                        None if noise is None else noise.contiguous(), seed, out, noise_over_2std)
        ctx.save_for_backward(a, mu, var, noise_over_2std)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @once_differentiable("local_reparam_linear")
    def backward(ctx, grad_out):
        a, mu, var, noise_over_2std = ctx.saved_tensors
        grad_var_out = (grad_out * noise_over_2std).to(a.dtype)
        grad_a = grad_out @ mu + 2 * a * (grad_var_out @ var)
        grad_mu = grad_out.t() @ a
        grad_var = grad_var_out.t() @ (a * a)
        grad_bias = grad_out.sum(0) if ctx.has_bias else None
        return grad_a, grad_mu, grad_var, grad_bias, None, None


def local_reparam_linear(a, mu, var, bias, noise, generator):
    """b [M, N] for inputs a [M, K] and weights N(mu, var) [N, K]; noise [M, N] or drawn in the kernel.
    float64 runs the plain-torch formula (``torch_math``): tl.dot takes no float64 operands."""
    if a.dtype == torch.float64:
        return torch_math.local_reparam_linear(a, mu, var, bias=bias, noise=noise, generator=generator)
    seed = draw_seed(generator, a.device) if noise is None else torch.zeros((), dtype=torch.int64, device=a.device)
    return LocalReparamFunction.apply(a, mu, var, bias, noise, seed)
