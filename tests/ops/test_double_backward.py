"""Double backward (create_graph=True): every op either gives the right second derivatives (gradgradcheck in
float64, and a Hessian-vector product against autograd of the float64 reference) or raises DoubleBackwardError
naming the op, on every backend, before any backward kernel runs."""

import pytest
import torch

import iwae_kernels as ik

from helpers import COMPILED_BACKENDS, backend_device
from naive import (naive_bernoulli, naive_categorical, naive_gaussian, naive_iwae_bound, naive_latent,
                   naive_local_reparam_linear)

K, B, D, P = 3, 2, 3, 5
BACKENDS = ["torch", *COMPILED_BACKENDS]


def working_dtype(backend):
    """float64 where double backward is checked (torch); float32 on the compiled backends, whose float64 calls
    of some ops (tl.dot takes no float64) run the torch backend's code instead of their kernels."""
    return torch.float64 if backend == "torch" else torch.float32


def inputs(device, *shapes, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(device, dtype).requires_grad_()
            for shape in shapes]


def data(device, shape=(B, P), dtype=torch.float64):
    return torch.bernoulli(torch.full(shape, 0.4, dtype=torch.float64), generator=torch.Generator().manual_seed(1)
                           ).to(device, dtype)


def eps(device, k=K, dtype=torch.float64):
    return torch.randn(k, B, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(device, dtype)


def hessian_vector(fn, args):
    """d/d args of <grad fn(args), v> for a fixed v (one per arg): the second derivative autograd gives."""
    out = fn(*args)
    grads = torch.autograd.grad(out.sin().sum(), args, create_graph=True)
    directions = [torch.linspace(-1, 1, g.numel(), dtype=g.dtype, device=g.device).reshape(g.shape) for g in grads]
    return torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, directions)), args, allow_unused=True)


def assert_refused(fn, args, op):
    with pytest.raises(ik.DoubleBackwardError, match=rf"iwae_kernels\.{op}: double backward \(create_graph=True\)"):
        hessian_vector(fn, args)
    out = fn(*args)  # the first derivative still works
    torch.autograd.grad(out.sin().sum(), args)


