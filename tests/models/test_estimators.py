"""Every model and function that takes an estimator: its mean gradient equals the IWAE gradient.

An estimator is a claim about an expectation, so each test draws many gradients of the same loss on a fixed batch
and compares their means parameter by parameter: z = difference / combined standard error, against a Bonferroni
bound over all parameter entries (family-wise level 1e-3). To get many draws cheaply, each pass replicates a small
batch ``COPIES`` times: the batch-mean gradient of one pass is then itself an average of that many independent
draws, and the passes are independent draws of it. Float64 on the torch backend unless named otherwise.
"""

import math

import pytest
import torch
from torch import nn

import iwae_kernels as ik
from iwae_kernels.models.flows import flow_latent, make_flow
from iwae_kernels.models import ConvIWAE, paper_model

from helpers import backend_device

FAMILY_LEVEL = 1e-3


def bonferroni_bound(entries):
    return torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - FAMILY_LEVEL / (2 * entries))).item()


def gradient_draws(module, loss_fn, passes, seed):
    """[passes, n_params]: the flattened parameter gradient of ``loss_fn()`` over independent passes."""
    torch.manual_seed(seed)
    draws = []
    for _ in range(passes):
        module.zero_grad(set_to_none=True)
        loss_fn().backward()
        draws.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                                for p in module.parameters()]))
    return torch.stack(draws)


def mean_gradient_z(a, b):
    """Per-entry z-scores of mean(a) - mean(b); entries with no spread in either (exactly equal) are dropped."""
    var = a.var(0) / a.shape[0] + b.var(0) / b.shape[0]
    keep = var > 0
    return (a.mean(0) - b.mean(0))[keep] / var[keep].sqrt()


def assert_unbiased(draws, iwae_draws):
    z = mean_gradient_z(draws, iwae_draws)
    bound = bonferroni_bound(z.numel())
    assert z.abs().max() < bound, f"max |z| {z.abs().max():.2f} >= {bound:.2f} over {z.numel()} entries"


def assert_biased(draws, iwae_draws):
    z = mean_gradient_z(draws, iwae_draws)
    assert z.abs().max() > bonferroni_bound(z.numel())


def binary_batch(examples, dim, copies, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(examples, dim, generator=gen) < 0.4).double()
    return x.repeat(copies, 1).to(device)


def small_paper_model(layers, device, seed=0, backend="torch"):
    torch.manual_seed(seed)
    sizes = {1: dict(hidden=((16,),), latent=(4,)), 2: dict(hidden=((16,), (16,)), latent=(4, 3))}[layers]
    return paper_model(layers, x_dim=12, backend=backend, **sizes).double().to(device)


def paper_draws(layers, estimator, k, passes, seed, copies=200, backend="torch"):
    device = backend_device(backend)
    model = small_paper_model(layers, device, backend=backend)
    x = binary_batch(6, 12, copies, device)
    return gradient_draws(model, lambda: model.loss(x, k, estimator), passes, seed)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("estimator, k", [("dreg", 5), ("iwae-resample", 5), ("stl", 1)])
def test_paper_model_estimator_is_unbiased(layers, estimator, k):
    """Fails for two layers before q(h2|h1)'s path term through h1 was kept (dreg: max |z| 45.6 against a bound of 4.9)."""
    assert_unbiased(paper_draws(layers, estimator, k, 150, seed=1), paper_draws(layers, "iwae", k, 150, seed=2))


def test_paper_model_check_can_fail():
    """STL is biased at k > 1 (Tucker et al. 2018): the same comparison must flag it."""
    assert_biased(paper_draws(2, "stl", 5, 150, seed=1), paper_draws(2, "iwae", 5, 150, seed=2))


@pytest.mark.parametrize("estimator", ["iwae", "dreg", "stl", "iwae-resample"])
def test_paper_model_triton_gradients_equal_torch_on_shared_noise(estimator):
    """The statistical tests above run on the torch backend; the kernels give the same gradient draw for the same
    noise (two layers, float64), so the result carries over to them."""
    device = backend_device("triton")
    gen = torch.Generator().manual_seed(5)
    x = binary_batch(5, 12, 1, device)
    noise = [torch.randn(4, 5, size, generator=gen, dtype=torch.float64).to(device) for size in (4, 3)]
    grads = {}
    for backend in ("torch", "triton"):
        model = small_paper_model(2, device, backend=backend)
        torch.manual_seed(0)  # iwae-resample draws its index from the global RNG
        model.loss(x, 4, estimator, noise=noise).backward()
        grads[backend] = [p.grad for p in model.parameters()]
    for name, (a, b) in zip(dict(model.named_parameters()), zip(grads["torch"], grads["triton"])):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("layers", [1, 2])
