"""gaussian_sample: the fused reparameterized sample + latent log-weight, and its estimator gradients."""

import pytest
import torch

import iwae_kernels as ik
from iwae_kernels.ops.gaussian_sample import draw_seed

from helpers import COMPILED_BACKENDS, backend_device
from helpers import LOW_PRECISION, kernel_noise, assert_close, assert_close_as_torch
from naive import naive_estimator_objective, naive_latent
from conftest import shape_ids

ESTIMATORS = ["iwae", "vae", "stl", "dreg"]
# (k, B, D): k=1, B=1, D=1, odd sizes, D not a power of two and above one block, k above one block.
SHAPES = [(1, 3, 5), (4, 1, 1), (5, 3, 17), (3, 2, 70), (37, 2, 3)]
SHAPE_ID = shape_ids("k", "B", "D")  # k5-B3-D17
LAYOUTS = ["shared", "per_sample"]
PRIORS = [None, "shared", "per_sample"]


def make_inputs(k, batch, dim, layout="shared", prior=None, dtype=torch.float64, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    param_shape = (batch, dim) if layout == "shared" else (k, batch, dim)
    rand = lambda *shape, scale=1.0: (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype).to(device)
    inputs = {"mu": rand(*param_shape), "logvar": rand(*param_shape, scale=0.5), "eps": rand(k, batch, dim)}
    if prior is not None:
        prior_shape = (batch, dim) if prior == "shared" else (k, batch, dim)
        inputs["prior_mu"], inputs["prior_logvar"] = rand(*prior_shape, scale=0.5), rand(*prior_shape, scale=0.5)
    return inputs


def make_model(batch, dim, obs=7, device="cpu", seed=1):
    gen = torch.Generator().manual_seed(seed)
    weight = (torch.randn(dim, obs, generator=gen, dtype=torch.float64) / dim**0.5).to(device)
    x = torch.bernoulli(torch.full((batch, obs), 0.5, dtype=torch.float64), generator=gen).to(device)
    example_weights = (torch.rand(batch, generator=gen, dtype=torch.float64) + 0.5).to(device)
    return weight, x, example_weights


def params(inputs):
    return [inputs[name] for name in ("mu", "logvar", "prior_mu", "prior_logvar") if name in inputs]


def composed_gradients(inputs, weight, x, example_weights, estimator, backend):
    """Gradients of sum_b g_b L_b with the library's ops composed as a user would compose them."""
    inputs = {name: value.detach().clone().requires_grad_(name != "eps") for name, value in inputs.items()}
    k = inputs["eps"].shape[0]
    z, latent = ik.gaussian_sample(inputs["mu"], inputs["logvar"], k, eps=inputs["eps"], estimator=estimator,
                                   prior_mu=inputs.get("prior_mu"), prior_logvar=inputs.get("prior_logvar"),
                                   backend=backend)
    log_w = ik.bernoulli_log_likelihood(z @ weight.to(z.dtype), x, backend=backend) + latent
    bound = log_w.mean(0) if estimator == "vae" else ik.iwae_bound(log_w, backend=backend)
    objective = (example_weights.to(bound.dtype) * bound).sum()
    return torch.autograd.grad(objective, params(inputs))


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES[:4], ids=SHAPE_ID)
def test_reference_values_match_distributions(shape, layout, prior):
    inputs = make_inputs(*shape, layout=layout, prior=prior)
    z, latent = ik.gaussian_sample(inputs["mu"], inputs["logvar"], shape[0], eps=inputs["eps"], backend="torch",
                                   prior_mu=inputs.get("prior_mu"), prior_logvar=inputs.get("prior_logvar"))
    z_expected, latent_expected = naive_latent(inputs["mu"], inputs["logvar"], inputs["eps"],
                                               inputs.get("prior_mu"), inputs.get("prior_logvar"))
    assert z.shape == shape and latent.shape == shape[:2]
    assert_close(z, z_expected)
    assert_close(latent, latent_expected)


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_reference_gradcheck(layout, prior):
    inputs = make_inputs(3, 2, 4, layout=layout, prior=prior)
    eps = inputs.pop("eps")
    names = list(inputs)

    def sample(*values):
        kwargs = dict(zip(names, values))
        return ik.gaussian_sample(kwargs.pop("mu"), kwargs.pop("logvar"), 3, eps=eps, backend="torch", **kwargs)

    assert torch.autograd.gradcheck(sample, [inputs[n].requires_grad_() for n in names])


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(1, 3, 5), (6, 3, 4)], ids=SHAPE_ID)
def test_reference_estimators_match_naive_surrogates(shape, layout, prior, estimator):
    inputs = make_inputs(*shape, layout=layout, prior=prior)
    weight, x, example_weights = make_model(shape[1], shape[2])
    actual = composed_gradients(inputs, weight, x, example_weights, estimator, "torch")
    leaves = {name: value.clone().requires_grad_(name != "eps") for name, value in inputs.items()}
    surrogate, model = naive_estimator_objective(
        leaves["mu"], leaves["logvar"], leaves["eps"], weight, x, example_weights, estimator,
        leaves.get("prior_mu"), leaves.get("prior_logvar"))
    encoder = torch.autograd.grad(surrogate, [leaves["mu"], leaves["logvar"]], retain_graph=True)
    prior_grads = torch.autograd.grad(model, params(leaves)[2:]) if prior else ()
    for got, expected in zip(actual, list(encoder) + list(prior_grads)):
        assert_close(got, expected)


