"""iwae_kernels.pyro.ImportanceWeightedELBO, the Pyro front door: a Gaussian-encoder, Bernoulli-decoder VAE
written as a Pyro model and guide (pyro.module) against the same networks through iwae_loss on shared noise, against
Pyro's RenyiELBO(alpha=0) at batch size 1, and its refusals. float64 throughout."""

import math
import subprocess
import sys

import pytest
import torch

import iwae_kernels as ik
from test_estimators import LinearGaussianEncoder, assert_unbiased, binary_batch

pyro = pytest.importorskip("pyro", reason="pyro-ppl is not installed (the test extra: the Pyro front door)")
import pyro.distributions as dist  # noqa: E402  (after the skip: pyro may be missing)
from pyro import poutine  # noqa: E402

from iwae_kernels.pyro import ImportanceWeightedELBO  # noqa: E402

K = 5


class PyroVAE(LinearGaussianEncoder):
    """LinearGaussianEncoder's networks as a Pyro model and guide (prior N(0, I), q = N(mu, exp(logvar)), Bernoulli
    decoder logits); the guide keeps its last sample z [k, B, D] so that iwae_loss can run on the same noise."""

    def model(self, x):
        pyro.module("vae", self)
        latent = self.encoder.out_features // 2
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], latent), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("vae", self)
        mu, logvar = self.encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            self.last_z = pyro.sample("z", dist.Normal(mu, torch.exp(0.5 * logvar)).to_event(1))

    def last_eps(self, x):
        """The standard-normal noise [k, B, D] of the guide's last sample."""
        with torch.no_grad():
            mu, logvar = self.encoder(x).chunk(2, -1)
            return (self.last_z - mu) * torch.exp(-0.5 * logvar)

    def flat_grad(self):
        return torch.cat([p.grad.flatten() for p in self.parameters()])


@pytest.fixture
def vae():
    pyro.clear_param_store()
    return PyroVAE()


def loss_and_grad(vae, elbo, x):
    vae.zero_grad(set_to_none=True)
    loss = elbo.loss_and_grads(vae.model, vae.guide, x)
    return loss, vae.flat_grad()


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("estimator, options", [("iwae", {}), ("renyi", {"renyi_alpha": 0.0})])
def test_equals_renyi_elbo_when_every_site_is_in_the_data_plate(vae, batch, estimator, options):
    """RenyiELBO(alpha=0, vectorized) sums the log-probabilities only over plates that not every site shares
    (get_dependent_plate_dims): with every site in the data plate its logsumexp is per example too, so the loss
    and gradients are ours on the same samples (both draw them under one seed in the same particle plate)."""
    x = binary_batch(batch, 12, 1, torch.device("cpu"))
    ours = ImportanceWeightedELBO(num_particles=K, estimator=estimator, max_plate_nesting=1, **options)
    renyi = pyro.infer.RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True, max_plate_nesting=1)
    for seed in range(3):
        torch.manual_seed(seed)
        loss, grad = loss_and_grad(vae, ours, x)
        torch.manual_seed(seed)
        pyro_loss, pyro_grad = loss_and_grad(vae, renyi, x)
        assert abs(loss - pyro_loss) <= 1e-10 * abs(pyro_loss)
        torch.testing.assert_close(grad, pyro_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("estimator, options", [
    ("iwae", {}), ("vae", {}), ("stl", {}), ("dreg", {}), ("miwae", {"groups": 2}), ("ciwae", {"ciwae_beta": 0.3}),
    ("renyi", {"renyi_alpha": 0.5}), ("rws", {}), ("vimco", {})])
def test_per_example_loss_equals_iwae_loss(vae, estimator, options):
    """For B > 1, the loss (a sum over the batch) and every gradient equal iwae_loss's on the guide's own noise."""
    k = 6
    x = binary_batch(4, 12, 1, torch.device("cpu"))
    elbo = ImportanceWeightedELBO(num_particles=k, estimator=estimator, **options)
    torch.manual_seed(0)
    loss, grad = loss_and_grad(vae, elbo, x)
    vae.zero_grad(set_to_none=True)
    reference = vae.loss(x, k, estimator, eps=vae.last_eps(x), reduction="sum", **options)
    reference.backward()
    assert abs(loss - reference.item()) <= 1e-12 * abs(loss)
    torch.testing.assert_close(grad, vae.flat_grad(), rtol=1e-10, atol=1e-12)


def test_per_example_bound_differs_from_a_batch_summed_one(vae):
    """The same VAE written without a data plate (the batch as an event dim) gets from RenyiELBO one logsumexp of
    log-weights summed over the batch, -(logsumexp_i sum_b log w[i, b] - log k): on the same samples, a looser
    bound than our -sum_b (logsumexp_i log w[i, b] - log k) at B > 1; ours refuses that model."""
    x = binary_batch(4, 12, 1, torch.device("cpu"))

    def model_without_plate(x):
        pyro.module("vae", vae)
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 4), 1.0).to_event(2))
        pyro.sample("x", dist.Bernoulli(logits=vae.decoder(z)).to_event(2), obs=x)

    def guide_without_plate(x):
        pyro.module("vae", vae)
        mu, logvar = vae.encoder(x).chunk(2, -1)
        pyro.sample("z", dist.Normal(mu, torch.exp(0.5 * logvar)).to_event(2))

    elbo = ImportanceWeightedELBO(num_particles=K, max_plate_nesting=1)
    renyi = pyro.infer.RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True, max_plate_nesting=1)
    torch.manual_seed(0)
    with torch.no_grad():
        log_w, _, _ = elbo.log_weights(vae.model, vae.guide, x)
    torch.manual_seed(0)
    batch_summed = renyi.loss(model_without_plate, guide_without_plate, x)
    assert batch_summed == pytest.approx(-(torch.logsumexp(log_w.sum(1), 0) - math.log(K)).item(), rel=1e-12)
    assert batch_summed > -ik.iwae_bound(log_w).sum().item() + 1.0
    with pytest.raises(ValueError, match="outside the data plate"):
        elbo.loss(model_without_plate, guide_without_plate, x)


