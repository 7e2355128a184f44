"""iwae_loss end to end: every estimator on both backends against float64 naive autograd, and bad input."""

import math

import numpy as np
import pytest
import torch

import iwae_kernels as ik
from iwae_kernels.ops.gaussian_sample import draw_seed

from helpers import COMPILED_BACKENDS, backend_device
from helpers import assert_close, kernel_noise
from naive import (naive_bernoulli, naive_estimator_objective, naive_gaussian, naive_iwae_bound, naive_latent,
                   naive_log_weights)
from conftest import shape_ids

ESTIMATORS = ["iwae", "vae", "stl", "dreg"]


def setup_problem(k, batch, dim, obs, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.bernoulli(torch.full((batch, obs), 0.4, dtype=torch.float64), generator=gen).to(dtype)
    mu = torch.randn(batch, dim, generator=gen, dtype=torch.float64).to(dtype)
    logvar = (0.5 * torch.randn(batch, dim, generator=gen, dtype=torch.float64)).to(dtype)
    weight = (torch.randn(dim, obs, generator=gen, dtype=torch.float64) / dim**0.5).to(dtype)
    return x, mu, logvar, weight


def noise_used(backend, seed, shape, dtype, device):
    """The eps a backend draws after torch.manual_seed(seed) when the caller gives none."""
    torch.manual_seed(seed)
    if backend == "torch":
        return torch.randn(shape, dtype=dtype, device=device)
    return kernel_noise(backend, shape, draw_seed(None, device), dtype, device)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("backend", ["torch", *COMPILED_BACKENDS])
def test_iwae_loss_matches_naive(backend, estimator, reduction):
    device = backend_device(backend)
    dtype = torch.float64
    k, batch, dim, obs = 5, 3, 4, 11
    x, mu, logvar, weight = setup_problem(k, batch, dim, obs, dtype)
    leaves = [t.to(device).requires_grad_() for t in (mu, logvar, weight)]
    torch.manual_seed(42)
    loss = ik.iwae_loss(x.to(device), leaves[0], leaves[1], lambda z: z @ leaves[2], k=k, estimator=estimator,
                        reduction=reduction, backend=backend)
    eps = noise_used(backend, 42, (k, batch, dim), dtype, device).cpu()

    naive_leaves = [t.clone().requires_grad_() for t in (mu, logvar, weight)]
    example_weights = {"mean": -torch.ones(batch, dtype=dtype) / batch, "sum": -torch.ones(batch, dtype=dtype),
                       "none": -torch.ones(batch, dtype=dtype)}[reduction]
    surrogate, model = naive_estimator_objective(naive_leaves[0], naive_leaves[1], eps, naive_leaves[2], x,
                                                 example_weights, estimator)
    expected_encoder = torch.autograd.grad(surrogate, naive_leaves[:2], retain_graph=True)
    (expected_decoder,) = torch.autograd.grad(model, naive_leaves[2])

    if reduction == "none":
        assert loss.shape == (batch,)
        log_w = naive_log_weights(x, mu, logvar, lambda z: z @ weight, eps)
        per_example = log_w.mean(0) if estimator == "vae" else naive_iwae_bound(log_w)
        assert_close(loss, -per_example)
        loss = loss.sum()
    else:
        assert loss.shape == ()
        assert_close(loss, model.detach())
    grads = torch.autograd.grad(loss, leaves)
    for got, want in zip(grads, [*expected_encoder, expected_decoder]):
        assert_close(got, want)


@pytest.mark.parametrize("backend", ["torch", *COMPILED_BACKENDS])
def test_gaussian_likelihood_and_flatten_samples(backend):
    device = backend_device(backend)
    k, batch, dim, obs = 4, 3, 2, 5
    _, mu, logvar, weight = setup_problem(k, batch, dim, obs)
    x = torch.randn(batch, obs, dtype=torch.float64)
    seen = []

    def decoder(z):
        seen.append(tuple(z.shape))
        return z @ weight.to(device), torch.full(z.shape[:-1] + (obs,), -0.5, dtype=z.dtype, device=device)

    torch.manual_seed(1)
    loss = ik.iwae_loss(x.to(device), mu.to(device), logvar.to(device), decoder, k=k, likelihood="gaussian",
                        flatten_samples=True, reduction="none", backend=backend)
    assert seen == [(k * batch, dim)]
    eps = noise_used(backend, 1, (k, batch, dim), torch.float64, device).cpu()
    z, latent = naive_latent(mu, logvar, eps)
    mean = z @ weight
    log_w = naive_gaussian(mean, torch.full_like(mean, -0.5), x) + latent
    assert_close(loss, -naive_iwae_bound(log_w))


def resampled_loss(k, batch, dim, obs, seed, reduction):
    """The iwae-resample loss of a linear-decoder problem and the noise it drew: (x, mu, logvar, weight, loss, eps)."""
    x, mu, logvar, weight = setup_problem(k, batch, dim, obs)
    mu.requires_grad_()
    torch.manual_seed(seed)
    loss = ik.iwae_loss(x, mu, logvar, lambda z: z @ weight, k=k, estimator="iwae-resample", reduction=reduction)
    torch.manual_seed(seed)
    return x, mu, logvar, weight, loss, torch.randn(k, batch, dim, dtype=torch.float64)


def test_resample_value_is_the_bound_for_its_noise():
    k, batch, dim, obs = 7, 4, 3, 9
    x, mu, logvar, weight, loss, eps = resampled_loss(k, batch, dim, obs, seed=3, reduction="none")
    log_w = naive_log_weights(x, mu.detach(), logvar, lambda z: z @ weight, eps)
    assert_close(loss, -naive_iwae_bound(log_w))
    (grad,) = torch.autograd.grad(loss.sum(), mu)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_resample_gradient_is_one_sample_gradient():
    """Each example's gradient is -d log w_j / d mu for one of its k samples (one backward pass)."""
    k, batch, dim, obs = 6, 5, 3, 8
    x, mu, logvar, weight, loss, eps = resampled_loss(k, batch, dim, obs, seed=9, reduction="sum")
    (grad,) = torch.autograd.grad(loss, mu)
    leaf = mu.detach().clone().requires_grad_()
    log_w = naive_log_weights(x, leaf, logvar, lambda z: z @ weight, eps)
    per_sample = torch.stack([torch.autograd.grad(-log_w[i].sum(), leaf, retain_graph=True)[0] for i in range(k)])
    for b in range(batch):
        assert min((per_sample[i, b] - grad[b]).abs().max().item() for i in range(k)) < 1e-10


@pytest.mark.parametrize("backend", ["torch", *COMPILED_BACKENDS])
def test_impossible_samples_give_no_nan(backend):
    """Logits of -inf where x = 1 make a sample impossible (log w = -inf): it gets zero weight; an example
    whose every sample is impossible gets an infinite loss and zero gradient, never NaN."""
    device = backend_device(backend)
    k, batch, dim, obs = 4, 3, 2, 5
    x = torch.ones(batch, obs, device=device)
    mu = torch.zeros(batch, dim, device=device, requires_grad=True)
    logvar = torch.zeros(batch, dim, device=device, requires_grad=True)
    weight = torch.ones(dim, obs, device=device, requires_grad=True)
    impossible = torch.zeros(k, batch, obs, device=device)
    impossible[0, 0, 0] = -math.inf  # one sample of example 0
    impossible[:, 1, 2] = -math.inf  # every sample of example 1
    loss = ik.iwae_loss(x, mu, logvar, lambda z: z @ weight + impossible, k=k, reduction="none", backend=backend)
    assert torch.isfinite(loss[[0, 2]]).all() and loss[1].item() == math.inf
    grads = torch.autograd.grad(loss.sum(), [mu, logvar, weight])  # example 1 gets upstream 1 too
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[0][1] == 0).all() and (grads[0][0] != 0).any()


