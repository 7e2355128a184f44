"""Annealed importance sampling (AIS) and bidirectional Monte Carlo (BDMC) estimates of log p(x) for any decoder
(Neal 2001; Wu, Burda, Salakhutdinov & Grosse 2017; Grosse, Ghahramani & Adams 2015); docs/MATH.md, "AIS and BDMC".

Shapes: C chains per example (always the leading dim, like L_k's k samples, so the decoder runs on every chain at
once), B examples, D latent dimensions. The likelihood is the library's op (the backend's), its gradient w.r.t. z
comes from autograd, and the Hamiltonian Monte Carlo updates are plain torch.
"""

import math
from typing import NamedTuple

import torch
from torch import nn

from . import _checks, functional
from .backend import get_backend
from .evaluation import progress_bar
from .functional import Decoder, Device

SCHEDULES = ("sigmoid", "linear")
# Steepness of the sigmoid schedule (Wu et al. 2017): b_t crowds toward both ends, where log f_t changes fastest.
SIGMOID_DELTA = 4.0
# Step-size adaptation: log(step) += rate * (accepted - target_acceptance) per chain and transition, so a chain's
# step grows while it accepts more often than the target and shrinks otherwise (at rate 0.05 and target 0.65: x1.018
# on accept, x0.968 on reject). The range keeps a run of rejections from freezing a chain and a run of acceptances
# (a flat target near b = 0) from stepping past the posterior's scale.
STEP_SIZE_ADAPTATION_RATE = 0.05
STEP_SIZE_RANGE = (1e-4, 1.0)
_LOG_2PI = math.log(2 * math.pi)


class BDMCBounds(NamedTuple):
    """BDMC's sandwich of log p(x) [B] (float64): lower from the forward chain, upper from the reverse one."""
    lower: torch.Tensor
    upper: torch.Tensor


class _ChainState(NamedTuple):
    """Chains at z [C, B, D] with their log p(x|z) [C, B] and its gradient w.r.t. z [C, B, D]."""
    z: torch.Tensor
    log_likelihood: torch.Tensor
    grad_log_likelihood: torch.Tensor


class _HMCSettings(NamedTuple):
    leapfrog: int
    step_size: float
    target_acceptance: float
    generator: torch.Generator | None


def _diagonal_normal_log_density(z, mean, logvar):
    """log N(z; mean, exp(logvar)) summed over D: z [C, B, D], mean and logvar broadcastable -> [C, B]."""
    return -0.5 * (_LOG_2PI + logvar + (z - mean) ** 2 * torch.exp(-logvar)).sum(-1)


class _AnnealingPath:
    """The geometric path log f_b(z) = log q(z|x) + b h(z), with h(z) = log p(z) + log p(x|z) - log q(z|x),
    from q(z|x) = N(mu, exp(logvar)) at b = 0 to the unnormalized posterior p(z) p(x|z) at b = 1."""

    def __init__(self, x, mu, logvar, *, decoder, log_likelihood, likelihood, flatten_samples):
        self.x, self.mu, self.logvar = x, mu, logvar
        self.decoder, self.log_likelihood, self.likelihood = decoder, log_likelihood, likelihood
        self.flatten_samples = flatten_samples

    def state(self, z):
        """The chains at z [C, B, D]: the decoder runs once, and autograd gives d log p(x|z) / dz alone (the
        decoder's parameters get no .grad), also under the caller's torch.no_grad()."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            out = functional._decode(self.decoder, z, self.flatten_samples)
            inputs = functional._likelihood_inputs(out, self.x, z.shape[0], likelihood=self.likelihood,
                                                   check_finite=False)
            log_likelihood = self.log_likelihood(*inputs).to(z.dtype)
            (grad,) = torch.autograd.grad(log_likelihood.sum(), z)
        return _ChainState(z.detach(), log_likelihood.detach(), grad)

    def log_weight_increment(self, state):
        """h(z) [C, B] = d log f_b / db: each step's log-weight is (b_t - b_{t-1}) h at the current state."""
        log_prior = -0.5 * (_LOG_2PI + state.z ** 2).sum(-1)
        return log_prior + state.log_likelihood - _diagonal_normal_log_density(state.z, self.mu, self.logvar)

    def log_density(self, state, beta):
        """log f_b(z) [C, B] (unnormalized)."""
        return _diagonal_normal_log_density(state.z, self.mu, self.logvar) + beta * self.log_weight_increment(state)

    def grad_log_density(self, state, beta):
        """d log f_b / dz [C, B, D] = (1 - b) d log q + b (d log p(z) + d log p(x|z)); the Gaussians' by hand."""
        grad_log_q = -(state.z - self.mu) * torch.exp(-self.logvar)
        return (1 - beta) * grad_log_q + beta * (state.grad_log_likelihood - state.z)


