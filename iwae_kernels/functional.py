"""The public functions: every argument checked once (messages name it), the backend resolved once per call,
then the backend's op; and the drop-in ``iwae_loss``.

Shapes: k samples (always the leading dim), B examples, D latent dimensions, P observed dimensions.
Every function takes ``backend=None`` ("torch" | "triton" | "cuda"; see ``iwae_kernels.backend`` and the table in
``iwae_kernels.contract``).
"""

from collections.abc import Callable, Sequence
from typing import Union

import torch

from . import _checks
from .backend import get_backend
from .contract import accumulation_dtype
from .estimators import (ESTIMATORS, FIXED_SAMPLE_ESTIMATORS, FIXED_SAMPLE_FORMS, ROUTED_ESTIMATORS,
                         SAMPLING_ESTIMATORS, check_estimator_options, check_latent_scale, conditional_density_path,
                         objective_bound, sampling_estimator, value_with_gradient, wake_phi_term)
from .torch_math import bound_from_max_sum, largest_finite, reduced_loss

LIKELIHOODS = ("bernoulli", "gaussian")
REDUCTIONS = ("mean", "sum", "none")

# The decoder ``iwae_loss``, ``log_likelihood`` and AIS take: z [k, B, D] (or [k * B, D]) -> logits [k, B, *event],
# or a (mean, logvar) pair of them (an nn.Module or any function).
Decoder = Callable[[torch.Tensor], Union[torch.Tensor, Sequence[torch.Tensor]]]
# Where a tensor goes: a torch.device, a name ("cpu", "cuda:0"), or None (the default).
Device = Union[torch.device, str, None]


def _latent_scale(name, value, like):
    """A float or 0-dim tensor weight on the latent term -> None (weight 1) or a 0-dim tensor on like's device."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or not value.is_floating_point():
            raise ValueError(f"{name}: expected a float or a 0-dim floating tensor, got shape {tuple(value.shape)}, "
                             f"dtype {value.dtype}")
        _checks.check_same_device(name, value, like=("mu", like))
        return value
    if not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return None if value == 1 else torch.tensor(float(value), dtype=torch.float64, device=like.device)


def _check_eps(eps, k, mu):
    """Noise eps [k, B, D] for mu [B, D] or [k, B, D]: mu's dtype and device."""
    _checks.check_tensor("eps", eps, (3,), like=("mu", mu))
    _checks.check_shape("eps", eps, (k,) + tuple(mu.shape[-2:]))


def _check_gaussian_sample_args(mu, logvar, k, *, eps, prior_mu, prior_logvar, estimator, generator, density_mu,
                                density_logvar):
    """Check the arguments; returns k as a Python int."""
    k = _checks.check_sample_count(k)
    _checks.check_tensor("mu", mu, (2, 3))
    _checks.check_tensor("logvar", logvar, (2, 3), like=("mu", mu))
    _checks.check_shape("logvar", logvar, mu.shape)
    if mu.dim() == 3 and mu.shape[0] != k:
        raise ValueError(f"mu: a per-sample mu must have shape [k={k}, B, D], got {tuple(mu.shape)}")
    batch, dim = mu.shape[-2:]
    if eps is not None:
        _check_eps(eps, k, mu)
    if (prior_mu is None) != (prior_logvar is None):
        raise ValueError("prior_mu, prior_logvar: give both (a diagonal Gaussian prior) or neither (standard normal)")
    if prior_mu is not None:
        _checks.check_tensor("prior_mu", prior_mu, (2, 3), like=("mu", mu))
        _checks.check_tensor("prior_logvar", prior_logvar, (2, 3), like=("mu", mu))
        if tuple(prior_mu.shape) not in ((batch, dim), (k, batch, dim)):
            raise ValueError(f"prior_mu: expected shape {(batch, dim)} or {(k, batch, dim)}, got {tuple(prior_mu.shape)}")
        _checks.check_shape("prior_logvar", prior_logvar, prior_mu.shape)
    _checks.check_choice("estimator", estimator, SAMPLING_ESTIMATORS)
    if (density_mu is None) != (density_logvar is None):
        raise ValueError("density_mu, density_logvar: give both or neither")
    if density_mu is not None:
        _checks.check_tensor("density_mu", density_mu, (3,), like=("mu", mu))
        _checks.check_tensor("density_logvar", density_logvar, (3,), like=("mu", mu))
        _checks.check_shape("density_mu", density_mu, (k, batch, dim))
        _checks.check_shape("density_logvar", density_logvar, (k, batch, dim))
    _check_generator(generator)
    return k


def _check_generator(generator):
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")


