"""Reparameterized diagonal-Gaussian sampling fused with the latent log-weight log p(z) - log q(z|x).

Forward: z = mu + exp(logvar / 2) * eps for all k samples and the per-sample sum over D, in one pass.
eps is read from the caller or drawn in-kernel from Philox (seed, element index); in-kernel noise is
never stored, the backward draws it again from the same seed.

Backward: one program per (example, block of D) walks the k samples and reduces the estimator's
per-sample term into dmu, dlogvar (and the prior's gradients) without a [k, B, D] intermediate.
Parameters given per sample ([k, B, D]) get their gradient per sample instead. Split-k: when the
(example, block) programs alone leave the GPU empty (B = 20, k = 5000), the k samples are cut into splits,
each program reduces its split into a partial [splits, B, D], and torch sums the partials over the splits.
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._autograd import once_differentiable
from ..contract import ESTIMATOR_CODES, Estimator, accumulation_dtype
from .utils import (HALF_LOG_2PI, Launchers, cdiv, contiguous_or_none, dense_empty, library_op, next_power_of_2,
                    row_tile, sample_splits, triton_accumulation_dtype, unit_column_stride)

# Values per program, forward (FORWARD_TILE) and backward (BLOCK_SAMPLES x up to 64): the in-kernel Philox normals
# need many registers per value; 4096 forward and 32 x 64 backward spilled (benchmarks/aot_report.py).
BLOCK_SAMPLES = 16
FORWARD_TILE = 512
# The latent term's prior: N(0, I), the caller's diagonal Gaussian, or none (then it is -log q(z|x), for flows).
STANDARD_PRIOR, GIVEN_PRIOR, NO_PRIOR = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
# The estimator codes (contract.Estimator), as constexprs the kernels compare against.
TOTAL_DERIVATIVE = tl.constexpr(int(Estimator.TOTAL_DERIVATIVE))
DOUBLY_REPARAMETERIZED = tl.constexpr(int(Estimator.DOUBLY_REPARAMETERIZED))


@triton.jit
def _load_noise(eps_ptr, offsets, mask, seed_ptr, HAS_EPS: tl.constexpr, ACC: tl.constexpr):
    if HAS_EPS:
        noise = tl.load(eps_ptr + offsets, mask=mask, other=0.0).to(ACC)
    else:
        noise = tl.randn(tl.load(seed_ptr), offsets).to(ACC)
    return noise


@triton.jit
def _gaussian_sample_fwd_kernel(
    mu_ptr, logvar_ptr, eps_ptr, prior_mu_ptr, prior_logvar_ptr, z_ptr, log_weight_ptr,
    seed_ptr, scale_ptr, R, B, D, param_sample_stride, param_example_stride, prior_sample_stride,
    prior_example_stride,
    HAS_EPS: tl.constexpr, PRIOR: tl.constexpr, HAS_SCALE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """z [R = k * B, D] = mu + exp(logvar / 2) eps and log_weight [R] = scale * sum_d (log p(z) - log q(z|x))
    (docs/MATH.md, "Forward"). mu/logvar (and a given prior) are [B, D] (sample stride 0) or [k, B, D], with the
    given sample and example strides and unit column stride (views such as out.chunk(2, -1) are read in place); eps is
    read (HAS_EPS) or drawn as Philox normals keyed on (seed, element index), the same stream the backward redraws.
    PRIOR: STANDARD_PRIOR, GIVEN_PRIOR or NO_PRIOR (-log q only). Grid: cdiv(R, BLOCK_R), each program walking D in
    BLOCK_D chunks. Reads the parameters once (eps too when given), writes z and the log-weights."""
    # Rows are (sample i, example b) pairs r = i * B + b; a shared [B, D] parameter has sample stride 0.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    sample, example = rows // B, rows % B
    param_rows = sample * param_sample_stride + example * param_example_stride
    prior_rows = sample * prior_sample_stride + example * prior_example_stride
    total = tl.zeros([BLOCK_R], ACC)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = row_mask[:, None] & (cols < D)[None, :]
        offsets = rows[:, None] * D + cols[None, :]
        mu = tl.load(mu_ptr + param_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
        logvar = tl.load(logvar_ptr + param_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
        eps = _load_noise(eps_ptr, offsets, mask, seed_ptr, HAS_EPS, ACC)
        z = mu + tl.exp(0.5 * logvar) * eps
        tl.store(z_ptr + offsets, z.to(z_ptr.dtype.element_ty), mask=mask)
        if PRIOR == GIVEN_PRIOR:
            prior_mu = tl.load(prior_mu_ptr + prior_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
            prior_logvar = tl.load(prior_logvar_ptr + prior_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
            diff = z - prior_mu
            log_p = -0.5 * prior_logvar - 0.5 * diff * diff * tl.exp(-prior_logvar)
        elif PRIOR == STANDARD_PRIOR:
            log_p = -0.5 * z * z
        else:
            log_p = tl.zeros([BLOCK_R, BLOCK_D], ACC)
        term = log_p + 0.5 * logvar + 0.5 * eps * eps
        total += tl.sum(tl.where(mask, term, 0.0), axis=1)
    if PRIOR == NO_PRIOR:  # -log q0(z0) keeps the log 2pi that a prior term would cancel
        total += tl.full([], HALF_LOG_2PI, ACC) * D
    if HAS_SCALE:
        total = total * tl.load(scale_ptr).to(ACC)
    tl.store(log_weight_ptr + rows, total, mask=row_mask)


@triton.jit
def _gaussian_sample_bwd_kernel(
    mu_ptr, logvar_ptr, eps_ptr, prior_mu_ptr, prior_logvar_ptr,
    grad_z_ptr, grad_log_weight_ptr, weight_total_ptr, grad_mu_ptr, grad_logvar_ptr, grad_prior_mu_ptr,
    grad_prior_logvar_ptr, seed_ptr, scale_ptr, K, B, D, ROWS_PER_SPLIT, param_sample_stride, param_example_stride,
    prior_sample_stride, prior_example_stride,
    HAS_EPS: tl.constexpr, PRIOR: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_GRAD_Z: tl.constexpr,
    HAS_GRAD_LOG_WEIGHT: tl.constexpr,
    PARAM_PER_SAMPLE: tl.constexpr, PRIOR_PER_SAMPLE: tl.constexpr, ESTIMATOR: tl.constexpr,
    ACC: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Gradients for mu, logvar [B, D] (summed over the k samples) or [k, B, D] (PARAM_PER_SAMPLE), and for a given
    prior, from grad_z [k, B, D] and grad_log_weight [k, B], with the estimator's encoder gradient (ESTIMATOR:
    TOTAL_DERIVATIVE, stl's path derivative, or DOUBLY_REPARAMETERIZED, which needs grad_log_weight summed over k:
    summed in a first pass with one split, else read from weight_total [B]; docs/MATH.md, "Backward"). eps is
    re-read or redrawn, never stored. Grid: (B, cdiv(D, BLOCK_D), splits); program (b, j, s) walks samples
    [s * ROWS_PER_SPLIT, (s + 1) * ROWS_PER_SPLIT) in BLOCK_K chunks. A gradient summed over k goes to row s of its
    pointer, the output [B, D] itself for one split, else a partial [splits, B, D] the host sums; per-sample
    gradients go straight to their [k, B, D] outputs. Reads grad_z, grad_log_weight and the per-sample parameters
    once, writes each gradient (or partial) once."""
    example = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < D
    split = tl.program_id(2)  # int32 sample bounds: int64 ones cost 10-20 registers (benchmarks/aot_report.py)
    first_sample = split * ROWS_PER_SPLIT
    end_sample = tl.minimum(first_sample + ROWS_PER_SPLIT, K)

    # DReG's wt_i = dJ/da_i / sum_j dJ/da_j needs the sum over all k: summed here when this program walks every
    # sample (one split, no host launch), else read from the host's sum (a split does not see the others).
    weight_total = tl.full([], 0.0, ACC)
    if ESTIMATOR == DOUBLY_REPARAMETERIZED and HAS_GRAD_LOG_WEIGHT:
        if ROWS_PER_SPLIT >= K:
            for k0 in range(0, K, BLOCK_K):
                samples = k0 + tl.arange(0, BLOCK_K)
                weight_total += tl.sum(tl.load(grad_log_weight_ptr + samples.to(tl.int64) * B + example,
                                               mask=samples < K, other=0.0).to(ACC), axis=0)
        else:
            weight_total = tl.load(weight_total_ptr + example).to(ACC)

    grad_mu_sum = tl.zeros([BLOCK_D], ACC)
    grad_logvar_sum = tl.zeros([BLOCK_D], ACC)
    grad_prior_mu_sum = tl.zeros([BLOCK_D], ACC)
    grad_prior_logvar_sum = tl.zeros([BLOCK_D], ACC)
    for k0 in range(first_sample, end_sample, BLOCK_K):
        samples = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
        sample_mask = samples < end_sample
        mask = sample_mask[:, None] & col_mask[None, :]
        rows = samples * B + example
        offsets = rows[:, None] * D + cols[None, :]
        param_offsets = (samples * param_sample_stride + example * param_example_stride)[:, None] + cols[None, :]
        mu = tl.load(mu_ptr + param_offsets, mask=mask, other=0.0).to(ACC)
        logvar = tl.load(logvar_ptr + param_offsets, mask=mask, other=0.0).to(ACC)
        eps = _load_noise(eps_ptr, offsets, mask, seed_ptr, HAS_EPS, ACC)
        sigma = tl.exp(0.5 * logvar)
        z = mu + sigma * eps
        if HAS_GRAD_LOG_WEIGHT:
            grad_a = tl.load(grad_log_weight_ptr + rows, mask=sample_mask, other=0.0).to(ACC)[:, None]
            if HAS_SCALE:
                grad_a = grad_a * tl.load(scale_ptr).to(ACC)
        else:
            grad_a = tl.zeros([BLOCK_K, 1], ACC)
        if HAS_GRAD_Z:
            grad_z = tl.load(grad_z_ptr + offsets, mask=mask, other=0.0).to(ACC)
        else:
            grad_z = tl.zeros([BLOCK_K, BLOCK_D], ACC)
        if PRIOR == GIVEN_PRIOR:
            prior_offsets = (samples * prior_sample_stride + example * prior_example_stride)[:, None] + cols[None, :]
            prior_mu = tl.load(prior_mu_ptr + prior_offsets, mask=mask, other=0.0).to(ACC)
            prior_logvar = tl.load(prior_logvar_ptr + prior_offsets, mask=mask, other=0.0).to(ACC)
            precision = tl.exp(-prior_logvar)
            diff = z - prior_mu
            dlogp_dz = -diff * precision
            grad_prior_mu = tl.where(mask, grad_a * diff * precision, 0.0)
            grad_prior_logvar = tl.where(mask, grad_a * (0.5 * diff * diff * precision - 0.5), 0.0)
            if PRIOR_PER_SAMPLE:
                tl.store(grad_prior_mu_ptr + offsets, grad_prior_mu.to(grad_prior_mu_ptr.dtype.element_ty), mask=mask)
                tl.store(grad_prior_logvar_ptr + offsets,
                         grad_prior_logvar.to(grad_prior_logvar_ptr.dtype.element_ty), mask=mask)
            else:
                grad_prior_mu_sum += tl.sum(grad_prior_mu, axis=0)
                grad_prior_logvar_sum += tl.sum(grad_prior_logvar, axis=0)
        elif PRIOR == STANDARD_PRIOR:
            dlogp_dz = -z
        else:
            dlogp_dz = tl.zeros([BLOCK_K, BLOCK_D], ACC)
        if ESTIMATOR == TOTAL_DERIVATIVE:
            # iwae / vae: the total derivative, the score term of -log q adds 0.5 * dJ/da to dlogvar.
            per_sample = grad_z + grad_a * dlogp_dz
            grad_logvar = per_sample * 0.5 * sigma * eps + 0.5 * grad_a
        else:
            # stl / dreg: path derivative only, d(-log q)/dz = eps / sigma, no score term.
            per_sample = grad_z + grad_a * (dlogp_dz + eps * tl.exp(-0.5 * logvar))
            if ESTIMATOR == DOUBLY_REPARAMETERIZED:
                safe_total = tl.where(weight_total != 0.0, weight_total, 1.0)
                per_sample = per_sample * tl.where(weight_total != 0.0, grad_a / safe_total, 0.0)
            grad_logvar = per_sample * 0.5 * sigma * eps
        per_sample = tl.where(mask, per_sample, 0.0)
        grad_logvar = tl.where(mask, grad_logvar, 0.0)
        if PARAM_PER_SAMPLE:
            tl.store(grad_mu_ptr + offsets, per_sample.to(grad_mu_ptr.dtype.element_ty), mask=mask)
            tl.store(grad_logvar_ptr + offsets, grad_logvar.to(grad_logvar_ptr.dtype.element_ty), mask=mask)
        else:
            grad_mu_sum += tl.sum(per_sample, axis=0)
            grad_logvar_sum += tl.sum(grad_logvar, axis=0)
    shared_offsets = (split * B + example) * D + cols  # example is int64
    if not PARAM_PER_SAMPLE:
        tl.store(grad_mu_ptr + shared_offsets, grad_mu_sum.to(grad_mu_ptr.dtype.element_ty), mask=col_mask)
        tl.store(grad_logvar_ptr + shared_offsets, grad_logvar_sum.to(grad_logvar_ptr.dtype.element_ty), mask=col_mask)
    if PRIOR == GIVEN_PRIOR and not PRIOR_PER_SAMPLE:
        tl.store(grad_prior_mu_ptr + shared_offsets, grad_prior_mu_sum.to(grad_prior_mu_ptr.dtype.element_ty), mask=col_mask)
        tl.store(grad_prior_logvar_ptr + shared_offsets,
                 grad_prior_logvar_sum.to(grad_prior_logvar_ptr.dtype.element_ty), mask=col_mask)


