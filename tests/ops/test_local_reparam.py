"""Local reparameterization: the fused kernel against the reference, the distribution of the pre-activations,
and the lower gradient variance that is the point of the trick (Kingma, Salimans & Welling 2015)."""

import pytest
import torch
import torch.nn.functional as F

import iwae_kernels as ik
from iwae_kernels.models.layers import KL_K1, LocalReparamLinear

from helpers import COMPILED_BACKENDS, backend_device
from helpers import assert_close
from conftest import shape_ids


def make(rows, inputs, outputs, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(rows, inputs, generator=gen, dtype=torch.float64)
    mu = torch.randn(outputs, inputs, generator=gen, dtype=torch.float64) / inputs**0.5
    var = torch.rand(outputs, inputs, generator=gen, dtype=torch.float64) * 0.1
    bias = torch.randn(outputs, generator=gen, dtype=torch.float64)
    noise = torch.randn(rows, outputs, generator=gen, dtype=torch.float64)
    return [t.to(dtype) for t in (a, mu, var, bias, noise)]


@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 3, 7), (37, 70, 33), (64, 17, 40)],
                         ids=shape_ids("M", "K", "N"))  # a [M, K], mu [N, K]: M5-K3-N7
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matches_reference(kernel, dtype, shape):
    backend, device = kernel
    leaves = make(*shape, dtype)
    expected_leaves = [t.double().requires_grad_() for t in leaves[:4]]
    expected = ik.local_reparam_linear(*expected_leaves, noise=leaves[4].double(), backend="torch")
    grad_out = torch.randn(expected.shape, dtype=torch.float64)
    want = torch.autograd.grad(expected, expected_leaves, grad_out)
    got_leaves = [t.to(device).requires_grad_() for t in leaves[:4]]
    got = ik.local_reparam_linear(*got_leaves, noise=leaves[4].to(device), backend=backend)
    assert_close(got, expected, dtype)
    for g, w in zip(torch.autograd.grad(got, got_leaves, grad_out.to(device, dtype)), want):
        assert_close(g, w, dtype)


@pytest.mark.parametrize("backend", ["torch", *COMPILED_BACKENDS])
def test_preactivations_have_the_explicit_weight_distribution(backend):
    """b for one input row, over many draws, has the mean and variance of a W ~ N(mu, var) sample's x W^T."""
    device = backend_device(backend)
    a, mu, var, bias, _ = make(1, 6, 3, torch.float32, seed=3)
    draws = 20000
    b = ik.local_reparam_linear(a.expand(draws, 6).to(device), mu.to(device), var.to(device), bias.to(device),
                                backend=backend).double().cpu()
    weights = mu + var.sqrt() * torch.randn(draws, 3, 6, generator=torch.Generator().manual_seed(4))
    explicit = (weights @ a[0]) + bias                                       # [draws, 3], sampling W itself
    exact_mean, exact_var = (a @ mu.t() + bias)[0].double(), ((a * a) @ var.t())[0].double()
    for sample in (b, explicit.double()):
        stderr = (exact_var / draws).sqrt()
        assert ((sample.mean(0) - exact_mean).abs() < 5 * stderr).all()
        assert ((sample.var(0) / exact_var - 1).abs() < 5 * (2 / draws) ** 0.5).all()


def test_gradient_variance_is_lower_than_one_weight_sample_per_minibatch():
    """The paper's point: independent noise per example makes the minibatch gradient's variance fall as 1/M."""
    torch.manual_seed(5)
    rows, inputs, outputs = 64, 10, 4
    a, target = torch.randn(rows, inputs), torch.randn(rows, outputs)
    mu, var = torch.randn(outputs, inputs).requires_grad_(), torch.full((outputs, inputs), 0.5)

    def grad(local):
        if local:
            b = ik.local_reparam_linear(a, mu, var, backend="torch")
        else:  # one weight sample shared by the minibatch
            b = a @ (mu + var.sqrt() * torch.randn(outputs, inputs)).t()
        return torch.autograd.grad(F.mse_loss(b, target), mu)[0]

    variance = {local: torch.stack([grad(local) for _ in range(400)]).var(0).mean().item() for local in (True, False)}
    assert variance[True] < 0.5 * variance[False], variance


def test_layer_kl_and_eval_mode():
    layer = LocalReparamLinear(5, 3, backend="torch")
    x = torch.randn(4, 2, 5)
    assert layer(x).shape == (4, 2, 3)
    layer.eval()
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight_mu, layer.bias))
    # KL falls as the noise grows (log alpha up) and tends to 0 for alpha -> inf, to +k1 + ... for alpha -> 0.
    kls = []
    for log_sigma2 in (-8.0, -2.0, 2.0, 8.0):
        with torch.no_grad():
            layer.weight_log_sigma2.fill_(log_sigma2)
        kls.append(layer.kl().item())
    assert kls == sorted(kls, reverse=True) and kls[-1] >= -1e-3 and kls[0] > 15 * KL_K1


def test_bad_input_names_the_argument():
    a, mu = torch.zeros(2, 3), torch.zeros(4, 3)
    with pytest.raises(ValueError, match="input: expected last dim K=3"):
        ik.local_reparam_linear(torch.zeros(2, 5), mu, mu)
    with pytest.raises(ValueError, match="noise: expected shape"):
        ik.local_reparam_linear(a, mu, mu, noise=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="bias: expected shape"):
        ik.local_reparam_linear(a, mu, mu, torch.zeros(3))
