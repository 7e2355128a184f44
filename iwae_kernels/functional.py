"""The public functions: argument checks, backend dispatch, and the drop-in ``iwae_loss``.

Shapes: k samples (always the leading dim), B examples, D latent dimensions, P observed dimensions.
Every function takes ``backend=None`` ("torch" | "triton"; see ``iwae_kernels.backend``).
"""

import torch

from . import _checks
from .backend import get_backend
from . import reference
from .reference import bound_from_max_sum, decoder_head_max_hidden

ESTIMATORS = ("iwae", "vae", "stl", "dreg", "iwae-resample")
LIKELIHOODS = ("bernoulli", "gaussian")
REDUCTIONS = ("mean", "sum", "none")


def _latent_scale(name, value, like):
    """A float or 0-dim tensor weight on the latent term -> None (weight 1) or a 0-dim tensor on like's device."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or not value.is_floating_point():
            raise ValueError(f"{name}: expected a float or a 0-dim floating tensor, got shape {tuple(value.shape)}, "
                             f"dtype {value.dtype}")
        _checks.check_same_device(name, value, "mu", like)
        return value
    if not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return None if value == 1 else torch.tensor(float(value), dtype=torch.float64, device=like.device)


def _check_gaussian_sample_args(mu, logvar, k, eps, prior_mu, prior_logvar, estimator, generator):
    _checks.check_sample_count(k)
    _checks.check_tensor("mu", mu, (2, 3))
    _checks.check_tensor("logvar", logvar, (2, 3), like=("mu", mu))
    _checks.check_shape("logvar", logvar, mu.shape)
    if mu.dim() == 3 and mu.shape[0] != k:
        raise ValueError(f"mu: a per-sample mu must have shape [k={k}, B, D], got {tuple(mu.shape)}")
    batch, dim = mu.shape[-2:]
    if eps is not None:
        _checks.check_tensor("eps", eps, (3,), like=("mu", mu))
        _checks.check_shape("eps", eps, (k, batch, dim))
    if (prior_mu is None) != (prior_logvar is None):
        raise ValueError("prior_mu, prior_logvar: give both (a diagonal Gaussian prior) or neither (standard normal)")
    if prior_mu is not None:
        _checks.check_tensor("prior_mu", prior_mu, (2, 3), like=("mu", mu))
        _checks.check_tensor("prior_logvar", prior_logvar, (2, 3), like=("mu", mu))
        if tuple(prior_mu.shape) not in ((batch, dim), (k, batch, dim)):
            raise ValueError(f"prior_mu: expected shape {(batch, dim)} or {(k, batch, dim)}, got {tuple(prior_mu.shape)}")
        _checks.check_shape("prior_logvar", prior_logvar, prior_mu.shape)
    _checks.check_choice("estimator", estimator, ESTIMATORS)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")


def gaussian_sample(mu, logvar, k, *, eps=None, prior_mu=None, prior_logvar=None, estimator="iwae",
                    generator=None, include_prior=True, latent_scale=None, backend=None):
    """Draw k reparameterized samples z = mu + exp(logvar / 2) * eps and their latent log-weights.

    Args:
        mu, logvar: [B, D], or [k, B, D] when the posterior differs per sample (upper stochastic layers).
        k: number of samples, >= 1.
        eps: optional noise [k, B, D]. Without it the noise is drawn inside the kernel from a seed taken from
            torch's RNG (``generator`` or the default one, so ``torch.manual_seed`` makes runs repeat), and
            regenerated in backward instead of stored. The torch and triton backends draw different noise.
        prior_mu, prior_logvar: a diagonal Gaussian prior, [B, D] or [k, B, D]; standard normal when None.
        estimator: the encoder-side gradient: "iwae" / "vae" / "iwae-resample" (the exact derivative),
            "stl" (Roeder et al. 2017), "dreg" (Tucker et al. 2018; reads the normalized weights from the
            gradient arriving at the log-weight output, so that must come from ``iwae_bound``).
        include_prior: False drops log p(z): the latent term is then -log q(z|x) (log 2pi included), which a
            normalizing flow needs (it adds log p(z_K) and the log-determinants itself).
        latent_scale: a weight beta >= 0 on the latent term (KL annealing), a float or a 0-dim tensor (a tensor
            can change between CUDA-graph replays); None is 1.

    Returns:
        z [k, B, D] in mu's dtype, and latent_scale * (log p(z) - log q(z|x)) [k, B] (float32 for half inputs).
    """
    _check_gaussian_sample_args(mu, logvar, k, eps, prior_mu, prior_logvar, estimator, generator)
    if not include_prior and prior_mu is not None:
        raise ValueError("include_prior: False drops the prior, so prior_mu and prior_logvar must be None")
    scale = _latent_scale("latent_scale", latent_scale, mu)
    ops = get_backend(backend, mu.device)
    return ops.gaussian_sample(mu, logvar, k, eps, prior_mu, prior_logvar, estimator, generator, include_prior, scale)


def categorical_log_likelihood(logits, tokens, mask=None, *, backend=None):
    """Token-sequence log-likelihood under a softmax decoder, log-softmax and gather fused: the compiled backends
    never form the [k, B, T, V] log-probabilities (a language-model decoder's largest tensor).

    Args:
        logits: [k, B, T, V]; tokens: [B, T] int64 in [0, V); mask: [B, T] (1 for real tokens, 0 for padding;
            default all ones).
    Returns:
        sum_t mask log p(tokens | logits) [k, B] (float32 for half logits). Checks the token range (a device sync).
    """
    _checks.check_tensor("logits", logits, (4,))
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.int64 or tokens.dim() != 2:
        raise TypeError(f"tokens: expected an int64 [B, T] tensor, got {getattr(tokens, 'dtype', type(tokens).__name__)} "
                        f"of shape {tuple(getattr(tokens, 'shape', ()))}")
    _checks.check_same_device("tokens", tokens, "logits", logits)
    _checks.check_shape("tokens", tokens, logits.shape[1:3])
    vocab = logits.shape[-1]
    if tokens.min().item() < 0 or tokens.max().item() >= vocab:
        raise ValueError(f"tokens: expected ids in [0, V={vocab}), got min {tokens.min().item()}, max {tokens.max().item()}")
    acc = reference.accumulation_dtype(logits.dtype)
    if mask is None:
        mask = torch.ones(tokens.shape, dtype=acc, device=logits.device)
    else:
        _checks.check_same_device("mask", mask, "logits", logits)
        _checks.check_shape("mask", mask, tokens.shape)
        mask = mask.to(acc)
    return get_backend(backend, logits.device).categorical_log_likelihood(logits, tokens, mask)


def local_reparam_linear(input, weight_mu, weight_var, bias=None, *, noise=None, generator=None, backend=None):
    """Pre-activations of a linear layer with factorized Gaussian weights W ~ N(weight_mu, weight_var), sampled
    by the local reparameterization trick: input @ mu^T + sqrt(input^2 @ var^T) * zeta + bias, zeta ~ N(0, 1)
    independent per row and output (the compiled backends form both matmuls and the noise in one kernel).

    Args:
        input: [..., K]; weight_mu, weight_var: [N, K] (var >= 0); bias: [N] or None.
        noise: optional zeta [..., N]; else drawn (in the kernel for the compiled backends).
    Returns:
        [..., N] in input's dtype.
    """
    _checks.check_tensor("input", input, tuple(range(1, 9)))
    _checks.check_tensor("weight_mu", weight_mu, (2,), like=("input", input))
    _checks.check_tensor("weight_var", weight_var, (2,), like=("input", input))
    _checks.check_shape("weight_var", weight_var, weight_mu.shape)
    size, width = weight_mu.shape
    if input.shape[-1] != width:
        raise ValueError(f"input: expected last dim K={width} (weight_mu is [N, K]), got shape {tuple(input.shape)}")
    if bias is not None:
        _checks.check_tensor("bias", bias, (1,), like=("input", input))
        _checks.check_shape("bias", bias, (size,))
    leading = tuple(input.shape[:-1])
    if noise is not None:
        _checks.check_tensor("noise", noise, (len(leading) + 1,), like=("input", input))
        _checks.check_shape("noise", noise, leading + (size,))
        noise = noise.reshape(-1, size)
    ops = get_backend(backend, input.device)
    out = ops.local_reparam_linear(input.reshape(-1, width), weight_mu, weight_var, bias, noise, generator)
    return out.reshape(leading + (size,))


def _check_observation(name, value, x):
    _checks.check_tensor(name, value, (3,))
    _checks.check_tensor("x", x, (2,))
    _checks.check_same_device("x", x, name, value)
    if tuple(x.shape) != tuple(value.shape[1:]):
        raise ValueError(f"x: expected shape [B, P] = {tuple(value.shape[1:])} to match {name}, got {tuple(x.shape)}")


def bernoulli_log_likelihood(logits, x, *, backend=None):
    """log p(x|z) = sum_j x_j y_j - softplus(y_j) for logits y [k, B, P] and targets x [B, P] in [0, 1].

    Returns [k, B] (float32 for half logits). Gradient flows to logits only.
    """
    _check_observation("logits", logits, x)
    return get_backend(backend, logits.device).bernoulli_log_likelihood(logits, x)


def gaussian_log_likelihood(mean, logvar, x, *, backend=None):
    """Diagonal-Gaussian log p(x|z) for mean, logvar [k, B, P] and x [B, P]; returns [k, B].

    Gradient flows to mean and logvar only.
    """
    _check_observation("mean", mean, x)
    _checks.check_tensor("logvar", logvar, (3,), like=("mean", mean))
    _checks.check_shape("logvar", logvar, mean.shape)
    return get_backend(backend, mean.device).gaussian_log_likelihood(mean, logvar, x)


def bernoulli_decoder_log_likelihood(hidden, weight, bias, x, *, backend=None):
    """The decoder's last linear layer fused with the Bernoulli log-likelihood: the [k, B, P] logits
    hidden @ weight.T + bias are never written to memory by the compiled backends (the torch one forms them).

    Args:
        hidden: the decoder's last hidden activations [k, B, H] (for the compiled backends H <= 512 in float32,
            1024 in float16/bfloat16: reference.DECODER_HEAD_MAX_HIDDEN).
        weight, bias: that layer's [P, H] weight and [P] bias (an nn.Linear's).
        x: Bernoulli targets [B, P].
    Returns:
        [k, B] (float32 for half inputs); gradients flow to hidden, weight and bias.
    """
    if torch.is_autocast_enabled(hidden.device.type):
        # It stands in for a linear layer, so it casts as F.linear does under autocast.
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight, bias = hidden.to(dtype), weight.to(dtype), bias.to(dtype)
    _checks.check_tensor("hidden", hidden, (3,))
    _checks.check_tensor("weight", weight, (2,), like=("hidden", hidden))
    _checks.check_tensor("bias", bias, (1,), like=("hidden", hidden))
    _checks.check_tensor("x", x, (2,))
    _checks.check_same_device("x", x, "hidden", hidden)
    size, width = weight.shape
    if width != hidden.shape[-1]:
        raise ValueError(f"weight: expected shape [P, H={hidden.shape[-1]}], got {tuple(weight.shape)}")
    _checks.check_shape("bias", bias, (size,))
    _checks.check_shape("x", x, (hidden.shape[1], size))
    ops = get_backend(backend, hidden.device)
    limit = decoder_head_max_hidden(hidden.dtype)
    if ops is not reference and limit is not None and width > limit:
        raise ValueError(f"hidden: the fused decoder head holds H <= {limit} per row for {hidden.dtype}, "
                         f"got H={width}; use backend='torch'")
    return ops.bernoulli_decoder_log_likelihood(hidden, weight, bias, x)


def iwae_bound(log_w, *, backend=None):
    """The IWAE bound L_k = logsumexp_i(log w_i) - log k over dim 0 of log_w [k, B]; returns [B].

    Backward gives g * normalized weights. A column of all -inf gives -inf and zero gradient, never NaN.
    """
    _checks.check_tensor("log_w", log_w, (2,))
    return get_backend(backend, log_w.device).iwae_bound(log_w)


def normalized_weights(log_w, *, backend=None):
    """Self-normalized importance weights wt_i = w_i / sum_j w_j over dim 0 of log_w [k, B]; returns [k, B].

    An all -inf column gives all-zero weights.
    """
    _checks.check_tensor("log_w", log_w, (2,))
    return get_backend(backend, log_w.device).normalized_weights(log_w)


class StreamingIWAEBound:
    """L_k folded chunk by chunk: memory does not grow with k (MATH.md, large-k evaluation).

    >>> acc = StreamingIWAEBound(batch_size=B, device=x.device)
    >>> for chunk in range(0, 5000, 500): acc.update(log_w_chunk)   # each [kc, B]
    >>> acc.bound()                                                  # [B] == iwae_bound(all log-weights)

    No gradient flows through it; states from several processes combine with ``merge``.
    """

    def __init__(self, batch_size, *, device=None, dtype=torch.float32, backend=None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
        _checks.check_choice("dtype", dtype, (torch.float32, torch.float64))
        self.running_max = torch.full((batch_size,), -float("inf"), dtype=dtype, device=device)
        self.running_sum = torch.zeros((batch_size,), dtype=dtype, device=device)
        self.num_samples = 0
        self.backend = backend

    def update(self, log_w):
        """Fold log-weights [kc, B] (any kc >= 1) into the state."""
        _checks.check_tensor("log_w", log_w, (2,))
        _checks.check_same_device("log_w", log_w, "the accumulator", self.running_max)
        _checks.check_shape("log_w", log_w, (log_w.shape[0], self.running_max.shape[0]))
        ops = get_backend(self.backend, log_w.device)
        self.running_max, self.running_sum = ops.fold_max_sum(self.running_max, self.running_sum, log_w.detach())
        self.num_samples += log_w.shape[0]

    def merge(self, other):
        """Fold in another accumulator's state (the same examples, other samples)."""
        new_max = torch.maximum(self.running_max, other.running_max)
        shift = torch.where(torch.isneginf(new_max), torch.zeros_like(new_max), new_max)
        self.running_sum = (self.running_sum * torch.exp(self.running_max - shift)
                            + other.running_sum * torch.exp(other.running_max - shift))
        self.running_max = new_max
        self.num_samples += other.num_samples

    def bound(self):
        """L_k [B] over every sample folded so far."""
        if self.num_samples == 0:
            raise ValueError("StreamingIWAEBound.bound: no log-weights were folded in yet (call update first)")
        return bound_from_max_sum(self.running_max, self.running_sum, self.num_samples)


