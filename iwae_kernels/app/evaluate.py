"""The paper's evaluation: test -mean L_5000 in bounded memory, active units, a JSON report and pictures.

The test set is binarized once with a fixed seed. It is cut into fixed batches, and batch j's noise is seeded by
(seed, j), so each example's L_k is the same whichever process computes it: under torchrun the batches are dealt
round-robin to the processes, gathered on rank 0 and reduced in order, and 2 processes give the same number as 1.
"""

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from . import data as datasets
from .errors import UserError
from ..evaluation import dealt_log_likelihoods, process_group
from ..models import active_units
from .device import device_name
from .plots import draw_pictures


def rank_and_world():
    """(rank, world size); initialises the process group under torchrun (gloo on CPU, nccl on GPU)."""
    if dist.is_available() and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return process_group()


def _duration(seconds):
    """A wall time for people: "7.5 days", "3.2 h", "12.0 min", "40 s"."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


@torch.no_grad()
def check_evaluation_time(model, test_x, k=5000, chunk=None, batch_size=100, max_hours=24.0, progress=True):
    """Estimate the wall time of L_k over test_x from one timed chunk of one batch (on a GPU after one untimed,
    which absorbs kernel compilation); UserError when it exceeds ``max_hours`` (the slowest process's, under torchrun)."""
    rank, world = rank_and_world()
    device = next(model.parameters()).device
    probe = test_x[:batch_size].to(device)
    samples = model.eval_chunk(k, batch_size, chunk)
    if device.type == "cuda":
        model.log_likelihood(probe, k=samples, chunk=samples)  # untimed: compiles the kernels (none on a CPU)
    started = time.perf_counter()
    model.log_likelihood(probe, k=samples, chunk=samples)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    per_sample = (time.perf_counter() - started) / (probe.shape[0] * samples)
    seconds = torch.tensor(per_sample * k * -(-test_x.shape[0] // world), dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)  # every process must reach the same decision
    seconds = seconds.item()
    if seconds > 3600 * max_hours:
        raise UserError(f"--eval-k {k}: L_k over {test_x.shape[0]} images would take about {_duration(seconds)} here "
                        f"(more than --max-eval-hours {max_hours:g}); lower --eval-k or --test-subset")
    if progress and rank == 0:
        print(f"L_{k} over {test_x.shape[0]} images: about {_duration(seconds)}", file=sys.stderr)
    return seconds


@torch.no_grad()
def test_log_likelihoods(model, test_x, k=5000, chunk=None, batch_size=100, seed=0, progress=True):
    """Per-example L_k over test_x [N, P] (already binarized), in example order, on every process's share.
    The progress bar counts samples (examples x k), so its rate and ETA mean the same for any batch size."""
    rank_and_world()  # joins the process group under torchrun, which dealt_log_likelihoods deals to
    device = next(model.parameters()).device

    def batch_log_likelihood(index, start):
        torch.manual_seed(seed * 1_000_003 + start)
        return model.log_likelihood(test_x[start : start + batch_size].to(device), k=k, chunk=chunk)

    batches = enumerate(range(0, test_x.shape[0], batch_size))
    return dealt_log_likelihoods(batches, batch_log_likelihood, k, total=test_x.shape[0], progress=progress)


def evaluate(model, test_x, out_dir, k=5000, chunk=None, batch_size=100, seed=0, history=None, extra=None,
             progress=True, step_log=None, max_hours=24.0):
    """Test NLL (-mean L_k), active units, report.json and pictures in out_dir; returns the report (all ranks).

    Refuses (UserError) an evaluation estimated to take more than ``max_hours`` (see check_evaluation_time).
    history (per epoch) or step_log (per logged step) from ``train`` draw the training curve. chunk: samples per
    chunk (None: the model's ``eval_chunk``, which the report records).
    """
    rank, world = rank_and_world()
    model.eval()
    chunk = model.eval_chunk(k, batch_size, chunk)
    test_bits = datasets.fixed_binarization(test_x, seed=seed)
    check_evaluation_time(model, test_bits, k, chunk, batch_size, max_hours, progress)
    started = time.perf_counter()
    bounds = test_log_likelihoods(model, test_bits, k=k, chunk=chunk, batch_size=batch_size, seed=seed, progress=progress)
    wall = time.perf_counter() - started
    device = next(model.parameters()).device
    active, activity = active_units(model, test_bits.to(device))
    report = {
        "test_nll": -bounds.double().mean().item(), "k": k, "chunk": chunk, "test_examples": int(test_x.shape[0]),
        "active_units": active, "latent_sizes": list(model.latent), "eval_wall_s": wall, "processes": world,
        "device": device_name(device),
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), **(extra or {}),
    }
    if rank == 0:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "report.json").write_text(json.dumps(report, indent=1))
        torch.save({"bounds": bounds, "activity": [a.cpu() for a in activity]}, out_dir / "test_bounds.pt")
        draw_pictures(model, test_bits, out_dir, history, step_log, report["test_nll"], k)
    return report
