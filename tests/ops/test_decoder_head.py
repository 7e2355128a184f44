"""The fused decoder head (linear + Bernoulli log-likelihood without the logits) against the reference."""

import pytest
import torch

import iwae_kernels as ik

from helpers import LOW_PRECISION, assert_close, assert_close_as_torch
from naive import naive_bernoulli
from conftest import shape_ids

# (k, B, H, P): k=1/B=1/H=1/P=1, odd sizes, P over one tile, and enough rows for several row tiles per persistent
# program (3 off a GPU), so the backward's partial sums are read, added to and written back, in two passes over P
# (H > GRAD_HIDDEN_BLOCK = 32 under the interpreter) whose second must not add dW again.
SHAPES = [(1, 1, 1, 1), (3, 5, 7, 33), (2, 20, 40, 100), (40, 30, 37, 70)]
SHAPE_ID = shape_ids("k", "B", "H", "P")  # k2-B20-H40-P100


def make_inputs(k, batch, width, size, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    x = torch.rand(batch, size, generator=gen, dtype=torch.float64).round()
    return [rand(k, batch, width), rand(size, width) / width**0.5, rand(size)], x


def run(tensors, x, backend, device, dtype):
    leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in tensors]
    out = ik.bernoulli_decoder_log_likelihood(*leaves, x.to(device=device, dtype=dtype), backend=backend)
    upstream = torch.rand(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return [out, *torch.autograd.grad(out, leaves, upstream.to(device=device, dtype=out.dtype))]


@pytest.mark.parametrize("shape", SHAPES[:3], ids=SHAPE_ID)
def test_reference_matches_distributions_and_gradcheck(shape):
    tensors, x = make_inputs(*shape)
    leaves = [t.clone().requires_grad_() for t in tensors]
    expected = naive_bernoulli(leaves[0] @ leaves[1].T + leaves[2], x)
    assert_close(ik.bernoulli_decoder_log_likelihood(*leaves, x, backend="torch"), expected)
    assert torch.autograd.gradcheck(lambda *t: ik.bernoulli_decoder_log_likelihood(*t, x, backend="torch"), leaves)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_ID)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # float64 runs the reference (tl.dot has none)
def test_kernel_matches_reference(kernel, dtype, shape):
    tensors, x = make_inputs(*shape)
    expected = run(tensors, x, "torch", "cpu", torch.float64)
    for got, want in zip(run(tensors, x, *kernel, dtype), expected):
        assert got.shape == want.shape
        assert_close(got, want, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_with_several_backward_passes(kernel, dtype):
    """H wider than the backward's dh block (GRAD_HIDDEN_BLOCK: 32 under the interpreter, 128 or 256 on a GPU)
    takes several passes over P, the last one partial, and the forward's H loop many slices."""
    from iwae_kernels.ops.decoder_head import GRAD_HIDDEN_BLOCK

    tensors, x = make_inputs(2, 3, 2 * GRAD_HIDDEN_BLOCK[dtype.itemsize] + 5, 37)
    rounded = [t.to(dtype).double() for t in tensors]
    for got, want in zip(run(tensors, x, *kernel, dtype), run(rounded, x, "torch", "cpu", torch.float64)):
        assert_close(got, want, torch.float32 if dtype == torch.float32 else dtype)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_kernel_low_precision(kernel, dtype):
    tensors, x = make_inputs(3, 6, 24, 50)
    rounded = [t.to(dtype).double() for t in tensors]
    oracle = run(rounded, x, "torch", "cpu", torch.float64)
    torch_low = run(tensors, x, "torch", "cpu", dtype)
    for got, ref, want in zip(run(tensors, x, *kernel, dtype), torch_low, oracle):
        assert_close_as_torch(got, ref, want)


def test_autocast_keeps_the_data_term_in_float32(kernel):
    """Under bf16 autocast the head casts its inputs as F.linear would and nothing else: the same as bf16 inputs
    outside autocast (its per-example x W factors rounded to bf16 would move the result by ~1 nat)."""
    backend, device = kernel
    tensors, x = make_inputs(3, 4, 24, 300)
    hidden, weight, bias = [t.to(device, torch.float32) for t in tensors]
    x = x.to(device, torch.float32)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        mixed = ik.bernoulli_decoder_log_likelihood(hidden, weight, bias, x, backend=backend)
    cast = [t.to(torch.bfloat16) for t in (hidden, weight, bias)]
    torch.testing.assert_close(mixed, ik.bernoulli_decoder_log_likelihood(*cast, x, backend=backend), rtol=1e-6,
                               atol=1e-4)


def test_model_layer_uses_the_fused_head(monkeypatch):
    from iwae_kernels.models import paper_model

    calls = []
    original = ik.functional.bernoulli_decoder_log_likelihood
    monkeypatch.setattr(ik.functional, "bernoulli_decoder_log_likelihood",
                        lambda *a, **kw: calls.append(a[0].shape) or original(*a, **kw))
    model = paper_model(1, x_dim=12, hidden=((9,),), latent=(4,), fused_head=True)
    model.log_likelihood(torch.rand(3, 12).round(), k=10, chunk=4)
    assert calls == [(4, 3, 9), (4, 3, 9), (2, 3, 9)]


def test_bad_input_names_the_argument():
    hidden, weight, bias, x = torch.zeros(2, 3, 4), torch.zeros(5, 4), torch.zeros(5), torch.zeros(3, 5)
    with pytest.raises(ValueError, match=r"weight: expected shape \[P, H=4\]"):
        ik.bernoulli_decoder_log_likelihood(hidden, torch.zeros(5, 6), bias, x)
    with pytest.raises(ValueError, match=r"bias: expected shape \(5,\)"):
        ik.bernoulli_decoder_log_likelihood(hidden, weight, torch.zeros(4), x)
    with pytest.raises(ValueError, match=r"x: expected shape \(3, 5\)"):
        ik.bernoulli_decoder_log_likelihood(hidden, weight, bias, torch.zeros(3, 4))


def test_backward_overwrites_its_partial_sums(kernel):
    """The backward kernel writes its dW/db partials (one per persistent program) without reading what the buffers
    held before: buffers full of NaN give the same gradients as the reference."""
    from iwae_kernels.ops import decoder_head

    backend, device = kernel
    if backend != "triton":
        pytest.skip("the Triton kernel's launcher")
    tensors, x = make_inputs(40, 30, 37, 70)
    hidden, weight, bias = [t.to(device, torch.float32) for t in tensors]
    grad_out = torch.rand(40, 30, dtype=torch.float64)
    programs = decoder_head.backward_programs(40 * 30, hidden.device)
    assert programs > 1  # several programs, each with several tiles (the read-add-write path runs)
    grad_hidden = torch.full_like(hidden, float("nan"))
    partial_weight_t = torch.full((programs, 37, 70), float("nan"), device=device)
    partial_bias = torch.full((programs, 70), float("nan"), device=device)
    decoder_head._triton_backward(hidden, weight, bias, x.to(device, torch.float32), grad_out.to(device, torch.float32),
                                  grad_hidden, partial_weight_t, partial_bias)
    leaves = [t.clone().requires_grad_() for t in tensors]
    expected = torch.autograd.grad(ik.bernoulli_decoder_log_likelihood(*leaves, x, backend="torch"), leaves, grad_out)
    for got, want in zip((grad_hidden, partial_weight_t.sum(0).T, partial_bias.sum(0)), expected):
        assert_close(got.cpu(), want, torch.float32)
