"""torch.compile(fullgraph=True) traces the loss with no graph break (torch backend on CPU; the compiled
backends' ops are not yet registered with torch.library, see README Status)."""

import pytest
import torch

import iwae_kernels as ik
from iwae_kernels.models import paper_model

from helpers import assert_close


@pytest.mark.parametrize("estimator", ["iwae", "dreg"])
def test_compiled_loss_matches_eager_with_the_same_noise(estimator):
    torch.manual_seed(0)
    x = torch.rand(6, 9).round()
    mu, logvar = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4, requires_grad=True)
    weight = torch.randn(4, 9, requires_grad=True)
    eps = torch.randn(5, 6, 4)

    def loss(x, mu, logvar, weight, eps):
        z, latent = ik.gaussian_sample(mu, logvar, 5, eps=eps, estimator=estimator, backend="torch")
        log_w = ik.bernoulli_log_likelihood(z @ weight, x, backend="torch") + latent
        return -ik.iwae_bound(log_w, backend="torch").mean()

    compiled = torch.compile(loss, fullgraph=True)
    got = compiled(x, mu, logvar, weight, eps)
    want = loss(x, mu, logvar, weight, eps)
    assert_close(got, want)
    for g, w in zip(torch.autograd.grad(got, [mu, logvar, weight]), torch.autograd.grad(want, [mu, logvar, weight])):
        assert_close(g, w)


@pytest.mark.parametrize("layers", [1, 2])
def test_paper_model_loss_compiles_whole(layers):
    """The model's loss compiles as one graph; compiled code draws noise from Inductor's RNG, so its value
    differs from eager's draw: check it is finite and trains."""
    torch.manual_seed(0)
    sizes = {1: dict(hidden=((8,),), latent=(3,)), 2: dict(hidden=((8,), (6,)), latent=(4, 2))}[layers]
    model = paper_model(layers, x_dim=10, backend="torch", **sizes)
    compiled = torch.compile(lambda x: model.loss(x, k=4), fullgraph=True)
    loss = compiled(torch.rand(5, 10).round())
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
