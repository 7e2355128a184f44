"""What the model zoo shares: the Glorot MLP, a Gaussian head, and ``LogWeightModel``, which turns any
``log_weights(x, k) -> [k, B]`` into the IWAE loss and the chunked L_k."""

import torch
from torch import nn

from .. import evaluation
from .. import functional as F


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
        estimate; None when the model does not say (chunks are then ``evaluation.DEFAULT_EVAL_CHUNK`` samples)."""
        return None

    def eval_chunk(self, k, batch_size, chunk=None):
        """Samples per chunk of L_k over ``batch_size`` examples, at most k: ``chunk`` when given, else as many as
        ``evaluation.EVAL_CHUNK_BYTES`` of activations hold (eval_row_bytes), at least 1."""
        return evaluation.eval_chunk(k, batch_size, row_bytes=self.eval_row_bytes(), chunk=chunk)

    def chunk_log_weights(self, x, k, eps=None):
        """``log_weights(x, k)`` for one chunk of ``log_likelihood``; ``eps``: that chunk's slice of the noise
        (the keyword the model's ``log_weights`` takes for it)."""
        return self.log_weights(x, k) if eps is None else self.log_weights(x, k, eps=eps)

    @torch.no_grad()
    def log_likelihood(self, x, k=5000, chunk=None, *, eps=None):
        """Per-example L_k [B] (float64) for x [B, ...] (the paper's test log-likelihood with k = 5000), in memory
        that does not grow with k: samples are drawn ``chunk`` at a time (default ``eval_chunk(k, B)``) and their
        log-weights folded by the split-k logsumexp (``evaluation.streamed_bound``).

        eps: optional noise that fixes the samples: a [k, B, D] tensor, or for ``PaperModel`` one per stochastic
        layer (its ``noise``); each chunk gets its slice of the k samples.
        """
        def chunk_log_weights(start, size):
            if eps is None:
                return self.chunk_log_weights(x, size)
            window = lambda t: t[start : start + size]
            return self.chunk_log_weights(x, size, [window(t) for t in eps] if isinstance(eps, (list, tuple))
                                          else window(eps))

        chunk = self.eval_chunk(k, x.shape[0], chunk)
        return evaluation.streamed_bound(chunk_log_weights, k, chunk=chunk, batch_size=x.shape[0], device=x.device,
                                         backend=self.backend)