def _strides(prefix, param):
    """The kernels' sample and example strides of a [B, D] (shared: sample stride 0) or [k, B, D] parameter pair's
    first tensor (0 when absent), as launch arguments named ``<prefix>_sample_stride``, ``<prefix>_example_stride``."""
    if param is None:
        sample, example = 0, 0
    else:
        sample, example = (0, param.stride(0)) if param.dim() == 2 else (param.stride(0), param.stride(1))
    return {f"{prefix}_sample_stride": sample, f"{prefix}_example_stride": example}


def _read_in_place(mean, logvar):
    """A Gaussian's (mean, logvar) pair, (mu, logvar) or (prior_mu, prior_logvar), as the kernels read it: one set
    of strides for both (``unit_column_stride``); a pair whose strides differ is copied. None stays None."""
    if mean is None or mean.stride() == logvar.stride():
        return unit_column_stride(mean), unit_column_stride(logvar)
    return mean.contiguous(), logvar.contiguous()


def _prior_kind(prior_mu, include_prior):
    if not include_prior:
        return NO_PRIOR
    return STANDARD_PRIOR if prior_mu is None else GIVEN_PRIOR


@library_op("triton_gaussian_sample_forward", ("z", "log_weight"))
def _triton_forward(mu: Tensor, logvar: Tensor, eps: Optional[Tensor], prior_mu: Optional[Tensor],
                    prior_logvar: Optional[Tensor], z: Tensor, log_weight: Tensor, seed: Tensor, include_prior: bool,
                    scale: Optional[Tensor]) -> None:
    k, batch, dim = z.shape
    block_rows, block_cols = row_tile(dim, mu.dtype, FORWARD_TILE)
    has_prior = prior_mu is not None
    _gaussian_sample_fwd_kernel[(cdiv(k * batch, block_rows),)](
        mu_ptr=mu, logvar_ptr=logvar, eps_ptr=z if eps is None else eps, prior_mu_ptr=prior_mu if has_prior else mu,
        prior_logvar_ptr=prior_logvar if has_prior else mu, z_ptr=z, log_weight_ptr=log_weight, seed_ptr=seed,
        scale_ptr=seed if scale is None else scale, R=k * batch, B=batch, D=dim, **_strides("param", mu),
        **_strides("prior", prior_mu), HAS_EPS=eps is not None, PRIOR=_prior_kind(prior_mu, include_prior),
        HAS_SCALE=scale is not None, ACC=triton_accumulation_dtype(mu.dtype), BLOCK_R=block_rows, BLOCK_D=block_cols,
    )