def _decode(decoder, z, flatten_samples):
    if not flatten_samples:
        return decoder(z)
    num_samples, batch, dim = z.shape
    out = decoder(z.reshape(num_samples * batch, dim))
    unflatten = lambda t: t.reshape(num_samples, batch, -1) if isinstance(t, torch.Tensor) else t
    return tuple(map(unflatten, out)) if isinstance(out, (tuple, list)) else unflatten(out)


def _check_decoder_output(name, value, expected_shape, check_finite):
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected_shape:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"decoder: expected {name} of shape [k, B, P] = {expected_shape}, got {got}")
    if check_finite:
        _checks.check_finite(f"decoder output ({name})", value)


def _log_likelihood(out, x, k, likelihood, check_finite, backend):
    """log p(x|z) [k, B] from the decoder's output, after checking it returned what the likelihood needs."""
    expected_shape = (k,) + tuple(x.shape)
    if likelihood == "bernoulli":
        _check_decoder_output("logits", out, expected_shape, check_finite)
        return bernoulli_log_likelihood(out, x, backend=backend)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError("decoder: for likelihood='gaussian' expected a (mean, logvar) pair of [k, B, P] tensors")
    _check_decoder_output("mean", out[0], expected_shape, check_finite)
    _check_decoder_output("logvar", out[1], expected_shape, check_finite)
    return gaussian_log_likelihood(out[0], out[1], x, backend=backend)