def test_encoder_gradient_variance_at_k50(layers):
    """DReG lowers the encoders' gradient variance below IWAE's (measured here: 0.17x with one layer, 0.42x with
    two); the resampling estimator raises it (11x, 5.9x): one backward pass costs precision."""
    model = small_paper_model(layers, torch.device("cpu"))
    encoder = torch.tensor([name.startswith("encoders.") for name, p in model.named_parameters()
                            for _ in range(p.numel())])
    x = binary_batch(6, 12, 1, torch.device("cpu"))
    variance = {}
    for estimator in ("iwae", "dreg", "iwae-resample"):
        draws = gradient_draws(model, lambda: model.loss(x, 50, estimator), 300, seed=3)
        variance[estimator] = draws[:, encoder].var(0).sum().item()
    assert variance["dreg"] < 0.6 * variance["iwae"], variance
    assert variance["iwae-resample"] > 3 * variance["iwae"], variance


class LinearGaussianEncoder(nn.Module):
    """A linear encoder and decoder for the one-layer ``iwae_loss`` checks."""

    def __init__(self, x_dim=12, latent=4):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(x_dim, 2 * latent).double()
        self.decoder = nn.Sequential(nn.Linear(latent, 16), nn.Tanh(), nn.Linear(16, x_dim)).double()

    def loss(self, x, k, estimator, **options):
        mu, logvar = self.encoder(x).chunk(2, -1)
        return ik.iwae_loss(x, mu, logvar, self.decoder, k=k, estimator=estimator, backend="torch", **options)


@pytest.mark.parametrize("estimator, k", [("dreg", 5), ("iwae-resample", 5), ("stl", 1)])
def test_iwae_loss_estimator_is_unbiased(estimator, k):
    model = LinearGaussianEncoder()
    x = binary_batch(6, 12, 200, torch.device("cpu"))
    draws = gradient_draws(model, lambda: model.loss(x, k, estimator), 150, seed=1)
    assert_unbiased(draws, gradient_draws(model, lambda: model.loss(x, k, "iwae"), 150, seed=2))


@pytest.mark.parametrize("estimator", ["stl", "dreg", "iwae-resample"])
def test_kl_annealing_refuses_estimators_that_assume_the_plain_bound(estimator):
    model = LinearGaussianEncoder()
    x = binary_batch(2, 12, 1, torch.device("cpu"))
    with pytest.raises(ValueError, match="beta"):
        model.loss(x, 5, estimator, beta=0.3)
    with pytest.raises(ValueError, match="beta"):
        model.loss(x, 5, estimator, beta=torch.tensor(0.3, dtype=torch.float64))
    model.loss(x, 5, estimator, beta=1.0)  # the end of a warm-up is the plain bound


def test_gaussian_sample_refuses_a_latent_scale_with_path_estimators():
    mu = torch.zeros(3, 2, dtype=torch.float64)
    for estimator in ("stl", "dreg"):
        with pytest.raises(ValueError, match="latent_scale"):
            ik.gaussian_sample(mu, mu, 4, estimator=estimator, latent_scale=0.5, backend="torch")


def test_conv_iwae_estimator_is_unbiased():
    torch.manual_seed(0)
    model = ConvIWAE(latent=3, channels=2, backend="torch").double()
    x = binary_batch(3, 784, 20, torch.device("cpu"))
    draws = gradient_draws(model, lambda: model.loss(x, k=5, estimator="dreg"), 60, seed=1)
    assert_unbiased(draws, gradient_draws(model, lambda: model.loss(x, k=5, estimator="iwae"), 60, seed=2))


class FlowPosterior(nn.Module):
    def __init__(self, kind):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(12, 2 * 3).double()
        self.flow = make_flow(kind, 3, 2).double()
        self.decoder = nn.Linear(3, 12).double()

    def loss(self, x, k, estimator):
        mu, logvar = self.encoder(x).chunk(2, -1)
        z, latent = flow_latent(mu, logvar, k, self.flow, estimator=estimator, backend="torch")
        log_w = ik.bernoulli_log_likelihood(self.decoder(z), x, backend="torch") + latent
        return -ik.iwae_bound(log_w, backend="torch").mean()


@pytest.mark.parametrize("kind", ["planar", "radial"])
def test_flow_stl_is_unbiased_at_k1_and_dreg_is_refused(kind):
    model = FlowPosterior(kind)
    x = binary_batch(6, 12, 200, torch.device("cpu"))
    draws = gradient_draws(model, lambda: model.loss(x, 1, "stl"), 150, seed=1)
    assert_unbiased(draws, gradient_draws(model, lambda: model.loss(x, 1, "iwae"), 150, seed=2))
    with pytest.raises(ValueError, match="dreg"):
        model.loss(x, 5, "dreg")


def test_bonferroni_bound_is_the_normal_quantile():
    assert math.isclose(bonferroni_bound(1), 3.2905, abs_tol=1e-3)
