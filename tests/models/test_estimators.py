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
from iwae_kernels.models.flows import FlowIWAE
from iwae_kernels.models import ConvIWAE, paper_model
from iwae_kernels.models.base import gaussian
from torch.distributions import Normal

from helpers import backend_device
from naive import naive_bernoulli, naive_gaussian, naive_iwae_bound, naive_latent, naive_renyi_bound

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


@pytest.mark.parametrize("estimator, options", [
    ("iwae", {}), ("dreg", {}), ("stl", {}), ("iwae-resample", {}), ("miwae", {"groups": 2}),
    ("ciwae", {"ciwae_beta": 0.3}), ("renyi", {"renyi_alpha": -1}), ("piwae", {"groups": 2}), ("rws", {}),
    ("rws-dreg", {}), ("vimco", {})])
def test_paper_model_triton_gradients_equal_torch_on_shared_noise(estimator, options):
    """The statistical tests run on the torch backend; the kernels give the same gradient draw for the same
    noise (two layers, float64), so the result carries over to them."""
    device = backend_device("triton")
    gen = torch.Generator().manual_seed(5)
    x = binary_batch(5, 12, 1, device)
    noise = [torch.randn(4, 5, size, generator=gen, dtype=torch.float64).to(device) for size in (4, 3)]
    assert_triton_gradients_equal_torch(lambda backend: small_paper_model(2, device, backend=backend),
                                        lambda model: model.loss(x, 4, estimator, noise=noise, **options))


def assert_triton_gradients_equal_torch(make_model, loss):
    """make_model(backend) -> a float64 module, loss(module) -> a scalar: the same gradient on both backends."""
    grads = {}
    for backend in ("torch", "triton"):
        model = make_model(backend)
        torch.manual_seed(0)  # iwae-resample draws its index from the global RNG
        loss(model).backward()
        grads[backend] = [p.grad for p in model.parameters()]
    for name, a, b in zip(dict(model.named_parameters()), grads["torch"], grads["triton"]):
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


def flow_iwae(kind="planar", backend="torch"):
    torch.manual_seed(0)
    return FlowIWAE(x_dim=12, hidden=5, latent=3, flow=kind, length=2, backend=backend).double()


@pytest.mark.parametrize("kind", ["planar", "radial"])
def test_flow_iwae_stl_is_unbiased_at_k1(kind):
    model = flow_iwae(kind)
    x = binary_batch(6, 12, 200, torch.device("cpu"))
    draws = gradient_draws(model, lambda: model.loss(x, 1, "stl"), 150, seed=1)
    assert_unbiased(draws, gradient_draws(model, lambda: model.loss(x, 1, "iwae"), 150, seed=2))


@pytest.mark.parametrize("estimator", ["dreg", "rws", "rws-dreg", "vimco"])
def test_flow_iwae_refuses_estimators_without_a_path_through_the_flow(estimator):
    model = flow_iwae()
    x = binary_batch(2, 12, 1, torch.device("cpu"))
    with pytest.raises(ValueError, match=f"estimator: '{estimator}' is not supported with a flow posterior"):
        model.loss(x, 4, estimator)


def test_bonferroni_bound_is_the_normal_quantile():
    assert math.isclose(bonferroni_bound(1), 3.2905, abs_tol=1e-3)


# MIWAE, CIWAE, PIWAE (Rainforth et al. 2018), the Renyi bound (Li & Turner 2016), reweighted wake-sleep (Bornschein
# & Bengio 2015), its DReG form (Tucker et al. 2019) and VIMCO (Mnih & Rezende 2016). Their targets are written here
# from the papers' formulas in plain torch (logsumexp, torch.distributions), with each parameter group's gradient
# taken separately: the encoder's ("phi") and the model's ("theta", decoder and learned prior).

NEW_ESTIMATORS = {"miwae": dict(groups=3), "ciwae": dict(ciwae_beta=0.3), "renyi": dict(renyi_alpha=0.5),
                  "piwae": dict(groups=3), "rws": {}, "rws-dreg": {}, "vimco": {}}


def mean_target(estimator):
    """The estimator whose formula gives the mean gradient ``estimator``'s draws must match: VIMCO's formula is its
    own draw, and what it is unbiased for is L_k's gradient (iwae's)."""
    return "iwae" if estimator == "vimco" else estimator