def annealing_schedule(steps: int, schedule: str = "sigmoid") -> torch.Tensor:
    """The inverse temperatures 0 = b_0 < b_1 < ... < b_T = 1 of a T-step path, a [T + 1] float64 tensor (CPU).

    "linear": b_t = t / T. "sigmoid" (Wu et al. 2017): b_t = (s(t) - s(0)) / (s(T) - s(0)) for
    s(t) = sigmoid(delta (2 t / T - 1)), delta = SIGMOID_DELTA: smaller steps near both ends.
    """
    steps = _checks.check_positive_int("steps", steps)
    _checks.check_choice("schedule", schedule, SCHEDULES)
    fraction = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    if schedule == "linear":
        return fraction
    s = torch.sigmoid(SIGMOID_DELTA * (2 * fraction - 1))
    return (s - s[0]) / (s[-1] - s[0])


def _hmc_transition(path, state, beta, *, step_size, settings):
    """One HMC transition leaving f_beta invariant, per chain: ``settings.leapfrog`` leapfrog steps of size
    step_size [C, B] on U = -log f_beta with momentum ~ N(0, I), then a Metropolis accept.

    Returns the new state and the accepted mask [C, B] (a NaN or inf proposal is rejected).
    """
    step = step_size.unsqueeze(-1)
    initial_momentum = torch.randn(state.z.shape, generator=settings.generator, dtype=state.z.dtype,
                                   device=state.z.device)
    proposal = state
    momentum = initial_momentum + 0.5 * step * path.grad_log_density(proposal, beta)
    for index in range(settings.leapfrog):
        proposal = path.state(proposal.z + step * momentum)
        # Full momentum steps between positions, a half step after the last one.
        kick = step if index < settings.leapfrog - 1 else 0.5 * step
        momentum = momentum + kick * path.grad_log_density(proposal, beta)
    log_acceptance = (path.log_density(proposal, beta) - 0.5 * (momentum ** 2).sum(-1)
                      - path.log_density(state, beta) + 0.5 * (initial_momentum ** 2).sum(-1))
    uniform = torch.rand(log_acceptance.shape, generator=settings.generator, dtype=log_acceptance.dtype,
                         device=log_acceptance.device)
    accepted = torch.log(uniform) < log_acceptance  # False for NaN
    keep = accepted.unsqueeze(-1)
    return _ChainState(torch.where(keep, proposal.z, state.z),
                       torch.where(accepted, proposal.log_likelihood, state.log_likelihood),
                       torch.where(keep, proposal.grad_log_likelihood, state.grad_log_likelihood)), accepted


def _adapted_step_size(step_size, accepted, target_acceptance):
    """Step sizes [C, B] after one transition: see STEP_SIZE_ADAPTATION_RATE and STEP_SIZE_RANGE."""
    change = STEP_SIZE_ADAPTATION_RATE * (accepted.to(step_size.dtype) - target_acceptance)
    return (step_size * torch.exp(change)).clamp(*STEP_SIZE_RANGE)


