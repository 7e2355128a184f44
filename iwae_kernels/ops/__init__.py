"""The Triton backend: one kernel family per module, each with its launcher and autograd Function.

This module exposes the ops of ``iwae_kernels.contract.OPS`` like ``iwae_kernels.torch_backend``, so the public
API in ``iwae_kernels.functional`` dispatches to either without knowing which it holds.
"""

from .categorical import categorical_log_likelihood
from .decoder_head import bernoulli_decoder_log_likelihood
from .decoder_mlp import bernoulli_mlp_decoder_log_likelihood
from .gaussian_sample import gaussian_sample
from .local_reparam import local_reparam_linear
from .log_likelihood import bernoulli_iwae_loss, bernoulli_log_likelihood, gaussian_iwae_loss, gaussian_log_likelihood
from .logsumexp import fold_max_sum, iwae_bound, normalized_weights

__all__ = [
    "gaussian_sample",
    "bernoulli_log_likelihood",
    "gaussian_log_likelihood",
    "bernoulli_iwae_loss",
    "gaussian_iwae_loss",
    "iwae_bound",
    "normalized_weights",
    "fold_max_sum",
    "bernoulli_decoder_log_likelihood",
    "bernoulli_mlp_decoder_log_likelihood",
    "local_reparam_linear",
    "categorical_log_likelihood",
]