@library_op("triton_gaussian_sample_backward", ("grad_mu", "grad_logvar", "grad_prior_mu", "grad_prior_logvar"))
def _triton_backward(mu: Tensor, logvar: Tensor, eps: Optional[Tensor], prior_mu: Optional[Tensor],
                     prior_logvar: Optional[Tensor], grad_z: Optional[Tensor], grad_log_weight: Optional[Tensor],
                     grad_mu: Tensor, grad_logvar: Tensor, grad_prior_mu: Optional[Tensor],
                     grad_prior_logvar: Optional[Tensor], k: int, seed: Tensor, estimator: int, include_prior: bool,
                     scale: Optional[Tensor]) -> None:
    batch, dim = mu.shape[-2:]
    has_prior = prior_mu is not None
    param_per_sample, prior_per_sample = mu.dim() == 3, has_prior and prior_mu.dim() == 3
    block_dim = min(next_power_of_2(dim), 64)
    dim_blocks = cdiv(dim, block_dim)
    rows_per_split = cdiv(k, sample_splits(k, batch * dim_blocks, mu.device))
    splits = cdiv(k, rows_per_split)  # no empty split
    placeholder = grad_mu  # for pointers a constexpr flag says are unused
    grads = (grad_mu, grad_logvar, grad_prior_mu, grad_prior_logvar)
    summed = (not param_per_sample,) * 2 + (has_prior and not prior_per_sample,) * 2
    targets = [placeholder if grad is None else grad for grad in grads]
    if splits > 1:  # one split writes the outputs itself: no buffer, no extra launch at the small, host-bound shapes
        # A gradient summed over k gets a partial [splits, B, D] in the accumulation dtype, summed below.
        targets = [torch.empty((splits, batch, dim), dtype=accumulation_dtype(mu.dtype), device=mu.device)
                   if sum_k else target for target, sum_k in zip(targets, summed)]
    # DReG's normalized weights need grad_log_weight summed over all k, which no split sees alone (the kernel sums
    # it itself when there is one split).
    dreg = estimator == Estimator.DOUBLY_REPARAMETERIZED and grad_log_weight is not None and splits > 1
    weight_total = grad_log_weight.sum(0, dtype=accumulation_dtype(mu.dtype)) if dreg else placeholder
    _gaussian_sample_bwd_kernel[(batch, dim_blocks, splits)](
        mu_ptr=mu, logvar_ptr=logvar, eps_ptr=placeholder if eps is None else eps,
        prior_mu_ptr=prior_mu if has_prior else placeholder,
        prior_logvar_ptr=prior_logvar if has_prior else placeholder,
        grad_z_ptr=placeholder if grad_z is None else grad_z,
        grad_log_weight_ptr=placeholder if grad_log_weight is None else grad_log_weight,
        weight_total_ptr=weight_total, grad_mu_ptr=targets[0], grad_logvar_ptr=targets[1],
        grad_prior_mu_ptr=targets[2], grad_prior_logvar_ptr=targets[3], seed_ptr=seed,
        scale_ptr=seed if scale is None else scale, K=k, B=batch, D=dim, ROWS_PER_SPLIT=rows_per_split,
        **_strides("param", mu), **_strides("prior", prior_mu), HAS_EPS=eps is not None,
        PRIOR=_prior_kind(prior_mu, include_prior), HAS_SCALE=scale is not None, HAS_GRAD_Z=grad_z is not None,
        HAS_GRAD_LOG_WEIGHT=grad_log_weight is not None, PARAM_PER_SAMPLE=param_per_sample,
        PRIOR_PER_SAMPLE=prior_per_sample, ESTIMATOR=estimator, ACC=triton_accumulation_dtype(mu.dtype),
        BLOCK_K=BLOCK_SAMPLES, BLOCK_D=block_dim,
    )
    if splits > 1:
        for grad, partial, sum_k in zip(grads, targets, summed):
            if sum_k:
                torch.sum(partial, 0, out=grad)  # deterministic, unlike atomics