def _annealed_log_weights(path, state, betas, *, settings, progress, description):
    """The log-weights [C, B] (float64) of chains annealed from ``state`` along betas (a list b_0..b_T, increasing
    for the forward chain, decreasing for the reverse one): for t = 1..T, log w += (b_t - b_{t-1}) h(z), then an
    HMC transition leaving f_{b_t} invariant (none after the last increment: it could not change the weight, so
    T = 1 is plain importance sampling)."""
    log_w = torch.zeros(state.log_likelihood.shape, dtype=torch.float64, device=state.z.device)
    step_size = torch.full(state.log_likelihood.shape, settings.step_size, dtype=state.z.dtype, device=state.z.device)
    bar = progress_bar(len(betas) - 1, description, progress, unit="step", unit_scale=False)
    for t in range(len(betas) - 1):
        log_w += (betas[t + 1] - betas[t]) * path.log_weight_increment(state).double()
        if t + 1 < len(betas) - 1:
            state, accepted = _hmc_transition(path, state, betas[t + 1], step_size=step_size, settings=settings)
            step_size = _adapted_step_size(step_size, accepted, settings.target_acceptance)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return log_w


def _log_mean_exp(log_w, backend):
    """logsumexp over the chains of log_w [C, B] minus log C -> [B] float64, by the (max, sum) fold of L_k."""
    accumulator = functional.StreamingIWAEBound(log_w.shape[1], device=log_w.device, dtype=torch.float64,
                                                backend=backend)
    accumulator.update(log_w)
    return accumulator.bound()


def _check_annealing_args(x, decoder, *, mu, logvar, latent_dim, steps, chains, leapfrog, likelihood, schedule,
                          step_size, target_acceptance, generator):
    """Check AIS's arguments (before any work); returns (steps, chains, leapfrog, mu, logvar), with mu, logvar the
    prior's zeros [B, latent_dim] in x's dtype when annealing from the prior."""
    steps, chains, leapfrog = (_checks.check_positive_int(name, value)
                               for name, value in (("steps", steps), ("chains", chains), ("leapfrog", leapfrog)))
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not 0 < step_size < math.inf:
        raise ValueError(f"step_size: expected a finite number > 0, got {step_size!r}")
    if (isinstance(target_acceptance, bool) or not isinstance(target_acceptance, (int, float))
            or not 0 < target_acceptance < 1):
        raise ValueError(f"target_acceptance: expected a number in (0, 1), got {target_acceptance!r}")
    _checks.check_choice("schedule", schedule, SCHEDULES)
    if (mu is None) != (logvar is None):
        raise ValueError("mu, logvar: give both (anneal from q(z|x)) or neither (anneal from the prior N(0, I))")
    if mu is None:
        if latent_dim is None:
            raise ValueError("latent_dim: required when mu and logvar are None (annealing from the prior)")
        latent_dim = _checks.check_positive_int("latent_dim", latent_dim)
        _checks.check_tensor("x", x, tuple(d + 1 for d in functional.EVENT_DIMS))
        mu = logvar = x.new_zeros((x.shape[0], latent_dim))  # q = the prior: h(z) = log p(x|z)
    elif latent_dim is not None:
        raise ValueError("latent_dim: give it only when mu and logvar are None (else it is mu.shape[1])")
    functional._check_loss_args(x, mu, logvar, decoder=decoder, k=chains, likelihood=likelihood, eps=None,
                                generator=generator, check_finite=False)
    return steps, chains, leapfrog, mu, logvar


def _prepare_annealing(x, decoder, *, z, mu, logvar, latent_dim, steps, chains, leapfrog, likelihood, schedule,
                       step_size, target_acceptance, generator, backend, flatten_samples):
    """AIS's and BDMC's arguments checked before any work (z: BDMC's exact posterior samples [B, D], or None),
    then (the annealing path, chains, the schedule's betas, the HMC settings)."""
    compute_like = "x" if mu is None else "mu"  # the chains' dtype and device
    steps, chains, leapfrog, mu, logvar = _check_annealing_args(
        x, decoder, mu=mu, logvar=logvar, latent_dim=latent_dim, steps=steps, chains=chains, leapfrog=leapfrog,
        likelihood=likelihood, schedule=schedule, step_size=step_size, target_acceptance=target_acceptance,
        generator=generator)
    if z is not None:
        _checks.check_tensor("z", z, (2,), like=(compute_like, mu))
        _checks.check_shape("z", z, mu.shape)
    path = _annealing_setup(x, decoder, mu=mu, logvar=logvar, likelihood=likelihood, backend=backend,
                            flatten_samples=flatten_samples)
    settings = _HMCSettings(leapfrog=leapfrog, step_size=float(step_size),
                            target_acceptance=float(target_acceptance), generator=generator)
    return path, chains, annealing_schedule(steps, schedule).tolist(), settings


