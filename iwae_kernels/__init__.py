"""iwae_kernels: fused Triton kernels for the Importance Weighted Autoencoder loss (Burda et al. 2015).

Public API (k samples lead every [k, ...] tensor):

    gaussian_sample(mu, logvar, k, ...)        -> z [k, B, D], log p(z) - log q(z|x) [k, B]
    bernoulli_log_likelihood(logits, x)        -> [k, B]
    bernoulli_decoder_log_likelihood(hidden, weight, bias, x) -> [k, B], the logits never written
    bernoulli_mlp_decoder_log_likelihood(z, weights, biases, x, latent) -> [k, B], the paper's decoder fused (eval)
    gaussian_log_likelihood(mean, logvar, x)   -> [k, B]
    bernoulli_iwae_loss(logits, x, latent)     -> -L_k of log p(x|z) + latent, likelihood and bound fused
    gaussian_iwae_loss(mean, logvar, x, latent) -> the same for a Gaussian decoder
    categorical_log_likelihood(logits, tokens, mask) -> [k, B], log-softmax + gather fused
    local_reparam_linear(input, weight_mu, weight_var, bias) -> [..., N], sampled pre-activations
    iwae_bound(log_w)                          -> L_k [B]
    normalized_weights(log_w)                  -> [k, B]
    StreamingIWAEBound(B).update(chunk).bound() -> L_k [B] in memory that does not grow with k
    iwae_loss(x, mu, logvar, decoder, k=50, ...) -> the drop-in loss -L_k (beta=kl_warmup(step, n) anneals)
    estimator_bound(log_w, estimator, ...)     -> [B] MIWAE / CIWAE / PIWAE / rws-dreg objectives on own log-weights
    log_likelihood(x, mu, logvar, decoder, k=5000, ...) -> L_k [B] of your own model, memory flat in k
    evaluate_dataset(loader, encode, decoder, k=5000, ...) -> L_k [N] over a dataset, 1 or N processes
    importance_diagnostics(log_w)              -> ESS [B] and PSIS Pareto k-hat [B] (also diagnostics=True above)
    ais_log_likelihood(x, decoder, mu=, logvar=, steps=, chains=) -> AIS log p(x) [B], tighter than L_k
    bdmc(x, z, decoder, ...)                   -> BDMCBounds(lower, upper) on data simulated by simulate_data
"""

from .functional import (
    ESTIMATORS,
    LIKELIHOODS,
    StreamingIWAEBound,
    bernoulli_decoder_log_likelihood,
    bernoulli_mlp_decoder_log_likelihood,
    bernoulli_iwae_loss,
    bernoulli_log_likelihood,
    categorical_log_likelihood,
    estimator_bound,
    gaussian_iwae_loss,
    gaussian_log_likelihood,
    gaussian_sample,
    iwae_bound,
    iwae_loss,
    kl_warmup,
    local_reparam_linear,
    normalized_weights,
    resampled_iwae_bound,
)

from .ais import BDMCBounds, ais_log_likelihood, bdmc, simulate_data
from .diagnostics import ImportanceDiagnostics, StreamingImportanceDiagnostics, importance_diagnostics
from .evaluation import evaluate_dataset, log_likelihood
from ._autograd import DoubleBackwardError
from .backend import preload as _preload_backends

_preload_backends()

__version__ = "0.1.0"

__all__ = [
    "BDMCBounds",
    "DoubleBackwardError",
    "ESTIMATORS",
    "ImportanceDiagnostics",
    "LIKELIHOODS",
    "StreamingImportanceDiagnostics",
    "StreamingIWAEBound",
    "ais_log_likelihood",
    "bdmc",
    "bernoulli_decoder_log_likelihood",
    "bernoulli_mlp_decoder_log_likelihood",
    "bernoulli_iwae_loss",
    "bernoulli_log_likelihood",
    "categorical_log_likelihood",
    "estimator_bound",
    "evaluate_dataset",
    "gaussian_iwae_loss",
    "gaussian_log_likelihood",
    "gaussian_sample",
    "importance_diagnostics",
    "iwae_bound",
    "iwae_loss",
    "kl_warmup",
    "local_reparam_linear",
    "log_likelihood",
    "normalized_weights",
    "resampled_iwae_bound",
    "simulate_data",
]