def _log_weights(x, mu, logvar, decoder, k, eps, generator, estimator, likelihood, flatten_samples, check_finite,
                 backend, beta=None):
    """log w [k, B] = log p(x|z) + beta (log p(z) - log q(z|x)) for k samples of z."""
    z, latent_log_weight = gaussian_sample(mu, logvar, k, eps=eps, estimator=estimator, generator=generator,
                                           latent_scale=beta, backend=backend)
    out = _decode(decoder, z, flatten_samples)
    return _log_likelihood(out, x, k, likelihood, check_finite, backend) + latent_log_weight


def resampled_iwae_bound(log_weights, noise, *, generator=None, backend=None):
    """The paper's single-sample backward (end of Sec. 3.1): value L_k [B], gradient of log w_j for one j ~ wt.

    ``log_weights(noise)`` computes log w [k', B] for a list of noise tensors, each [k', B, ...]; ``noise`` holds
    the k-sample noise. All k samples run forward without a graph; the chosen one is recomputed from its noise
    with a graph, so one backward pass does the work.
    """
    num_samples, batch = noise[0].shape[:2]
    device = noise[0].device
    with torch.no_grad():
        log_w = log_weights(noise)
        bound = iwae_bound(log_w, backend=backend)
        cumulative = normalized_weights(log_w, backend=backend).cumsum(0)
        uniform = torch.rand((batch,), generator=generator, device=device, dtype=cumulative.dtype)
        chosen = (cumulative < uniform * cumulative[-1]).sum(0).clamp(max=num_samples - 1)
    examples = torch.arange(batch, device=device)
    chosen_log_w = log_weights([eps[chosen, examples].unsqueeze(0) for eps in noise])[0]
    # Value L_k, gradient of log w_j; an all -inf example keeps -inf with zero gradient.
    finite = torch.isfinite(chosen_log_w)
    return torch.where(finite, chosen_log_w + (bound - torch.where(finite, chosen_log_w, 0)).detach(), bound)