def _annealing_setup(x, decoder, *, mu, logvar, likelihood, backend, flatten_samples):
    """The path from q(z|x) (or the prior) to the posterior, on the backend's likelihood op (arguments checked)."""
    log_likelihood, _ = functional._likelihood_ops(get_backend(backend, mu.device), likelihood)
    return _AnnealingPath(x, mu, logvar, decoder=decoder, log_likelihood=log_likelihood, likelihood=likelihood,
                          flatten_samples=flatten_samples)


def _forward_log_weights(path, chains, betas, *, settings, progress):
    """The forward chains' log-weights [C, B]: z_0 ~ q(z|x), then annealed up the path."""
    mu, logvar = path.mu, path.logvar
    noise = torch.randn((chains,) + tuple(mu.shape), generator=settings.generator, dtype=mu.dtype, device=mu.device)
    start = path.state(mu + torch.exp(0.5 * logvar) * noise)
    return _annealed_log_weights(path, start, betas, settings=settings, progress=progress, description="AIS")


def ais_log_likelihood(x: torch.Tensor, decoder: Decoder, *, mu: torch.Tensor | None = None,
                       logvar: torch.Tensor | None = None, latent_dim: int | None = None, steps: int = 500,
                       chains: int = 16, leapfrog: int = 10, likelihood: str = "bernoulli", schedule: str = "sigmoid",
                       step_size: float = 0.05, target_acceptance: float = 0.65,
                       generator: torch.Generator | None = None, flatten_samples: bool = False,
                       backend: str | None = None, progress: bool = False) -> torch.Tensor:
    """Per-example AIS estimates of log p(x): C chains annealed from q(z|x) (or the prior) to the posterior
    p(z|x) along f_t = q^(1 - b_t) (p(z) p(x|z))^(b_t), with HMC transitions (docs/MATH.md, "AIS and BDMC").

    Each chain's log-weight is sum_t (b_t - b_{t-1}) [log p(z) + log p(x|z) - log q(z|x)] at its state before the
    t-th transition; the estimate is logsumexp_c log w_c - log C: unbiased in p(x), so a stochastic lower bound
    on log p(x) that tightens as ``steps`` grows. steps=1 has no transition: importance sampling with ``chains``
    samples from q, i.e. L_C.

    Args:
        x: data [B, *event] (Bernoulli targets in [0, 1], or real values for "gaussian").
        decoder: callable; gets z [C, B, D] (or [C * B, D] with ``flatten_samples=True``) and returns logits
            [C, B, *event] ("bernoulli") or a (mean, logvar) pair of [C, B, *event] ("gaussian"), as for
            ``iwae_loss``. Its parameters get no gradient: autograd differentiates w.r.t. z only.
        mu, logvar: the encoder's q(z|x) = N(mu, exp(logvar)), [B, D] each; both None anneals from the prior
            N(0, I), and then ``latent_dim`` (D) is required (and refused otherwise).
        steps: T >= 1 annealing steps (T - 1 HMC transitions).
        chains: C >= 1 chains per example.
        leapfrog: leapfrog steps per HMC transition.
        schedule: the inverse temperatures b_t: "sigmoid" or "linear" (``annealing_schedule``).
        step_size: every chain's initial leapfrog step size (> 0), then adapted per chain and example toward
            ``target_acceptance`` in (0, 1) (STEP_SIZE_ADAPTATION_RATE, STEP_SIZE_RANGE).
        generator: a torch.Generator on x's device for all the noise (default torch's global RNG).
        backend: the likelihood op's backend (``iwae_kernels.backend``).
        progress: a tqdm bar over the steps when tqdm is installed.

    Returns:
        log p(x) estimates [B], float64. The chains run in mu's dtype (x's from the prior); the log-weights
        accumulate in float64. Works under torch.no_grad() (the HMC enables grad locally).

    Examples::

        >>> import torch
        >>> from iwae_kernels import ais_log_likelihood, iwae_bound
        >>> _ = torch.manual_seed(0)
        >>> x = torch.rand(2, 6).round()  # B = 2 binary images of P = 6 pixels
        >>> decoder = torch.nn.Linear(3, 6)  # D = 3
        >>> log_px = ais_log_likelihood(x, decoder, latent_dim=3, steps=10, chains=4, leapfrog=2)  # from the prior
        >>> log_px.shape, log_px.dtype
        (torch.Size([2]), torch.float64)
        >>> mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)  # or from the encoder's q(z|x)
        >>> ais_log_likelihood(x, decoder, mu=mu, logvar=logvar, steps=10, chains=4, leapfrog=2).shape
        torch.Size([2])
    """
    path, chains, betas, settings = _prepare_annealing(
        x,
        decoder,
        z=None,
        mu=mu,
        logvar=logvar,
        latent_dim=latent_dim,
        steps=steps,
        chains=chains,
        leapfrog=leapfrog,
        likelihood=likelihood,
        schedule=schedule,
        step_size=step_size,
        target_acceptance=target_acceptance,
        generator=generator,
        backend=backend,
        flatten_samples=flatten_samples,
    )
    log_w = _forward_log_weights(path, chains, betas, settings=settings, progress=progress)
    return _log_mean_exp(log_w, backend)


