"""Large-k evaluation in memory that does not grow with k: L_k (the paper's test log-likelihood at k = 5000) of
any encoder/decoder, per example, and over a dataset on 1 or N processes.

The samples run in chunks whose size follows from a memory budget and the decoder's measured bytes per sample
(``chunk_for_budget``), each chunk's log-weights folded into ``StreamingIWAEBound`` (and, on request, into the
importance diagnostics, ``diagnostics.py``); the model zoo's ``LogWeightModel.log_likelihood`` uses the same
two pieces.
"""

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, overload

import torch
import torch.distributed as dist

from . import functional
from ._memory import peak_allocated_bytes
from .backend import get_backend
from .diagnostics import ImportanceDiagnostics, StreamingImportanceDiagnostics
from .functional import Decoder, Device, StreamingIWAEBound

# What one chunk of L_k's samples may hold in the tensors it allocates, unless ``memory_budget=`` says otherwise:
# the chunk follows from it, the batch and the decoder's measured bytes per sample, so memory does not grow with k.
MEMORY_BUDGET = 512 * 2**20
# Samples per chunk of the two probe calls that measure a decoder's bytes (fixed + per sample).
PROBE_SAMPLES = (2, 4)
# The share of the budget the counted bytes may fill. The rest is for what the count cannot see: memory that
# bypasses torch's allocators (oneDNN's scratchpads), allocator rounding, caching and fragmentation. With it, at
# k = 5000 and 128 MiB, transposed-convolution decoders peaked at 0.48-1.13x their budget and an attention decoder
# at 0.54-0.84x (CPU, growth of the process's peak RSS over 3 runs each on torch 2.11 and 2.13,
# benchmarks/eval_memory.py); at 0.5, 0.91-1.36x and 0.69-1.03x.
COUNTED_SHARE = 0.4

# What ``evaluate_dataset`` takes as the encoder: x [b, *event] -> (mu, logvar), each [b, D].
Encoder = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def check_chunk_and_budget(chunk: int | None, memory_budget: int | None) -> None:
    """``chunk`` (samples, int >= 1) and ``memory_budget`` (bytes, int >= 1) are each None or valid."""
    for name, value in (("chunk", chunk), ("memory_budget", memory_budget)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}: expected an int >= 1 or None, got {value!r}")