@pytest.mark.parametrize("estimator, passes", [("dreg", 100), ("vimco", 150)])
def test_estimator_is_unbiased(vae, estimator, passes):
    """dreg's and vimco's (the guide's score-function estimator) mean gradient, encoder's and decoder's, over
    independent draws equals iwae's (z-scores, Bonferroni)."""
    x = binary_batch(3, 12, 20, torch.device("cpu"))

    def draws(estimator, seed):
        elbo = ImportanceWeightedELBO(num_particles=K, estimator=estimator, max_plate_nesting=1)
        torch.manual_seed(seed)
        return torch.stack([loss_and_grad(vae, elbo, x)[1] for _ in range(passes)])

    assert_unbiased(draws(estimator, 1), draws("iwae", 2))


class PyroSBN(torch.nn.Module):
    """One layer of binary latents: p(h) = Bernoulli(sigmoid(b)), p(x|h) Bernoulli(logits = decoder(h)), and a
    guide q(h|x) = Bernoulli(sigmoid(encoder(x))) that keeps its last sample [k, B, D]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder, self.decoder = torch.nn.Linear(12, 4).double(), torch.nn.Linear(4, 12).double()
        self.prior_logits = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))

    def model(self, x):
        pyro.module("sbn", self)
        with pyro.plate("data", x.shape[0]):
            h = pyro.sample("h", dist.Bernoulli(logits=self.prior_logits.expand(x.shape[0], 4)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(h)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("sbn", self)
        with pyro.plate("data", x.shape[0]):
            self.last_h = pyro.sample("h", dist.Bernoulli(logits=self.encoder(x)).to_event(1))


@pytest.mark.parametrize("estimator", ["rws", "vimco"])
def test_discrete_latents_train_through_the_fixed_sample_estimators(estimator):
    """A guide of Bernoulli latents (no rsample): the loss and every gradient equal estimator_bound's on the guide's
    own samples, with log p and log q written out in torch.distributions."""
    pyro.clear_param_store()
    sbn = PyroSBN()
    x = binary_batch(3, 12, 1, torch.device("cpu"))
    torch.manual_seed(0)
    sbn.zero_grad(set_to_none=True)
    loss = ImportanceWeightedELBO(num_particles=K, estimator=estimator).loss_and_grads(sbn.model, sbn.guide, x)
    got = [p.grad.clone() for p in sbn.parameters()]
    h = sbn.last_h
    assert not h.requires_grad and h.shape == (K, 3, 4)
    log_q = torch.distributions.Bernoulli(logits=sbn.encoder(x)).log_prob(h).sum(-1)
    log_p = (torch.distributions.Bernoulli(logits=sbn.prior_logits).log_prob(h).sum(-1)
             + torch.distributions.Bernoulli(logits=sbn.decoder(h)).log_prob(x).sum(-1))
    reference = -ik.estimator_bound(log_p - log_q.detach(), estimator, log_q=log_q, backend="torch").sum()
    want = torch.autograd.grad(reference, list(sbn.parameters()))
    assert loss == pytest.approx(reference.item(), rel=1e-12)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_subsampled_data_plate_scales_the_loss():
    """With pyro.plate("data", N, subsample=...), the loss is N / B times the subsample's (Pyro's convention)."""
    x = binary_batch(4, 12, 1, torch.device("cpu"))

    def model(x, size):
        with pyro.plate("data", size, subsample=torch.arange(x.shape[0])):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=z.sum(-1, keepdim=True)).to_event(1), obs=x)

    def guide(x, size):
        with pyro.plate("data", size, subsample=torch.arange(x.shape[0])):
            pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))

    elbo = ImportanceWeightedELBO(num_particles=K, max_plate_nesting=1)
    torch.manual_seed(0)
    full = elbo.loss(model, guide, x, 4)
    torch.manual_seed(0)
    assert elbo.loss(model, guide, x, 40) == pytest.approx(10 * full, rel=1e-12)


def test_svi_steps_lower_the_loss(vae):
    x = binary_batch(8, 12, 1, torch.device("cpu"))
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.05}),
                         loss=ImportanceWeightedELBO(num_particles=K, estimator="dreg"))
    torch.manual_seed(0)
    losses = [svi.step(x) for _ in range(25)]
    assert sum(losses[-5:]) < sum(losses[:5])


def normal_site(name, x, latent=2):
    return pyro.sample(name, dist.Normal(x.new_zeros(x.shape[0], latent), 1.0).to_event(1))


def test_refuses_an_enumerated_site():
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(logits=x.new_zeros(x.shape[0], 3)), infer={"enumerate": "parallel"})

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(logits=x.new_zeros(x.shape[0], 3)))

    with pytest.raises(NotImplementedError, match="'c' is enumerated"):
        ImportanceWeightedELBO(num_particles=K, max_plate_nesting=1).loss(model, guide, torch.zeros(3, 2))


def latent_program(plate, global_site):
    """A model that is also its own guide: a latent z inside ``plate`` and, with ``global_site``, a latent "shift"
    outside every plate."""
    def program(x):
        if global_site:
            pyro.sample("shift", dist.Normal(0.0, 1.0))
        with pyro.plate(plate, x.shape[0]):
            normal_site("z", x)

    return program


@pytest.mark.parametrize("plate, global_site, complaint", [
    ("batch", False, "'z' lies outside the data plate 'data'"),  # the model has no plate named "data"
    ("data", True, "'shift' lies outside the data plate")])      # a global latent
def test_refuses_a_site_outside_the_data_plate(plate, global_site, complaint):
    program = latent_program(plate, global_site)
    with pytest.raises(ValueError, match=complaint):
        ImportanceWeightedELBO(num_particles=K, max_plate_nesting=1).loss(program, program, torch.zeros(3, 2))


def test_dreg_refuses_a_non_reparameterizable_guide_site():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("b", dist.Bernoulli(0.5 * x.new_ones(x.shape[0])))

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("b", dist.Bernoulli(0.3 * x.new_ones(x.shape[0])))

    with pytest.raises(NotImplementedError, match="'b': Bernoulli is not reparameterizable .*rws and vimco take"):
        ImportanceWeightedELBO(num_particles=K, estimator="dreg", max_plate_nesting=1).loss(model, guide,
                                                                                            torch.zeros(3, 2))


def test_dreg_refuses_a_guide_whose_parameters_depend_on_an_earlier_sample():
    loc = torch.zeros(2, requires_grad=True)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            normal_site("z1", x)
            normal_site("z2", x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(loc.expand(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("z2", dist.Normal(z1, 1.0).to_event(1))

    elbo = ImportanceWeightedELBO(num_particles=K, estimator="dreg", max_plate_nesting=1)
    with pytest.raises(NotImplementedError, match="'z2': its parameters depend on an earlier guide sample"):
        elbo.loss_and_grads(model, guide, torch.zeros(3, 2))


@pytest.mark.parametrize("estimator", ["piwae", "rws-dreg", "iwae-resample"])
def test_refuses_estimators_it_does_not_offer(estimator):
    with pytest.raises(NotImplementedError, match=f"estimator: '{estimator}' is not offered"):
        ImportanceWeightedELBO(num_particles=K, estimator=estimator)


BLOCK_PYRO = """
import sys
class BlockPyro:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pyro":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, BlockPyro())
import iwae_kernels
assert "pyro" not in sys.modules
try:
    import iwae_kernels.pyro
except ImportError as error:
    print(error)
"""


def test_pyro_is_optional():
    """import iwae_kernels never imports pyro; without it, import iwae_kernels.pyro says how to install it."""
    result = subprocess.run([sys.executable, "-c", BLOCK_PYRO], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "iwae_kernels.pyro needs Pyro: pip install pyro-ppl"


def test_dreg_loss_is_a_float(vae):
    """loss() runs under no_grad (no graph, no dreg hooks) and returns a float, as Pyro's ELBOs do."""
    x = binary_batch(2, 12, 1, torch.device("cpu"))
    assert isinstance(ImportanceWeightedELBO(num_particles=K, estimator="dreg").loss(vae.model, vae.guide, x), float)


def test_poutine_scale_is_refused(vae):
    x = binary_batch(2, 12, 1, torch.device("cpu"))
    with pytest.raises(ValueError, match="scaled by 0.5"):
        ImportanceWeightedELBO(num_particles=K).loss(poutine.scale(vae.model, 0.5), vae.guide, x)