class BadInput:
    x = torch.rand(3, 5).round()
    mu = torch.zeros(3, 2)
    logvar = torch.zeros(3, 2)
    decoder = staticmethod(lambda z: z @ torch.ones(2, 5))


def overrides_id(overrides):
    """A bad call's overrides as its id reads them: ``k=np.int64(0)``, ``logvar=3x2 float64``, ``decoder=<lambda>``."""
    if not isinstance(overrides, dict):
        return None

    def show(value):
        if isinstance(value, torch.Tensor):
            dtype = [] if value.dtype == torch.float32 else [str(value.dtype).removeprefix("torch.")]
            device = [] if value.device.type == "cpu" else [value.device.type]
            return " ".join(["x".join(map(str, value.shape)), *dtype, *device])
        return getattr(value, "__name__", None) or repr(value)

    return " ".join(f"{name}={show(value)}" for name, value in overrides.items())


BAD_LOSS_CALLS = [
    (dict(k=0), ValueError, r"k: expected an int >= 1, got 0"),
    (dict(k=np.int64(0)), ValueError, r"k: expected an int >= 1, got 0"),
    (dict(k=2.0), TypeError, r"k: expected an int"),
    (dict(k=True), TypeError, r"k: expected an int"),
    (dict(mu=torch.zeros(3)), ValueError, r"mu: expected a 2-D tensor"),
    (dict(mu=torch.zeros(0, 2), logvar=torch.zeros(0, 2), x=torch.zeros(0, 5)), ValueError, r"non-empty"),
    (dict(logvar=torch.zeros(3, 4)), ValueError, r"logvar: expected shape \(3, 2\)"),
    (dict(logvar=torch.zeros(3, 2, dtype=torch.float64)), TypeError, r"logvar: expected dtype torch.float32"),
    (dict(x=torch.zeros(4, 5)), ValueError, r"x: expected batch size 3"),
    (dict(x=torch.zeros(3, 5, dtype=torch.int64)), TypeError, r"x: expected a floating dtype"),
    (dict(x=torch.zeros(3, 5, device="meta")), ValueError, r"x: expected device cpu"),
    (dict(decoder=3), TypeError, r"decoder: expected a callable"),
    (dict(decoder=lambda z: z), ValueError, r"decoder: expected logits of shape \[k, B, \*event\] = \(4, 3, 5\), got \(4, 3, 2\)"),
    (dict(decoder=lambda z: (z @ torch.ones(2, 5))[0]), ValueError, r"decoder: expected logits"),
    (dict(decoder=lambda z: z.flatten(0, 1) @ torch.ones(2, 5)), ValueError, r"got \(12, 5\); a decoder that returns "
     r"\[k \* B, \*event\] needs flatten_samples=True"),
    (dict(x=torch.full((3, 5), 255, dtype=torch.uint8)), TypeError, r"x: .*0\.\.255: pass x.float\(\) / 255"),
    (dict(x=torch.full((3, 5), 255.0)), ValueError, r"x: Bernoulli targets must lie in \[0, 1\]"),
    (dict(x=torch.full((3, 5), math.nan)), ValueError, r"x: contains NaN \(Bernoulli targets"),
    (dict(likelihood="gaussian"), TypeError, r"decoder: for likelihood='gaussian' expected a \(mean, logvar\) pair"),
    (dict(likelihood="poisson"), ValueError, r"likelihood: expected one of \('bernoulli', 'gaussian'\)"),
    (dict(estimator="reinforce"), ValueError, r"estimator: expected one of"),
    (dict(reduction="max"), ValueError, r"reduction: expected one of"),
    (dict(backend="jax"), ValueError, r"backend: expected one of"),
    (dict(generator=5), TypeError, r"generator: expected a torch.Generator"),
]