# The shared-noise formula checks also take the Renyi bound above L_k (a < 0) and below the ELBO (a > 1).
FORMULA_CASES = list(NEW_ESTIMATORS.items()) + [("renyi", dict(renyi_alpha=-1.0)), ("renyi", dict(renyi_alpha=2.0))]


def vimco_baselines(log_w):
    """L_{-i} = log((sum_{j != i} w_j + exp(mean_{j != i} log w_j)) / k) [k, B] for log_w [k, B], one i at a time
    (Mnih & Rezende 2016; TFP's csiszar_vimco_helper's log_sooavg_u)."""
    k = log_w.shape[0]
    baselines = []
    for i in range(k):
        others = torch.cat([log_w[:i], log_w[i + 1:]])
        swapped = torch.cat([others, others.mean(0, keepdim=True)])
        baselines.append(naive_iwae_bound(swapped))
    return torch.stack(baselines)


def vimco_surrogate(log_w, log_q):
    """TFP's csiszar_vimco surrogate, negated (f(t) = -t): L_k of the log-weights at fixed samples with q live plus
    sum_i log q_i stop(L_k - L_{-i}) [B]. log_w [k, B] (its encoder part is ignored), log_q [k, B]: log q(z_i|x) at
    the fixed samples, the encoder live. Its encoder gradient is sum_i (L_k - L_{-i} - wt_i) grad log q_i."""
    fixed_sample_log_w = log_w.detach() + log_q.detach() - log_q
    iwae = naive_iwae_bound(fixed_sample_log_w)
    signal = iwae.detach() - vimco_baselines(log_w.detach())
    return iwae + (log_q * signal).sum(0)


def paper_objectives(log_w, estimator, groups=None, ciwae_beta=None, renyi_alpha=None, log_q=None):
    """(the model's objective, the encoder's) [B] for log_w [k, B]; log_q [k, B] is log q(z_i|x) at fixed samples
    with the encoder live (wake-phi's, VIMCO's). rws-dreg's target is wake-phi's expectation, so it shares rws's."""
    k = log_w.shape[0]
    iwae = naive_iwae_bound(log_w)
    if estimator == "iwae":
        return iwae, iwae
    if estimator == "vimco":
        return iwae, vimco_surrogate(log_w, log_q)
    if groups is not None:
        per_group = k // groups
        miwae = (torch.logsumexp(log_w.reshape(groups, per_group, -1), 1) - math.log(per_group)).mean(0)
    if estimator == "miwae":
        return miwae, miwae
    if estimator == "ciwae":
        ciwae = ciwae_beta * log_w.mean(0) + (1 - ciwae_beta) * iwae
        return ciwae, ciwae
    if estimator == "renyi":
        renyi = naive_renyi_bound(log_w, renyi_alpha)
        return renyi, renyi
    if estimator == "piwae":
        return iwae, miwae
    wt = torch.softmax(log_w.detach(), 0)
    return iwae, (wt * log_q).sum(0)


def split_gradient(module, theta_objective, phi_objective, is_phi):
    """The flat gradient of -mean(theta_objective) on the model's parameters and of -mean(phi_objective) on the
    encoder's (``is_phi(name)``), in ``module.parameters()`` order."""
    named = list(module.named_parameters())
    parts = []
    for objective, group in ((theta_objective, False), (phi_objective, True)):
        params = [p for name, p in named if is_phi(name) == group]
        grads = torch.autograd.grad(-objective.mean(), params, retain_graph=True, allow_unused=True)
        parts.append(dict(zip([name for name, _ in named if is_phi(name) == group], grads)))
    merged = parts[0] | parts[1]
    return torch.cat([(merged[name] if merged[name] is not None else torch.zeros_like(p)).flatten()
                      for name, p in named])


def paper_noise(model, k, batch):
    return [torch.randn(k, batch, size, dtype=torch.float64) for size in model.latent]