def kl_warmup(step, warmup_steps, start=0.0):
    """The KL-annealing weight beta for training step ``step`` (Bowman et al. 2016): rises linearly from ``start``
    to 1 over ``warmup_steps`` steps, then stays 1. Pass it as ``iwae_loss(..., beta=...)``."""
    if warmup_steps < 0 or not 0 <= start <= 1:
        raise ValueError(f"warmup_steps, start: expected warmup_steps >= 0 and 0 <= start <= 1, got {warmup_steps}, {start}")
    if warmup_steps == 0 or step >= warmup_steps:
        return 1.0
    return start + (1.0 - start) * max(step, 0) / warmup_steps


def iwae_loss(x, mu, logvar, decoder, k=50, *, likelihood="bernoulli", estimator="iwae", reduction="mean",
              backend=None, flatten_samples=False, check_finite=False, generator=None, beta=None):
    """The drop-in IWAE loss -L_k(x) for an encoder's Gaussian (mu, logvar) and any decoder.

    Args:
        x: data [B, P] (Bernoulli targets in [0, 1], or real values for a Gaussian likelihood).
        mu, logvar: the encoder's diagonal Gaussian q(z|x), [B, D] each.
        decoder: callable; gets z [k, B, D] (or [k * B, D] with ``flatten_samples=True``) and returns
            logits [k, B, P] ("bernoulli") or a (mean, logvar) pair of [k, B, P] ("gaussian").
        k: samples per example, >= 1.
        estimator: "iwae" (paper Eq. 14), "vae" (k-sample ELBO, Eq. 7), "stl", "dreg", or "iwae-resample"
            (k forward passes, one backward through a sample drawn by its normalized weight).
        reduction: "mean" | "sum" over the batch, or "none" for the per-example loss [B].
        check_finite: check x, mu, logvar and the decoder's output for NaN/inf, and Bernoulli targets for
            [0, 1]; off by default because it synchronizes the device.
        generator: a torch.Generator on the tensors' device for the noise (default: torch's global RNG).
        beta: KL annealing: the weight on the latent term log p(z) - log q(z|x) in every log-weight (a float or
            a 0-dim tensor; see ``kl_warmup``); None or 1 is the plain bound. Not with "iwae-resample".

    Returns:
        -L_k reduced over the batch (a scalar), or [B] for reduction="none".
    """
    _checks.check_tensor("x", x, (2,))
    _checks.check_tensor("mu", mu, (2,))
    _checks.check_tensor("logvar", logvar, (2,), like=("mu", mu))
    _checks.check_shape("logvar", logvar, mu.shape)
    _checks.check_same_device("x", x, "mu", mu)
    if x.shape[0] != mu.shape[0]:
        raise ValueError(f"x: expected batch size {mu.shape[0]} (as mu), got shape {tuple(x.shape)}")
    if not callable(decoder):
        raise TypeError(f"decoder: expected a callable (an nn.Module or function), got {type(decoder).__name__}")
    _checks.check_sample_count(k)
    _checks.check_choice("likelihood", likelihood, LIKELIHOODS)
    _checks.check_choice("estimator", estimator, ESTIMATORS)
    _checks.check_choice("reduction", reduction, REDUCTIONS)
    get_backend(backend, mu.device)
    if check_finite:
        for name, value in (("x", x), ("mu", mu), ("logvar", logvar)):
            _checks.check_finite(name, value)
        if likelihood == "bernoulli":
            _checks.check_unit_interval("x", x)

    if estimator == "iwae-resample" and beta is not None:
        raise ValueError("beta: KL annealing is not supported with estimator='iwae-resample'")
    if estimator == "iwae-resample":
        def log_weights(noise):
            return _log_weights(x, mu, logvar, decoder, noise[0].shape[0], noise[0], None, "iwae", likelihood,
                                flatten_samples, check_finite, backend)

        eps = torch.randn((k,) + tuple(mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
        bound = resampled_iwae_bound(log_weights, [eps], generator=generator, backend=backend)
    else:
        log_w = _log_weights(x, mu, logvar, decoder, k, None, generator, estimator, likelihood, flatten_samples,
                             check_finite, backend, beta)
        bound = log_w.mean(0) if estimator == "vae" else iwae_bound(log_w, backend=backend)
    loss = -bound
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss
