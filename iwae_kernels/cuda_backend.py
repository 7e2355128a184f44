"""The CUDA C++ backend: csrc/ kernels behind the same autograd Functions as the Triton backend.

The compiled module is ``iwae_kernels._cuda``, built by ``setup.py`` when a CUDA toolchain and a CUDA build of
torch are present (or ``IWAE_KERNELS_BUILD_CUDA=1``). Without it, ``build_extension()`` (or
``IWAE_KERNELS_CUDA_JIT=1``) compiles it with ``torch.utils.cpp_extension.load`` into torch's extension cache.
"""

import functools
import importlib
import os
from pathlib import Path
from typing import Optional

from torch import Tensor

from . import torch_math
from ._build import CXX_FLAGS, NVCC_FLAGS, SOURCES
from .ops.gaussian_sample import gaussian_sample as _gaussian_sample
from .ops import log_likelihood as _likelihood
from .ops import logsumexp as _logsumexp
from .ops.utils import Launchers, contiguous_or_none, library_op

CSRC = Path(__file__).resolve().parent.parent / "csrc"
JIT_ENV_VAR = "IWAE_KERNELS_CUDA_JIT"

HOW_TO_BUILD = (
    "the cuda backend is not built: reinstall with `IWAE_KERNELS_BUILD_CUDA=1 pip install --no-build-isolation -e .` "
    "(needs nvcc and a CUDA build of torch), or call iwae_kernels.cuda_backend.build_extension() "
    f"(or set {JIT_ENV_VAR}=1) to compile it just in time"
)


def build_extension(verbose=False):
    """Compile csrc/ with torch.utils.cpp_extension.load (cached by torch) and return the module."""
    from torch.utils.cpp_extension import load

    if not (CSRC / SOURCES[0]).exists():
        raise RuntimeError(f"cuda backend: the sources are not at {CSRC}; a JIT build needs a source checkout")
    return load(name="iwae_kernels_cuda", sources=[str(CSRC / s) for s in SOURCES], extra_cuda_cflags=NVCC_FLAGS,
                extra_cflags=CXX_FLAGS, verbose=verbose)


@functools.lru_cache(maxsize=None)
def extension():
    """The compiled module: the installed one, else a JIT build when IWAE_KERNELS_CUDA_JIT=1; else ImportError."""
    try:
        return importlib.import_module("iwae_kernels._cuda")
    except ImportError:
        if os.environ.get(JIT_ENV_VAR, "0") not in ("", "0"):
            return build_extension()
        raise ImportError(HOW_TO_BUILD) from None


def available():
    try:
        extension()
    except (ImportError, RuntimeError, OSError):
        return False
    return True


def launchers():
    """The CUDA launcher pair of each op family, registered as torch.library custom ops (see ops.utils.library_op).

    Kept in a plain dict filled once (backend.preload fills it at import): torch.compile then reads the dict
    instead of tracing into the extension's import, which dynamo refuses.
    """
    if not _LAUNCHERS:
        _LAUNCHERS.update(_register_launchers(extension()))
    return _LAUNCHERS


_LAUNCHERS = {}