def test_k1_estimators_agree():
    """With k = 1: iwae and vae agree, and stl equals dreg (docs/MATH.md)."""
    inputs = make_inputs(1, 4, 6)
    model = make_model(4, 6)
    grads = {est: composed_gradients(inputs, *model, est, "torch") for est in ESTIMATORS}
    for a, b in [("iwae", "vae"), ("stl", "dreg")]:
        for got, expected in zip(grads[a], grads[b]):
            assert_close(got, expected)


def run_with_upstream(inputs, k, estimator, backend, device, dtype, seed=3):
    """Values and gradients for a random upstream (dJ/dz, dJ/da > 0), the kernel's whole backward contract."""
    leaves = {n: v.detach().to(device=device, dtype=dtype).clone().requires_grad_(n != "eps") for n, v in inputs.items()}
    z, latent = ik.gaussian_sample(leaves["mu"], leaves["logvar"], k, eps=leaves["eps"], estimator=estimator,
                                   prior_mu=leaves.get("prior_mu"), prior_logvar=leaves.get("prior_logvar"),
                                   backend=backend)
    gen = torch.Generator().manual_seed(seed)
    grad_z = torch.randn(z.shape, generator=gen, dtype=torch.float64).to(device=device, dtype=z.dtype)
    grad_latent = torch.rand(latent.shape, generator=gen, dtype=torch.float64).to(device=device, dtype=latent.dtype)
    grads = torch.autograd.grad([z, latent], params(leaves), [grad_z, grad_latent])
    return [z, latent, *grads]


# Every layout with iwae on every shape; the other estimators on two shapes (interpreter time).
TRITON_CASES = [
    (shape, layout, prior, estimator)
    for shape in SHAPES for layout in LAYOUTS for prior in PRIORS for estimator in ESTIMATORS
    if estimator == "iwae" or shape in SHAPES[2:4]
]


@pytest.mark.parametrize("shape, layout, prior, estimator", TRITON_CASES, ids=SHAPE_ID)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matches_reference(kernel, dtype, shape, layout, prior, estimator):
    inputs = make_inputs(*shape, layout=layout, prior=prior)
    expected = run_with_upstream(inputs, shape[0], estimator, "torch", "cpu", torch.float64)
    actual = run_with_upstream(inputs, shape[0], estimator, *kernel, dtype)
    for got, want in zip(actual, expected):
        assert got.shape == want.shape
        assert_close(got, want, dtype)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_split_k_matches_reference(kernel, monkeypatch, dtype, layout, prior, estimator):
    """The backward with k cut into splits (thresholds lowered so small shapes split; k = 37 into 8 splits of 5
    leaves a short last one): gradients summed over k add up the splits' partials, per-sample gradients come from
    their own split, and dreg's weights still see all k."""
    from iwae_kernels.ops import utils

    monkeypatch.setattr(utils, "MIN_SAMPLES_PER_SPLIT", 4)
    shape = (37, 2, 5)
    assert utils.sample_splits(shape[0], shape[1], torch.device("cpu")) == 9
    inputs = make_inputs(*shape, layout=layout, prior=prior)
    expected = run_with_upstream(inputs, shape[0], estimator, "torch", "cpu", torch.float64)
    actual = run_with_upstream(inputs, shape[0], estimator, *kernel, dtype)
    for got, want in zip(actual, expected):
        assert got.shape == want.shape and got.dtype == dtype
        assert_close(got, want, dtype)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("estimator", ["iwae", "dreg"])