def paper_reference_gradient(model, x, k, estimator, noise, options=None):
    """The target gradient for one noise draw, from the iwae log-weights and the papers' formulas (``options``:
    the estimator's, NEW_ESTIMATORS' by default)."""
    options = NEW_ESTIMATORS.get(estimator, {}) if options is None else options
    posterior = model.encode(x)
    log_w = model.log_weights(x, k, "iwae", noise, posterior)
    mu, logvar = posterior
    h1 = (mu + torch.exp(0.5 * logvar) * noise[0]).detach()
    log_q = naive_gaussian(mu, logvar, h1)
    if model.stochastic_layers == 2:
        mu2, logvar2 = gaussian(model.encoders[1], h1)
        h2 = (mu2 + torch.exp(0.5 * logvar2) * noise[1]).detach()
        log_q = log_q + naive_gaussian(mu2, logvar2, h2)
    return split_gradient(model, *paper_objectives(log_w, estimator, log_q=log_q, **options),
                          lambda name: name.startswith("encoders."))


def draws_of(gradient, passes, seed):
    torch.manual_seed(seed)
    return torch.stack([gradient() for _ in range(passes)])


def estimator_gradient(module, loss_fn):
    module.zero_grad(set_to_none=True)
    loss_fn().backward()
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in module.parameters()])


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("estimator, options", FORMULA_CASES)
def test_paper_model_new_estimators_equal_their_formulas_on_shared_noise(layers, estimator, options):
    """One draw, exactly: the value is the objective's, the gradient its formula's (rws-dreg: the model's part;
    its encoder part has a different draw from wake-phi, checked exactly against its path-derivative form in
    test_rws_dreg_encoder_gradient_is_its_path_derivative_on_shared_noise and in expectation below)."""
    model = small_paper_model(layers, torch.device("cpu"))
    x = binary_batch(5, 12, 1, torch.device("cpu"))
    torch.manual_seed(4)
    noise = paper_noise(model, 6, 5)
    got = estimator_gradient(model, lambda: model.loss(x, 6, estimator, noise=noise, **options))
    want = paper_reference_gradient(model, x, 6, estimator, noise, options)
    if estimator == "rws-dreg":
        theta = torch.cat([torch.full((p.numel(),), not name.startswith("encoders."))
                           for name, p in model.named_parameters()])
        got, want = got[theta], want[theta]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        value = -model.loss(x, 6, estimator, noise=noise, **options)
        log_w = model.log_weights(x, 6, "iwae", noise)
        objective = paper_objectives(log_w, estimator, log_q=torch.zeros_like(log_w), **options)[0]
    torch.testing.assert_close(value, objective.mean(), rtol=1e-12, atol=1e-12)


def paper_new_estimator_draws(layers, estimator, passes, seed, copies=100, k=6):
    model = small_paper_model(layers, torch.device("cpu"))
    x = binary_batch(6, 12, copies, torch.device("cpu"))
    return draws_of(lambda: estimator_gradient(model, lambda: model.loss(x, k, estimator,
                                                                         **NEW_ESTIMATORS[estimator])), passes, seed)


def paper_reference_draws(layers, estimator, passes, seed, copies=100, k=6):
    model = small_paper_model(layers, torch.device("cpu"))
    x = binary_batch(6, 12, copies, torch.device("cpu"))
    target = mean_target(estimator)
    return draws_of(lambda: paper_reference_gradient(model, x, k, target, paper_noise(model, k, x.shape[0])),
                    passes, seed)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("estimator", sorted(NEW_ESTIMATORS))
def test_paper_model_new_estimator_is_unbiased(layers, estimator):
    """The mean gradient over independent draws equals its objective's (rws, rws-dreg: the decoder's L_k gradient
    and the encoder's wake-phi expectation; for rws-dreg this is Tucker et al. 2019's identity; vimco: L_k's)."""
    assert_unbiased(paper_new_estimator_draws(layers, estimator, 120, seed=1),
                    paper_reference_draws(layers, estimator, 120, seed=2))


def test_rws_dreg_check_can_fail():
    """rws-dreg's encoder part is not IWAE's encoder gradient: the same comparison against the iwae target flags it."""
    assert_biased(paper_new_estimator_draws(1, "rws-dreg", 120, seed=1), paper_draws(1, "iwae", 6, 120, seed=2,
                                                                                    copies=100))


