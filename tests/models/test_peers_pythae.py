"""MIWAE, PIWAE and CIWAE against pythae 0.1.2's (pythae/models/{miwae,piwae,ciwae}), exactly, on shared noise:
pythae's models are built on the same encoder and decoder modules as test_estimators' LinearGaussianEncoder (one
stochastic layer, prior N(0, I), Bernoulli decoder, float64) and their ``_sample_gauss`` returns our noise.

What pythae returns is a surrogate loss, not the bound: -sum_i wt_i log w_i with wt detached (its gradient is the
bound's), averaged over samples and examples. So the gradients are compared with ours, and our values with the
bound written on pythae's own log-weights (recon_loss + reg_loss = -log w per sample, given one example). pythae
drops log(2 pi) from log p(z) and log q(z|x); the two cancel in log w.

pythae's MIWAE draws noise [B, M, K, D] (M = number_gradient_estimates, K = number_samples) and normalizes the
weights over M, then averages over K: it is K bounds of M samples each, paper MIWAE(K, M), not the MIWAE(M, K) that
its docs and Rainforth et al. 2018 name. Ours with groups=K on the same noise equals it; with groups=M it does not
(both checked below). PIWAE's encoder loss is that MIWAE, its decoder loss L_{M*K}.
"""

import math

import pytest
import torch

from test_estimators import LinearGaussianEncoder, binary_batch

pythae = pytest.importorskip("pythae", reason="pythae is not installed (the test extra: the MIWAE/PIWAE/CIWAE peer)")
from pythae.models import CIWAE, CIWAEConfig, MIWAE, MIWAEConfig, PIWAE, PIWAEConfig  # noqa: E402
from pythae.models.base.base_utils import ModelOutput  # noqa: E402
from pythae.models.nn import BaseDecoder, BaseEncoder  # noqa: E402

X_DIM, LATENT = 12, 4
M, K = 2, 3  # unequal, so that a transposed grouping shows


class Encoder(BaseEncoder):
    def __init__(self, linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        mu, logvar = self.linear(x).chunk(2, -1)
        return ModelOutput(embedding=mu, log_covariance=logvar)


class Decoder(BaseDecoder):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, z):
        return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))


def pythae_model(kind, ours, **config):
    """pythae's ``kind`` (MIWAE, PIWAE or CIWAE) on ``ours``'s encoder and decoder modules (the same parameters),
    reparameterized with the noise in its attribute ``eps``."""
    model_class, config_class = {"miwae": (MIWAE, MIWAEConfig), "piwae": (PIWAE, PIWAEConfig),
                                 "ciwae": (CIWAE, CIWAEConfig)}[kind]

    class SharedNoise(model_class):
        def _sample_gauss(self, mu, std):
            return mu + self.eps * std, self.eps

    settings = config_class(input_dim=(X_DIM,), latent_dim=LATENT, reconstruction_loss="bce", **config)
    return SharedNoise(settings, encoder=Encoder(ours.encoder), decoder=Decoder(ours.decoder))


def gradient(loss, parameters):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, parameters, retain_graph=True)])


def pythae_log_weights(output):
    """log w per sample from pythae's output for one example: -(recon_loss + reg_loss), [M, K] or [K]."""
    return -(output.recon_loss + output.reg_loss).detach()


def grouped_noise(batch):
    """pythae's MIWAE/PIWAE noise [B, M, K, D] and the same samples in ours [K * M, B, D], group g = pythae's k."""
    eps = torch.randn(batch, M, K, LATENT, dtype=torch.float64)
    return eps, eps.permute(2, 1, 0, 3).reshape(K * M, batch, LATENT)


