"""iwae_bound, normalized_weights and the streaming (max, sum) fold: values, gradients, -inf rows."""

import math

import pytest
import torch

import iwae_kernels as ik

from helpers import COMPILED_BACKENDS, backend_device
from helpers import LOW_PRECISION, assert_close, assert_close_as_torch
from naive import naive_iwae_bound
from conftest import shape_ids

SHAPES = [(1, 3), (5, 1), (7, 5), (50, 3), (130, 70)]
SHAPE_ID = shape_ids("k", "B")  # k7-B5


def make_log_w(k, batch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # A wide spread, as real log-weights have: a plain exp() would overflow.
    return 200 * torch.randn(k, batch, generator=gen, dtype=torch.float64) - 500


def run(fn, log_w, backend, device, dtype, seed=5):
    leaf = log_w.to(device=device, dtype=dtype).requires_grad_()
    out = fn(leaf, backend=backend)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (grad,) = torch.autograd.grad(out, leaf, upstream.to(device=device, dtype=out.dtype))
    return out, grad


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_ID)
def test_reference_matches_logsumexp_and_softmax(shape):
    log_w = make_log_w(*shape)
    bound, grad = run(ik.iwae_bound, log_w, "torch", "cpu", torch.float64)
    leaf = log_w.clone().requires_grad_()
    expected = naive_iwae_bound(leaf)
    upstream = torch.randn(shape[1], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert_close(bound, expected)
    assert_close(grad, torch.autograd.grad(expected, leaf, upstream)[0])
    assert_close(grad, upstream * torch.softmax(log_w, 0))
    weights, weights_grad = run(ik.normalized_weights, log_w, "torch", "cpu", torch.float64)
    soft = torch.softmax(leaf, 0)
    assert_close(weights, soft)
    upstream = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert_close(weights_grad, torch.autograd.grad(soft, leaf, upstream)[0])


@pytest.mark.parametrize("fn", [ik.iwae_bound, ik.normalized_weights])
def test_reference_gradcheck(fn):
    log_w = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fn(t, backend="torch"), [log_w])


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_ID)
@pytest.mark.parametrize("fn", [ik.iwae_bound, ik.normalized_weights])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matches_reference(kernel, dtype, fn, shape):
    log_w = make_log_w(*shape)
    expected = run(fn, log_w, "torch", "cpu", torch.float64)
    actual = run(fn, log_w.to(dtype).double(), *kernel, dtype)
    for got, want in zip(actual, expected):
        assert got.shape == want.shape
        assert_close(got, want, dtype)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_kernel_low_precision(kernel, dtype):
    log_w = make_log_w(9, 4).to(dtype).double()
    oracle = run(ik.iwae_bound, log_w, "torch", "cpu", torch.float64)
    torch_low = run(ik.iwae_bound, log_w, "torch", "cpu", dtype)
    actual = run(ik.iwae_bound, log_w, *kernel, dtype)
    assert actual[0].dtype == torch.float32
    for got, ref, want in zip(actual, torch_low, oracle):
        assert_close_as_torch(got, ref, want)


@pytest.mark.parametrize("backend", ["torch", *COMPILED_BACKENDS])
def test_negative_infinity_log_weights(backend):
    """-inf is legal: an all -inf column gives L = -inf and zero gradient; partial -inf gets zero weight."""
    device = backend_device(backend)
    inf = math.inf
    log_w = torch.tensor([[-inf, -inf, 0.0], [-inf, 1.0, 0.0], [-inf, 2.0, -inf]], device=device)
    bound, grad = run(ik.iwae_bound, log_w, backend, device, torch.float32)
    assert bound[0].item() == -inf
    torch.testing.assert_close(bound[1:].cpu(), torch.tensor([math.log(math.e + math.e**2) - math.log(3), math.log(2 / 3)]))
    assert not grad.isnan().any() and (grad[:, 0] == 0).all() and grad[0, 1] == 0 and grad[2, 2] == 0
    weights, weights_grad = run(ik.normalized_weights, log_w, backend, device, torch.float32)
    assert not weights.isnan().any() and not weights_grad.isnan().any()
    torch.testing.assert_close(weights.sum(0).cpu(), torch.tensor([0.0, 1.0, 1.0]))


@pytest.mark.parametrize("backend", ["torch", *COMPILED_BACKENDS])
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_streaming_fold_matches_full_bound(backend, chunk):
    device = backend_device(backend)
    log_w = make_log_w(150, 6).to(device)
    log_w[:, 2] = -math.inf  # one example whose every sample has zero weight
    acc = ik.StreamingIWAEBound(6, device=device, dtype=torch.float64, backend=backend)
    for start in range(0, 150, chunk):
        acc.update(log_w[start : start + chunk])
    assert acc.num_samples == 150
    expected = ik.iwae_bound(log_w, backend="torch")
    torch.testing.assert_close(acc.bound().cpu(), expected.cpu(), rtol=1e-12, atol=1e-12)


