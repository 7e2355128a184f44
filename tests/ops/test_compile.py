"""torch.compile(fullgraph=True) traces the loss with no graph break on every backend: the compiled backends'
kernels are torch.library custom ops (the Triton ones run here through the interpreter)."""

import pytest
import torch

import iwae_kernels as ik
from iwae_kernels.models import paper_model

from helpers import COMPILED_BACKENDS, backend_device
from helpers import assert_close


@pytest.mark.parametrize("estimator", ["iwae", "dreg"])
@pytest.mark.parametrize("backend", ["torch", *COMPILED_BACKENDS])
def test_compiled_loss_matches_eager_with_the_same_noise(backend, estimator):
    device = backend_device(backend)
    torch.manual_seed(0)
    x = torch.rand(6, 9, device=device).round()
    mu = torch.randn(6, 4, device=device, requires_grad=True)
    logvar = torch.randn(6, 4, device=device, requires_grad=True)
    weight, bias = torch.randn(9, 4, device=device, requires_grad=True), torch.randn(9, device=device, requires_grad=True)
    eps = torch.randn(5, 6, 4, device=device)

    def loss(x, mu, logvar, weight, eps):
        z, latent = ik.gaussian_sample(mu, logvar, 5, eps=eps, estimator=estimator, backend=backend)
        log_w = ik.bernoulli_decoder_log_likelihood(torch.tanh(z), weight, bias, x, backend=backend) + latent
        return -ik.iwae_bound(log_w, backend=backend).mean()

    compiled = torch.compile(loss, fullgraph=True)
    got = compiled(x, mu, logvar, weight, eps)
    want = loss(x, mu, logvar, weight, eps)
    assert_close(got, want)
    params = [mu, logvar, weight, bias]
    for g, w in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
        assert_close(g, w)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("backend", ["torch", *COMPILED_BACKENDS])
def test_paper_model_loss_compiles_whole(backend, layers):
    """The model's loss compiles as one graph; compiled code draws noise from Inductor's RNG, so its value
    differs from eager's draw: check it is finite and trains."""
    torch.manual_seed(0)
    sizes = {1: dict(hidden=((8,),), latent=(3,)), 2: dict(hidden=((8,), (6,)), latent=(4, 2))}[layers]
    device = backend_device(backend)
    model = paper_model(layers, x_dim=10, backend=backend, **sizes).to(device)
    compiled = torch.compile(lambda x: model.loss(x, k=4), fullgraph=True)
    loss = compiled(torch.rand(5, 10, device=device).round())
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)


def test_two_layer_dreg_compiles_whole_and_equals_eager_on_shared_noise():
    """The two-layer DReG path (second encoder with detached weights, the conditional density term) traces."""
    torch.manual_seed(0)
    model = paper_model(2, x_dim=10, backend="torch", hidden=((8,), (6,)), latent=(4, 2))
    x = torch.rand(3, 10).round()
    noise = [torch.randn(5, 3, 4), torch.randn(5, 3, 2)]
    compiled = torch.compile(lambda x: model.loss(x, 5, "dreg", noise=noise), fullgraph=True)
    got = torch.autograd.grad(compiled(x), list(model.parameters()))
    want = torch.autograd.grad(model.loss(x, 5, "dreg", noise=noise), list(model.parameters()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", *COMPILED_BACKENDS])
def test_autocast_bf16_accumulates_in_float32(backend):
    device = backend_device(backend)
    torch.manual_seed(0)
    model = paper_model(1, x_dim=30, hidden=((16,),), latent=(5,), backend=backend).to(device)
    x = torch.rand(8, 30, device=device).round()
    torch.manual_seed(1)
    full = model.loss(x, k=6)
    torch.manual_seed(1)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        mixed = model.loss(x, k=6)
    grads = torch.autograd.grad(mixed, list(model.parameters()))
    assert mixed.dtype == torch.float32, "the bound is accumulated and returned in float32"
    assert abs(mixed.item() - full.item()) < 0.02 * abs(full.item())
    assert all(torch.isfinite(g).all() and g.dtype == torch.float32 for g in grads)


def test_torch_func_says_it_is_not_supported():
    log_w = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="setup_context"):
        torch.func.grad(lambda t: ik.iwae_bound(t, backend="torch").sum())(log_w)