@pytest.mark.parametrize("overrides, error, message", BAD_LOSS_CALLS, ids=overrides_id)
def test_bad_loss_input_names_the_argument(overrides, error, message):
    args = dict(x=BadInput.x, mu=BadInput.mu, logvar=BadInput.logvar, decoder=BadInput.decoder, k=4) | overrides
    with pytest.raises(error, match=message):
        ik.iwae_loss(args.pop("x"), args.pop("mu"), args.pop("logvar"), args.pop("decoder"), **args)


BAD_SAMPLE_CALLS = [
    (dict(eps=torch.zeros(4, 3, 3)), ValueError, r"eps: expected shape \(4, 3, 2\)"),
    (dict(prior_mu=torch.zeros(3, 2)), ValueError, r"prior_mu, prior_logvar: give both"),
    (dict(prior_mu=torch.zeros(2, 2), prior_logvar=torch.zeros(2, 2)), ValueError, r"prior_mu: expected shape"),
    (dict(prior_mu=torch.zeros(3, 2), prior_logvar=torch.zeros(4, 3, 2)), ValueError, r"prior_logvar: expected shape"),
    (dict(mu=torch.zeros(5, 3, 2), logvar=torch.zeros(5, 3, 2)), ValueError, r"mu: a per-sample mu must have shape \[k=4"),
    (dict(mu=torch.zeros(3, 2, dtype=torch.float16)), TypeError, r"logvar: expected dtype torch.float16"),
]