class OneLayerReference:
    """Targets for one-layer models with a Gaussian encoder and a Bernoulli decoder ``decode(z [k, B, D])``."""

    @staticmethod
    def gradient(module, x, mu, logvar, decode, eps, estimator):
        options = NEW_ESTIMATORS.get(estimator, {})
        z, latent = naive_latent(mu, logvar, eps)
        log_w = naive_bernoulli(decode(z), x) + latent
        log_q = naive_gaussian(mu, logvar, z.detach())
        return split_gradient(module, *paper_objectives(log_w, estimator, log_q=log_q, **options),
                              lambda name: name.startswith("encoder."))


def linear_model_loss(model, x, k, estimator, generator):
    return model.loss(x, k, estimator, generator=generator, **NEW_ESTIMATORS[estimator])


def one_layer_decoder(model):
    """decode(z [k, B, D]) -> logits [k, B, x_dim] of a one-layer model (ConvIWAE's decoder takes [k * B, D])."""
    if isinstance(model, ConvIWAE):
        return lambda z: model.decoder(z.flatten(0, 1)).unflatten(0, z.shape[:2])
    return model.decoder


def one_layer_posterior_and_noise(model, x, k, generator):
    """(mu, logvar, eps [k, B, D]): a one-layer model's q(z|x) and the noise iwae_loss draws from ``generator``."""
    mu, logvar = model.encoder(x).chunk(2, -1)
    return mu, logvar, torch.randn((k,) + tuple(mu.shape), generator=generator, dtype=mu.dtype)


def one_layer_reference(model, x, k, estimator, generator):
    mu, logvar, eps = one_layer_posterior_and_noise(model, x, k, generator)
    return OneLayerReference.gradient(model, x, mu, logvar, one_layer_decoder(model), eps, estimator)


def conv_model():
    torch.manual_seed(0)
    return ConvIWAE(latent=3, channels=2, backend="torch").double()


ONE_LAYER_MODELS = {"iwae_loss": (LinearGaussianEncoder, 100, 120), "conv": (conv_model, 10, 60)}


@pytest.mark.parametrize("kind", sorted(ONE_LAYER_MODELS))
@pytest.mark.parametrize("estimator", sorted(NEW_ESTIMATORS))
def test_iwae_loss_new_estimators_on_shared_noise_and_unbiased(kind, estimator):
    """iwae_loss (and ConvIWAE through it): one draw equals the formula's on the same noise (rws-dreg: the
    decoder's part), and the mean over draws equals the target (``mean_target``)."""
    make, copies, passes = ONE_LAYER_MODELS[kind]
    model = make()
    x_dim = 784 if kind == "conv" else 12
    x = binary_batch(3, x_dim, 1, torch.device("cpu"))
    got = estimator_gradient(model, lambda: linear_model_loss(model, x, 6, estimator, torch.Generator().manual_seed(3)))
    want = one_layer_reference(model, x, 6, estimator, torch.Generator().manual_seed(3))
    if estimator == "rws-dreg":
        theta = torch.cat([torch.full((p.numel(),), not name.startswith("encoder."))
                           for name, p in model.named_parameters()])
        got, want = got[theta], want[theta]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    x = binary_batch(3, x_dim, copies, torch.device("cpu"))
    generator = torch.Generator()
    draws = draws_of(lambda: estimator_gradient(model, lambda: linear_model_loss(model, x, 6, estimator, generator)),
                     passes, seed=1)
    generator.manual_seed(12345)
    target = mean_target(estimator)
    assert_unbiased(draws, draws_of(lambda: one_layer_reference(model, x, 6, target, generator), passes, seed=2))


def flow_reference(model, x, estimator, eps):
    """The gradient of FlowIWAE's objective on the noise eps, from its log-weights at the plain "iwae" path."""
    log_w = model.log_weights(x, eps.shape[0], eps)
    return split_gradient(model, *paper_objectives(log_w, estimator, **NEW_ESTIMATORS[estimator]),
                          lambda name: not name.startswith("decoder."))