def gaussian_sample(mu: torch.Tensor, logvar: torch.Tensor, k: int, *, eps: torch.Tensor | None = None,
                    prior_mu: torch.Tensor | None = None, prior_logvar: torch.Tensor | None = None,
                    estimator: str = "iwae", generator: torch.Generator | None = None, include_prior: bool = True,
                    latent_scale: float | torch.Tensor | None = None, density_mu: torch.Tensor | None = None,
                    density_logvar: torch.Tensor | None = None,
                    backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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
            gradient arriving at the log-weight output, so that must come from ``iwae_bound``). stl and dreg
            stop the gradient of log q(z) into (mu, logvar) at fixed z; that is their estimator only when
            (mu, logvar) depend on nothing sampled. When they depend on an earlier sample (q(h2|h1)), pass
            ``density_mu, density_logvar`` too, or the gradient is biased for k > 1 (docs/MATH.md).
        density_mu, density_logvar: [k, B, D], the values of mu, logvar recomputed by the encoder with its
            weights detached but from the live earlier sample. stl/dreg send log q's derivative at fixed z into
            them (so it reaches the earlier sample, weighted like a path term, and not the encoder's weights);
            the exact estimators ignore them.
        include_prior: False drops log p(z): the latent term is then -log q(z|x) (log 2pi included), which a
            normalizing flow needs (it adds log p(z_K) and the log-determinants itself).
        latent_scale: a weight beta >= 0 on the latent term (KL annealing), a float or a 0-dim tensor (a tensor
            can change between CUDA-graph replays); None is 1. Refused with stl, dreg and iwae-resample unless
            it is 1 (they assume the plain bound).

    Returns:
        z [k, B, D] in mu's dtype, and latent_scale * (log p(z) - log q(z|x)) [k, B] (float32 for half inputs).

    Examples::

        >>> import torch
        >>> from iwae_kernels import gaussian_sample
        >>> mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)  # q(z|x) for B = 2 examples, D = 3
        >>> z, latent = gaussian_sample(mu, logvar, k=5)
        >>> z.shape, latent.shape
        (torch.Size([5, 2, 3]), torch.Size([5, 2]))
        >>> eps = torch.full((5, 2, 3), 0.5)  # fixed noise: z = mu + exp(logvar / 2) * eps
        >>> z, latent = gaussian_sample(torch.ones(2, 3), torch.zeros(2, 3), k=5, eps=eps)
        >>> z[0, 0]
        tensor([1.5000, 1.5000, 1.5000])
    """
    k = _check_gaussian_sample_args(mu, logvar, k, eps=eps, prior_mu=prior_mu, prior_logvar=prior_logvar,
                                    estimator=estimator, generator=generator, density_mu=density_mu,
                                    density_logvar=density_logvar)
    if not include_prior and prior_mu is not None:
        raise ValueError("include_prior: False drops the prior, so prior_mu and prior_logvar must be None")
    scale = _latent_scale("latent_scale", latent_scale, mu)
    check_latent_scale("latent_scale", estimator, scale)
    ops = get_backend(backend, mu.device)
    z, latent = ops.gaussian_sample(
        mu,
        logvar,
        k,
        eps=eps,
        prior_mu=prior_mu,
        prior_logvar=prior_logvar,
        estimator=estimator,
        generator=generator,
        include_prior=include_prior,
        latent_scale=scale,
    )
    if density_mu is not None:
        path = conditional_density_path(z, density_mu, density_logvar, estimator=estimator)  # type: ignore[arg-type]
        latent = latent if path is None else latent + path
    return z, latent


def categorical_log_likelihood(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None = None, *,
                               backend: str | None = None) -> torch.Tensor:
    """Token-sequence log-likelihood under a softmax decoder, log-softmax and gather fused: the compiled backends
    never form the [k, B, T, V] log-probabilities (a language-model decoder's largest tensor).

    Args:
        logits: [k, B, T, V]; tokens: [B, T] int64 in [0, V); mask: [B, T] (1 for real tokens, 0 for padding;
            default all ones).
    Returns:
        sum_t mask log p(tokens | logits) [k, B] (float32 for half logits). Checks the token range (a device sync).

    Examples::

        >>> import torch
        >>> from iwae_kernels import categorical_log_likelihood
        >>> logits = torch.zeros(2, 1, 3, 4)  # k = 2 samples, B = 1 sentence, T = 3 tokens, V = 4 words
        >>> tokens = torch.tensor([[0, 3, 1]])
        >>> categorical_log_likelihood(logits, tokens)  # 3 log(1 / 4) per sample
        tensor([[-4.1589],
                [-4.1589]])
        >>> categorical_log_likelihood(logits, tokens, mask=torch.tensor([[1, 1, 0]]))  # the last token is padding
        tensor([[-2.7726],
                [-2.7726]])
    """
    _checks.check_tensor("logits", logits, (4,))
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.int64 or tokens.dim() != 2:
        raise TypeError(f"tokens: expected an int64 [B, T] tensor, got {getattr(tokens, 'dtype', type(tokens).__name__)} "
                        f"of shape {tuple(getattr(tokens, 'shape', ()))}")
    _checks.check_same_device("tokens", tokens, like=("logits", logits))
    _checks.check_shape("tokens", tokens, logits.shape[1:3])
    vocab = logits.shape[-1]
    if tokens.min().item() < 0 or tokens.max().item() >= vocab:
        raise ValueError(f"tokens: expected ids in [0, V={vocab}), got min {tokens.min().item()}, max {tokens.max().item()}")
    acc = accumulation_dtype(logits.dtype)
    if mask is None:
        mask = torch.ones(tokens.shape, dtype=acc, device=logits.device)
    else:
        _checks.check_same_device("mask", mask, like=("logits", logits))
        _checks.check_shape("mask", mask, tokens.shape)
        mask = mask.to(acc)
    return get_backend(backend, logits.device).categorical_log_likelihood(logits, tokens, mask)


def local_reparam_linear(input: torch.Tensor, weight_mu: torch.Tensor, weight_var: torch.Tensor,
                         bias: torch.Tensor | None = None, *, noise: torch.Tensor | None = None,
                         generator: torch.Generator | None = None, backend: str | None = None) -> torch.Tensor:
    """Pre-activations of a linear layer with factorized Gaussian weights W ~ N(weight_mu, weight_var), sampled
    by the local reparameterization trick: input @ mu^T + sqrt(input^2 @ var^T) * zeta + bias, zeta ~ N(0, 1)
    independent per row and output (the compiled backends form both matmuls and the noise in one kernel).

    Args:
        input: [..., K]; weight_mu, weight_var: [N, K] (var >= 0); bias: [N] or None.
        noise: optional zeta [..., N]; else drawn (in the kernel for the compiled backends).
    Returns:
        [..., N] in input's dtype.

    Examples::

        >>> import torch
        >>> from iwae_kernels import local_reparam_linear
        >>> input = torch.ones(5, 3)  # 5 rows of K = 3 features
        >>> weight_mu, weight_var = torch.ones(2, 3), torch.full((2, 3), 0.5)  # N = 2 outputs
        >>> local_reparam_linear(input, weight_mu, weight_var, torch.zeros(2)).shape
        torch.Size([5, 2])
        >>> local_reparam_linear(input, weight_mu, torch.zeros(2, 3))[0]  # no variance: the mean layer
        tensor([3., 3.])
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
    out = ops.local_reparam_linear(
        input.reshape(-1, width),
        weight_mu,
        weight_var,
        bias=bias,
        noise=noise,
        generator=generator,
    )
    return out.reshape(leading + (size,))


EVENT_DIMS = tuple(range(1, 7))  # x is [B, *event] with up to 6 event dims (images: [B, C, H, W])


def _flat_observation(name, value, x):
    """Check ``value`` [k, B, *event] against x [B, *event]; both as [k, B, P] and [B, P] (views when contiguous).

    x is data: it is detached, so no backend gives it a gradient.
    """
    _checks.check_tensor("x", x, tuple(d + 1 for d in EVENT_DIMS))
    _checks.check_tensor(name, value, tuple(d + 2 for d in EVENT_DIMS))
    _checks.check_same_device("x", x, like=(name, value))
    if tuple(x.shape) != tuple(value.shape[1:]):
        raise ValueError(f"x: expected shape [B, *event] = {tuple(value.shape[1:])} to match {name}, "
                         f"got {tuple(x.shape)}")
    return value.flatten(2), x.detach().flatten(1)


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """log p(x|z) = sum_j x_j y_j - softplus(y_j) over the event dims, for logits y [k, B, *event] and targets
    x [B, *event] in [0, 1] (e.g. [B, P], or images [B, C, H, W]).

    Returns [k, B] (float32 for half logits). Gradient flows to logits only: x never gets one, on any backend.

    Examples::

        >>> import torch
        >>> from iwae_kernels import bernoulli_log_likelihood
        >>> logits = torch.zeros(4, 2, 3)  # k = 4 samples, B = 2 examples, P = 3 pixels
        >>> x = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
        >>> bernoulli_log_likelihood(logits, x)[0]  # 3 log(1 / 2) per example
        tensor([-2.0794, -2.0794])
    """
    logits, x = _flat_observation("logits", logits, x)
    return get_backend(backend, logits.device).bernoulli_log_likelihood(logits, x)


def gaussian_log_likelihood(mean: torch.Tensor, logvar: torch.Tensor, x: torch.Tensor, *,
                            backend: str | None = None) -> torch.Tensor:
    """Diagonal-Gaussian log p(x|z) summed over the event dims, for mean, logvar [k, B, *event] and
    x [B, *event]; returns [k, B].

    Gradient flows to mean and logvar only: x never gets one, on any backend.

    Examples::

        >>> import torch
        >>> from iwae_kernels import gaussian_log_likelihood
        >>> mean, logvar = torch.zeros(4, 2, 3), torch.zeros(4, 2, 3)  # k = 4, B = 2, P = 3
        >>> gaussian_log_likelihood(mean, logvar, torch.zeros(2, 3))[0]  # -3 log(2 pi) / 2
        tensor([-2.7568, -2.7568])
    """
    _checks.check_tensor("logvar", logvar, (mean.dim(),), like=("mean", mean))
    _checks.check_shape("logvar", logvar, mean.shape)
    mean, x = _flat_observation("mean", mean, x)
    return get_backend(backend, mean.device).gaussian_log_likelihood(mean, logvar.flatten(2), x)


def _check_latent_log_weight(latent_log_weight, like, like_name="the decoder output"):
    _checks.check_tensor("latent_log_weight", latent_log_weight, (2,))
    _checks.check_same_device("latent_log_weight", latent_log_weight, like=(like_name, like))
    _checks.check_shape("latent_log_weight", latent_log_weight, like.shape[:2])


def bernoulli_iwae_loss(logits: torch.Tensor, x: torch.Tensor, latent_log_weight: torch.Tensor, *,
                        reduction: str = "mean", backend: str | None = None) -> torch.Tensor:
    """-L_k for log-weights log w = log p(x|z) + latent_log_weight with a Bernoulli decoder: what ``iwae_loss``
    ends in, from the decoder's logits y [k, B, *event], the targets x [B, *event] and the latent term [k, B]
    (e.g. ``gaussian_sample``'s). The compiled backends never write the log-weights' gradient chain as separate
    ops: the Triton backend runs it as one autograd node and three kernels.

    Returns -L_k reduced over the batch: a scalar for reduction "mean" / "sum", [B] for "none". Gradients flow
    to logits and latent_log_weight (the normalized weights times the upstream gradient); x gets none.

    Examples::

        >>> import torch
        >>> from iwae_kernels import bernoulli_iwae_loss, gaussian_sample
        >>> _ = torch.manual_seed(0)
        >>> mu = torch.zeros(2, 3, requires_grad=True)  # B = 2 examples, D = 3
        >>> z, latent = gaussian_sample(mu, torch.zeros(2, 3), k=4)
        >>> decoder = torch.nn.Linear(3, 5)  # P = 5 pixels
        >>> loss = bernoulli_iwae_loss(decoder(z), torch.ones(2, 5), latent)
        >>> loss.backward()
        >>> loss.shape, mu.grad.shape
        (torch.Size([]), torch.Size([2, 3]))
        >>> bernoulli_iwae_loss(torch.zeros(4, 2, 5), torch.ones(2, 5), torch.zeros(4, 2))  # -5 log(1 / 2)
        tensor(3.4657)
    """
    _checks.check_choice("reduction", reduction, REDUCTIONS)
    logits, x = _flat_observation("logits", logits, x)
    _check_latent_log_weight(latent_log_weight, logits)
    return get_backend(backend, logits.device).bernoulli_iwae_loss(logits, x, latent_log_weight, reduction=reduction)


def gaussian_iwae_loss(mean: torch.Tensor, logvar: torch.Tensor, x: torch.Tensor, latent_log_weight: torch.Tensor, *,
                       reduction: str = "mean", backend: str | None = None) -> torch.Tensor:
    """-L_k for log-weights log w = log N(x; mean, exp(logvar)) + latent_log_weight: ``bernoulli_iwae_loss`` for a
    diagonal-Gaussian decoder, mean and logvar [k, B, *event].

    Examples::

        >>> import torch
        >>> from iwae_kernels import gaussian_iwae_loss
        >>> mean, logvar = torch.zeros(4, 2, 3), torch.zeros(4, 2, 3)  # k = 4, B = 2, P = 3
        >>> gaussian_iwae_loss(mean, logvar, torch.zeros(2, 3), torch.zeros(4, 2))  # 3 log(2 pi) / 2
        tensor(2.7568)
        >>> gaussian_iwae_loss(mean, logvar, torch.zeros(2, 3), torch.zeros(4, 2), reduction="none")
        tensor([2.7568, 2.7568])
    """
    _checks.check_choice("reduction", reduction, REDUCTIONS)
    _checks.check_tensor("logvar", logvar, (mean.dim(),), like=("mean", mean))
    _checks.check_shape("logvar", logvar, mean.shape)
    mean, x = _flat_observation("mean", mean, x)
    _check_latent_log_weight(latent_log_weight, mean)
    return get_backend(backend, mean.device).gaussian_iwae_loss(
        mean,
        logvar.flatten(2),
        x,
        latent_log_weight=latent_log_weight,
        reduction=reduction,
    )


def bernoulli_decoder_log_likelihood(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor,
                                     *, backend: str | None = None) -> torch.Tensor:
    """The decoder's last linear layer fused with the Bernoulli log-likelihood: the [k, B, P] logits
    hidden @ weight.T + bias are never written to memory by the compiled backends (the torch one forms them).

    Args:
        hidden: the decoder's last hidden activations [k, B, H].
        weight, bias: that layer's [P, H] weight and [P] bias (an nn.Linear's).
        x: Bernoulli targets [B, P].
    Returns:
        [k, B] (float32 for half inputs); gradients flow to hidden, weight and bias.

    Examples::

        >>> import torch
        >>> from iwae_kernels import bernoulli_decoder_log_likelihood, bernoulli_log_likelihood
        >>> _ = torch.manual_seed(0)
        >>> hidden = torch.randn(4, 2, 8)  # k = 4 samples, B = 2 examples, H = 8 hidden units
        >>> layer = torch.nn.Linear(8, 5)  # the decoder's output layer, P = 5 pixels
        >>> x = torch.ones(2, 5)
        >>> log_lik = bernoulli_decoder_log_likelihood(hidden, layer.weight, layer.bias, x)
        >>> log_lik.shape
        torch.Size([4, 2])
        >>> torch.allclose(log_lik, bernoulli_log_likelihood(layer(hidden), x))  # as if the logits were written
        True
    """
    if torch.is_autocast_enabled(hidden.device.type):
        # It stands in for a linear layer, so it casts as F.linear does under autocast.
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight, bias = hidden.to(dtype), weight.to(dtype), bias.to(dtype)
    _checks.check_tensor("hidden", hidden, (3,))
    _checks.check_tensor("weight", weight, (2,), like=("hidden", hidden))
    _checks.check_tensor("bias", bias, (1,), like=("hidden", hidden))
    _checks.check_tensor("x", x, (2,))
    _checks.check_same_device("x", x, like=("hidden", hidden))
    size, width = weight.shape
    if width != hidden.shape[-1]:
        raise ValueError(f"weight: expected shape [P, H={hidden.shape[-1]}], got {tuple(weight.shape)}")
    _checks.check_shape("bias", bias, (size,))
    _checks.check_shape("x", x, (hidden.shape[1], size))
    x = x.detach()  # data: no gradient on any backend
    ops = get_backend(backend, hidden.device)
    return ops.bernoulli_decoder_log_likelihood(hidden, weight, bias, x=x)


def bernoulli_mlp_decoder_log_likelihood(z: torch.Tensor, weights: Sequence[torch.Tensor],
                                         biases: Sequence[torch.Tensor], x: torch.Tensor,
                                         latent_log_weight: torch.Tensor | None = None, *,
                                         backend: str | None = None) -> torch.Tensor:
    """Evaluation's log-weights through the paper's decoder MLP in one op: log p(x|z) for the logits of
    Linear-tanh-Linear-tanh-Linear applied to z, plus ``latent_log_weight``. The compiled backends run one kernel,
    whose hidden activations stay in a few rows of scratch per program and whose logits never leave registers; the
    torch backend runs the layers.

    Args:
        z: samples [k, B, D].
        weights: the three Linear weights [H1, D], [H2, H1], [P, H2]; biases: their [H1], [H2], [P] biases.
        x: Bernoulli targets [B, P].
        latent_log_weight: optional [k, B] added to the result, e.g. gaussian_sample's log p(z) - log q(z|x).
    Returns:
        [k, B] (float32 for half inputs). Forward only: for evaluation under ``torch.no_grad()``; an input that
        needs a gradient is refused (train with the layers and ``bernoulli_iwae_loss`` instead).

    Examples::

        >>> import torch
        >>> from iwae_kernels import bernoulli_log_likelihood, bernoulli_mlp_decoder_log_likelihood
        >>> _ = torch.manual_seed(0)
        >>> decoder = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8),
        ...                               torch.nn.Tanh(), torch.nn.Linear(8, 5))  # D = 3 -> P = 5
        >>> z, x = torch.randn(4, 2, 3), torch.ones(2, 5)  # k = 4 samples, B = 2 examples
        >>> linears = decoder[::2]
        >>> with torch.no_grad():
        ...     log_lik = bernoulli_mlp_decoder_log_likelihood(z, [layer.weight for layer in linears],
        ...                                                    [layer.bias for layer in linears], x)
        ...     expected = bernoulli_log_likelihood(decoder(z), x)
        >>> log_lik.shape, torch.allclose(log_lik, expected, atol=1e-5)
        (torch.Size([4, 2]), True)
    """
    for name, group in (("weights", weights), ("biases", biases)):
        if not isinstance(group, (list, tuple)) or len(group) != 3:
            raise ValueError(f"{name}: expected a list or tuple of 3 tensors, one per Linear of "
                             "Linear-tanh-Linear-tanh-Linear")
    _checks.check_tensor("z", z, (3,))
    if torch.is_autocast_enabled(z.device.type):  # it stands in for Linear layers: cast as F.linear does
        dtype = torch.get_autocast_dtype(z.device.type)
        cast = lambda tensors: [t.to(dtype) if isinstance(t, torch.Tensor) else t for t in tensors]
        z, weights, biases = z.to(dtype), cast(weights), cast(biases)
    for name, group, ndim in (("weights", weights, 2), ("biases", biases, 1)):
        for index, value in enumerate(group):
            _checks.check_tensor(f"{name}[{index}]", value, (ndim,), like=("z", z))
    width = z.shape[-1]
    for index, weight in enumerate(weights):
        if weight.shape[1] != width:
            raise ValueError(f"weights[{index}]: expected shape [out, {width}] (its input width), got "
                             f"{tuple(weight.shape)}")
        _checks.check_shape(f"biases[{index}]", biases[index], weight.shape[:1])
        width = weight.shape[0]
    _checks.check_tensor("x", x, (2,))
    _checks.check_same_device("x", x, like=("z", z))
    _checks.check_shape("x", x, (z.shape[1], width))
    if latent_log_weight is not None:
        _check_latent_log_weight(latent_log_weight, z, "z")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (z, *weights, *biases, latent_log_weight)
                                       if t is not None):
        raise ValueError("bernoulli_mlp_decoder_log_likelihood: forward only (evaluation): call it under "
                         "torch.no_grad(), or detach its inputs")
    ops = get_backend(backend, z.device)
    return ops.bernoulli_mlp_decoder_log_likelihood(
        z,
        tuple(weights),
        tuple(biases),
        x=x.detach(),
        latent_log_weight=latent_log_weight,
    )


