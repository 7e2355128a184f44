"""categorical_log_likelihood: fused log-softmax + gather over token sequences, against the float64 oracle."""

import pytest
import torch

import iwae_kernels as ik

from helpers import backend_device
from helpers import LOW_PRECISION, assert_close, assert_close_as_torch
from naive import naive_categorical
from conftest import shape_ids

# (k, B, T, V): k = 1, T = 1, V not a power of two, V above one vocabulary block (256).
SHAPES = [(1, 2, 3, 5), (3, 1, 1, 7), (2, 3, 4, 300), (4, 2, 5, 33)]


def make(k, batch, steps, vocab, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(k, batch, steps, vocab, generator=gen, dtype=torch.float64)
    tokens = torch.randint(0, vocab, (batch, steps), generator=gen)
    mask = (torch.rand(batch, steps, generator=gen) < 0.8).double()
    return logits, tokens, mask


def test_reference_matches_distributions_and_gradcheck():
    logits, tokens, mask = make(2, 3, 4, 9)
    assert_close(ik.categorical_log_likelihood(logits, tokens, mask, backend="torch"),
                 naive_categorical(logits, tokens, mask))
    torch.autograd.gradcheck(lambda y: ik.categorical_log_likelihood(y, tokens, mask, backend="torch"),
                             logits.clone().requires_grad_())


@pytest.mark.parametrize("shape", SHAPES, ids=shape_ids("k", "B", "T", "V"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matches_reference(kernel, dtype, shape):
    backend, device = kernel
    logits, tokens, mask = make(*shape)
    expected_logits = logits.clone().requires_grad_()
    expected = naive_categorical(expected_logits, tokens, mask)
    grad_out = torch.randn(expected.shape, dtype=torch.float64)
    (want,) = torch.autograd.grad(expected, expected_logits, grad_out)
    got_logits = logits.to(device, dtype).requires_grad_()
    got = ik.categorical_log_likelihood(got_logits, tokens.to(device), mask.to(device), backend=backend)
    assert_close(got, expected, dtype)
    (grad,) = torch.autograd.grad(got, got_logits, grad_out.to(device, got.dtype))
    assert_close(grad, want, dtype)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_kernel_low_precision(kernel, dtype):
    backend, device = kernel
    logits, tokens, mask = make(3, 2, 4, 100)
    want = naive_categorical(logits, tokens, mask)
    torch_low = ik.categorical_log_likelihood(logits.to(dtype), tokens, mask, backend="torch")
    got = ik.categorical_log_likelihood(logits.to(device, dtype), tokens.to(device), mask.to(device), backend=backend)
    assert got.dtype == torch.float32
    assert_close_as_torch(got, torch_low, want)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_masked_positions_with_minus_inf_logits_give_no_nan(backend):
    device = backend_device(backend)
    logits, tokens, mask = make(2, 2, 3, 6)
    mask[0, 1] = 0
    logits[:, 0, 1] = float("-inf")  # a padded position whose logits are all -inf
    logits = logits.to(device).requires_grad_()
    out = ik.categorical_log_likelihood(logits, tokens.to(device), mask.to(device), backend=backend)
    (grad,) = torch.autograd.grad(out.sum(), logits)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all() and (grad[:, 0, 1] == 0).all()


def test_bad_input_names_the_argument():
    logits = torch.zeros(2, 3, 4, 5)
    with pytest.raises(TypeError, match="tokens: expected an int64"):
        ik.categorical_log_likelihood(logits, torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"tokens: expected ids in \[0, V=5\)"):
        ik.categorical_log_likelihood(logits, torch.full((3, 4), 5))
    with pytest.raises(ValueError, match="tokens: expected shape"):
        ik.categorical_log_likelihood(logits, torch.zeros(3, 5, dtype=torch.int64))