@pytest.mark.parametrize("estimator", ["miwae", "ciwae", "renyi", "piwae"])
def test_flow_iwae_new_estimators_on_shared_noise_and_unbiased(estimator):
    """FlowIWAE.loss: on shared noise the value is the objective's and the gradient its formula's; over draws the
    mean gradient is the objective's (the flow's parameters are the encoder's: the posterior's)."""
    model = flow_iwae()
    x = binary_batch(6, 12, 50, torch.device("cpu"))
    noise = lambda: torch.randn(6, x.shape[0], 3, dtype=torch.float64)
    eps = noise()
    options = NEW_ESTIMATORS[estimator]
    value = model.bound(x, 6, estimator, eps, **options)
    with torch.no_grad():
        want_value = paper_objectives(model.log_weights(x, 6, eps), estimator, **options)[0]
    torch.testing.assert_close(value.detach(), want_value, rtol=1e-12, atol=1e-12)
    got = estimator_gradient(model, lambda: model.loss(x, 6, estimator, eps, **options))
    torch.testing.assert_close(got, flow_reference(model, x, estimator, eps), rtol=1e-10, atol=1e-12)
    draws = draws_of(lambda: estimator_gradient(model, lambda: model.loss(x, 6, estimator, **options)), 80, 1)
    assert_unbiased(draws, draws_of(lambda: flow_reference(model, x, estimator, noise()), 80, 2))


@pytest.mark.parametrize("estimator", ["iwae", "miwae", "ciwae", "renyi", "piwae", "iwae-resample"])
def test_flow_iwae_triton_gradients_equal_torch_on_shared_noise(estimator):
    device = backend_device("triton")
    x = binary_batch(5, 12, 1, device)
    eps = torch.randn(6, 5, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(device)
    options = NEW_ESTIMATORS.get(estimator, {})
    assert_triton_gradients_equal_torch(lambda backend: flow_iwae(backend=backend).to(device),
                                        lambda model: model.loss(x, 6, estimator, eps, **options))


def test_flow_iwae_resampled_estimator_is_unbiased():
    model = flow_iwae()
    x = binary_batch(6, 12, 50, torch.device("cpu"))
    draws = gradient_draws(model, lambda: model.loss(x, 5, "iwae-resample"), 150, seed=1)
    assert_unbiased(draws, gradient_draws(model, lambda: model.loss(x, 5, "iwae"), 150, seed=2))


def test_new_estimator_arguments_are_checked():
    model = LinearGaussianEncoder()
    x = binary_batch(2, 12, 1, torch.device("cpu"))
    cases = [("miwae", {}, "groups"), ("piwae", dict(groups=4), "groups"), ("iwae", dict(groups=2), "groups"),
             ("miwae", dict(groups=0), "groups"), ("ciwae", {}, "ciwae_beta"),
             ("ciwae", dict(ciwae_beta=1.5), "ciwae_beta"),
             ("dreg", dict(ciwae_beta=0.5), "ciwae_beta"), ("rws", dict(beta=0.5), "beta"),
             ("rws-dreg", dict(beta=0.5), "beta"), ("vimco", dict(beta=0.5), "beta"), ("renyi", {}, "renyi_alpha"),
             ("iwae", dict(renyi_alpha=0.5), "renyi_alpha")]
    cases += [("renyi", dict(renyi_alpha=alpha), "renyi_alpha") for alpha in (1, 1.0, math.nan, math.inf, True, "x")]
    for estimator, options, name in cases:
        with pytest.raises(ValueError, match=name):
            model.loss(x, 6, estimator, **options)
    paper = small_paper_model(1, torch.device("cpu"))
    with pytest.raises(ValueError, match="groups"):
        paper.loss(x, 6, "piwae", groups=4)
    with pytest.raises(ValueError, match="groups"):
        paper.loss(x, 6, "rws", groups=2)
    with pytest.raises(ValueError, match="estimator"):  # the sampling kernels take only their own estimators
        ik.gaussian_sample(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64), 4,
                           estimator="miwae")
    log_w = torch.zeros(6, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="log_w_fixed"):
        ik.estimator_bound(log_w, "piwae", groups=2)
    for estimator, log_q in (("rws", None), ("vimco", None), ("iwae", log_w)):
        with pytest.raises(ValueError, match="log_q"):
            ik.estimator_bound(log_w, estimator, log_q=log_q)
    for loss in (lambda: model.loss(x, 1, "vimco"), lambda: paper.loss(x, 1, "vimco"),
                 lambda: ik.estimator_bound(log_w[:1], "vimco", log_q=log_w[:1])):
        with pytest.raises(ValueError, match="k >= 2 .* got k=1"):
            loss()
    for estimator, options in (("renyi", dict(renyi_alpha=1)), ("ciwae", dict(ciwae_beta=0.5, renyi_alpha=0.5))):
        with pytest.raises(ValueError, match="renyi_alpha"):
            ik.estimator_bound(log_w, estimator, backend="torch", **options)
        with pytest.raises(ValueError, match="renyi_alpha"):
            paper.loss(x, 6, estimator, **options)
        with pytest.raises(ValueError, match="renyi_alpha"):
            flow_iwae().loss(x, 6, estimator, **options)


