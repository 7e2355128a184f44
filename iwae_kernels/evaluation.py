"""Large-k evaluation in memory that does not grow with k: L_k (the paper's test log-likelihood at k = 5000) of
any encoder/decoder, per example, and over a dataset on 1 or N processes.

The samples run in chunks whose size follows from an activation budget (``eval_chunk``), each chunk's
log-weights folded into ``StreamingIWAEBound``; the model zoo's ``LogWeightModel.log_likelihood`` uses the same
two pieces.
"""

import torch
import torch.distributed as dist
from torch import nn

from . import functional
from .backend import get_backend
from .functional import StreamingIWAEBound

# What one chunk of L_k's samples may hold in activations; the chunk follows from it and the batch size, so memory
# does not grow with k. 512 MiB: 500 samples of 100 images through the paper's layers, all 5000 through its fused
# decoder MLP.
EVAL_CHUNK_BYTES = 512 * 2**20
# Samples per chunk when the activations per sample are not known (a decoder with layers other than nn.Linear).
DEFAULT_EVAL_CHUNK = 500
# Layers whose per-sample output width ``linear_widths`` cannot read; parameter-free ones (activations, reshapes)
# hold no more than the Linear output they follow, which the estimate counts twice.
_READABLE_LAYERS = (nn.Linear,)


def eval_chunk(k, batch_size, *, row_bytes, chunk=None):
    """Samples per chunk of L_k over ``batch_size`` examples, at most k: ``chunk`` when given, else as many as
    EVAL_CHUNK_BYTES of activations hold at ``row_bytes`` per (sample, example) row (DEFAULT_EVAL_CHUNK when
    row_bytes is None), at least 1."""
    if chunk:
        return min(k, chunk)
    samples = DEFAULT_EVAL_CHUNK if row_bytes is None else EVAL_CHUNK_BYTES // (batch_size * row_bytes)
    return max(1, min(k, samples))


def linear_widths(networks):
    """Sum of the nn.Linear output widths in ``networks`` (modules), or None when one holds a layer with
    parameters that is not an nn.Linear (its activations are not known)."""
    widths = 0
    for network in networks:
        for module in network.modules():
            if isinstance(module, _READABLE_LAYERS):
                widths += module.out_features
            elif any(True for _ in module.parameters(recurse=False)):
                return None
    return widths


def activation_row_bytes(networks, latent_width, element_size):
    """Upper estimate of the bytes per (sample, example) row that per-sample ``networks`` hold without autograd:
    each Linear's output and its activation, and per latent unit its noise, sample, mean and log-variance; None
    when ``linear_widths`` cannot read a network."""
    widths = linear_widths(networks)
    if widths is None:
        return None
    floats = 2 * widths + 4 * latent_width + 4  # + 4: the latent term, log w and the fold's temporaries
    return floats * element_size


def streamed_bound(chunk_log_weights, k, *, chunk, batch_size, device, backend=None):
    """L_k [B] (float64) from ``chunk_log_weights(start, size) -> log w [size, B]`` called for consecutive
    chunks of ``chunk`` samples covering k, folded as they come (StreamingIWAEBound)."""
    accumulator = StreamingIWAEBound(batch_size, device=device, dtype=torch.float64, backend=backend)
    for start in range(0, k, chunk):
        accumulator.update(chunk_log_weights(start, min(chunk, k - start)))
    return accumulator.bound()


def decoder_eval_chunk(decoder, k, mu, *, chunk=None):
    """``log_likelihood``'s samples per chunk for ``decoder`` and the posterior mean mu [B, D]: ``eval_chunk`` with
    the decoder's ``activation_row_bytes`` (an nn.Module's Linear widths; unknown for other callables)."""
    row_bytes = None
    if isinstance(decoder, nn.Module):
        row_bytes = activation_row_bytes([decoder], mu.shape[1], mu.element_size())
    return eval_chunk(k, mu.shape[0], row_bytes=row_bytes, chunk=chunk)


