"""What the model zoo shares: the Glorot MLP, a Gaussian head, and ``LogWeightModel``, which turns any
``log_weights(x, k) -> [k, B]`` into the IWAE loss and the chunked L_k."""

import torch
from torch import nn

from .. import functional as F
from ..functional import StreamingIWAEBound

# What one chunk of L_k's samples may hold in activations; the chunk follows from it and the batch size, so memory
# does not grow with k. 512 MiB: 500 samples of 100 images through the paper's layers, all 5000 through its fused
# decoder MLP.
EVAL_CHUNK_BYTES = 512 * 2**20
# Samples per chunk for a model that does not estimate its activations (eval_row_bytes None).
DEFAULT_EVAL_CHUNK = 500


def mlp(sizes, out_features):
    """Linear + tanh through ``sizes``, then a Linear to ``out_features``; Glorot-uniform weights, zero biases."""
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
    layers.append(nn.Linear(sizes[-1], out_features))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


def gaussian(net, inputs):
    mean, logvar = net(inputs).chunk(2, dim=-1)
    return mean, logvar


class LogWeightModel(nn.Module):
    """Base for models that define ``log_weights(x, k) -> [k, B]``: the IWAE loss and the chunked L_k from it."""

    backend = None

    def loss(self, x, k=5, **options):
        """-L_k averaged over the batch; ``options`` go to ``log_weights`` (e.g. the sentence VAE's beta)."""
        return -F.iwae_bound(self.log_weights(x, k, **options), backend=self.backend).mean()

    def eval_row_bytes(self):
        """Bytes of activations ``log_weights`` holds per (sample, example) row without autograd, an upper
        estimate; None when the model does not say (chunks are then DEFAULT_EVAL_CHUNK samples)."""
        return None

    def eval_chunk(self, k, batch_size, chunk=None):
        """Samples per chunk of L_k over ``batch_size`` examples, at most k: ``chunk`` when given, else as many as
        EVAL_CHUNK_BYTES of activations hold (eval_row_bytes), at least 1."""
        if chunk:
            return min(k, chunk)
        row_bytes = self.eval_row_bytes()
        samples = DEFAULT_EVAL_CHUNK if row_bytes is None else EVAL_CHUNK_BYTES // (batch_size * row_bytes)
        return max(1, min(k, samples))

    @torch.no_grad()
    def log_likelihood(self, x, k=5000, chunk=None):
        """Per-example L_k [B] for x [B, ...] (the paper's test log-likelihood with k = 5000), in memory that does
        not grow with k: samples are drawn ``chunk`` at a time (default ``eval_chunk(k, B)``) and their log-weights
        folded by the split-k logsumexp."""
        chunk = self.eval_chunk(k, x.shape[0], chunk)
        accumulator = StreamingIWAEBound(x.shape[0], device=x.device, dtype=torch.float64, backend=self.backend)
        for start in range(0, k, chunk):
            accumulator.update(self.log_weights(x, min(chunk, k - start)))
        return accumulator.bound()