def test_streaming_merge_combines_partial_states():
    log_w = make_log_w(40, 3)
    parts = [ik.StreamingIWAEBound(3, dtype=torch.float64) for _ in range(2)]
    parts[0].update(log_w[:15])
    parts[1].update(log_w[15:])
    parts[0].merge(parts[1])
    assert parts[0].num_samples == 40
    torch.testing.assert_close(parts[0].bound(), ik.iwae_bound(log_w), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("empty_first", [True, False])
def test_streaming_merge_into_an_empty_state(dtype, empty_first):
    """An accumulator that has folded nothing (max -inf, sum 0) merged with log-weights near -120: in float32
    exp(-120) underflows, so the merge must shift by the larger max (a smaller one would return -inf)."""
    log_w = torch.randn(9, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) - 120
    empty, full = (ik.StreamingIWAEBound(4, dtype=dtype) for _ in range(2))
    full.update(log_w.to(dtype))
    merged_into, merged_from = (empty, full) if empty_first else (full, empty)
    merged_into.merge(merged_from)
    assert merged_into.num_samples == 9
    assert_close(merged_into.bound(), ik.iwae_bound(log_w), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streaming_merge_across_far_apart_maxima(dtype):
    """Two states whose maxima lie 200 apart (either way round per example): exp(200) overflows float32, so the
    smaller state must be scaled down to the larger max, never the larger one up."""
    log_w = torch.randn(12, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    log_w[6:, 0] += 200  # example 0: the second state holds the larger max
    log_w[:6, 1] += 200  # example 1: the first state does
    parts = [ik.StreamingIWAEBound(3, dtype=dtype) for _ in range(2)]
    parts[0].update(log_w[:6].to(dtype))
    parts[1].update(log_w[6:].to(dtype))
    parts[0].merge(parts[1])
    assert bool(torch.isfinite(parts[0].bound()).all())
    assert_close(parts[0].bound(), ik.iwae_bound(log_w), dtype)


def test_streaming_errors():
    with pytest.raises(ValueError, match="batch_size"):
        ik.StreamingIWAEBound(0)
    acc = ik.StreamingIWAEBound(3)
    with pytest.raises(ValueError, match="no log-weights"):
        acc.bound()
    with pytest.raises(ValueError, match="log_w: expected shape"):
        acc.update(torch.zeros(4, 2))


@pytest.mark.parametrize("shape", [(700, 3), (1100, 5), (1030, 70)], ids=SHAPE_ID)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_split_k_fold_matches_reference(kernel, dtype, shape):
    """Large k with few examples is folded in splits (then the splits' logsumexps): same values, gradients and
    streaming state as one pass; a column of -inf in one split, and a column all -inf, stay exact."""
    from iwae_kernels.ops.logsumexp import BLOCK_EXAMPLES
    from iwae_kernels.ops.utils import cdiv, sample_splits

    assert sample_splits(shape[0], cdiv(shape[1], BLOCK_EXAMPLES), torch.device("cpu")) > 1
    log_w = make_log_w(*shape)
    log_w[: shape[0] // 2, 0] = -math.inf
    log_w[:, -1] = -math.inf
    expected = run(ik.iwae_bound, log_w, "torch", "cpu", torch.float64)
    for got, want in zip(run(ik.iwae_bound, log_w.to(dtype).double(), *kernel, dtype), expected):
        assert_close(got, want, dtype)
    device = kernel[1]
    streamed = ik.StreamingIWAEBound(shape[1], device=device, dtype=torch.float64 if dtype == torch.float64
                                     else torch.float32, backend=kernel[0])
    for chunk in log_w.to(device, dtype).split(shape[0] // 2 + 1):
        streamed.update(chunk)
    assert_close(streamed.bound(), expected[0], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_split_k_fold_covers_the_last_row(kernel, dtype):
    """k = 1037 over 4 splits (not a multiple): the splits' row counts must round up, or the last rows are never
    read; the largest log-weight sits in the very last row, so a missed row changes the bound by about 50 nats."""
    from iwae_kernels.ops.logsumexp import BLOCK_EXAMPLES
    from iwae_kernels.ops.utils import cdiv, sample_splits

    shape = (1037, 3)
    splits = sample_splits(shape[0], cdiv(shape[1], BLOCK_EXAMPLES), torch.device("cpu"))
    assert splits > 1 and shape[0] % splits != 0
    log_w = make_log_w(*shape)
    log_w[-1] = log_w.max() + 50
    expected = run(ik.iwae_bound, log_w, "torch", "cpu", torch.float64)
    for got, want in zip(run(ik.iwae_bound, log_w.to(dtype).double(), *kernel, dtype), expected):
        assert_close(got, want, dtype)