def assert_supported(fn, reference, args):
    assert torch.autograd.gradgradcheck(lambda *a: fn(*a).sin(), args, atol=1e-6, rtol=1e-5)
    for got, want in zip(hessian_vector(fn, args), hessian_vector(reference, args)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


# (op, its call on float64 tensors, the float64 reference, input shapes, which backends support double backward;
#  the op named by the refusal, where it is not the op itself).
def _op_cases(device, backend):
    x = data(device, dtype=working_dtype(backend))
    noise = eps(device, dtype=working_dtype(backend))
    tokens = torch.tensor([[0, 2], [1, 1]], device=device)
    cases = {
        "bernoulli_log_likelihood": (
            lambda y: ik.bernoulli_log_likelihood(y, x, backend=backend), lambda y: naive_bernoulli(y, x),
            [(K, B, P)], (), None),
        "gaussian_log_likelihood": (
            lambda m, s: ik.gaussian_log_likelihood(m, s, x, backend=backend),
            lambda m, s: naive_gaussian(m, s, x), [(K, B, P), (K, B, P)], ("torch",), None),
        "bernoulli_decoder_log_likelihood": (
            lambda h, w, b: ik.bernoulli_decoder_log_likelihood(h, w, b, x, backend=backend),
            lambda h, w, b: naive_bernoulli(h @ w.T + b, x), [(K, B, 4), (P, 4), (P,)], (),
            # the torch backend forms the logits with F.linear, then its Bernoulli likelihood refuses
            "bernoulli_log_likelihood" if backend == "torch" else None),
        "bernoulli_iwae_loss": (
            lambda y, a: ik.bernoulli_iwae_loss(y, x, a, backend=backend),
            lambda y, a: -naive_iwae_bound(naive_bernoulli(y, x) + a).mean(), [(K, B, P), (K, B)],
            (), "(bernoulli_log_likelihood|iwae_bound)" if backend == "torch" else None),
        "gaussian_iwae_loss": (
            lambda m, s, a: ik.gaussian_iwae_loss(m, s, x, a, backend=backend),
            lambda m, s, a: -naive_iwae_bound(naive_gaussian(m, s, x) + a).mean(),
            [(K, B, P), (K, B, P), (K, B)], (), "iwae_bound" if backend == "torch" else None),
        "iwae_bound": (
            lambda w: ik.iwae_bound(w, backend=backend), naive_iwae_bound, [(K, B)], (), None),
        "normalized_weights": (
            lambda w: ik.normalized_weights(w, backend=backend), lambda w: torch.softmax(w, 0), [(K, B)], (), None),
        "categorical_log_likelihood": (
            lambda y: ik.categorical_log_likelihood(y, tokens, backend=backend),
            lambda y: naive_categorical(y, tokens), [(K, B, 2, 3)], ("torch",), None),
        "local_reparam_linear": (
            lambda a, m, v: ik.local_reparam_linear(a, m, v.exp(), noise=noise[0, :, :2], backend=backend),
            lambda a, m, v: naive_local_reparam_linear(a, m, v.exp(), noise[0, :, :2]), [(B, 4), (2, 4), (2, 4)],
            ("torch",), None),
    }
    for estimator in ("iwae", "vae", "iwae-resample", "stl", "dreg"):
        cases[f"gaussian_sample[{estimator}]"] = (
            lambda m, s, e=estimator: _sample_terms(ik.gaussian_sample(m, s, K, eps=noise, estimator=e,
                                                                       backend=backend)),
            lambda m, s: _sample_terms(naive_latent(m, s, noise)), [(B, D), (B, D)],
            ("torch",) if estimator in ("iwae", "vae", "iwae-resample") else (),
            rf"gaussian_sample \(estimator='{estimator}'\)")
    return cases


def _sample_terms(sample):
    z, latent = sample
    return z.sum(-1) + latent


OP_NAMES = list(_op_cases(torch.device("cpu"), "torch"))


@pytest.mark.parametrize("op", OP_NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_each_op_double_backward_is_right_or_refused(backend, op):
    device = backend_device(backend)
    fn, reference, shapes, supported_on, refused_name = _op_cases(device, backend)[op]
    args = inputs(device, *shapes, dtype=working_dtype(backend))
    if backend in supported_on:
        assert_supported(fn, reference, args)
    else:
        assert_refused(fn, args, refused_name or op)


def test_the_issue_repro_raises_instead_of_a_wrong_hessian():
    log_w = torch.tensor([[0.3], [-1.0], [0.5]], requires_grad=True)
    (grad,) = torch.autograd.grad(torch.logsumexp(log_w**2, 0).sum(), log_w, create_graph=True)
    assert torch.allclose(torch.autograd.grad(grad.sum(), log_w)[0].flatten(),
                          torch.tensor([0.595, 2.468, 0.929]), atol=1e-3)  # what the refusal replaces
    with pytest.raises(ik.DoubleBackwardError, match=r"iwae_kernels\.iwae_bound"):
        torch.autograd.grad(ik.iwae_bound(log_w**2).sum(), log_w, create_graph=True)


class _Decoder(torch.nn.Module):
    """A Linear decoder: logits for "bernoulli", (mean, logvar) for "gaussian"."""

    def __init__(self, likelihood):
        super().__init__()
        torch.manual_seed(0)
        self.likelihood = likelihood
        self.linear = torch.nn.Linear(D, P if likelihood == "bernoulli" else 2 * P, dtype=torch.float64)

    def forward(self, z):
        out = self.linear(z)
        return out if self.likelihood == "bernoulli" else tuple(out.chunk(2, -1))


def _naive_loss(x, mu, logvar, decoder, noise, likelihood, estimator):
    z, latent = naive_latent(mu, logvar, noise)
    out = decoder(z)
    log_w = (naive_bernoulli(out, x) if likelihood == "bernoulli" else naive_gaussian(*out, x)) + latent
    bound = log_w.mean(0) if estimator in ("vae", "iwae-resample") else naive_iwae_bound(log_w)
    return -bound.mean()


# The estimators whose iwae_loss is plain autograd end to end: the torch backend's Gaussian likelihood, with no
# bound op (vae) or the bound of one resampled sample (iwae-resample, its value's bound detached).
SUPPORTED_LOSSES = {("torch", "gaussian", "vae"), ("torch", "gaussian", "iwae-resample")}


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("estimator", ["iwae", "vae", "stl", "dreg", "iwae-resample"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_penalty_on_decoder_weights_through_iwae_loss(backend, estimator, likelihood):
    """A WAE/GAN-style penalty |d loss / d W_decoder|^2, differentiated again: right where the whole loss is plain
    autograd, else refused with the op's name."""
    device = backend_device(backend)
    dtype = working_dtype(backend)
    decoder = _Decoder(likelihood).to(device, dtype)
    x = data(device, dtype=dtype)
    mu, logvar = inputs(device, (B, D), (B, D), dtype=dtype)
    # iwae-resample at k = 1: its one sample is the one resampled, so the reference is that sample's ELBO.
    noise = eps(device, 1 if estimator == "iwae-resample" else K, dtype=dtype)

    def penalty(loss_fn):
        (grad_w,) = torch.autograd.grad(loss_fn(), decoder.linear.weight, create_graph=True)
        return torch.autograd.grad((grad_w**2).sum(), [decoder.linear.weight, mu])

    loss = lambda: ik.iwae_loss(x, mu, logvar, decoder, noise.shape[0], likelihood=likelihood, estimator=estimator,
                                eps=noise, backend=backend)
    if (backend, likelihood, estimator) in SUPPORTED_LOSSES:
        reference = lambda: _naive_loss(x, mu, logvar, decoder, noise, likelihood, estimator)
        for got, want in zip(penalty(loss), penalty(reference)):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    else:
        with pytest.raises(ik.DoubleBackwardError, match=r"iwae_kernels\.\w+.*double backward"):
            penalty(loss)
