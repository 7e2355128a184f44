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
from ..ais import ais_log_likelihood, bdmc, simulate_data
from ..diagnostics import UNRELIABLE_PARETO_K
from ..evaluation import dealt_log_likelihoods, process_group
from ..models import PaperModel, active_units
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
def check_evaluation_time(model, test_x, k=5000, *, chunk=None, batch_size=100, max_hours=24.0, progress=True):
    """Estimate the wall time of L_k over test_x from one timed chunk of one batch (on a GPU after one untimed,
    which absorbs kernel compilation); UserError when it exceeds ``max_hours`` (the slowest process's, under torchrun)."""
    rank, world = rank_and_world()
    device = next(model.parameters()).device
    probe = test_x[:batch_size].to(device)
    samples = model.eval_chunk(probe, k, chunk)
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
def test_log_likelihoods(model, test_x, k=5000, *, chunk=None, batch_size=100, seed=0, progress=True):
    """Per-example L_k [N] over test_x [N, P] (already binarized), in example order, on every process's share,
    and the importance weights' ``ImportanceDiagnostics`` (ess, pareto_k [N]) from the same samples. The
    progress bar counts samples (examples x k), so its rate and ETA mean the same for any batch size."""
    rank_and_world()  # joins the process group under torchrun, which dealt_log_likelihoods deals to
    device = next(model.parameters()).device

    def batch_log_likelihood(index, start):
        torch.manual_seed(seed * 1_000_003 + start)
        return model.log_likelihood(test_x[start : start + batch_size].to(device), k=k, chunk=chunk, diagnostics=True)

    batches = enumerate(range(0, test_x.shape[0], batch_size))
    return dealt_log_likelihoods(batches, batch_log_likelihood, k, total=test_x.shape[0], progress=progress)


def diagnostics_summary(bounds, checks, k, *, worst=5):
    """What the report keeps of the per-example diagnostics: ESS quantiles (and as a share of k), the share of
    images whose k-hat exceeds 0.7 (L_k unreliable there), and the ``worst`` images by k-hat with their L_k."""
    levels = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
    ess = torch.quantile(checks.ess, torch.tensor(levels, dtype=checks.ess.dtype))
    order = torch.argsort(checks.pareto_k, descending=True)[:worst]
    return {
        "ess_quantiles": {f"{level:g}": round(value, 2) for level, value in zip(levels, ess.tolist())},
        "ess_median_share_of_k": checks.ess.median().item() / k,
        "pareto_k_median": checks.pareto_k.median().item(),
        "share_pareto_k_above_0.7": (checks.pareto_k > UNRELIABLE_PARETO_K).double().mean().item(),
        "worst_pareto_k": [{"image": int(i), "pareto_k": checks.pareto_k[i].item(), "log_likelihood": bounds[i].item()}
                           for i in order],
    }


def describe_diagnostics(summary, k):
    """One line for people from ``diagnostics_summary``."""
    ess = summary["ess_quantiles"]
    worst = ", ".join(f"image {w['image']} ({w['pareto_k']:.2f})" for w in summary["worst_pareto_k"][:3])
    return (f"importance weights: ESS median {ess['0.5']:g} of k = {k} (5-95%: {ess['0.05']:g}-{ess['0.95']:g}); "
            f"PSIS k-hat > 0.7 (L_{k} unreliable) for {100 * summary['share_pareto_k_above_0.7']:.1f}% of images; "
            f"worst k-hat: {worst}")


def check_ais_options(model, layers, ais_steps):
    """AIS anneals one Gaussian latent (the decoder's input) by HMC: refuse --ais-steps for a model with two
    stochastic layers or binary ones (``model``: the kind, a key of ``config.MODEL_LAYERS``)."""
    if ais_steps and model != "paper":
        raise UserError(f"--ais-steps: AIS anneals a Gaussian latent by HMC (the paper model), not the {model} model's")
    if ais_steps and layers != 1:
        raise UserError(f"--ais-steps: AIS runs on models with one stochastic layer, this one has {layers}")