def _register_launchers(module):
    # The CUDA kernels read contiguous rows; the Triton ones take views (sample and example strides) in place.
    @library_op("cuda_gaussian_sample_forward", ("z", "log_weight"))
    def sample_forward(mu: Tensor, logvar: Tensor, eps: Optional[Tensor], prior_mu: Optional[Tensor],
                       prior_logvar: Optional[Tensor], z: Tensor, log_weight: Tensor, seed: Tensor,
                       include_prior: bool, scale: Optional[Tensor]) -> None:
        _check_sample_options(include_prior, scale)
        module.gaussian_sample_forward(mu.contiguous(), logvar.contiguous(), eps, contiguous_or_none(prior_mu),
                                       contiguous_or_none(prior_logvar), z, log_weight, seed)

    @library_op("cuda_gaussian_sample_backward", ("grad_mu", "grad_logvar", "grad_prior_mu", "grad_prior_logvar"))
    def sample_backward(mu: Tensor, logvar: Tensor, eps: Optional[Tensor], prior_mu: Optional[Tensor],
                        prior_logvar: Optional[Tensor], grad_z: Optional[Tensor], grad_log_weight: Optional[Tensor],
                        grad_mu: Tensor, grad_logvar: Tensor, grad_prior_mu: Optional[Tensor],
                        grad_prior_logvar: Optional[Tensor], k: int, seed: Tensor, estimator: int,
                        include_prior: bool, scale: Optional[Tensor]) -> None:
        _check_sample_options(include_prior, scale)
        module.gaussian_sample_backward(mu.contiguous(), logvar.contiguous(), eps, contiguous_or_none(prior_mu),
                                        contiguous_or_none(prior_logvar), grad_z, grad_log_weight, grad_mu, grad_logvar,
                                        grad_prior_mu, grad_prior_logvar, k, seed, estimator)

    @library_op("cuda_log_likelihood_forward", ("out",))
    def likelihood_forward(logits_or_mean: Tensor, logvar: Optional[Tensor], x: Tensor, out: Tensor,
                           likelihood: int) -> None:
        module.log_likelihood_forward(logits_or_mean.contiguous(), contiguous_or_none(logvar), x, out, likelihood)

    @library_op("cuda_log_likelihood_backward", ("grad_logits_or_mean", "grad_logvar"))
    def likelihood_backward(logits_or_mean: Tensor, logvar: Optional[Tensor], x: Tensor, grad_out: Tensor,
                            grad_logits_or_mean: Tensor, grad_logvar: Optional[Tensor], likelihood: int) -> None:
        module.log_likelihood_backward(logits_or_mean.contiguous(), contiguous_or_none(logvar), x, grad_out,
                                       grad_logits_or_mean, grad_logvar, likelihood)

    @library_op("cuda_max_sum", ("out_max", "out_sum", "bound"))
    def max_sum(log_w: Tensor, in_max: Optional[Tensor], in_sum: Optional[Tensor], out_max: Tensor, out_sum: Tensor,
                bound: Optional[Tensor]) -> None:
        module.max_sum(log_w, in_max, in_sum, out_max, out_sum, bound)

    @library_op("cuda_normalized_weights", ("out",))
    def normalized_weights(log_w: Tensor, running_max: Tensor, running_sum: Tensor, scale: Optional[Tensor],
                           out: Tensor) -> None:
        module.normalized_weights(log_w, running_max, running_sum, scale, out)

    return {
        "sample": Launchers(sample_forward, sample_backward),
        "likelihood": Launchers(likelihood_forward, likelihood_backward),
        "logsumexp": Launchers(max_sum, normalized_weights),
    }


# The backend's ops on the CUDA kernels (contract.IMPLEMENTATIONS says which ops run Triton's kernels instead).


def _check_sample_options(include_prior, latent_scale):
    if not include_prior or latent_scale is not None:
        raise ValueError("include_prior=False and latent_scale: the cuda backend's sampling kernel takes neither; "
                         "use backend='triton' (or 'torch')")


def gaussian_sample(mu, logvar, k, eps, prior_mu, prior_logvar, estimator, generator, include_prior=True,
                    latent_scale=None):
    _check_sample_options(include_prior, latent_scale)
    return _gaussian_sample(
        mu,
        logvar,
        k,
        eps=eps,
        prior_mu=prior_mu,
        prior_logvar=prior_logvar,
        estimator=estimator,
        generator=generator,
        launchers=launchers()["sample"],
    )


def bernoulli_log_likelihood(logits, x):
    return _likelihood.bernoulli_log_likelihood(logits, x, launchers=launchers()["likelihood"])


def gaussian_log_likelihood(mean, logvar, x):
    return _likelihood.gaussian_log_likelihood(mean, logvar, x, launchers=launchers()["likelihood"])


def iwae_bound(log_w):
    return _logsumexp.iwae_bound(log_w, launchers=launchers()["logsumexp"])


def normalized_weights(log_w):
    return _logsumexp.normalized_weights(log_w, launchers=launchers()["logsumexp"])


def fold_max_sum(running_max, running_sum, log_w):
    return _logsumexp.fold_max_sum(running_max, running_sum, log_w, launchers=launchers()["logsumexp"])


# The loss: the ops above composed (the CUDA C++ kernels have no fused loss), as the torch backend composes its own.


def bernoulli_iwae_loss(logits, x, latent_log_weight, reduction):
    return torch_math.iwae_loss_from_log_weights(bernoulli_log_likelihood(logits, x) + latent_log_weight,
                                                    iwae_bound, reduction)


def gaussian_iwae_loss(mean, logvar, x, latent_log_weight, reduction):
    return torch_math.iwae_loss_from_log_weights(gaussian_log_likelihood(mean, logvar, x) + latent_log_weight,
                                                    iwae_bound, reduction)