@pytest.mark.parametrize("overrides, error, message", BAD_SAMPLE_CALLS, ids=overrides_id)
def test_bad_sample_input_names_the_argument(overrides, error, message):
    args = dict(mu=BadInput.mu, logvar=BadInput.logvar) | overrides
    with pytest.raises(error, match=message):
        ik.gaussian_sample(args.pop("mu"), args.pop("logvar"), 4, **args)


def test_bad_observation_and_log_weight_input():
    with pytest.raises(ValueError, match=r"x: expected shape \[B, \*event\] = \(3, 5\)"):
        ik.bernoulli_log_likelihood(torch.zeros(2, 3, 5), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"logvar: expected shape"):
        ik.gaussian_log_likelihood(torch.zeros(2, 3, 5), torch.zeros(2, 3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"log_w: expected a 2-D tensor"):
        ik.iwae_bound(torch.zeros(2, 3, 5))
    with pytest.raises(TypeError, match=r"log_w: expected a torch.Tensor"):
        ik.normalized_weights([[0.0]])


def test_backend_errors_say_why(monkeypatch):
    monkeypatch.setenv("IWAE_KERNELS_BACKEND", "numpy")
    with pytest.raises(ValueError, match=r"IWAE_KERNELS_BACKEND: expected one of \('torch', 'triton', 'cuda'\)"):
        ik.iwae_bound(torch.zeros(2, 3))
    monkeypatch.setenv("IWAE_KERNELS_BACKEND", "torch")
    assert ik.iwae_bound(torch.zeros(2, 3)).shape == (3,)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"backend='triton' needs CUDA tensors .*TRITON_INTERPRET=1"):
        ik.iwae_bound(torch.zeros(2, 3), backend="triton")
    with pytest.raises(ValueError, match=r"backend='cuda' needs CUDA tensors \(got cpu\)"):
        ik.iwae_bound(torch.zeros(2, 3), backend="cuda")


def test_check_finite_names_the_tensor():
    args = (BadInput.x, BadInput.mu, BadInput.logvar, BadInput.decoder)
    nan_mu = BadInput.mu.clone()
    nan_mu[0, 0] = math.nan
    with pytest.raises(ValueError, match="mu: contains NaN or inf"):
        ik.iwae_loss(args[0], nan_mu, *args[2:], k=2, check_finite=True)
    with pytest.raises(ValueError, match=r"x: Bernoulli targets must lie in \[0, 1\]"):
        ik.iwae_loss(args[0] * 2, *args[1:], k=2, check_finite=True)
    nan_decoder = lambda z: z @ torch.full((2, 5), math.nan)
    with pytest.raises(ValueError, match=r"decoder output \(logits\): contains NaN"):
        ik.iwae_loss(*args[:3], nan_decoder, k=2, check_finite=True)
    assert ik.iwae_loss(*args, k=2, check_finite=True).isfinite()


def test_overflowing_latent_term_is_blamed_on_logvar():
    huge_logvar = torch.full_like(BadInput.logvar, 1000.0)  # finite, but exp(logvar / 2) overflows
    with pytest.raises(ValueError, match=r"mu, logvar: the samples z or the latent term .* are not finite"):
        ik.iwae_loss(BadInput.x, BadInput.mu, huge_logvar, BadInput.decoder, k=2, check_finite=True)