def bdmc(x: torch.Tensor, z: torch.Tensor, decoder: Decoder, *, mu: torch.Tensor | None = None,
         logvar: torch.Tensor | None = None, latent_dim: int | None = None, steps: int = 500, chains: int = 16,
         leapfrog: int = 10, likelihood: str = "bernoulli", schedule: str = "sigmoid", step_size: float = 0.05,
         target_acceptance: float = 0.65, generator: torch.Generator | None = None, flatten_samples: bool = False,
         backend: str | None = None, progress: bool = False) -> BDMCBounds:
    """Bidirectional Monte Carlo (Grosse et al. 2015): stochastic lower and upper bounds on log p(x) for data
    simulated from the model (``simulate_data``), whose gap shrinks to 0 as ``steps`` grows.

    lower: ``ais_log_likelihood`` on x (the forward chains, b from 0 to 1).
    upper: every reverse chain starts at the exact posterior sample z (the latent x was drawn from) and runs the
    same transitions in reverse order, b from 1 down to 0. Its log-weight is
    log w_rev = sum_{t=T..1} [log f_{t-1}(z) - log f_t(z)] = -sum_t (b_t - b_{t-1}) h(z), h = log p(z) +
    log p(x|z) - log q(z|x), each at the state before the transition that leaves f_{t-1} invariant. This is AIS
    from f_T / p(x) (normalized: z starts exactly there) to f_0 = q (normalized), so E[w_rev] = 1 / p(x); by
    Jensen E[logsumexp_c log w_rev,c - log C] <= -log p(x), and
    upper = -(logsumexp_c log w_rev,c - log C) >= log p(x) in expectation.

    Args:
        x: simulated data [B, *event]; z: the latents it was drawn from [B, D] (the compute dtype: mu's, or x's
            from the prior).
        decoder, mu, logvar, latent_dim, steps, chains, leapfrog, likelihood, schedule, step_size,
            target_acceptance, generator, flatten_samples, backend, progress: as for ``ais_log_likelihood``;
            both directions use them (the reverse chains adapt their own step sizes the same way).

    Returns:
        BDMCBounds(lower [B], upper [B]), float64.

    Examples::

        >>> import torch
        >>> from iwae_kernels import bdmc, simulate_data
        >>> _ = torch.manual_seed(0)
        >>> decoder = torch.nn.Linear(3, 6)  # D = 3 -> P = 6
        >>> x, z = simulate_data(decoder, num_examples=2, latent_dim=3)  # z: an exact posterior sample for x
        >>> bounds = bdmc(x, z, decoder, latent_dim=3, steps=10, chains=4, leapfrog=2)
        >>> bounds.lower.shape, bounds.upper.shape
        (torch.Size([2]), torch.Size([2]))
    """
    path, chains, betas, settings = _prepare_annealing(
        x,
        decoder,
        z=z,
        mu=mu,
        logvar=logvar,
        latent_dim=latent_dim,
        steps=steps,
        chains=chains,
        leapfrog=leapfrog,
        likelihood=likelihood,
        schedule=schedule,
        step_size=step_size,
        target_acceptance=target_acceptance,
        generator=generator,
        backend=backend,
        flatten_samples=flatten_samples,
    )
    lower = _log_mean_exp(_forward_log_weights(path, chains, betas, settings=settings, progress=progress), backend)
    start = path.state(z.detach().expand((chains,) + tuple(z.shape)))
    reverse_log_w = _annealed_log_weights(
        path,
        start,
        betas[::-1],
        settings=settings,
        progress=progress,
        description="BDMC reverse",
    )
    return BDMCBounds(lower, -_log_mean_exp(reverse_log_w, backend))