def test_annealed_miwae_ciwae_renyi_piwae_are_exact():
    """beta != 1 is taken by the exact estimators: the value is the annealed objective on the same noise."""
    model = LinearGaussianEncoder()
    x = binary_batch(2, 12, 1, torch.device("cpu"))
    for estimator in ("miwae", "ciwae", "renyi", "piwae"):
        annealed = model.loss(x, 6, estimator, beta=0.5, generator=torch.Generator().manual_seed(0),
                              **NEW_ESTIMATORS[estimator])
        plain = model.loss(x, 6, estimator, generator=torch.Generator().manual_seed(0), **NEW_ESTIMATORS[estimator])
        assert torch.isfinite(annealed) and not torch.isclose(annealed, plain)


@pytest.mark.parametrize("estimator", ["miwae", "ciwae", "renyi", "piwae", "rws", "rws-dreg", "vimco"])
def test_new_estimators_never_give_nan_for_impossible_samples(estimator):
    """-inf log-weights are legal: the bound is finite where a sample is possible (CIWAE's ELBO term is -inf
    with one impossible sample, as the ELBO is), -inf where none is, and no gradient is NaN."""
    log_w = torch.tensor([[0.0, -math.inf], [-1.0, -math.inf], [-math.inf, -math.inf], [-2.0, -math.inf],
                          [0.5, -math.inf], [-0.5, -math.inf]], dtype=torch.float64, requires_grad=True)
    if estimator in ("rws", "vimco"):
        bound = ik.estimator_bound(log_w, estimator, log_q=torch.zeros_like(log_w), backend="torch")
    else:
        options = NEW_ESTIMATORS[estimator]
        fixed = log_w * 1.0 if estimator in ("piwae", "rws-dreg") else None
        bound = ik.estimator_bound(log_w, estimator, log_w_fixed=fixed, backend="torch", **options)
    assert torch.isneginf(bound[0]) if estimator == "ciwae" else torch.isfinite(bound[0])
    assert torch.isneginf(bound[1])
    bound[0].backward()
    assert not torch.isnan(log_w.grad).any()


def test_renyi_at_alpha_0_is_iwae_exactly():
    """L_0 is L_k: the same value and every gradient, bit for bit, on log-weights and on a model's shared noise."""
    log_w = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    bounds = [ik.estimator_bound(log_w, "renyi", renyi_alpha=0, backend="torch"),
              ik.estimator_bound(log_w, "iwae", backend="torch")]
    grads = [torch.autograd.grad(bound.sum(), log_w)[0] for bound in bounds]
    assert torch.equal(bounds[0], bounds[1]) and torch.equal(grads[0], grads[1])
    model = small_paper_model(2, torch.device("cpu"))
    x = binary_batch(5, 12, 1, torch.device("cpu"))
    noise = paper_noise(model, 6, 5)
    got = estimator_gradient(model, lambda: -model.bound(x, 6, "renyi", noise, renyi_alpha=0).mean())
    assert torch.equal(got, estimator_gradient(model, lambda: -model.bound(x, 6, "iwae", noise).mean()))


