"""Normalizing-flow posteriors: log-determinants, invertibility, and the flow IWAE's log-weights."""


import pytest
import torch
from torch.distributions import Normal

from iwae_kernels.models.flows import FlowIWAE, PlanarFlow, RadialFlow, make_flow

from helpers import backend_device
from helpers import assert_close, assert_log_weights_match, train_and_check_loss_drops
from naive import naive_bernoulli, naive_latent


@pytest.mark.parametrize("layer", [PlanarFlow, RadialFlow])
def test_log_det_matches_the_autograd_jacobian(layer):
    torch.manual_seed(0)
    flow = layer(3).double()
    with torch.no_grad():  # parameters far from the identity, so the determinant is not ~1
        for parameter in flow.parameters():
            parameter.copy_(torch.randn_like(parameter))
    for z in torch.randn(6, 3, dtype=torch.float64):
        jacobian = torch.autograd.functional.jacobian(lambda v: flow(v)[0], z)
        _, log_det = flow(z)
        assert_close(log_det, torch.linalg.slogdet(jacobian).logabsdet)


def test_planar_flow_stays_invertible():
    """u_hat.w >= -1 for any u, w (else f is not invertible); u = -10 w is the case the correction exists for."""
    torch.manual_seed(1)
    for scale in (-10.0, -1.0, 0.5, 3.0):
        flow = PlanarFlow(4).double()
        with torch.no_grad():
            flow.w.copy_(torch.randn(4, dtype=torch.float64))
            flow.u.copy_(scale * flow.w + 0.1 * torch.randn(4, dtype=torch.float64))
        assert (flow.w @ flow.u_hat()).item() >= -1 - 1e-12
        # invertible along w: the scalar map a -> a + (w.u_hat) tanh(a + b) is increasing
        a = torch.linspace(-5, 5, 201, dtype=torch.float64)
        along = a + (flow.w @ flow.u_hat()) * torch.tanh(a + flow.b)
        assert (along.diff() >= 0).all()


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("kind", ["planar", "radial"])
def test_flow_iwae_log_weights_match_naive(backend, kind):
    """log p(x|z_K) + log p(z_K) - log q0(z0) + sum log|det J|, q0 from torch.distributions, in float64."""
    device = backend_device(backend)
    torch.manual_seed(2)
    model = FlowIWAE(x_dim=7, hidden=5, latent=3, flow=kind, length=3, backend=backend).double()
    with torch.no_grad():
        for parameter in model.flow.parameters():
            parameter.copy_(torch.randn_like(parameter))
    x = torch.rand(4, 7, dtype=torch.float64).round()
    eps = torch.randn(6, 4, 3, dtype=torch.float64)

    mu, logvar = model.encoder(x).chunk(2, -1)
    z0, minus_log_q0 = naive_latent(mu, logvar, eps, include_prior=False)
    z, log_det = model.flow(z0)
    expected = naive_bernoulli(model.decoder(z), x) + Normal(0.0, 1.0).log_prob(z).sum(-1) + minus_log_q0 + log_det
    assert_log_weights_match(model, x, 6, eps, expected, backend, device)


def test_flow_iwae_trains_and_evaluates():
    torch.manual_seed(3)
    model = FlowIWAE(x_dim=8, hidden=16, latent=2, flow="planar", length=2, backend="torch")
    x = (torch.rand(64, 8) < torch.linspace(0.1, 0.9, 8)).float()
    train_and_check_loss_drops(model, x, k=5, steps=100, drop=0.5)
    assert torch.isfinite(model.log_likelihood(x[:4], k=40, chunk=16)).all()
    assert len(make_flow("radial", 3, 4)) == 4