def test_kernel_low_precision(kernel, dtype, estimator):
    inputs = make_inputs(6, 3, 19, prior="shared")
    oracle = run_with_upstream(inputs, 6, estimator, "torch", "cpu", torch.float64)
    torch_low = run_with_upstream(inputs, 6, estimator, "torch", "cpu", dtype)
    actual = run_with_upstream(inputs, 6, estimator, *kernel, dtype)
    assert actual[1].dtype == torch.float32, "half inputs give a float32 log-weight"
    for got, ref, want in zip(actual, torch_low, oracle):
        assert got.dtype == ref.dtype
        assert_close_as_torch(got, ref, want)


@pytest.mark.parametrize("backend", ["torch", *COMPILED_BACKENDS])
def test_extreme_logvar_stays_finite_in_float32(backend):
    device = backend_device(backend)
    inputs = make_inputs(4, 2, 6)
    inputs["logvar"] = torch.tensor([-30.0, 30.0, -30.0, 30.0, 0.0, 15.0], dtype=torch.float64).expand(2, 6).clone()
    expected = run_with_upstream(inputs, 4, "dreg", "torch", "cpu", torch.float64)
    actual = run_with_upstream(inputs, 4, "dreg", backend, device, torch.float32)
    for got, want in zip(actual, expected):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double().cpu(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_in_kernel_noise_is_regenerated_in_backward(kernel, estimator):
    """eps=None: the noise comes from a seed drawn from torch's RNG, and backward sees the same noise."""
    backend, device = kernel
    k, batch, dim = 5, 3, 9
    inputs = make_inputs(k, batch, dim, prior="shared", dtype=torch.float32, device=device)
    torch.manual_seed(123)
    seed = draw_seed(None, device)
    eps = kernel_noise(backend, (k, batch, dim), seed, torch.float32, device)
    with_eps = run_with_upstream(inputs | {"eps": eps}, k, estimator, *kernel, torch.float32)

    leaves = {n: v.clone().requires_grad_() for n, v in inputs.items() if n != "eps"}
    torch.manual_seed(123)
    z, latent = ik.gaussian_sample(leaves["mu"], leaves["logvar"], k, estimator=estimator, backend=backend,
                                   prior_mu=leaves["prior_mu"], prior_logvar=leaves["prior_logvar"])
    gen = torch.Generator().manual_seed(3)
    grad_z = torch.randn(z.shape, generator=gen, dtype=torch.float64).to(device=device, dtype=z.dtype)
    grad_latent = torch.rand(latent.shape, generator=gen, dtype=torch.float64).to(device=device)
    grads = torch.autograd.grad([z, latent], params(leaves), [grad_z, grad_latent])
    for got, want in zip([z, latent, *grads], with_eps):
        torch.testing.assert_close(got, want)


def test_in_kernel_noise_is_standard_normal(kernel):
    eps = kernel_noise(*kernel[:1], (16, 8, 256), 7, torch.float64, kernel[1]).flatten().cpu()
    n = eps.numel()
    assert abs(eps.mean().item()) < 4 / n**0.5
    assert abs(eps.var().item() - 1) < 4 * (2 / n) ** 0.5
    assert abs((eps**3).mean().item()) < 4 * (15 / n) ** 0.5
    assert not torch.equal(eps, kernel_noise(kernel[0], (16, 8, 256), 8, torch.float64, kernel[1]).flatten().cpu())


@pytest.mark.parametrize("backend", ["torch", *COMPILED_BACKENDS])
def test_manual_seed_repeats_and_generator_is_used(backend):
    device = backend_device(backend)
    mu, logvar = torch.zeros(2, 3, device=device), torch.zeros(2, 3, device=device)
    draw = lambda **kw: ik.gaussian_sample(mu, logvar, 4, backend=backend, **kw)[0]
    torch.manual_seed(0)
    first = draw()
    torch.manual_seed(0)
    assert torch.equal(first, draw())
    assert not torch.equal(first, draw())
    gen = lambda: torch.Generator(device=device).manual_seed(5)
    assert torch.equal(draw(generator=gen()), draw(generator=gen()))


@pytest.mark.parametrize("estimator", ["iwae", "stl"])
@pytest.mark.parametrize("include_prior", [True, False])
@pytest.mark.parametrize("backend", ["torch", *COMPILED_BACKENDS])
def test_latent_scale_and_no_prior_match_naive(backend, include_prior, estimator):
    """latent_scale=beta weights the latent term (KL annealing); include_prior=False makes it -log q(z|x)
    (normalizing flows). Values and gradients against a float64 torch.distributions oracle. stl refuses a
    latent_scale (its identity assumes the plain bound), so it runs with beta = 1."""
    device = backend_device(backend)
    if backend == "cuda":
        pytest.skip("the cuda backend's kernels do not take include_prior/latent_scale (it refuses them)")
    k, batch, dim = 5, 3, 17
    beta = 1.0 if estimator == "stl" else 0.3
    gen = torch.Generator().manual_seed(11)
    mu, logvar = torch.randn(batch, dim, generator=gen, dtype=torch.float64), 0.5 * torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    eps, readout = torch.randn(k, batch, dim, generator=gen, dtype=torch.float64), torch.randn(dim, generator=gen, dtype=torch.float64)

    def objective(mu, logvar, latent_fn):
        z, latent = latent_fn(mu, logvar)
        return -ik.iwae_bound(torch.sin(z) @ readout.to(z.device) + latent, backend="torch").sum(), latent

    def naive(mu, logvar):
        z, latent = naive_latent(mu, logvar, eps, detach_q=estimator == "stl", include_prior=include_prior)
        return z, beta * latent

    def fused(mu, logvar):
        return ik.gaussian_sample(mu, logvar, k, eps=eps.to(device), estimator=estimator, include_prior=include_prior,
                                  latent_scale=beta, backend=backend)

    leaves = [t.clone().requires_grad_() for t in (mu, logvar)]
    want, want_latent = objective(*leaves, naive)
    want_grads = torch.autograd.grad(want, leaves)
    leaves = [t.to(device).requires_grad_() for t in (mu, logvar)]
    got, got_latent = objective(*leaves, fused)
    assert_close(got_latent, want_latent)
    for g, w in zip(torch.autograd.grad(got, leaves), want_grads):
        assert_close(g, w)


def test_bad_latent_options_name_the_argument():
    mu = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="latent_scale: expected a finite number >= 0"):
        ik.gaussian_sample(mu, mu, 2, latent_scale=-1.0)
    with pytest.raises(ValueError, match="latent_scale: expected a float or a 0-dim"):
        ik.gaussian_sample(mu, mu, 2, latent_scale=torch.ones(2))
    with pytest.raises(ValueError, match="include_prior: False drops the prior"):
        ik.gaussian_sample(mu, mu, 2, include_prior=False, prior_mu=mu, prior_logvar=mu)


