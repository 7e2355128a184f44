"""VIMCO against TensorFlow Probability's (tfp.vi.monte_carlo_variational_loss with
gradient_estimator=GradientEstimators.VIMCO, which calls tfp.vi.csiszar_vimco), exactly, on shared samples,
float64. TFP runs on its JAX substrate (tfp-nightly with jax: scripts/setup_env.sh installs them if it can; else this
module is skipped). tensorflow-probability 0.25, the last release, does not import with jax 0.10.

TFP draws z [k, 1, B, D] from q.sample with the first half of split_seed(seed, 2) and stops it, so drawing with
that seed on the same parameters gives our side the same z (the values agreeing shows that it does). Its loss is
f(L_k) with f = kl_reverse, f(t) = -t, so -L_k per example; its surrogate adds sum_i log q(z_i|x) stop(f(L_k) -
f(L_{-i})), and log q is live inside its log w_i too. So its gradient is minus ours: the encoder's sum_i (L_k -
L_{-i} - wt_i) grad log q(z_i|x), the model's grad L_k. Its L_{-i} is tfp.stats.log_soomean_exp's swap-one-out
mean (the geometric mean of the others in sample i's place), ours ``leave_one_out_bounds``.

Compared: the baselines alone; estimator_bound(log_w, "vimco", log_q=...) on a Bernoulli latent with a learned
prior; iwae_loss(estimator="vimco") on a Gaussian latent (test_estimators' LinearGaussianEncoder) with the noise
eps = (z - mu) / sigma of TFP's z. Values and every parameter's gradient agree to rounding (rtol 1e-10).
Found: TFP's baselines are NaN once a sample is impossible (log w = -inf; ours are -inf or finite,
test_estimators.test_vimco_baselines_are_finite_or_minus_inf_and_never_nan), and csiszar_vimco cannot be jax.jit-ed
(log_soomean_exp's squeeze reshapes by a traced shape), so it runs op by op: its ~250 XLA compilations are most of
this module's time.
"""

import numpy as np
import pytest
import torch
from torch import nn

import iwae_kernels as ik
from test_estimators import LinearGaussianEncoder, binary_batch

pytest.importorskip("jax", reason="jax is not installed (the TFP VIMCO peer: scripts/setup_env.sh)")
tfp = pytest.importorskip("tensorflow_probability.substrates.jax",
                          reason="tfp-nightly is not installed (the TFP VIMCO peer: scripts/setup_env.sh)")
import jax  # noqa: E402  (after the skip)
import jax.numpy as jnp  # noqa: E402

jax.config.update("jax_enable_x64", True)
tfd = tfp.distributions
# TFP's Bernoulli sampler passes jax.random.uniform a None bound, which jax 0.10 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:shape requires ndarray:DeprecationWarning")

K, B, X_DIM, LATENT = 5, 3, 12, 4


def tfp_vimco(params, log_joint, posterior, seed):
    """TFP's VIMCO loss [B] (-L_k), the gradient of its sum on ``params`` (a dict of arrays), and its samples z
    [k, B, D]; posterior(params) is q(z|x), log_joint(params, z) log p(x, z)."""
    def loss(params):
        value = tfp.vi.monte_carlo_variational_loss(
            lambda z: log_joint(params, z), posterior(params), importance_sample_size=K,
            gradient_estimator=tfp.vi.GradientEstimators.VIMCO, seed=seed)
        return value.sum(), value
    sample_seed, _ = tfp.random.split_seed(seed, 2)  # csiszar_vimco's draw
    z = posterior(params).sample([K, 1], seed=sample_seed)[:, 0]
    (_, value), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return to_torch(value), grads, to_torch(z)


def to_torch(array):
    return torch.tensor(np.asarray(array))


def linear(params, name, x):
    return x @ params[name + ".weight"].T + params[name + ".bias"]


def jax_params(module):
    return {name: jnp.asarray(p.detach().numpy()) for name, p in module.named_parameters()}