@torch.no_grad()
def log_likelihood(x, mu, logvar, decoder, k=5000, *, likelihood="bernoulli", chunk=None, eps=None, generator=None,
                   backend=None, flatten_samples=False, check_finite=False):
    """Per-example L_k [B] of your own encoder/decoder (the paper's test log-likelihood at k = 5000), in memory
    that does not grow with k and with no autograd graph.

    Args:
        x, mu, logvar, decoder, likelihood, flatten_samples, check_finite: as for ``iwae_loss``.
        k: samples per example, >= 1.
        chunk: samples per chunk; default as many as EVAL_CHUNK_BYTES (512 MiB) of activations hold: for an
            nn.Module decoder of nn.Linear layers (and parameter-free ones) estimated from their widths, else
            DEFAULT_EVAL_CHUNK (500).
        eps: optional standard-normal noise [k, B, D] (mu's dtype and device), used a chunk at a time: the result
            then does not depend on ``chunk``.
        generator: a torch.Generator on mu's device for the noise (default torch's global RNG). The same
            generator state gives the same L_k for the same chunk size; another chunk size draws the noise in
            other pieces, so a different (equally distributed) L_k: pass ``eps`` for a chunk-free value.

    Returns:
        L_k [B], float64 (the fold's accumulation dtype).
    """
    k = functional._check_loss_args(x, mu, logvar, decoder=decoder, k=k, likelihood=likelihood, eps=eps,
                                    generator=generator, check_finite=check_finite)
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk: expected an int >= 1 or None, got {chunk!r}")
    chunk = decoder_eval_chunk(decoder, k, mu, chunk=chunk)
    ops = get_backend(backend, mu.device)

    def chunk_log_weights(start, size):
        return functional._log_weights(x, mu, logvar, decoder=decoder, k=size, ops=ops, likelihood=likelihood,
                                       eps=None if eps is None else eps[start : start + size], generator=generator,
                                       flatten_samples=flatten_samples, check_finite=check_finite)

    return streamed_bound(chunk_log_weights, k, chunk=chunk, batch_size=mu.shape[0], device=mu.device,
                          backend=backend)


def process_group():
    """(rank, world size) of the initialised torch.distributed process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _progress_bar(total, description, enabled):
    """A tqdm bar counting samples, or None (disabled, or tqdm not installed)."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="sample", unit_scale=True, desc=description)


def dealt_log_likelihoods(batches, batch_log_likelihood, k, *, total=None, progress=False):
    """Per-example L_k over numbered batches, dealt round-robin to the processes of the process group (if any)
    and gathered in batch order on every process.

    batches: an iterable of (index, batch), the same on every process; batch_log_likelihood(index, batch) -> [b]
    for the batches this process owns (index % world == rank); its noise must depend on the index only, so
    N processes give the same numbers as 1. total: the examples in all batches, for the progress bar (samples =
    examples x k). Returns the [N] concatenation, on the CPU.
    """
    rank, world = process_group()
    share = None if total is None else -(-total // world) * k
    bar = _progress_bar(share, f"L_{k} (rank {rank})" if world > 1 else f"L_{k}", progress)
    results = {}
    for index, batch in batches:
        if index % world != rank:
            continue
        results[index] = batch_log_likelihood(index, batch).cpu()
        if bar is not None:
            bar.update(results[index].shape[0] * k)
    if bar is not None:
        bar.close()
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, results)
        results = {index: values for part in gathered for index, values in part.items()}
    return torch.cat([results[index] for index in sorted(results)])


def evaluate_dataset(loader, encode, decoder, k=5000, *, likelihood="bernoulli", chunk=None, seed=0, device=None,
                     backend=None, flatten_samples=False, check_finite=False, progress=False):
    """Per-example L_k [N] (float64, CPU, in the loader's order) over a dataset, on one process or all of an
    initialised torch.distributed process group (torchrun): batch j goes to process j % world and draws its noise
    from a generator seeded by (seed, j), so 1 and N processes give the same numbers.

    Args:
        loader: an iterable of batches x [b, *event] (or tuples/lists whose first item is x), e.g. a DataLoader;
            every process iterates all of it, in the same order, and evaluates its share.
        encode: x -> (mu, logvar), each [b, D]; decoder, likelihood, flatten_samples, check_finite: as for
            ``iwae_loss``; k, chunk, backend: as for ``log_likelihood``.
        device: where x goes before ``encode`` (None: where the loader puts it).
        progress: a progress bar counting samples (examples x k) when tqdm is installed.
    """
    def numbered():
        for index, batch in enumerate(loader):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            yield index, (x if device is None else x.to(device))

    @torch.no_grad()
    def batch_log_likelihood(index, x):
        generator = torch.Generator(device=x.device).manual_seed(seed * 1_000_003 + index)
        mu, logvar = encode(x)
        return log_likelihood(x, mu, logvar, decoder, k, likelihood=likelihood, chunk=chunk, generator=generator,
                              backend=backend, flatten_samples=flatten_samples, check_finite=check_finite)

    dataset = getattr(loader, "dataset", None)
    total = len(dataset) if hasattr(dataset, "__len__") else None
    return dealt_log_likelihoods(numbered(), batch_log_likelihood, k, total=total, progress=progress)
