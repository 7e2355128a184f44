"""The IWAE family's estimators against a peer's: Pyro's ReweightedWakeSleep (pyro/infer/rws.py) against
estimator="rws" and "rws-dreg", and Pyro's RenyiELBO (pyro/infer/renyi_elbo.py) against estimator="renyi", on a
one-layer model with prior N(0, I), a Gaussian encoder and a Bernoulli decoder (test_estimators'
LinearGaussianEncoder), float64.

Pyro samples z_i from the guide and detaches it, forms log w_i = log p(x, z_i) - log q(z_i|x) with q detached, and
returns wake-theta = -(logsumexp_i log w_i - log k), which is -L_k, and wake-phi = -sum_i wt_i log q(z_i|x) with
wt detached; its backward sends the first into the decoder and the second into the encoder. It sums each
particle's log-probabilities over the whole batch (Pyro's RWS takes no mini-batches), so every Pyro call here
sees one example. RenyiELBO is compared at batch size 1 too: with vectorized particles Pyro 1.9 sums each
particle's log-probabilities over the plates not every site shares, so a model whose batch is not a plate gets one
logsumexp over the batch (the case of Pyro issue #3104), and at batch size 1 every form is one objective
(tests/models/test_pyro_front_door.py shows both cases at B > 1).
"""

import pytest
import torch

from test_estimators import LinearGaussianEncoder, assert_unbiased, binary_batch, gradient_draws

pyro = pytest.importorskip("pyro", reason="pyro-ppl is not installed (the test extra: the reweighted wake-sleep peer)")
import pyro.distributions as dist  # noqa: E402  (after the skip: pyro may be missing)

K = 5


class PyroLinearGaussian(LinearGaussianEncoder):
    """LinearGaussianEncoder's networks as a Pyro model and guide; the guide keeps its last sample z [k, B, D] so
    that our loss can run on the same noise."""

    def model(self, x):
        latent = self.encoder.out_features // 2
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], latent), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        mu, logvar = self.encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0], dim=-1):
            self.last_z = pyro.sample("z", dist.Normal(mu, torch.exp(0.5 * logvar)).to_event(1))

    def pyro_rws(self, x):
        """Pyro's (wake-theta loss, flat parameter gradient: wake-theta's on the decoder, wake-phi's on the
        encoder) for one draw of K particles on x [1, P]."""
        rws = pyro.infer.ReweightedWakeSleep(num_particles=K, insomnia=1.0, vectorize_particles=True,
                                             max_plate_nesting=1)
        self.zero_grad(set_to_none=True)
        wake_theta, _ = rws.loss_and_grads(self.model, self.guide, x)
        return wake_theta, torch.cat([p.grad.flatten() for p in self.parameters()])

    def pyro_renyi(self, x, alpha):
        """Pyro's (RenyiELBO loss -L_a, flat parameter gradient) for one draw of K particles on x [1, P]."""
        renyi = pyro.infer.RenyiELBO(alpha=alpha, num_particles=K, vectorize_particles=True, max_plate_nesting=1)

        def guide(x):
            pyro.module("networks", self)  # the trace's param sites: RenyiELBO differentiates only when it has some
            self.guide(x)

        self.zero_grad(set_to_none=True)
        loss = renyi.loss_and_grads(self.model, guide, x)
        return loss, torch.cat([p.grad.flatten() for p in self.parameters()])

    def last_eps(self, x):
        """The standard-normal noise [k, B, D] of the guide's last sample."""
        with torch.no_grad():
            mu, logvar = self.encoder(x).chunk(2, -1)
            return (self.last_z - mu) * torch.exp(-0.5 * logvar)


def our_draw(model, x, estimator, eps, **options):
    model.zero_grad(set_to_none=True)
    loss = model.loss(x, K, estimator, eps=eps, **options)
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])


def test_rws_equals_pyro_on_its_samples():
    """One draw, exactly, on Pyro's own samples: the value is Pyro's wake-theta loss (-L_k), the decoder's
    gradient wake-theta's and the encoder's wake-phi's (rws-dreg: the decoder's part; its encoder draw differs)."""
    model = PyroLinearGaussian()
    x = binary_batch(1, 12, 1, torch.device("cpu"))
    decoder = torch.cat([torch.full((p.numel(),), name.startswith("decoder."))
                         for name, p in model.named_parameters()])
    torch.manual_seed(0)
    for _ in range(3):
        wake_theta, pyro_grad = model.pyro_rws(x)
        eps = model.last_eps(x)
        value, grad = our_draw(model, x, "rws", eps)
        assert abs(value - wake_theta) <= 1e-12 * abs(wake_theta)
        torch.testing.assert_close(grad, pyro_grad, rtol=1e-10, atol=1e-12)
        _, dreg_grad = our_draw(model, x, "rws-dreg", eps)
        torch.testing.assert_close(dreg_grad[decoder], pyro_grad[decoder], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("estimator", ["rws", "rws-dreg"])
def test_rws_mean_gradient_equals_pyros(estimator):
    """In expectation: Pyro's mean wake-theta (decoder) and wake-phi (encoder) gradients over independent draws
    equal ours (rws-dreg's encoder part: Tucker et al. 2019's identity), Bonferroni-bounded z-scores. Ours average
    20 copies of the example per draw; the z-score takes each side's own spread."""
    model = PyroLinearGaussian()
    x = binary_batch(1, 12, 1, torch.device("cpu"))
    torch.manual_seed(1)
    pyro_draws = torch.stack([model.pyro_rws(x)[1] for _ in range(300)])
    copies = x.repeat(20, 1)
    assert_unbiased(gradient_draws(model, lambda: model.loss(copies, K, estimator), 100, seed=2), pyro_draws)


@pytest.mark.parametrize("alpha", [-1.0, 0.0, 0.5])
def test_renyi_equals_pyro_on_its_samples(alpha):
    """One draw, exactly, on Pyro's own samples (the guide's z, as noise): the value is RenyiELBO's loss (-L_a) and
    every gradient, decoder's and encoder's, is its surrogate's."""
    pyro.clear_param_store()
    model = PyroLinearGaussian()
    x = binary_batch(1, 12, 1, torch.device("cpu"))
    torch.manual_seed(0)
    for _ in range(3):
        pyro_loss, pyro_grad = model.pyro_renyi(x, alpha)
        value, grad = our_draw(model, x, "renyi", model.last_eps(x), renyi_alpha=alpha)
        assert abs(value - pyro_loss) <= 1e-12 * abs(pyro_loss)
        torch.testing.assert_close(grad, pyro_grad, rtol=1e-10, atol=1e-12)