def iwae_bound(log_w: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """The IWAE bound L_k = logsumexp_i(log w_i) - log k over dim 0 of log_w [k, B]; returns [B].

    Backward gives g * normalized weights. A column of all -inf gives -inf and zero gradient, never NaN. A +inf
    log-weight is taken as the dtype's largest finite value: its column's bound is that value (finite, huge)
    with zero gradient, never NaN (``iwae_loss(check_finite=True)`` raises instead).

    Examples::

        >>> import torch
        >>> from iwae_kernels import iwae_bound
        >>> log_w = torch.tensor([[1.0, 0.0], [3.0, 0.0]]).log().requires_grad_()  # k = 2 samples, B = 2
        >>> bound = iwae_bound(log_w)  # log of the mean weight: log 2, log 0 = -inf
        >>> bound
        tensor([0.6931,   -inf], grad_fn=<...>)
        >>> bound.sum().backward()
        >>> log_w.grad  # the normalized weights; zero for the impossible example
        tensor([[0.2500, 0.0000],
                [0.7500, 0.0000]])
    """
    _checks.check_tensor("log_w", log_w, (2,))
    return _bound(get_backend(backend, log_w.device), log_w)


def _bound(ops, log_w):
    return ops.iwae_bound(largest_finite(log_w))


def normalized_weights(log_w: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Self-normalized importance weights wt_i = w_i / sum_j w_j over dim 0 of log_w [k, B]; returns [k, B].

    An all -inf column gives all-zero weights.

    Examples::

        >>> import torch
        >>> from iwae_kernels import normalized_weights
        >>> normalized_weights(torch.tensor([[1.0, 0.0], [3.0, 0.0]]).log())
        tensor([[0.2500, 0.0000],
                [0.7500, 0.0000]])
    """
    _checks.check_tensor("log_w", log_w, (2,))
    return get_backend(backend, log_w.device).normalized_weights(log_w)


class StreamingIWAEBound:
    """L_k folded chunk by chunk: memory does not grow with k (docs/MATH.md, "Large-k evaluation").

    No gradient flows through it; states from several processes combine with ``merge``.

    Examples::

        >>> import torch
        >>> from iwae_kernels import StreamingIWAEBound, iwae_bound
        >>> _ = torch.manual_seed(0)
        >>> log_w = torch.randn(5000, 3)  # k = 5000 log-weights of B = 3 examples
        >>> acc = StreamingIWAEBound(batch_size=3)
        >>> for chunk in log_w.split(500):  # each [500, B], e.g. computed one chunk at a time
        ...     acc.update(chunk)
        >>> acc.num_samples, torch.allclose(acc.bound(), iwae_bound(log_w))
        (5000, True)
    """

    running_max: torch.Tensor
    running_sum: torch.Tensor
    num_samples: int

    def __init__(self, batch_size: int, *, device: Device = None, dtype: torch.dtype = torch.float32,
                 backend: str | None = None) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
        _checks.check_choice("dtype", dtype, (torch.float32, torch.float64))
        self.running_max = torch.full((batch_size,), -float("inf"), dtype=dtype, device=device)
        self.running_sum = torch.zeros((batch_size,), dtype=dtype, device=device)
        self.num_samples = 0
        self.backend = backend

    def update(self, log_w: torch.Tensor) -> None:
        """Fold log-weights [kc, B] (any kc >= 1) into the state."""
        _checks.check_tensor("log_w", log_w, (2,))
        _checks.check_same_device("log_w", log_w, like=("the accumulator", self.running_max))
        _checks.check_shape("log_w", log_w, (log_w.shape[0], self.running_max.shape[0]))
        ops = get_backend(self.backend, log_w.device)
        self.running_max, self.running_sum = ops.fold_max_sum(self.running_max, self.running_sum, log_w.detach())
        self.num_samples += log_w.shape[0]

    def merge(self, other: "StreamingIWAEBound") -> None:
        """Fold in another accumulator's state (the same examples, other samples)."""
        new_max = torch.maximum(self.running_max, other.running_max)
        shift = torch.where(torch.isneginf(new_max), torch.zeros_like(new_max), new_max)
        self.running_sum = (self.running_sum * torch.exp(self.running_max - shift)
                            + other.running_sum * torch.exp(other.running_max - shift))
        self.running_max = new_max
        self.num_samples += other.num_samples

    def bound(self) -> torch.Tensor:
        """L_k [B] over every sample folded so far."""
        if self.num_samples == 0:
            raise ValueError("StreamingIWAEBound.bound: no log-weights were folded in yet (call update first)")
        return bound_from_max_sum(self.running_max, self.running_sum, self.num_samples)


def _decode(decoder, z, flatten_samples):
    if not flatten_samples:
        return decoder(z)
    num_samples, batch, dim = z.shape
    out = decoder(z.reshape(num_samples * batch, dim))
    # [k * B, *event] -> [k, B, *event]
    unflatten = lambda t: t.reshape((num_samples, batch) + tuple(t.shape[1:])) if isinstance(t, torch.Tensor) else t
    return tuple(map(unflatten, out)) if isinstance(out, (tuple, list)) else unflatten(out)


def _check_decoder_output(name, value, expected_shape, *, check_finite):
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected_shape:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        flattened = (expected_shape[0] * expected_shape[1],) + expected_shape[2:]
        hint = "; a decoder that returns [k * B, *event] needs flatten_samples=True" if got == flattened else ""
        raise ValueError(f"decoder: expected {name} of shape [k, B, *event] = {expected_shape}, got {got}{hint}")
    if check_finite:
        _checks.check_finite(f"decoder output ({name})", value)


def _likelihood_inputs(out, x, k, *, likelihood, check_finite):
    """The likelihood's tensors, flat ((logits,) or (mean, logvar) [k, B, P], then x [B, P]), from the decoder's
    output, after checking it returned what the likelihood needs."""
    expected_shape = (k,) + tuple(x.shape)
    if likelihood == "bernoulli":
        _check_decoder_output("logits", out, expected_shape, check_finite=check_finite)
        return _flat_observation("logits", out, x)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError("decoder: for likelihood='gaussian' expected a (mean, logvar) pair of [k, B, *event] tensors")
    _check_decoder_output("mean", out[0], expected_shape, check_finite=check_finite)
    _check_decoder_output("logvar", out[1], expected_shape, check_finite=check_finite)
    mean, flat_x = _flat_observation("mean", out[0], x)
    return mean, out[1].flatten(2), flat_x


def _likelihood_ops(ops, likelihood):
    """(log-likelihood op, loss op) of backend ``ops`` for ``likelihood`` ("bernoulli" or "gaussian")."""
    return {"bernoulli": (ops.bernoulli_log_likelihood, ops.bernoulli_iwae_loss),
            "gaussian": (ops.gaussian_log_likelihood, ops.gaussian_iwae_loss)}[likelihood]


def _checked_samples(mu, logvar, k, *, ops, estimator="iwae", eps=None, generator=None, check_finite=False,
                     scale=None):
    """z [k, B, D] and the latent term scale (log p(z) - log q(z|x)) [k, B] (arguments already checked)."""
    z, latent_log_weight = ops.gaussian_sample(
        mu,
        logvar,
        k,
        eps=eps,
        prior_mu=None,
        prior_logvar=None,
        estimator=estimator,
        generator=generator,
        include_prior=True,
        latent_scale=scale,
    )
    if check_finite and not (bool(torch.isfinite(z).all()) and bool(torch.isfinite(latent_log_weight).all())):
        # Finite mu and logvar can still overflow: exp(logvar / 2) is inf in float32 from logvar ~ 178.
        raise ValueError(f"mu, logvar: the samples z or the latent term log p(z) - log q(z|x) are not finite "
                         f"(logvar ranges over [{logvar.min().item():.3g}, {logvar.max().item():.3g}], "
                         f"mu over [{mu.min().item():.3g}, {mu.max().item():.3g}])")
    return z, latent_log_weight


def _sample_and_decode(x, mu, logvar, *, decoder, k, ops, likelihood, estimator="iwae", eps=None, generator=None,
                       flatten_samples=False, check_finite=False, scale=None):
    """For k samples of z: the likelihood's inputs (``_likelihood_inputs``) and the latent term
    scale (log p(z) - log q(z|x)) [k, B] (arguments already checked)."""
    z, latent_log_weight = _checked_samples(mu, logvar, k, ops=ops, estimator=estimator, eps=eps, generator=generator,
                                            check_finite=check_finite, scale=scale)
    out = _decode(decoder, z, flatten_samples)
    return _likelihood_inputs(out, x, k, likelihood=likelihood, check_finite=check_finite), latent_log_weight


def _log_weights(x, mu, logvar, **sampling):
    """log w [k, B] = log p(x|z) + scale (log p(z) - log q(z|x)) for k samples of z; ``sampling``: the keywords
    of ``_sample_and_decode`` (arguments already checked)."""
    inputs, latent_log_weight = _sample_and_decode(x, mu, logvar, **sampling)
    log_likelihood, _ = _likelihood_ops(sampling["ops"], sampling["likelihood"])
    return log_likelihood(*inputs) + latent_log_weight


def resampled_iwae_bound(log_weights: Callable[[Sequence[torch.Tensor]], torch.Tensor], noise: Sequence[torch.Tensor],
                         *, generator: torch.Generator | None = None, backend: str | None = None) -> torch.Tensor:
    """The paper's single-sample backward (end of Sec. 3.1): value L_k [B], gradient of log w_j for one j ~ wt.

    ``log_weights(noise)`` computes log w [k', B] for a list of noise tensors, each [k', B, ...]; ``noise`` holds
    the k-sample noise. All k samples run forward without a graph; the chosen one is recomputed from its noise
    with a graph, so one backward pass does the work.

    Examples::

        >>> import torch
        >>> from iwae_kernels import iwae_bound, resampled_iwae_bound
        >>> _ = torch.manual_seed(0)
        >>> mu = torch.zeros(2, 3, requires_grad=True)  # B = 2 examples, D = 3
        >>> def log_weights(noise):  # log w [k', B] of the samples z = mu + eps, for noise [[k', B, D]]
        ...     return -0.5 * (mu + noise[0]).pow(2).sum(-1)
        >>> noise = [torch.randn(10, 2, 3)]  # k = 10 samples
        >>> bound = resampled_iwae_bound(log_weights, noise)
        >>> torch.allclose(bound, iwae_bound(log_weights(noise)))  # the value is L_k
        True
        >>> bound.sum().backward()  # through one sample per example
        >>> mu.grad.shape
        torch.Size([2, 3])
    """
    return _resampled_bound(get_backend(backend, noise[0].device), log_weights, noise, generator=generator)


def _resampled_bound(ops, log_weights, noise, *, generator):
    num_samples, batch = noise[0].shape[:2]
    device = noise[0].device
    with torch.no_grad():
        log_w = log_weights(noise)
        bound = _bound(ops, log_w)
        cumulative = ops.normalized_weights(log_w).cumsum(0)
        uniform = torch.rand((batch,), generator=generator, device=device, dtype=cumulative.dtype)
        chosen = (cumulative < uniform * cumulative[-1]).sum(0).clamp(max=num_samples - 1)
    examples = torch.arange(batch, device=device)
    chosen_log_w = log_weights([eps[chosen, examples].unsqueeze(0) for eps in noise])[0]
    # Value L_k, gradient of log w_j; an all -inf example keeps -inf with zero gradient.
    return value_with_gradient(bound, chosen_log_w)


def estimator_bound(log_w: torch.Tensor, estimator: str, *, log_w_fixed: torch.Tensor | None = None,
                    log_q: torch.Tensor | None = None, groups: int | None = None, ciwae_beta: float | None = None,
                    renyi_alpha: float | None = None, backend: str | None = None) -> torch.Tensor:
    """The per-example objective [B] of an estimator that acts on the log-weights, for models that form their own
    (e.g. with a flow posterior): the value is MIWAE's, CIWAE's, the Renyi bound L_a for "renyi", the ELBO for
    "vae", else L_k; the gradient the estimator's (``iwae_kernels.estimators``).

    Args:
        log_w: [k, B], from samples drawn with ``gaussian_sample(estimator=sampling_estimator(estimator))``.
            For "rws" and "vimco": the log-weights log p(x, z_i) - log q(z_i|x) at fixed samples (drawn without a
            gradient, any latent type) with the encoder's parameters stopped too, so only the model's are live.
        log_w_fixed: [k, B] for "piwae" and "rws-dreg" only: the same log-weights with the samples and the encoder
            stopped (only the model's parameters live), e.g. the decoder run again on z.detach().
        log_q: [k, B] for "rws" and "vimco" (needed) and "renyi" (optional: its fixed-sample form, for latents with
            no reparameterization path): log q(z_i|x) at the same fixed samples with the encoder live; only its
            gradient is used. The model gets the value's gradient from log_w, the encoder sum_i c_i d log q(z_i|x):
            c_i = wt_i (wake-phi) for "rws", L_k - L_{-i} - wt_i for "vimco" (k >= 2; Mnih & Rezende 2016), whose
            L_{-i} = log((sum_{j != i} w_j + exp(mean_{j != i} log w_j)) / k), and the same with L_a and
            softmax((1 - a) log w) for "renyi" (k >= 2; ``estimators.fixed_sample_bound``).
        groups: M for "miwae" / "piwae" (k = M * K); ciwae_beta: the ELBO's share in [0, 1] for "ciwae";
            renyi_alpha: a for "renyi", a finite number other than 1.
    "iwae-resample" needs its own function (``resampled_iwae_bound``) and is refused here.

    Examples::

        >>> import torch
        >>> from iwae_kernels import estimator_bound, iwae_bound
        >>> _ = torch.manual_seed(0)
        >>> log_w = torch.randn(6, 2, requires_grad=True)  # k = 6 log-weights of B = 2 examples
        >>> torch.equal(estimator_bound(log_w, "iwae"), iwae_bound(log_w))
        True
        >>> miwae = estimator_bound(log_w, "miwae", groups=2)  # the mean of two 3-sample bounds
        >>> torch.allclose(miwae, (iwae_bound(log_w[:3]) + iwae_bound(log_w[3:])) / 2)
        True
        >>> estimator_bound(log_w, "ciwae", ciwae_beta=0.5).shape
        torch.Size([2])
    """
    _checks.check_tensor("log_w", log_w, (2,))
    _checks.check_choice("estimator", estimator, tuple(e for e in ESTIMATORS if e != "iwae-resample"))
    groups, ciwae_beta, renyi_alpha = check_estimator_options(
        estimator,
        log_w.shape[0],
        groups=groups,
        ciwae_beta=ciwae_beta,
        renyi_alpha=renyi_alpha,
    )
    if (log_w_fixed is not None) != (estimator in ROUTED_ESTIMATORS):
        raise ValueError(f"log_w_fixed: estimator={estimator!r} {'needs' if log_w_fixed is None else 'takes no'} "
                         "log_w_fixed (the log-weights with the samples and encoder stopped)")
    if (log_q is not None) != (estimator in FIXED_SAMPLE_ESTIMATORS) and estimator not in FIXED_SAMPLE_FORMS:
        raise ValueError(f"log_q: estimator={estimator!r} {'needs' if log_q is None else 'takes no'} log_q (log "
                         "q(z_i|x) at the fixed samples with the encoder live)")
    if estimator in FIXED_SAMPLE_FORMS and log_q is not None and log_w.shape[0] < 2:
        raise ValueError(f"log_w: estimator={estimator!r} with log_q (fixed samples) needs k >= 2 samples (sample i's "
                         f"baseline is formed from the others), got k={log_w.shape[0]}")
    for name, value in (("log_w_fixed", log_w_fixed), ("log_q", log_q)):
        if value is not None:
            _checks.check_tensor(name, value, (2,), like=("log_w", log_w))
            _checks.check_shape(name, value, log_w.shape)
    ops = get_backend(backend, log_w.device)
    return _objective_bound(ops, estimator, log_w, log_w_fixed=log_w_fixed, log_q=log_q, groups=groups,
                            ciwae_beta=ciwae_beta, renyi_alpha=renyi_alpha)


def _objective_bound(ops, estimator, log_w, *, log_w_fixed=None, log_q=None, groups=None, ciwae_beta=None,
                     renyi_alpha=None):
    bound = lambda lw: _bound(ops, lw)
    return objective_bound(
        estimator,
        log_w,
        bound,
        normalized_weights=ops.normalized_weights,
        log_w_fixed=log_w_fixed,
        log_q=log_q,
        groups=groups,
        ciwae_beta=ciwae_beta,
        renyi_alpha=renyi_alpha,
    )


def kl_warmup(step: int, warmup_steps: int, start: float = 0.0) -> float:
    """The KL-annealing weight beta for training step ``step`` (Bowman et al. 2016): rises linearly from ``start``
    to 1 over ``warmup_steps`` steps, then stays 1. Pass it as ``iwae_loss(..., beta=...)``.

    Examples::

        >>> from iwae_kernels import kl_warmup
        >>> [kl_warmup(step, warmup_steps=4) for step in range(6)]
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
        >>> kl_warmup(1, warmup_steps=2, start=0.5)
        0.75
    """
    if warmup_steps < 0 or not 0 <= start <= 1:
        raise ValueError(f"warmup_steps, start: expected warmup_steps >= 0 and 0 <= start <= 1, got {warmup_steps}, {start}")
    if warmup_steps == 0 or step >= warmup_steps:
        return 1.0
    return start + (1.0 - start) * max(step, 0) / warmup_steps


def _check_loss_args(x, mu, logvar, *, decoder, k, likelihood, eps, generator, check_finite):
    """Check iwae_loss's and log_likelihood's shared arguments (values too with ``check_finite``); returns k as an
    int."""
    if likelihood == "bernoulli" and isinstance(x, torch.Tensor) and not x.is_floating_point():
        raise TypeError(f"x: expected a floating dtype for Bernoulli targets in [0, 1], got {x.dtype} (images of "
                        "0..255: pass x.float() / 255)")
    _checks.check_tensor("x", x, tuple(d + 1 for d in EVENT_DIMS))
    _checks.check_tensor("mu", mu, (2,))
    _checks.check_tensor("logvar", logvar, (2,), like=("mu", mu))
    _checks.check_shape("logvar", logvar, mu.shape)
    _checks.check_same_device("x", x, like=("mu", mu))
    if x.shape[0] != mu.shape[0]:
        raise ValueError(f"x: expected batch size {mu.shape[0]} (as mu), got shape {tuple(x.shape)}")
    if not callable(decoder):
        raise TypeError(f"decoder: expected a callable (an nn.Module or function), got {type(decoder).__name__}")
    k = _checks.check_sample_count(k)
    _checks.check_choice("likelihood", likelihood, LIKELIHOODS)
    if eps is not None:
        _check_eps(eps, k, mu)
    _check_generator(generator)
    if check_finite:
        for name, value in (("x", x), ("mu", mu), ("logvar", logvar)):
            _checks.check_finite(name, value)
    if likelihood == "bernoulli" and (check_finite or (x.device.type == "cpu" and not torch.compiler.is_compiling())):
        _checks.check_unit_interval("x", x)  # on the CPU a pass over x, no device sync: always
    return k


def iwae_loss(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, decoder: Decoder, k: int = 50, *,
              likelihood: str = "bernoulli", estimator: str = "iwae", reduction: str = "mean",
              backend: str | None = None, flatten_samples: bool = False, check_finite: bool = False,
              generator: torch.Generator | None = None, beta: float | torch.Tensor | None = None,
              groups: int | None = None, ciwae_beta: float | None = None, renyi_alpha: float | None = None,
              eps: torch.Tensor | None = None) -> torch.Tensor:
    """The drop-in IWAE loss -L_k(x) for an encoder's Gaussian (mu, logvar) and any decoder.

    Args:
        x: data [B, *event], e.g. [B, P] or images [B, C, H, W] (Bernoulli targets in [0, 1], or real values for a
            Gaussian likelihood); the likelihood sums over the event dims. x gets no gradient from the loss on
            any backend (it is data; the encoder's mu and logvar carry its gradient, if any).
        mu, logvar: the encoder's diagonal Gaussian q(z|x), [B, D] each.
        decoder: callable; gets z [k, B, D] (or [k * B, D] with ``flatten_samples=True``) and returns
            logits [k, B, *event] ("bernoulli") or a (mean, logvar) pair of [k, B, *event] ("gaussian"); with
            ``flatten_samples`` it returns [k * B, *event] instead.
        k: samples per example, >= 1.
        estimator: "iwae" (paper Eq. 14), "vae" (k-sample ELBO, Eq. 7), "stl", "dreg", "iwae-resample"
            (k forward passes, one backward through a sample drawn by its normalized weight), "miwae" / "ciwae" /
            "piwae" (Rainforth et al. 2018), "renyi" (the VR-alpha bound, Li & Turner 2016), "rws" (reweighted
            wake-sleep: the decoder gets L_k's gradient, the encoder wake-phi's), "rws-dreg" (wake-phi's DReG form,
            Tucker et al. 2019), "vimco" (Mnih & Rezende 2016, k >= 2: samples from the stopped encoder, which gets
            the VIMCO score-function estimator of L_k's gradient; the decoder L_k's). piwae and rws-dreg run the
            decoder twice (on the samples, and on them detached for the decoder's own gradient).
        reduction: "mean" | "sum" over the batch, or "none" for the per-example loss [B].
        check_finite: check x, mu, logvar, the samples and latent term (blamed on mu, logvar), the decoder's
            output and the log-weights for NaN/inf, and Bernoulli targets for [0, 1]; off by default because it
            synchronizes the device. Without it a +inf log-weight gives a huge finite bound (see ``iwae_bound``).
            Bernoulli targets on the CPU are checked for [0, 1] on every call (no device to wait for), except
            under torch.compile; integer x (0..255 images) is refused with the conversion to use.
        generator: a torch.Generator on the tensors' device for the noise (default: torch's global RNG).
        eps: optional standard-normal noise [k, B, D] (mu's dtype and device): z = mu + exp(logvar / 2) * eps,
            so the loss is reproducible and comparable with another implementation's (``generator`` then draws
            nothing, except iwae-resample's choice of sample).
        beta: KL annealing: the weight on the latent term log p(z) - log q(z|x) in every log-weight (a float or
            a 0-dim tensor; see ``kl_warmup``); None or 1 is the plain bound. Refused by "stl", "dreg",
            "iwae-resample", "rws", "rws-dreg" and "vimco", whose gradients assume the plain bound; the others
            ("miwae", "ciwae", "renyi", "piwae" too) give the exact gradient of their objective of the annealed
            log-weights.
        groups: M for "miwae" and "piwae": the k samples form M groups of K = k / M (k must be a multiple of M).
        ciwae_beta: for "ciwae", the ELBO's share in [0, 1]: the objective is ciwae_beta ELBO + (1 - ciwae_beta) L_k.
        renyi_alpha: for "renyi", a finite a != 1: the objective is L_a = (logsumexp_i((1 - a) log w_i) - log k) /
            (1 - a), L_k at a = 0, the ELBO as a -> 1; for a < 0 it lies above L_k (an estimate, not a bound).

    Returns:
        minus the estimator's objective reduced over the batch (a scalar), or [B] for reduction="none": -L_k, or
        -MIWAE, -CIWAE, -L_a, -ELBO for those estimators.

    Examples::

        >>> import torch
        >>> from iwae_kernels import iwae_loss
        >>> _ = torch.manual_seed(0)
        >>> x = torch.rand(4, 6).round()  # B = 4 binary images of P = 6 pixels
        >>> encoder, decoder = torch.nn.Linear(6, 2 * 2), torch.nn.Linear(2, 6)  # D = 2 latent dimensions
        >>> mu, logvar = encoder(x).chunk(2, dim=-1)
        >>> loss = iwae_loss(x, mu, logvar, decoder, k=5)
        >>> loss.backward()
        >>> loss.shape, encoder.weight.grad.shape, decoder.weight.grad.shape
        (torch.Size([]), torch.Size([4, 6]), torch.Size([6, 2]))
        >>> iwae_loss(x, mu, logvar, decoder, k=5, estimator="dreg", reduction="none").shape
        torch.Size([4])
    """
    k = _check_loss_args(x, mu, logvar, decoder=decoder, k=k, likelihood=likelihood, eps=eps, generator=generator,
                         check_finite=check_finite)
    _checks.check_choice("estimator", estimator, ESTIMATORS)
    _checks.check_choice("reduction", reduction, REDUCTIONS)
    ops = get_backend(backend, mu.device)  # resolved once for the whole call

    groups, ciwae_beta, renyi_alpha = check_estimator_options(
        estimator,
        k,
        groups=groups,
        ciwae_beta=ciwae_beta,
        renyi_alpha=renyi_alpha,
    )
    scale = _latent_scale("beta", beta, mu)
    check_latent_scale("beta", estimator, scale)
    sampling = dict(decoder=decoder, ops=ops, likelihood=likelihood, flatten_samples=flatten_samples,
                    check_finite=check_finite)
    if estimator == "iwae-resample":
        def log_weights(noise):
            return _log_weights(x, mu, logvar, k=noise[0].shape[0], eps=noise[0], **sampling)

        if eps is None:
            eps = torch.randn((k,) + tuple(mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
        return reduced_loss(_resampled_bound(ops, log_weights, [eps], generator=generator), reduction)
    if estimator in FIXED_SAMPLE_ESTIMATORS + ROUTED_ESTIMATORS:
        return reduced_loss(_two_role_bound(x, mu, logvar, k=k, estimator=estimator, groups=groups, eps=eps,
                                            generator=generator, scale=scale, **sampling), reduction)
    inputs, latent_log_weight = _sample_and_decode(x, mu, logvar, k=k, estimator=sampling_estimator(estimator),
                                                   eps=eps, generator=generator, scale=scale, **sampling)
    log_likelihood, fused_loss = _likelihood_ops(ops, likelihood)
    if estimator in ("iwae", "stl", "dreg") and not check_finite:
        # The likelihood, bound and reduction as one op (for the Triton backend one autograd node, three kernels).
        return fused_loss(*inputs, latent_log_weight, reduction)
    log_w = log_likelihood(*inputs) + latent_log_weight
    # -inf is a legitimate impossible sample; NaN or +inf is an overflow (say, a Gaussian likelihood's sum).
    if check_finite and bool((torch.isnan(log_w) | torch.isposinf(log_w)).any()):
        raise ValueError("log_w: a log-weight log p(x|z) + log p(z) - log q(z|x) is NaN or +inf (an overflow "
                         "in the likelihood?)")
    return reduced_loss(_objective_bound(ops, estimator, log_w, groups=groups, ciwae_beta=ciwae_beta,
                                         renyi_alpha=renyi_alpha), reduction)


def _two_role_bound(x, mu, logvar, *, decoder, k, ops, likelihood, estimator, groups, eps=None, generator=None,
                    flatten_samples=False, check_finite=False, scale=None):
    """rws, vimco, piwae, rws-dreg in ``iwae_loss``: the bound [B] whose gradient gives the decoder L_k's and the
    encoder its estimator's (arguments already checked)."""
    log_likelihood, _ = _likelihood_ops(ops, likelihood)

    def log_weights(z, latent):
        out = _decode(decoder, z, flatten_samples)
        return log_likelihood(*_likelihood_inputs(out, x, k, likelihood=likelihood, check_finite=check_finite)) + latent

    sampling = dict(ops=ops, eps=eps, generator=generator, check_finite=check_finite)
    if estimator in FIXED_SAMPLE_ESTIMATORS:  # samples from the stopped encoder; its gradient through log q alone
        z, latent = _checked_samples(mu.detach(), logvar.detach(), k, estimator="iwae", **sampling)
        return _objective_bound(ops, estimator, log_weights(z, latent), log_q=wake_phi_term(z, mu, logvar))
    z, latent = _checked_samples(mu, logvar, k, estimator=sampling_estimator(estimator), scale=scale, **sampling)
    log_w_fixed = log_weights(z.detach(), latent.detach())  # the decoder again, its own gradient only
    return _objective_bound(ops, estimator, log_weights(z, latent), log_w_fixed=log_w_fixed, groups=groups)
