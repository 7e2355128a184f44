"""The fused matmul kernels (decoder head, decoder MLP, local reparameterization) follow torch.get_float32_matmul_precision()
as cuBLAS does: "highest" float32-accurate, "high" TF32, "medium" bf16 operands; float32 accumulation always.

Under the Triton interpreter (CPU) the kernels round the operands as a GPU's tensor cores would (ops.utils.dot_acc),
so every mode's error is real here: "highest"'s three TF32 products come within float32's error, and "high" and
"medium" are far from it."""

import pytest
import torch

import iwae_kernels as ik

from helpers import backend_device

# Relative error allowed at each precision (the outputs sum O(100) products), and the least a rounded mode shows
# (measured on CPU: "highest" 1e-7 to 5e-7, "high" 1.3e-4 to 9.5e-4, "medium" 1e-3 to 7e-3).
TOLERANCE = {"highest": 1e-5, "high": 1e-2, "medium": 3e-2}
ROUNDED_AT_LEAST = {"high": 3e-5, "medium": 3e-4}


@pytest.fixture(params=list(TOLERANCE))
def precision(request):
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(request.param)
    yield request.param
    torch.set_float32_matmul_precision(saved)


def decoder_head(device, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden, weight = torch.randn(3, 5, 96, generator=gen), torch.randn(70, 96, generator=gen) / 96**0.5
    bias, x = torch.randn(70, generator=gen), torch.rand(5, 70, generator=gen).round()
    leaves = [t.to(device, dtype).requires_grad_() for t in (hidden, weight, bias)]
    backend = "torch" if dtype == torch.float64 else "triton"
    out = ik.bernoulli_decoder_log_likelihood(*leaves, x.to(device, dtype), backend=backend)
    return [out, *torch.autograd.grad(out.sum(), leaves)]


@torch.no_grad()
def decoder_mlp(device, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sizes = (20, 96, 40, 70)
    weights = [torch.randn(out, width, generator=gen) / width**0.5 for width, out in zip(sizes, sizes[1:])]
    biases = [torch.randn(out, generator=gen) for out in sizes[1:]]
    z, x = torch.randn(3, 5, 20, generator=gen), torch.rand(5, 70, generator=gen).round()
    backend = "torch" if dtype == torch.float64 else "triton"
    to = lambda t: t.to(device, dtype)
    return [ik.bernoulli_mlp_decoder_log_likelihood(to(z), list(map(to, weights)), list(map(to, biases)), to(x),
                                                    backend=backend)]


def local_reparam(device, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a, mu = torch.randn(9, 96, generator=gen), torch.randn(40, 96, generator=gen) / 96**0.5
    var, noise = torch.rand(40, 96, generator=gen) / 96, torch.randn(9, 40, generator=gen)
    backend = "torch" if dtype == torch.float64 else "triton"
    return [ik.local_reparam_linear(*(t.to(device, dtype) for t in (a, mu, var)), noise=noise.to(device, dtype),
                                    backend=backend)]


@pytest.mark.parametrize("op", [decoder_head, decoder_mlp, local_reparam])
def test_fused_matmuls_follow_the_float32_matmul_precision(op, precision):
    device = backend_device("triton")
    want = op("cpu", torch.float64)
    got = op(device, torch.float32)
    for g, w in zip(got, want):
        error = (g.double().cpu() - w).abs().max() / w.abs().max()
        assert error < TOLERANCE[precision], f"{op.__name__} at {precision}: relative error {error:.2e}"
        if precision in ROUNDED_AT_LEAST:  # TF32 / bf16 operands are really rounded: far from float32's error
            assert error > ROUNDED_AT_LEAST[precision], \
                f"{op.__name__} at {precision}: error {error:.2e} shows no rounding"
