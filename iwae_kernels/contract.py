"""The backend contract: the ops every backend provides, the codes they share, and the table of which
implementation runs per op and backend.

A backend is a module with one function per op in ``OPS``, each with the signature and semantics documented in
``iwae_kernels.torch_backend`` (the plain-PyTorch backend). Arguments are checked once, in
``iwae_kernels.functional``, before any backend runs. Adding an op: its torch implementation, its kernel and
launcher in ``ops/<family>.py``, a row in ``IMPLEMENTATIONS``, the public function, tests (README, "Adding an op").
"""

import enum
import math

import torch

LOG_2PI = math.log(2.0 * math.pi)

OPS = (
    "gaussian_sample",                   # mu, logvar [B, D] or [k, B, D] -> z [k, B, D], latent log-weight [k, B]
    "bernoulli_log_likelihood",          # logits [k, B, P], x [B, P] -> [k, B]
    "gaussian_log_likelihood",           # mean, logvar [k, B, P], x [B, P] -> [k, B]
    "bernoulli_iwae_loss",               # logits [k, B, P], x [B, P], latent [k, B], reduction -> -L_k reduced
    "gaussian_iwae_loss",                # mean, logvar [k, B, P], x [B, P], latent [k, B], reduction -> -L_k reduced
    "bernoulli_decoder_log_likelihood",  # hidden [k, B, H], weight [P, H], bias [P], x [B, P] -> [k, B]
    "bernoulli_mlp_decoder_log_likelihood",  # z [k, B, D], 3 weights and biases, x [B, P], latent -> [k, B]
    "categorical_log_likelihood",        # logits [k, B, T, V], tokens, mask [B, T] -> [k, B]
    "iwae_bound",                        # log_w [k, B] -> L_k [B]
    "normalized_weights",                # log_w [k, B] -> [k, B]
    "fold_max_sum",                      # (max, sum) [B], log_w chunk [kc, B] -> (max, sum) [B]
    "local_reparam_linear",              # a [M, K], mu, var [N, K], bias [N] -> [M, N]
)

# Which backend's implementation runs each op, per backend: every backend runs its own, except where it declares
# another's. The cuda backend runs the Triton kernels of the four ops that have no CUDA C++ kernel (and its two
# losses compose its likelihood and bound kernels, as the torch backend composes its ops). Within an op, the Triton
# decoder head, decoder MLP and local reparameterization run float64 through ``torch_math``'s plain-torch formulas
# (tl.dot takes no float64 operands), and the cuda backend refuses include_prior=False and latent_scale (its
# sampling kernel has neither).
IMPLEMENTATIONS = {
    "torch": {op: "torch" for op in OPS},
    "triton": {op: "triton" for op in OPS},
    "cuda": {op: "cuda" for op in OPS} | {"bernoulli_decoder_log_likelihood": "triton",
                                          "bernoulli_mlp_decoder_log_likelihood": "triton",
                                          "categorical_log_likelihood": "triton", "local_reparam_linear": "triton"},
}


class Estimator(enum.IntEnum):
    """What the sampling kernels' backward computes; mirrors ``enum Estimator`` in csrc/iwae_kernels.h."""

    TOTAL_DERIVATIVE = 0       # iwae, vae, iwae-resample: the exact derivative of (z, log-weight)
    STICKING_THE_LANDING = 1   # stl: the path derivative, no score term
    DOUBLY_REPARAMETERIZED = 2  # dreg: the path derivative weighted by the normalized weight again


ESTIMATOR_CODES = {"iwae": Estimator.TOTAL_DERIVATIVE, "vae": Estimator.TOTAL_DERIVATIVE,
                   "iwae-resample": Estimator.TOTAL_DERIVATIVE, "stl": Estimator.STICKING_THE_LANDING,
                   "dreg": Estimator.DOUBLY_REPARAMETERIZED}


class Likelihood(enum.IntEnum):
    """The observation model of the log-likelihood kernels; mirrors ``enum Likelihood`` in csrc/iwae_kernels.h."""

    BERNOULLI = 0
    GAUSSIAN = 1


def accumulation_dtype(dtype):
    """float64 stays float64; every other floating dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