TRITON_LAUNCHERS = Launchers(_triton_forward, _triton_backward)


class KernelGaussianSampleFunction(torch.autograd.Function):
    """The compiled backends' sampling, every estimator: (mu, logvar, eps or None, prior_mu, prior_logvar) ->
    (z [k, B, D], scale * (log p(z) - log q(z|x)) [k, B]); eps None draws it in the kernel from ``seed``.

    ``launchers`` says whose kernels run (Triton's or CUDA's). ``include_prior=False`` drops log p(z)
    (the latent term is then -log q(z|x)); ``scale`` (0-dim tensor or None for 1) weights the latent term.
    """

    @staticmethod
    def forward(ctx, mu, logvar, eps, prior_mu, prior_logvar, k, seed, estimator, launchers, include_prior=True,
                scale=None):
        (mu, logvar), (prior_mu, prior_logvar) = _read_in_place(mu, logvar), _read_in_place(prior_mu, prior_logvar)
        eps = contiguous_or_none(eps)
        batch, dim = mu.shape[-2:]
        z = torch.empty((k, batch, dim), dtype=mu.dtype, device=mu.device)
        log_weight = torch.empty((k, batch), dtype=accumulation_dtype(mu.dtype), device=mu.device)
        launchers.forward(mu, logvar, eps, prior_mu, prior_logvar, z, log_weight, seed, include_prior, scale)
        ctx.save_for_backward(mu, logvar, eps, prior_mu, prior_logvar)
        ctx.k, ctx.seed, ctx.estimator, ctx.launchers = k, seed, estimator, launchers
        ctx.include_prior, ctx.scale = include_prior, scale
        ctx.set_materialize_grads(False)
        return z, log_weight

    @staticmethod
    @once_differentiable(lambda ctx: f"gaussian_sample (estimator={ctx.estimator!r})")
    def backward(ctx, grad_z, grad_log_weight):
        mu, logvar, eps, prior_mu, prior_logvar = ctx.saved_tensors
        grad_mu, grad_logvar = dense_empty(mu), dense_empty(logvar)
        grad_prior_mu, grad_prior_logvar = dense_empty(prior_mu), dense_empty(prior_logvar)
        ctx.launchers.backward(mu, logvar, eps, prior_mu, prior_logvar, contiguous_or_none(grad_z),
                               contiguous_or_none(grad_log_weight),
                               grad_mu, grad_logvar, grad_prior_mu, grad_prior_logvar, ctx.k, ctx.seed,
                               int(ESTIMATOR_CODES[ctx.estimator]), ctx.include_prior, ctx.scale)
        return grad_mu, grad_logvar, None, grad_prior_mu, grad_prior_logvar, None, None, None, None, None, None