def assert_gradients_equal(module, loss, theirs):
    """d sum(loss) / d each of module's parameters equals TFP's gradient of it."""
    names, parameters = zip(*module.named_parameters())
    for name, ours in zip(names, torch.autograd.grad(loss.sum(), parameters)):
        torch.testing.assert_close(ours, to_torch(theirs[name]), rtol=1e-10, atol=1e-12, msg=name)


def test_baselines_are_tfps_swap_one_out_means():
    """L_{-i} = log_soomean_exp; with one weight far above the others, both sum the others without it."""
    log_w = torch.randn(K, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    log_w[2, 0] = 80.0
    theirs = to_torch(tfp.stats.log_soomean_exp(jnp.asarray(log_w.numpy()), axis=0)[0])
    torch.testing.assert_close(ik.estimators.leave_one_out_bounds(log_w), theirs, rtol=1e-13, atol=1e-13)


def test_gaussian_iwae_loss_vimco_equals_tfp():
    model = LinearGaussianEncoder(X_DIM, LATENT)
    x = binary_batch(B, X_DIM, 1, torch.device("cpu"))
    xj = jnp.asarray(x.numpy())

    def posterior(params):
        mu, logvar = jnp.split(linear(params, "encoder", xj), 2, -1)
        return tfd.Independent(tfd.Normal(mu, jnp.exp(logvar / 2)), 1)

    def log_joint(params, z):
        logits = linear(params, "decoder.2", jnp.tanh(linear(params, "decoder.0", z)))
        return (tfd.Independent(tfd.Normal(jnp.zeros_like(z), 1.0), 1).log_prob(z)
                + tfd.Independent(tfd.Bernoulli(logits=logits, dtype=z.dtype), 1).log_prob(xj))

    value, grads, z = tfp_vimco(jax_params(model), log_joint, posterior, jax.random.PRNGKey(0))
    mu, logvar = model.encoder(x).chunk(2, -1)
    eps = (z - mu.detach()) * torch.exp(-logvar.detach() / 2)
    loss = ik.iwae_loss(x, mu, logvar, model.decoder, k=K, estimator="vimco", reduction="none", eps=eps,
                        backend="torch")
    torch.testing.assert_close(loss.detach(), value, rtol=1e-12, atol=1e-12)
    assert_gradients_equal(model, loss, grads)


def test_bernoulli_estimator_bound_vimco_equals_tfp():
    torch.manual_seed(0)
    model = nn.ModuleDict(dict(encoder=nn.Linear(X_DIM, LATENT), decoder=nn.Linear(LATENT, X_DIM))).double()
    model.prior = nn.Parameter(torch.randn(LATENT, dtype=torch.float64))  # logits of a learned prior
    x = binary_batch(B, X_DIM, 1, torch.device("cpu"))
    xj = jnp.asarray(x.numpy())
    bernoulli = lambda logits: tfd.Independent(tfd.Bernoulli(logits=logits, dtype=jnp.float64), 1)
    posterior = lambda params: bernoulli(linear(params, "encoder", xj))
    log_joint = lambda params, z: (bernoulli(params["prior"]).log_prob(z)
                                   + bernoulli(linear(params, "decoder", z)).log_prob(xj))

    value, grads, z = tfp_vimco(jax_params(model), log_joint, posterior, jax.random.PRNGKey(1))
    ours = lambda logits, values: torch.distributions.Bernoulli(logits=logits).log_prob(values).sum(-1)
    log_q = ours(model.encoder(x), z)
    log_w = ours(model.prior, z) + ours(model.decoder(z), x) - log_q.detach()
    loss = -ik.estimator_bound(log_w, "vimco", log_q=log_q, backend="torch")
    torch.testing.assert_close(loss.detach(), value, rtol=1e-12, atol=1e-12)
    assert_gradients_equal(model, loss, grads)