@pytest.mark.parametrize("renyi_alpha", [-1.0, 0.5, 2.0])
def test_renyi_never_gives_nan_for_impossible_samples(renyi_alpha):
    """An impossible sample (log w = -inf) drops out of L_a for a < 1; for a > 1 its w^(1 - a) is infinite and L_a
    is -inf, as the ELBO is. An all -inf column is -inf; no gradient is NaN."""
    log_w = torch.tensor([[0.0, -math.inf, 0.3], [-1.0, -math.inf, -0.2], [-math.inf, -math.inf, 0.1]],
                         dtype=torch.float64, requires_grad=True)
    bound = ik.estimator_bound(log_w, "renyi", renyi_alpha=renyi_alpha, backend="torch")
    if renyi_alpha > 1:
        assert torch.isneginf(bound[0])
    else:  # the k = 3 mean over the two possible samples' w^(1 - a)
        possible = naive_renyi_bound(log_w[:2, :1].detach(), renyi_alpha) + math.log(2 / 3) / (1 - renyi_alpha)
        torch.testing.assert_close(bound[:1].detach(), possible, rtol=1e-12, atol=1e-12)
    assert torch.isneginf(bound[1]) and torch.isfinite(bound[2])
    bound.sum().backward()
    assert not torch.isnan(log_w.grad).any()


def rws_dreg_encoder_surrogate(log_w):
    """sum_i (wt_i - wt_i^2) log w_i [B], wt = softmax(log w) detached: on log-weights whose gradient is the path
    derivative alone, its gradient into the encoder is rws-dreg's draw (Tucker et al. 2019)."""
    wt = torch.softmax(log_w.detach(), 0)
    return ((wt - wt * wt) * log_w).sum(0)


def stopped_gaussian(net, inputs):
    """``gaussian(net, inputs)`` with net's weights detached and the inputs live."""
    return torch.func.functional_call(net, {name: p.detach() for name, p in net.named_parameters()},
                                      (inputs,)).chunk(2, -1)


def paper_path_log_weights(model, x, noise):
    """PaperModel's log w [k, B] with the samples live and the encoders' weights stopped inside log q (q(h2|h1)
    keeps its dependence on the live sample h1): the path derivative alone, from torch.distributions."""
    mu, logvar = model.encode(x)
    h1 = mu + torch.exp(0.5 * logvar) * noise[0]
    log_w = naive_bernoulli(model.decoder(h1), x) - naive_gaussian(*stopped_gaussian(model.encoders[0], x), h1)
    if model.stochastic_layers == 1:
        return log_w + Normal(0.0, 1.0).log_prob(h1).sum(-1)
    mu2, logvar2 = gaussian(model.encoders[1], h1)
    h2 = mu2 + torch.exp(0.5 * logvar2) * noise[1]
    return (log_w + naive_gaussian(*gaussian(model.priors[0], h2), h1) + Normal(0.0, 1.0).log_prob(h2).sum(-1)
            - naive_gaussian(*stopped_gaussian(model.encoders[1], h1), h2))


@pytest.mark.parametrize("kind", ["paper-1", "paper-2", "iwae_loss", "conv"])
def test_rws_dreg_encoder_gradient_is_its_path_derivative_on_shared_noise(kind):
    """One draw, exactly (float64): rws-dreg's encoder gradient is that of sum_i (wt_i - wt_i^2) log w_i with wt
    detached and q's parameters stopped inside log q. Fails with wt^2 in place of wt - wt^2 in
    ``estimators.objective_bound``, which every formula and mean-gradient test above let pass."""
    torch.manual_seed(4)
    x = binary_batch(3, 784 if kind == "conv" else 12, 1, torch.device("cpu"))
    if kind.startswith("paper"):
        model = small_paper_model(int(kind[-1]), torch.device("cpu"))
        noise = paper_noise(model, 6, 3)
        got = estimator_gradient(model, lambda: model.loss(x, 6, "rws-dreg", noise=noise))
        log_w = paper_path_log_weights(model, x, noise)
        encoder_prefix = "encoders."
    else:
        model = ONE_LAYER_MODELS[kind][0]()
        generator = torch.Generator().manual_seed(3)
        got = estimator_gradient(model, lambda: model.loss(x, 6, "rws-dreg", generator=generator))
        mu, logvar, eps = one_layer_posterior_and_noise(model, x, 6, torch.Generator().manual_seed(3))
        z, latent = naive_latent(mu, logvar, eps, detach_q=True)
        log_w = naive_bernoulli(one_layer_decoder(model)(z), x) + latent
        encoder_prefix = "encoder."
    encoder = [(name, p) for name, p in model.named_parameters() if name.startswith(encoder_prefix)]
    want = torch.autograd.grad(-rws_dreg_encoder_surrogate(log_w).mean(), [p for _, p in encoder])
    offsets = dict(zip([name for name, _ in model.named_parameters()],
                       torch.tensor([0] + [p.numel() for p in model.parameters()]).cumsum(0).tolist()))
    for (name, p), w in zip(encoder, want):
        torch.testing.assert_close(got[offsets[name]:offsets[name] + p.numel()], w.flatten(), rtol=1e-10,
                                   atol=1e-12, msg=name)