def test_overflowing_log_weight_is_an_error_with_check_finite():
    x = BadInput.x
    # mean == x and a tiny variance: -logvar/2 summed over the pixels, and 0 * exp(-logvar) = NaN.
    decoder = lambda z: (x.expand(z.shape[0], *x.shape), torch.full((z.shape[0], *x.shape), -1e38))
    with pytest.raises(ValueError, match=r"log_w: a log-weight .* is NaN or \+inf"):
        ik.iwae_loss(x, BadInput.mu, BadInput.logvar, decoder, k=2, likelihood="gaussian", check_finite=True)


@pytest.mark.parametrize("backend", ["torch", *COMPILED_BACKENDS])
def test_positive_inf_log_weight_gives_the_largest_float_not_nan(backend):
    device = backend_device(backend)
    log_w = torch.zeros(4, 3, device=device)
    log_w[1, 0] = math.inf
    log_w.requires_grad_()
    bound = ik.iwae_bound(log_w, backend=backend)
    assert bound[0].item() == torch.finfo(torch.float32).max and torch.isfinite(bound).all()
    (grad,) = torch.autograd.grad(bound.sum(), log_w)
    assert (grad[:, 0] == 0).all() and torch.allclose(grad[:, 1:], torch.full((4, 2), 0.25, device=device))


def test_numpy_integer_sample_counts():
    torch.manual_seed(0)
    loss = ik.iwae_loss(BadInput.x, BadInput.mu, BadInput.logvar, BadInput.decoder, k=np.int64(3))
    torch.manual_seed(0)
    assert torch.equal(loss, ik.iwae_loss(BadInput.x, BadInput.mu, BadInput.logvar, BadInput.decoder, k=3))
    assert ik.gaussian_sample(BadInput.mu, BadInput.logvar, np.int32(2))[0].shape == (2, 3, 2)


@pytest.mark.parametrize("backend", ["torch", *COMPILED_BACKENDS])
def test_x_gets_no_gradient_on_any_backend(backend):
    device = backend_device(backend)
    x = BadInput.x.detach().to(device).requires_grad_()
    mu = BadInput.mu.detach().to(device).requires_grad_()
    loss = ik.iwae_loss(x, mu, BadInput.logvar.to(device), lambda z: z @ torch.ones(2, 5, device=device), k=3,
                        backend=backend)
    loss.backward()
    assert x.grad is None and mu.grad is not None


@pytest.mark.parametrize("backend", ["torch", *COMPILED_BACKENDS])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_image_shaped_data(backend, likelihood):
    """x [B, 1, 4, 4] with decoder output [k, B, 1, 4, 4] (or [k * B, 1, 4, 4] flattened) is the [B, 16] loss."""
    device = backend_device(backend)
    k, batch, dim = 3, 2, 4
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, 4, 4, generator=gen).round().to(device)
    mu, logvar = torch.randn(batch, dim, generator=gen).to(device), torch.zeros(batch, dim, device=device)
    weight = torch.randn(dim, 16, generator=gen).to(device)

    def decoder(event_shape):
        def decode(z):
            out = (z @ weight).reshape(*z.shape[:-1], *event_shape)
            return out if likelihood == "bernoulli" else (out, 0.1 * out)
        return decode

    def loss(x, event_shape, flatten_samples=False):
        torch.manual_seed(1)
        return ik.iwae_loss(x, mu, logvar, decoder(event_shape), k=k, likelihood=likelihood, reduction="none",
                            flatten_samples=flatten_samples, backend=backend)

    flat = loss(x.reshape(batch, 16), (16,))
    assert_close(loss(x, (1, 4, 4)), flat)
    assert_close(loss(x, (1, 4, 4), flatten_samples=True), flat)


def test_kl_annealing_weights_the_latent_term():
    """iwae_loss(beta=b) is -L_k of log p(x|z) + b (log p(z) - log q(z|x)), through the same noise."""
    torch.manual_seed(0)
    x, mu, logvar = torch.rand(4, 6).round().double(), torch.randn(4, 3).double(), 0.3 * torch.randn(4, 3).double()
    decoder = torch.nn.Linear(3, 6).double()
    got = ik.iwae_loss(x, mu, logvar, decoder, k=5, beta=0.25, generator=torch.Generator().manual_seed(1),
                       backend="torch", reduction="none")
    eps = torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z, latent = naive_latent(mu, logvar, eps)
    log_w = naive_bernoulli(decoder(z), x) + 0.25 * latent
    assert_close(got, -naive_iwae_bound(log_w))
    assert [ik.kl_warmup(s, 10) for s in (0, 5, 10, 50)] == [0.0, 0.5, 1.0, 1.0]
    assert ik.kl_warmup(0, 10, start=0.2) == 0.2
    with pytest.raises(ValueError, match="beta: estimator=.iwae-resample. needs the plain bound"):
        ik.iwae_loss(x, mu, logvar, decoder, k=5, beta=0.5, estimator="iwae-resample")