def draw_seed(generator, device):
    """A Philox seed from torch's RNG, so ``torch.manual_seed`` (or ``generator``) makes runs repeat.

    A 0-dim int64 tensor on the kernels' device that they read themselves: no Python int, so torch.compile keeps
    one graph, and CUDA-graph replays draw fresh noise (torch's generator advances inside the graph).
    """
    return torch.randint(0, 2**31 - 1, (), generator=generator, device=generator.device if generator else device)


def gaussian_sample(mu, logvar, k, eps, prior_mu, prior_logvar, estimator, generator, include_prior=True,
                    latent_scale=None, launchers=TRITON_LAUNCHERS):
    """z = mu + exp(logvar / 2) * eps and the latent log-weight; eps drawn in-kernel when None.

    mu, logvar: [B, D] or [k, B, D]; eps: [k, B, D] or None; prior_mu, prior_logvar: None, [B, D] or [k, B, D].
    Returns z [k, B, D] (mu's dtype) and latent_scale * (log p(z) - log q(z|x)) [k, B] (float32 for half
    inputs); without the prior the latent term is -log q(z|x). latent_scale: None or a 0-dim tensor.
    """
    seed = draw_seed(generator, mu.device) if eps is None else torch.zeros((), dtype=torch.int64, device=mu.device)
    scale = None if latent_scale is None else latent_scale.to(accumulation_dtype(mu.dtype)).contiguous()
    return KernelGaussianSampleFunction.apply(mu, logvar, eps, prior_mu, prior_logvar, k, seed, estimator, launchers,
                                        include_prior, scale)
