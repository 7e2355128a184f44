"""Bernoulli and Gaussian log-likelihoods reduced over P, and the IWAE loss ending in them, against
torch.distributions and torch.logsumexp in float64."""

import pytest
import torch

import iwae_kernels as ik

from helpers import COMPILED_BACKENDS, backend_device
from helpers import LOW_PRECISION, assert_close, assert_close_as_torch
from naive import naive_bernoulli, naive_gaussian, naive_iwae_bound
from conftest import shape_ids

# (k, B, P): k=1, B=1, P=1, odd sizes, P=784 (MNIST) spanning one block, P above one block.
SHAPES = [(1, 3, 5), (4, 1, 1), (3, 5, 33), (2, 3, 784), (2, 2, 1500)]
SHAPE_ID = shape_ids("k", "B", "P")  # k3-B5-P33
LIKELIHOODS = ["bernoulli", "gaussian"]


def make_inputs(likelihood, k, batch, size, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    logits_or_mean = scale * torch.randn(k, batch, size, generator=gen, dtype=torch.float64)
    if likelihood == "bernoulli":
        # Real-valued targets in [0, 1] are legal (the Bernoulli "continuous" use); some exact 0 and 1.
        x = torch.rand(batch, size, generator=gen, dtype=torch.float64)
        x[:, ::3] = x[:, ::3].round()
        return [logits_or_mean], x
    logvar = torch.randn(k, batch, size, generator=gen, dtype=torch.float64)
    return [logits_or_mean, logvar], torch.randn(batch, size, generator=gen, dtype=torch.float64)


def run(likelihood, tensors, x, backend, device, dtype, seed=4):
    leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in tensors]
    fn = ik.bernoulli_log_likelihood if likelihood == "bernoulli" else ik.gaussian_log_likelihood
    out = fn(*leaves, x.to(device=device, dtype=dtype), backend=backend)
    upstream = torch.rand(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grads = torch.autograd.grad(out, leaves, upstream.to(device=device, dtype=out.dtype))
    return [out, *grads]


def naive(likelihood, tensors, x):
    leaves = [t.clone().requires_grad_() for t in tensors]
    out = naive_bernoulli(leaves[0], x) if likelihood == "bernoulli" else naive_gaussian(*leaves, x)
    upstream = torch.rand(out.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    return [out, *torch.autograd.grad(out, leaves, upstream)]


def assert_outputs_close(actual, expected, dtype):
    """The op's value (in ``dtype``) and gradients against the float64 oracle's, shapes included."""
    assert actual[0].dtype == dtype and len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert got.shape == want.shape
        assert_close(got, want, dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_ID)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_reference_matches_distributions(likelihood, shape):
    tensors, x = make_inputs(likelihood, *shape)
    for got, want in zip(run(likelihood, tensors, x, "torch", "cpu", torch.float64), naive(likelihood, tensors, x)):
        assert_close(got, want)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_reference_gradcheck(likelihood):
    tensors, x = make_inputs(likelihood, 2, 3, 5)
    fn = ik.bernoulli_log_likelihood if likelihood == "bernoulli" else ik.gaussian_log_likelihood
    assert torch.autograd.gradcheck(lambda *t: fn(*t, x, backend="torch"), [t.requires_grad_() for t in tensors])


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_ID)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matches_reference(kernel, dtype, likelihood, shape):
    tensors, x = make_inputs(likelihood, *shape)
    expected = run(likelihood, tensors, x, "torch", "cpu", torch.float64)
    assert_outputs_close(run(likelihood, tensors, x, *kernel, dtype), expected, dtype)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_kernel_low_precision(kernel, likelihood, dtype):
    tensors, x = make_inputs(likelihood, 3, 4, 100, scale=1.0)
    # The oracle sees the same rounded inputs, so only the kernel's own arithmetic is measured.
    rounded = [t.to(dtype).double() for t in tensors]
    oracle = run(likelihood, rounded, x.to(dtype).double(), "torch", "cpu", torch.float64)
    torch_low = run(likelihood, tensors, x, "torch", "cpu", dtype)
    actual = run(likelihood, tensors, x, *kernel, dtype)
    assert actual[0].dtype == torch.float32, "half inputs give a float32 log-likelihood"
    for got, ref, want in zip(actual, torch_low, oracle):
        assert_close_as_torch(got, ref, want)


@pytest.mark.parametrize("backend", ["torch", *COMPILED_BACKENDS])
def test_bernoulli_extreme_logits_are_exact_and_finite(backend):
    """softplus must not underflow: logits of +-100 give log-likelihoods near 0 or -100, never -inf/NaN."""
    device = backend_device(backend)
    logits = torch.tensor([[[100.0, -100.0, 30.0, -30.0, 0.0, 1e-8]]], device=device)
    x = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0, 0.0]], device=device)
    logits.requires_grad_()
    out = ik.bernoulli_log_likelihood(logits, x, backend=backend)
    (grad,) = torch.autograd.grad(out.sum(), logits)
    expected = naive_bernoulli(logits.detach().double().cpu(), x.double().cpu())
    torch.testing.assert_close(out.double().cpu(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad.double().cpu(), (x - torch.sigmoid(logits.detach())).double().cpu())
    assert torch.isfinite(grad).all()


# The loss that ends in a likelihood: -L_k of log w = log p(x|z) + latent, reduced over the batch.

REDUCTIONS = ["mean", "sum", "none"]
# B = 70: the batch spans two example blocks of the logsumexp fold, which one program walks to reduce the loss.
LOSS_SHAPES = SHAPES + [(3, 70, 5)]
LOSS_FUNCTIONS = {"bernoulli": ik.bernoulli_iwae_loss, "gaussian": ik.gaussian_iwae_loss}


def run_loss(likelihood, tensors, latent, x, backend, device, dtype, reduction, latent_dtype=None):
    """The loss and its gradients (decoder outputs, then latent) under a fixed random upstream gradient."""
    leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in tensors]
    latent = latent.to(device=device, dtype=latent_dtype or torch.promote_types(dtype, torch.float32)).requires_grad_()
    loss = LOSS_FUNCTIONS[likelihood](*leaves, x.to(device=device, dtype=dtype), latent, reduction=reduction,
                                      backend=backend)
    upstream = torch.rand(loss.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return [loss, *torch.autograd.grad(loss, [*leaves, latent], upstream.to(device=device, dtype=loss.dtype))]


def naive_loss(likelihood, tensors, latent, x, reduction):
    leaves = [t.clone().requires_grad_() for t in [*tensors, latent]]
    log_lik = naive_bernoulli(leaves[0], x) if likelihood == "bernoulli" else naive_gaussian(*leaves[:2], x)
    per_example = -naive_iwae_bound(log_lik + leaves[-1])
    loss = {"mean": per_example.mean(), "sum": per_example.sum(), "none": per_example}[reduction]
    upstream = torch.rand(loss.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return [loss, *torch.autograd.grad(loss, leaves, upstream)]


def make_latent(k, batch, seed=1):
    return 2.0 * torch.randn(k, batch, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=SHAPE_ID)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_iwae_loss_op_reference_matches_naive(likelihood, shape, reduction):
    tensors, x = make_inputs(likelihood, *shape)
    latent = make_latent(*shape[:2])
    actual = run_loss(likelihood, tensors, latent, x, "torch", "cpu", torch.float64, reduction)
    for got, want in zip(actual, naive_loss(likelihood, tensors, latent, x, reduction)):
        assert_close(got, want)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=SHAPE_ID)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_iwae_loss_op_kernel_matches_naive(kernel, dtype, likelihood, shape, reduction):
    tensors, x = make_inputs(likelihood, *shape)
    latent = make_latent(*shape[:2])
    actual = run_loss(likelihood, tensors, latent, x, *kernel, dtype, reduction)
    assert_outputs_close(actual, naive_loss(likelihood, tensors, latent, x, reduction), dtype)


@pytest.mark.parametrize("path", ["one program", "torch reduces", "split-k, one program"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_iwae_loss_op_kernel_reduction_paths(kernel, monkeypatch, reduction, path):
    """The fold writes the reduced loss itself (one program walking the batch's 3 example blocks, after split-k
    partials or not), or leaves it to torch above ONE_PROGRAM_LOSS_ELEMENTS: the same loss and gradients."""
    from iwae_kernels.ops import logsumexp, utils

    if path == "torch reduces":
        monkeypatch.setattr(logsumexp, "ONE_PROGRAM_LOSS_ELEMENTS", 100)
    if path.startswith("split-k"):
        monkeypatch.setattr(utils, "MIN_SAMPLES_PER_SPLIT", 2)
    tensors, x = make_inputs("bernoulli", 7, 150, 5)
    latent = make_latent(7, 150)
    latent[:, 3] = -float("inf")  # an impossible example: its loss term is +inf, so the reduced loss too
    expected = naive_loss("bernoulli", tensors, latent, x, reduction)
    actual = run_loss("bernoulli", tensors, latent, x, *kernel, torch.float32, reduction)
    assert actual[0].item() == float("inf") == expected[0].item()
    latent[:, 3] = 0.0
    expected = naive_loss("bernoulli", tensors, latent, x, reduction)
    assert_outputs_close(run_loss("bernoulli", tensors, latent, x, *kernel, torch.float32, reduction), expected,
                         torch.float32)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_iwae_loss_op_kernel_low_precision(kernel, likelihood, dtype):
    tensors, x = make_inputs(likelihood, 3, 4, 100, scale=1.0)
    latent = make_latent(3, 4)
    rounded = [t.to(dtype).double() for t in tensors]
    oracle = naive_loss(likelihood, rounded, latent, x.to(dtype).double(), "mean")
    torch_low = run_loss(likelihood, tensors, latent, x, "torch", "cpu", dtype, "mean")
    actual = run_loss(likelihood, tensors, latent, x, *kernel, dtype, "mean")
    assert actual[0].dtype == torch.float32, "half inputs give a float32 loss"
    assert [t.dtype for t in actual[1:]] == [dtype] * len(tensors) + [torch.float32]
    for got, ref, want in zip(actual, torch_low, oracle):
        assert_close_as_torch(got, ref, want)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_iwae_loss_op_gradcheck(backend, likelihood):
    device = backend_device(backend)
    tensors, x = make_inputs(likelihood, 3, 2, 5, scale=1.0)
    leaves = [t.to(device).requires_grad_() for t in [*tensors, make_latent(3, 2)]]
    fn = LOSS_FUNCTIONS[likelihood]
    assert torch.autograd.gradcheck(lambda *t: fn(*t[:-1], x.to(device), t[-1], reduction="none", backend=backend),
                                    leaves)


@pytest.mark.parametrize("backend", ["torch", *COMPILED_BACKENDS])
def test_iwae_loss_op_infinite_log_weights_give_no_nan(backend):
    """-inf log-weights are impossible samples (weight 0; an example with only those has loss +inf and zero
    gradient); a +inf one is taken as the largest finite float: a finite loss, zero gradient for its example."""
    device = backend_device(backend)
    tensors, x = make_inputs("bernoulli", 4, 3, 6)
    logits = tensors[0].float().to(device).requires_grad_()
    latent = make_latent(4, 3).float()
    latent[0, 0] = -float("inf")  # one sample of example 0
    latent[:, 1] = -float("inf")  # every sample of example 1
    latent[2, 2] = float("inf")  # one sample of example 2
    latent = latent.to(device).requires_grad_()
    loss = ik.bernoulli_iwae_loss(logits, x.float().to(device), latent, reduction="none", backend=backend)
    grad_logits, grad_latent = torch.autograd.grad(loss.sum(), [logits, latent])
    assert loss[1].item() == float("inf") and loss[2].item() == -torch.finfo(torch.float32).max
    assert torch.isfinite(loss[[0, 2]]).all()
    assert torch.isfinite(grad_logits).all() and torch.isfinite(grad_latent).all()
    assert grad_latent[0, 0].item() == 0 and (grad_latent[:, 1] == 0).all() and (grad_latent[:, 2] == 0).all()
    assert (grad_logits[:, 1] == 0).all() and (grad_logits[:, 2] == 0).all()
    assert_close(grad_latent[1:, 0].sum(), torch.tensor(-1.0))


@pytest.mark.parametrize("backend", ["torch", *COMPILED_BACKENDS])
def test_iwae_loss_op_bad_arguments(backend):
    device = backend_device(backend)
    logits, x, latent = torch.zeros(3, 2, 5, device=device), torch.zeros(2, 5, device=device), torch.zeros(3, 2, device=device)
    with pytest.raises(ValueError, match="latent_log_weight"):
        ik.bernoulli_iwae_loss(logits, x, latent[:, :1], backend=backend)
    with pytest.raises(ValueError, match="reduction: expected one of"):
        ik.bernoulli_iwae_loss(logits, x, latent, reduction="max", backend=backend)
    with pytest.raises(ValueError, match="x: expected shape"):
        ik.bernoulli_iwae_loss(logits, x[:, :4], latent, backend=backend)
    with pytest.raises(ValueError, match="logvar"):
        ik.gaussian_iwae_loss(logits, logits[..., :4], x, latent, backend=backend)


@pytest.mark.parametrize("backend", ["torch", *COMPILED_BACKENDS])
def test_strided_decoder_outputs(backend):
    """Decoder outputs that are views (a chunk of the last dim, samples and examples transposed) give what their
    contiguous copies give, for the log-likelihoods and the loss."""
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(3)
    k, batch, size = 3, 4, 9
    out = torch.randn(batch, k, 2 * size, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    x = torch.randn(batch, size, generator=gen, dtype=torch.float64).to(device)
    latent = make_latent(k, batch).to(device)
    for fn in (lambda m, s: ik.gaussian_log_likelihood(m, s, x, backend=backend).sum(),
               lambda m, s: ik.gaussian_iwae_loss(m, s, x, latent, backend=backend),
               lambda m, s: ik.bernoulli_iwae_loss(m, x.sigmoid(), latent, reduction="sum", backend=backend)):
        mean, logvar = out.transpose(0, 1).chunk(2, dim=-1)  # [k, B, P] views, strides (2P, 2kP, 1)
        assert not mean.is_contiguous()
        got = fn(mean, logvar)
        (grad,) = torch.autograd.grad(got, out)
        leaf = out.detach().clone().requires_grad_()
        mean, logvar = (t.contiguous() for t in leaf.transpose(0, 1).chunk(2, dim=-1))
        want = fn(mean, logvar)
        (want_grad,) = torch.autograd.grad(want, leaf)
        assert_close(got, want)
        assert_close(grad, want_grad)