def _hand_composed_loss(x, mu, logvar, weight, eps, estimator, backend):
    """iwae_loss composed by hand from gaussian_sample(eps=...), the likelihood and the bound."""
    z, latent = ik.gaussian_sample(mu, logvar, eps.shape[0], eps=eps, estimator=estimator, backend=backend)
    log_w = ik.bernoulli_log_likelihood(z @ weight, x, backend=backend) + latent
    return -(log_w.mean(0) if estimator == "vae" else ik.iwae_bound(log_w, backend=backend)).mean()


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("backend", ["torch", *COMPILED_BACKENDS])
def test_iwae_loss_with_eps_equals_the_hand_composed_loss(backend, estimator):
    device = backend_device(backend)
    x, mu, logvar, weight = (t.to(device) for t in setup_problem(5, 3, 4, 7, dtype=torch.float32))
    eps = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(3)).to(device)
    params = [mu.requires_grad_(), logvar.requires_grad_(), weight.requires_grad_()]
    got = ik.iwae_loss(x, mu, logvar, lambda z: z @ weight, 5, estimator=estimator, eps=eps, backend=backend)
    want = _hand_composed_loss(x, mu, logvar, weight, eps, estimator, backend)
    assert_close(got, want)
    for g, w in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
        assert_close(g, w)
    again = ik.iwae_loss(x, mu, logvar, lambda z: z @ weight, 5, estimator=estimator, eps=eps + 1, backend=backend)
    assert not torch.equal(again, got)  # eps is what the samples come from


def test_iwae_loss_with_eps_resample_at_one_sample_is_that_samples_elbo():
    x, mu, logvar, weight = setup_problem(1, 3, 4, 7)
    eps = torch.randn(1, 3, 4, dtype=torch.float64)
    decoder = lambda z: z @ weight
    got = ik.iwae_loss(x, mu, logvar, decoder, 1, estimator="iwae-resample", eps=eps)
    assert_close(got, ik.iwae_loss(x, mu, logvar, decoder, 1, estimator="vae", eps=eps))


@pytest.mark.parametrize("shape, match", [((4, 3, 4), r"eps: expected shape \(5, 3, 4\)"),
                                          ((5, 3, 3), r"eps: expected shape \(5, 3, 4\)"),
                                          ((5, 12), r"eps: expected a 3-D tensor")], ids=shape_ids())
def test_iwae_loss_refuses_bad_eps_naming_it(shape, match):
    x, mu, logvar, weight = setup_problem(5, 3, 4, 7)
    with pytest.raises(ValueError, match=match):
        ik.iwae_loss(x, mu, logvar, lambda z: z @ weight, 5, eps=torch.zeros(shape, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"eps: expected dtype torch.float64 \(as mu\)"):
        ik.iwae_loss(x, mu, logvar, lambda z: z @ weight, 5, eps=torch.zeros(5, 3, 4))


def test_eps_of_another_float_dtype_says_how_to_fix_it():
    """Under torch.autocast an encoder's mu is bfloat16 while noise is drawn in float32: the message says the fix."""
    x, mu, logvar, weight = setup_problem(5, 3, 4, 7)
    mu, logvar = mu.bfloat16(), logvar.bfloat16()
    with pytest.raises(TypeError, match=r"eps: expected dtype torch.bfloat16 \(as mu\), got torch.float32; pass "
                                        r"eps.to\(mu.dtype\)"):
        ik.iwae_loss(x, mu, logvar, lambda z: z.float() @ weight.float(), 5, eps=torch.zeros(5, 3, 4))