def test_vimco_baselines_are_finite_or_minus_inf_and_never_nan():
    """An impossible sample (log w = -inf) puts a zero geometric mean in every other sample's place; an example with
    no possible sample, or one possible sample (whose baseline is -inf), gives that sample a zero coefficient; no
    value or gradient is NaN. A dominant weight does not cancel the others' sum (O(k B), float64)."""
    log_w = torch.tensor([[0.0, -math.inf, 1.0, 0.0], [-1.0, -math.inf, -math.inf, -50.0],
                          [-math.inf, -math.inf, -math.inf, -60.0]], dtype=torch.float64, requires_grad=True)
    log_q = torch.zeros_like(log_w, requires_grad=True)
    baselines = ik.estimators.leave_one_out_bounds(log_w.detach())
    finite = torch.isfinite(vimco_baselines(log_w.detach()))
    torch.testing.assert_close(baselines[finite], vimco_baselines(log_w.detach())[finite], rtol=1e-12, atol=0)
    assert torch.isneginf(baselines[~finite]).all() and finite.sum() == 8
    bound = ik.estimator_bound(log_w, "vimco", log_q=log_q, backend="torch")
    torch.testing.assert_close(bound, naive_iwae_bound(log_w.detach()))
    bound.sum().backward()
    assert not torch.isnan(log_w.grad).any() and not torch.isnan(log_q.grad).any()
    assert (log_q.grad[:, 1] == 0).all() and log_q.grad[0, 2] == 0 and (log_q.grad[:, [0, 3]] != 0).all()


def test_estimator_bound_rws_and_vimco_take_any_latent_through_log_q():
    """estimator_bound(log_w, "rws" / "vimco", log_q=...) on a Bernoulli latent with a logistic encoder and a learned
    prior (no reparameterization path): the model's gradient is L_k's, the encoder's sum_i wt_i grad log q_i
    (wake-phi) or TFP's VIMCO surrogate's; the value is L_k."""
    torch.manual_seed(0)
    encoder, decoder = nn.Linear(12, 4).double(), nn.Linear(4, 12).double()
    prior_logits = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    model_params, encoder_params = [*decoder.parameters(), prior_logits], list(encoder.parameters())
    x = binary_batch(3, 12, 1, torch.device("cpu"))
    posterior = torch.distributions.Bernoulli(logits=encoder(x))
    z = posterior.sample((5,))  # [k, B, D]
    log_q = posterior.log_prob(z).sum(-1)
    log_joint = (torch.distributions.Bernoulli(logits=decoder(z)).log_prob(x).sum(-1)
                 + torch.distributions.Bernoulli(logits=prior_logits).log_prob(z).sum(-1))
    log_w = log_joint - log_q.detach()
    iwae = naive_iwae_bound(log_w)
    wake_phi = (torch.softmax(log_w.detach(), 0) * log_q).sum(0)
    for estimator, encoder_objective in (("rws", wake_phi), ("vimco", vimco_surrogate(log_w, log_q))):
        value = ik.estimator_bound(log_w, estimator, log_q=log_q, backend="torch")
        torch.testing.assert_close(value, iwae, rtol=1e-12, atol=1e-12)
        got = torch.autograd.grad(value.sum(), model_params + encoder_params, retain_graph=True)
        want = (torch.autograd.grad(iwae.sum(), model_params, retain_graph=True)
                + torch.autograd.grad(encoder_objective.sum(), encoder_params, retain_graph=True))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