@pytest.mark.parametrize("estimator", ["iwae", "dreg"])
@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("layout", LAYOUTS + ["expanded"])
@pytest.mark.parametrize("backend", ["torch", *COMPILED_BACKENDS])
def test_parameter_views_match_their_copies(backend, layout, prior, estimator):
    """Parameters that are views (an encoder's out.chunk(2, -1), a shared mu expanded over k: sample stride 0) give
    what their contiguous copies give; the compiled kernels read them in place."""
    device = backend_device(backend)
    k, batch, dim = 5, 3, 4
    inputs = make_inputs(k, batch, dim, layout="shared" if layout == "expanded" else layout, prior=prior,
                         device=device)
    packed = {name: torch.cat([inputs[name], inputs[name.replace("mu", "logvar")]], -1)
              for name in ("mu", "prior_mu") if name in inputs}

    def run(as_views):
        leaves = {name: value.clone().requires_grad_() for name, value in packed.items()}
        pairs = {name: leaf.chunk(2, -1) for name, leaf in leaves.items()}
        if not as_views:
            pairs = {name: tuple(t.contiguous() for t in pair) for name, pair in pairs.items()}
        mu, logvar = pairs["mu"]
        if layout == "expanded":
            mu, logvar = mu.expand(k, batch, dim), logvar.expand(k, batch, dim)
        prior_mu, prior_logvar = pairs.get("prior_mu", (None, None))
        z, latent = ik.gaussian_sample(mu, logvar, k, eps=inputs["eps"], prior_mu=prior_mu, prior_logvar=prior_logvar,
                                       estimator=estimator, backend=backend)
        upstream = torch.rand(latent.shape, generator=torch.Generator().manual_seed(2), dtype=latent.dtype)
        objective = (z.sin().sum(-1) + latent * upstream.to(device)).sum()
        return [z, latent, *torch.autograd.grad(objective, list(leaves.values()))]

    for got, want in zip(run(as_views=True), run(as_views=False)):
        assert_close(got, want)