@torch.no_grad()
def ais_report(model, test_bits, bounds, *, steps, chains, images, batch_size, seed, bdmc_examples, progress):
    """AIS (``ais_log_likelihood``, from the encoder's q(z|x)) on the first ``images`` test images beside their
    L_k (``bounds``), and BDMC on ``bdmc_examples`` images simulated from the model (0: none): the report's "ais"
    entry, in nats."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    options = {"steps": steps, "chains": chains, "generator": generator, "backend": model.backend,
               "progress": progress}
    started = time.perf_counter()
    estimates = []
    for start in range(0, images, batch_size):
        x = test_bits[start : min(start + batch_size, images)].to(device)
        mu, logvar = model.encode(x)
        estimates.append(ais_log_likelihood(x, model.decoder, mu=mu, logvar=logvar, **options).cpu())
    ais = torch.cat(estimates)
    report = {"steps": steps, "chains": chains, "images": images, "test_nll_ais": -ais.mean().item(),
              "test_nll_same_images": -bounds[:images].double().mean().item(),
              "ais_above_bound_mean": (ais - bounds[:images].double()).mean().item(),
              "wall_s": time.perf_counter() - started}
    if bdmc_examples:
        x, z = simulate_data(model.decoder, bdmc_examples, model.latent[0], generator=generator,
                             dtype=test_bits.dtype, device=device)
        mu, logvar = model.encode(x)
        sandwich = bdmc(x, z, model.decoder, mu=mu, logvar=logvar, **options)
        report["bdmc"] = {"examples": bdmc_examples, "lower_mean": sandwich.lower.mean().item(),
                          "upper_mean": sandwich.upper.mean().item(),
                          "gap_mean": (sandwich.upper - sandwich.lower).mean().item()}
    return report


def describe_ais(report, k):
    """One line for people from ``ais_report``."""
    line = (f"AIS ({report['steps']} steps, {report['chains']} chains) on {report['images']} test images: -mean "
            f"log p(x) {report['test_nll_ais']:.3f} nats, L_{k} {report['test_nll_same_images']:.3f} on the same "
            f"images (AIS above L_{k} by {report['ais_above_bound_mean']:.3f})")
    if "bdmc" in report:
        bdmc_report = report["bdmc"]
        line += (f"; BDMC on {bdmc_report['examples']} simulated images: lower {bdmc_report['lower_mean']:.3f}, "
                 f"upper {bdmc_report['upper_mean']:.3f}, gap {bdmc_report['gap_mean']:.3f} nats")
    return line


def evaluate(model, test_x, out_dir, *, k=5000, chunk=None, batch_size=100, seed=0, history=None, extra=None,
             progress=True, step_log=None, max_hours=24.0, ais=None):
    """Test NLL (-mean L_k), active units, report.json and pictures in out_dir; returns the report (all ranks).

    Refuses (UserError) an evaluation estimated to take more than ``max_hours`` (see check_evaluation_time).
    history (per epoch) or step_log (per logged step) from ``train`` draw the training curve. chunk: samples per
    chunk (None: the model's ``eval_chunk``, which the report records). ais: None, or ``ais_report``'s keywords
    (steps, chains, images, bdmc_examples): AIS beside L_k on rank 0 (the report's "ais").
    """
    if ais is not None:
        check_ais_options("paper" if isinstance(model, PaperModel) else type(model).__name__, model.stochastic_layers,
                          ais["steps"])
    rank, world = rank_and_world()
    model.eval()
    test_bits = datasets.fixed_binarization(test_x, seed=seed)
    chunk = model.eval_chunk(test_bits[:batch_size].to(next(model.parameters()).device), k, chunk)
    check_evaluation_time(
        model,
        test_bits,
        k,
        chunk=chunk,
        batch_size=batch_size,
        max_hours=max_hours,
        progress=progress,
    )
    started = time.perf_counter()
    bounds, checks = test_log_likelihoods(model, test_bits, k=k, chunk=chunk, batch_size=batch_size, seed=seed,
                                          progress=progress)
    wall = time.perf_counter() - started
    device = next(model.parameters()).device
    active, activity = active_units(model, test_bits.to(device))
    report = {
        "test_nll": -bounds.double().mean().item(), "k": k, "chunk": chunk, "test_examples": int(test_x.shape[0]),
        "importance_diagnostics": diagnostics_summary(bounds, checks, k), "active_units": active, "latent_sizes": list(model.latent), "eval_wall_s": wall, "processes": world,
        "device": device_name(device),
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), **(extra or {}),
    }
    if ais is not None and rank == 0:
        report["ais"] = ais_report(model, test_bits, bounds, batch_size=batch_size, seed=seed, progress=progress,
                                   **ais)
    if rank == 0:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "report.json").write_text(json.dumps(report, indent=1))
        torch.save({"bounds": bounds, "ess": checks.ess, "pareto_k": checks.pareto_k,
                    "activity": [a.cpu() for a in activity]}, out_dir / "test_bounds.pt")
        draw_pictures(
            model,
            test_bits,
            out_dir,
            history=history,
            step_log=step_log,
            test_nll=report["test_nll"],
            k=k,
        )
    return report