@torch.no_grad()
def simulate_data(decoder: Decoder, num_examples: int, latent_dim: int, *, likelihood: str = "bernoulli",
                  generator: torch.Generator | None = None, flatten_samples: bool = False,
                  dtype: torch.dtype | None = None, device: Device = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Data drawn from the model: z ~ N(0, I), x ~ p(x|z); (x, z) is an exact joint sample, so z is an exact
    posterior sample for x (BDMC's reverse chains start there).

    Args:
        decoder: as for ``ais_log_likelihood`` (it gets z [1, N, D], or [N, D] with ``flatten_samples``).
        num_examples: N >= 1; latent_dim: D >= 1.
        likelihood: "bernoulli" (x ~ Bernoulli(sigmoid(logits)), as 0./1.) or "gaussian" (x = mean +
            exp(logvar / 2) eps).
        generator: a torch.Generator on ``device`` (default torch's global RNG).
        dtype, device: z's; default the decoder's first parameter's when it is an nn.Module with parameters,
            else torch's default dtype and the generator's device (the CPU without one).

    Returns:
        x [N, *event] and z [N, D].

    Examples::

        >>> import torch
        >>> from iwae_kernels import simulate_data
        >>> _ = torch.manual_seed(0)
        >>> decoder = torch.nn.Linear(3, 6)  # D = 3 -> P = 6
        >>> x, z = simulate_data(decoder, num_examples=4, latent_dim=3)
        >>> x.shape, z.shape, set(x.unique().tolist()) <= {0.0, 1.0}
        (torch.Size([4, 6]), torch.Size([4, 3]), True)
        >>> gaussian_decoder = lambda z: (decoder(z), torch.zeros(z.shape[:-1] + (6,)))  # (mean, logvar)
        >>> simulate_data(gaussian_decoder, 4, 3, likelihood="gaussian")[0].shape
        torch.Size([4, 6])
    """
    num_examples = _checks.check_positive_int("num_examples", num_examples)
    latent_dim = _checks.check_positive_int("latent_dim", latent_dim)
    _checks.check_choice("likelihood", likelihood, functional.LIKELIHOODS)
    if not callable(decoder):
        raise TypeError(f"decoder: expected a callable (an nn.Module or function), got {type(decoder).__name__}")
    functional._check_generator(generator)
    parameter = next(decoder.parameters(), None) if isinstance(decoder, nn.Module) else None
    if dtype is None:
        dtype = torch.get_default_dtype() if parameter is None else parameter.dtype
    if device is None:
        device = parameter.device if parameter is not None else generator.device if generator is not None else "cpu"
    z = torch.randn((1, num_examples, latent_dim), generator=generator, dtype=dtype, device=device)
    out = functional._decode(decoder, z, flatten_samples)
    if likelihood == "bernoulli":
        probs = torch.sigmoid(out[0])
        x = (torch.rand(probs.shape, generator=generator, dtype=probs.dtype, device=probs.device) < probs)
        return x.to(probs.dtype), z[0]
    mean, logvar = out[0][0], out[1][0]
    noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
    return mean + torch.exp(0.5 * logvar) * noise, z[0]