def chunk_for_budget(chunk_log_weights: Callable[[int], torch.Tensor], k: int, *, device: torch.device | str,
                     chunk: int | None = None, memory_budget: int | None = None) -> int:
    """Samples per chunk of L_k, at most k: ``chunk`` when given, else as many as ``memory_budget`` bytes (default
    MEMORY_BUDGET) hold, measured: ``chunk_log_weights(size) -> [size, B]`` runs at the PROBE_SAMPLES sizes while
    every byte it allocates on ``device`` is counted (``_memory.peak_allocated_bytes``, any decoder), and the
    peak's fixed and per-sample parts give the largest chunk whose counted peak fits COUNTED_SHARE of the budget
    (the rest is for what the count cannot see). At least 1."""
    if chunk is not None:
        return min(k, chunk)
    small, large = PROBE_SAMPLES
    if k <= large:
        return k
    budget = COUNTED_SHARE * (MEMORY_BUDGET if memory_budget is None else memory_budget)
    with torch.no_grad():  # as evaluation runs: no autograd graph
        peaks = [peak_allocated_bytes(lambda: chunk_log_weights(size), torch.device(device))[1]
                 for size in PROBE_SAMPLES]
    per_sample = (peaks[1] - peaks[0]) / (large - small)
    if per_sample <= 0:  # the fixed part hid the per-sample one: take it all as per-sample (an upper estimate)
        per_sample = peaks[1] / large
    fixed = max(0.0, peaks[0] - small * per_sample)
    return max(1, min(k, int((budget - fixed) // max(per_sample, 1.0))))


def streamed_bound(chunk_log_weights: Callable[[int, int], torch.Tensor], k: int, *, chunk: int, batch_size: int,
                   device: Device, backend: str | None = None,
                   diagnostics: bool = False) -> torch.Tensor | tuple[torch.Tensor, ImportanceDiagnostics]:
    """L_k [B] (float64) from ``chunk_log_weights(start, size) -> log w [size, B]`` called for consecutive
    chunks of ``chunk`` samples covering k, folded as they come (StreamingIWAEBound); with ``diagnostics``, also
    the weights' ``ImportanceDiagnostics`` from the same chunks: (L_k, diagnostics)."""
    accumulator = StreamingIWAEBound(batch_size, device=device, dtype=torch.float64, backend=backend)
    checks = StreamingImportanceDiagnostics(k, batch_size, device=device, backend=backend) if diagnostics else None
    for start in range(0, k, chunk):
        log_w = chunk_log_weights(start, min(chunk, k - start))
        accumulator.update(log_w)
        if checks is not None:
            checks.update(log_w)
    return (accumulator.bound(), checks.result()) if diagnostics else accumulator.bound()  # type: ignore[union-attr]


@overload
def log_likelihood(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, decoder: Decoder, k: int = 5000, *,
                   likelihood: str = "bernoulli", chunk: int | None = None, memory_budget: int | None = None,
                   eps: torch.Tensor | None = None, generator: torch.Generator | None = None,
                   backend: str | None = None, flatten_samples: bool = False, check_finite: bool = False,
                   diagnostics: Literal[False] = False) -> torch.Tensor: ...
@overload
def log_likelihood(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, decoder: Decoder, k: int = 5000, *,
                   likelihood: str = "bernoulli", chunk: int | None = None, memory_budget: int | None = None,
                   eps: torch.Tensor | None = None, generator: torch.Generator | None = None,
                   backend: str | None = None, flatten_samples: bool = False, check_finite: bool = False,
                   diagnostics: Literal[True]) -> tuple[torch.Tensor, ImportanceDiagnostics]: ...
@overload
def log_likelihood(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, decoder: Decoder, k: int = 5000, *,
                   likelihood: str = "bernoulli", chunk: int | None = None, memory_budget: int | None = None,
                   eps: torch.Tensor | None = None, generator: torch.Generator | None = None,
                   backend: str | None = None, flatten_samples: bool = False, check_finite: bool = False,
                   diagnostics: bool = False) -> torch.Tensor | tuple[torch.Tensor, ImportanceDiagnostics]: ...
@torch.no_grad()
def log_likelihood(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, decoder: Decoder, k: int = 5000, *,
                   likelihood: str = "bernoulli", chunk: int | None = None, memory_budget: int | None = None,
                   eps: torch.Tensor | None = None, generator: torch.Generator | None = None,
                   backend: str | None = None, flatten_samples: bool = False, check_finite: bool = False,
                   diagnostics: bool = False) -> torch.Tensor | tuple[torch.Tensor, ImportanceDiagnostics]:
    """Per-example L_k [B] of your own encoder/decoder (the paper's test log-likelihood at k = 5000), in memory
    that does not grow with k and with no autograd graph.

    Args:
        x, mu, logvar, decoder, likelihood, flatten_samples, check_finite: as for ``iwae_loss``.
        k: samples per example, >= 1.
        chunk: samples per chunk; default: as many as ``memory_budget`` holds.
        memory_budget: bytes one chunk's tensors may take (default MEMORY_BUDGET, 512 MiB), for any decoder:
            the decoder and likelihood run on 2 and 4 samples first while the bytes of every tensor they allocate
            are counted, and the chunk is sized from that (``chunk_for_budget``).
        eps: optional standard-normal noise [k, B, D] (mu's dtype and device), used a chunk at a time: the result
            then does not depend on ``chunk``.
        generator: a torch.Generator on mu's device for the noise (default torch's global RNG). The same
            generator state gives the same L_k for the same chunk size; another chunk size draws the noise in
            other pieces, so a different (equally distributed) L_k: pass ``eps`` for a chunk-free value.
        diagnostics: also return the importance weights' ESS and PSIS k-hat per example, from the same chunks.

    Returns:
        L_k [B], float64 (the fold's accumulation dtype); with ``diagnostics``, (L_k, ``ImportanceDiagnostics``
        (ess [B], pareto_k [B])).

    Examples::

        >>> import torch
        >>> from iwae_kernels import log_likelihood
        >>> _ = torch.manual_seed(0)
        >>> x = torch.rand(3, 6).round()  # B = 3 binary images of P = 6 pixels
        >>> mu, logvar = torch.zeros(3, 2), torch.zeros(3, 2)  # the encoder's q(z|x), D = 2
        >>> decoder = torch.nn.Linear(2, 6)
        >>> bound = log_likelihood(x, mu, logvar, decoder, k=200, chunk=50)  # 4 chunks of 50 samples
        >>> bound.shape, bound.dtype
        (torch.Size([3]), torch.float64)
        >>> eps = torch.randn(200, 3, 2)  # fixed noise: the same L_k whatever the chunk
        >>> one = log_likelihood(x, mu, logvar, decoder, k=200, chunk=200, eps=eps)
        >>> torch.allclose(one, log_likelihood(x, mu, logvar, decoder, k=200, chunk=64, eps=eps))
        True
        >>> bound, checks = log_likelihood(x, mu, logvar, decoder, k=200, chunk=50, diagnostics=True)
        >>> checks.ess.shape, checks.pareto_k.shape
        (torch.Size([3]), torch.Size([3]))
    """
    k = functional._check_loss_args(x, mu, logvar, decoder=decoder, k=k, likelihood=likelihood, eps=eps,
                                    generator=generator, check_finite=check_finite)
    check_chunk_and_budget(chunk, memory_budget)
    ops = get_backend(backend, mu.device)

    def chunk_log_weights(start, size, noise=None):
        if noise is None and eps is not None:
            noise = eps[start : start + size]
        return functional._log_weights(x, mu, logvar, decoder=decoder, k=size, ops=ops, likelihood=likelihood,
                                       eps=noise, generator=generator, flatten_samples=flatten_samples,
                                       check_finite=check_finite)

    # The probe's samples come from zero noise: it draws nothing from ``generator``.
    probe = lambda size: chunk_log_weights(0, size, mu.new_zeros((size,) + tuple(mu.shape)))
    chunk = chunk_for_budget(probe, k, device=mu.device, chunk=chunk, memory_budget=memory_budget)
    return streamed_bound(chunk_log_weights, k, chunk=chunk, batch_size=mu.shape[0], device=mu.device,
                          backend=backend, diagnostics=diagnostics)


def process_group() -> tuple[int, int]:
    """(rank, world size) of the initialised torch.distributed process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def progress_bar(total, description, enabled, unit="sample", unit_scale=True):
    """A tqdm bar counting ``unit``s up to ``total`` (``unit_scale``: as 1.2M, not 1200000), or None (disabled, or
    tqdm not installed)."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit=unit, unit_scale=unit_scale, desc=description)


def dealt_log_likelihoods(batches, batch_log_likelihood, k, *, total=None, progress=False):
    """Per-example L_k over numbered batches, dealt round-robin to the processes of the process group (if any)
    and gathered in batch order on every process.

    batches: an iterable of (index, batch), the same on every process; batch_log_likelihood(index, batch) -> [b]
    for the batches this process owns (index % world == rank); its noise must depend on the index only, so
    N processes give the same numbers as 1. total: the examples in all batches, for the progress bar (samples =
    examples x k). Returns the [N] concatenation, on the CPU (for (L_k, ImportanceDiagnostics) batches, the same
    pair of [N] concatenations).
    """
    rank, world = process_group()
    share = None if total is None else -(-total // world) * k
    bar = progress_bar(share, f"L_{k} (rank {rank})" if world > 1 else f"L_{k}", progress)
    results = {}
    for index, batch in batches:
        if index % world != rank:
            continue
        results[index] = _to_cpu(batch_log_likelihood(index, batch))
        if bar is not None:
            bar.update(_examples(results[index]) * k)
    if bar is not None:
        bar.close()
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, results)
        results = {index: values for part in gathered for index, values in part.items()}
    ordered = [results[index] for index in sorted(results)]
    if isinstance(ordered[0], torch.Tensor):
        return torch.cat(ordered)
    bounds, checks = zip(*ordered)  # (L_k, ImportanceDiagnostics) per batch
    return torch.cat(bounds), type(checks[0])(*map(torch.cat, zip(*checks)))


def _to_cpu(result):
    """A batch's L_k [b], or (L_k, ImportanceDiagnostics), on the CPU."""
    if isinstance(result, torch.Tensor):
        return result.cpu()
    bound, checks = result
    return bound.cpu(), type(checks)(*(t.cpu() for t in checks))


def _examples(result):
    return (result if isinstance(result, torch.Tensor) else result[0]).shape[0]


@overload
def evaluate_dataset(loader: Iterable[torch.Tensor | Sequence[torch.Tensor]], encode: Encoder, decoder: Decoder,
                     k: int = 5000, *, likelihood: str = "bernoulli", chunk: int | None = None,
                     memory_budget: int | None = None, seed: int = 0, device: Device = None,
                     backend: str | None = None, flatten_samples: bool = False, check_finite: bool = False,
                     progress: bool = False,
                     diagnostics: Literal[False] = False) -> torch.Tensor: ...
@overload
def evaluate_dataset(loader: Iterable[torch.Tensor | Sequence[torch.Tensor]], encode: Encoder, decoder: Decoder,
                     k: int = 5000, *, likelihood: str = "bernoulli", chunk: int | None = None,
                     memory_budget: int | None = None, seed: int = 0, device: Device = None,
                     backend: str | None = None, flatten_samples: bool = False, check_finite: bool = False,
                     progress: bool = False,
                     diagnostics: Literal[True]) -> tuple[torch.Tensor, ImportanceDiagnostics]: ...
@overload
def evaluate_dataset(loader: Iterable[torch.Tensor | Sequence[torch.Tensor]], encode: Encoder, decoder: Decoder,
                     k: int = 5000, *, likelihood: str = "bernoulli", chunk: int | None = None,
                     memory_budget: int | None = None, seed: int = 0, device: Device = None,
                     backend: str | None = None, flatten_samples: bool = False, check_finite: bool = False,
                     progress: bool = False,
                     diagnostics: bool = False) -> torch.Tensor | tuple[torch.Tensor, ImportanceDiagnostics]: ...
def evaluate_dataset(loader: Iterable[torch.Tensor | Sequence[torch.Tensor]], encode: Encoder, decoder: Decoder,
                     k: int = 5000, *, likelihood: str = "bernoulli", chunk: int | None = None,
                     memory_budget: int | None = None, seed: int = 0, device: Device = None,
                     backend: str | None = None, flatten_samples: bool = False, check_finite: bool = False,
                     progress: bool = False,
                     diagnostics: bool = False) -> torch.Tensor | tuple[torch.Tensor, ImportanceDiagnostics]:
    """Per-example L_k [N] (float64, CPU, in the loader's order) over a dataset, on one process or all of an
    initialised torch.distributed process group (torchrun): batch j goes to process j % world and draws its noise
    from a generator seeded by (seed, j), so 1 and N processes give the same numbers.

    Args:
        loader: an iterable of batches x [b, *event] (or tuples/lists whose first item is x), e.g. a DataLoader;
            every process iterates all of it, in the same order, and evaluates its share.
        encode: x -> (mu, logvar), each [b, D]; decoder, likelihood, flatten_samples, check_finite: as for
            ``iwae_loss``; k, chunk, memory_budget, backend, diagnostics: as for ``log_likelihood`` (with
            ``diagnostics``, returns (L_k [N], ``ImportanceDiagnostics`` of [N] tensors)).
        device: where x goes before ``encode`` (None: where the loader puts it).
        progress: a progress bar counting samples (examples x k) when tqdm is installed.

    Examples::

        >>> import torch
        >>> from iwae_kernels import evaluate_dataset
        >>> _ = torch.manual_seed(0)
        >>> data = torch.rand(10, 6).round()  # N = 10 binary images of P = 6 pixels
        >>> loader = torch.utils.data.DataLoader(data, batch_size=4)
        >>> encoder, decoder = torch.nn.Linear(6, 2 * 2), torch.nn.Linear(2, 6)  # D = 2
        >>> def encode(x):
        ...     mu, logvar = encoder(x).chunk(2, dim=-1)
        ...     return mu, logvar
        >>> bounds = evaluate_dataset(loader, encode, decoder, k=100, chunk=50)
        >>> bounds.shape, bounds.dtype
        (torch.Size([10]), torch.float64)
        >>> torch.equal(bounds, evaluate_dataset(loader, encode, decoder, k=100, chunk=50))  # noise from seed=0
        True
    """
    check_chunk_and_budget(chunk, memory_budget)

    def numbered():
        for index, batch in enumerate(loader):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            yield index, (x if device is None else x.to(device))

    @torch.no_grad()
    def batch_log_likelihood(index, x):
        generator = torch.Generator(device=x.device).manual_seed(seed * 1_000_003 + index)
        mu, logvar = encode(x)
        return log_likelihood(
            x,
            mu,
            logvar,
            decoder=decoder,
            k=k,
            likelihood=likelihood,
            chunk=chunk,
            memory_budget=memory_budget,
            generator=generator,
            backend=backend,
            flatten_samples=flatten_samples,
            check_finite=check_finite,
            diagnostics=diagnostics,
        )

    dataset: Any = getattr(loader, "dataset", None)
    total = len(dataset) if hasattr(dataset, "__len__") else None
    return dealt_log_likelihoods(numbered(), batch_log_likelihood, k, total=total, progress=progress)