@pytest.mark.parametrize("batch", [1, 3])
def test_miwae_equals_pythae_with_its_groups_transposed(batch):
    ours = LinearGaussianEncoder(X_DIM, LATENT)
    theirs = pythae_model("miwae", ours, number_gradient_estimates=M, number_samples=K)
    x = binary_batch(batch, X_DIM, 1, torch.device("cpu"))
    parameters = list(ours.parameters())
    torch.manual_seed(batch)
    theirs.eps, eps = grouped_noise(batch)
    output = theirs({"data": x})
    loss = ours.loss(x, M * K, "miwae", groups=K, eps=eps)
    torch.testing.assert_close(gradient(loss, parameters), gradient(output.loss, parameters), rtol=1e-10,
                               atol=1e-12)
    if batch == 1:  # pythae's per-sample terms are batch means
        log_w = pythae_log_weights(output)  # [M, K]: K groups of M
        want = (torch.logsumexp(log_w, 0) - math.log(M)).mean()
        assert abs(-loss.item() - want.item()) <= 1e-12 * abs(want.item())
    # The grouping pythae's docs name, M groups of K on the same samples, is another estimator.
    literal = eps.reshape(K, M, batch, LATENT).transpose(0, 1).reshape(M * K, batch, LATENT)
    named = ours.loss(x, M * K, "miwae", groups=M, eps=literal)
    assert not torch.allclose(gradient(named, parameters), gradient(output.loss, parameters), rtol=1e-6)


def test_piwae_equals_pythae_encoder_and_decoder_losses():
    """pythae's PIWAE trains the encoder on encoder_loss (its MIWAE) and the decoder on decoder_loss (L_{M*K}):
    each part of our gradient equals the gradient of that loss on those parameters."""
    ours = LinearGaussianEncoder(X_DIM, LATENT)
    theirs = pythae_model("piwae", ours, number_gradient_estimates=M, number_samples=K)
    x = binary_batch(3, X_DIM, 1, torch.device("cpu"))
    encoder, decoder = list(ours.encoder.parameters()), list(ours.decoder.parameters())
    torch.manual_seed(0)
    for _ in range(2):
        theirs.eps, eps = grouped_noise(x.shape[0])
        output = theirs({"data": x})
        loss = ours.loss(x, M * K, "piwae", groups=K, eps=eps)
        torch.testing.assert_close(gradient(loss, encoder), gradient(output.encoder_loss, encoder), rtol=1e-10,
                                   atol=1e-12)
        torch.testing.assert_close(gradient(loss, decoder), gradient(output.decoder_loss, decoder), rtol=1e-10,
                                   atol=1e-12)


def test_piwae_value_is_the_bound_on_pythaes_log_weights():
    ours = LinearGaussianEncoder(X_DIM, LATENT)
    theirs = pythae_model("piwae", ours, number_gradient_estimates=M, number_samples=K)
    x = binary_batch(1, X_DIM, 1, torch.device("cpu"))
    torch.manual_seed(1)
    theirs.eps, eps = grouped_noise(1)
    log_w = pythae_log_weights(theirs({"data": x})).flatten()
    want = torch.logsumexp(log_w, 0) - math.log(M * K)
    with torch.no_grad():
        got = -ours.loss(x, M * K, "piwae", groups=K, eps=eps)
    assert abs(got.item() - want.item()) <= 1e-12 * abs(want.item())


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_ciwae_equals_pythae(beta):
    ours = LinearGaussianEncoder(X_DIM, LATENT)
    theirs = pythae_model("ciwae", ours, number_samples=K, beta=beta)
    parameters = list(ours.parameters())
    for batch in (1, 3):
        x = binary_batch(batch, X_DIM, 1, torch.device("cpu"))
        torch.manual_seed(batch)
        theirs.eps = torch.randn(batch, K, LATENT, dtype=torch.float64)
        output = theirs({"data": x})
        loss = ours.loss(x, K, "ciwae", ciwae_beta=beta, eps=theirs.eps.transpose(0, 1))
        torch.testing.assert_close(gradient(loss, parameters), gradient(output.loss, parameters), rtol=1e-10,
                                   atol=1e-12)
        if batch == 1:
            log_w = pythae_log_weights(output)  # [K]
            want = beta * log_w.mean() + (1 - beta) * (torch.logsumexp(log_w, 0) - math.log(K))
            assert abs(-loss.item() - want.item()) <= 1e-12 * abs(want.item())
