"""Training the paper's models: schedule, progress, per-epoch log, atomic checkpoints and exact resume.

A checkpoint holds everything the rest of the run depends on: weights, optimizer state, the position in the
schedule (epoch and step), and every RNG stream (torch's CPU and CUDA generators, which also seed the kernels'
noise, and the data generator for shuffling and dynamic binarization). It is written atomically and verified
on load (checkpoint.py), so a kill at any moment leaves the previous checkpoint intact; ``--resume`` continues
exactly as the uninterrupted run would have.

``train`` runs in four parts: ``_prepare`` (data, model, optimizer), ``_resume`` (from the checkpoint),
``_train_epoch`` (the loop and its checkpoints), and the stop at a step boundary on SIGINT or SIGTERM
(signals.py).
"""

import csv
import dataclasses
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from . import data as datasets
from .checkpoint import read_checkpoint, save_checkpoint
from .config import TrainConfig, build_model, config_from_dict, estimator_options
from .device import resolve_device
from .errors import UserError
from .evaluate import rank_and_world
from .signals import TrainingInterrupted, deferred_stop_signals


def _rng_state(data_generator):
    return {"torch": torch.get_rng_state(), "data": data_generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _restore_rng(state, data_generator):
    torch.set_rng_state(state["torch"])
    data_generator.set_state(state["data"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Options that change neither the model nor the optimization: a resumed run may give new values.
RESUMABLE_FIELDS = ("checkpoint_minutes", "checkpoint_steps", "device", "epochs")


def check_resumable(saved, config, checkpoint_path):
    """Refuse to resume ``checkpoint_path`` (config ``saved``) under a config that changes the model or the
    optimization, naming the first such field."""
    for field in dataclasses.fields(TrainConfig):
        before, now = getattr(saved, field.name), getattr(config, field.name)
        if field.name not in RESUMABLE_FIELDS and before != now:
            raise UserError(f"--resume: {checkpoint_path} was written with another configuration: "
                            f"{field.name}={before!r} there, {now!r} here (only {', '.join(RESUMABLE_FIELDS)} "
                            "may change on resume)")


def start_policy(out_dir, resume=False, overwrite=False):
    """Whether a run into ``out_dir`` resumes its checkpoint, by the run-folder rules: an existing run is
    continued only with ``resume`` and replaced only with ``overwrite``; ``resume=True`` needs a checkpoint,
    ``resume="if-exists"`` starts fresh without one."""
    checkpoint_path = Path(out_dir) / "checkpoint.pt"
    exists = checkpoint_path.exists()
    if resume and overwrite:
        raise UserError("--resume and --overwrite: give one of them")
    if exists and not (resume or overwrite):
        raise UserError(f"{out_dir} already holds a run ({checkpoint_path}); continue it with --resume, "
                        "or replace it with --overwrite")
    if resume is True and not exists:
        raise UserError(f"--resume: there is no checkpoint at {checkpoint_path} (use --resume-if-exists to "
                        "start fresh when there is none)")
    return exists and bool(resume)


def checkpoint_bytes(config):
    """About how much disk a run's checkpoints need: the weights and Adam's two moments, old and new copies."""
    parameters = sum(p.numel() for p in build_model(config, torch.device("cpu")).parameters())
    return 2 * (3 * 4 * parameters + 2**20)


class _LossModule(torch.nn.Module):
    """``model.loss`` as a forward(): DistributedDataParallel synchronizes the gradients of what forward computes."""

    def __init__(self, model, k, estimator, *, options):
        super().__init__()
        self.model, self.k, self.estimator, self.options = model, k, estimator, options

    def forward(self, x, noise=None):
        return self.model.loss(x, self.k, self.estimator, noise=noise, **self.options)


# Points per epoch on the training curve (train_steps.csv, curves.png): each the mean loss of its interval.
CURVE_POINTS_PER_EPOCH = 20


@dataclasses.dataclass
class TrainingProgress:
    """Where a run stands besides its weights, optimizer and RNG: the schedule position and the running sums of
    the current epoch and curve interval (checkpointed, so a resumed run logs the same means)."""

    epoch: int = 0
    step: int = 0
    history: list = dataclasses.field(default_factory=list)  # one row per completed epoch
    step_log: list = dataclasses.field(default_factory=list)  # the training curve
    elapsed: float = 0.0  # training wall time before this process started
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    interval_loss_sum: float = 0.0


@dataclasses.dataclass
class _Run:
    """One process's share of a run: the data, the model and optimizer, and the schedule's sizes."""

    config: TrainConfig
    out_dir: Path
    rank: int
    world: int
    device: torch.device
    train_x: torch.Tensor
    model: torch.nn.Module
    loss_module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data_generator: torch.Generator
    progress: TrainingProgress
    started: float  # perf_counter when this process started training

    @property
    def checkpoint_path(self):
        return self.out_dir / "checkpoint.pt"

    @property
    def learning_rates(self):
        return self.config.epoch_learning_rates()

    @property
    def steps_per_epoch(self):
        return self.train_x.shape[0] // self.config.batch_size

    @property
    def log_every(self):
        return max(1, self.steps_per_epoch // CURVE_POINTS_PER_EPOCH)

    @property
    def my_shard(self):
        shard_size = self.config.batch_size // self.world
        return slice(self.rank * shard_size, (self.rank + 1) * shard_size)


def _prepare(config, out_dir, overwrite):
    """The run's data, model, DDP wrapper and optimizer, seeded, at the start of the schedule."""
    rank, world = rank_and_world()
    out_dir = Path(out_dir)
    if config.batch_size % world:
        raise UserError(f"--batch-size: {config.batch_size} does not split evenly over {world} processes")
    if overwrite and rank == 0:
        # A run stopped before its first checkpoint must not resume the old one.
        (out_dir / "checkpoint.pt").unlink(missing_ok=True)
    device = resolve_device(config.device)
    train_x, _ = datasets.DATASETS[config.dataset]()
    if config.train_subset:
        train_x = train_x[: config.train_subset]
    if train_x.shape[0] < config.batch_size:
        raise UserError(f"--batch-size: {config.batch_size} is larger than the training set ({train_x.shape[0]})")
    torch.manual_seed(config.seed)
    model = build_model(config, device)
    loss_module = _LossModule(model, config.k, config.estimator, options=estimator_options(config))
    if world > 1:
        loss_module = torch.nn.parallel.DistributedDataParallel(loss_module)
    # fused=True: Adam's whole update in one kernel per step (CPU and CUDA) instead of a few per parameter tensor.
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.999), eps=1e-4, fused=True)
    return _Run(
        config=config,
        out_dir=out_dir,
        rank=rank,
        world=world,
        device=device,
        train_x=train_x,
        model=model,
        loss_module=loss_module,
        optimizer=optimizer,
        data_generator=torch.Generator().manual_seed(config.seed),
        progress=TrainingProgress(),
        started=time.perf_counter(),
    )


def _resume(run):
    """Continue ``run`` from its checkpoint: weights, optimizer, progress and every RNG stream."""
    state = read_checkpoint(run.checkpoint_path)
    check_resumable(config_from_dict(state.get("config"), run.checkpoint_path), run.config, run.checkpoint_path)
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    # step_log and interval_loss_sum: absent from checkpoints written before the training curve.
    run.progress = TrainingProgress(**{field.name: state[field.name]
                                       for field in dataclasses.fields(TrainingProgress) if field.name in state})
    _restore_rng(state["rng"], run.data_generator)


def _checkpoint(run):
    """Rank 0 writes the checkpoint; every process waits for it."""
    if run.rank == 0:
        progress = dataclasses.asdict(run.progress)
        progress["elapsed"] += time.perf_counter() - run.started
        save_checkpoint(run.checkpoint_path, {
            "config": dataclasses.asdict(run.config), "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(), **progress, "rng": _rng_state(run.data_generator)})
    if run.world > 1:
        dist.barrier()  # no process leaves (on an interrupt) before rank 0 has written


def _shared_loss_and_stop(run, loss_value, stop_requests):
    """(the global batch's mean loss, whether any process was asked to stop) from this process's loss on its
    share; one all-reduce under torchrun, so every process takes the same decision."""
    stop = bool(stop_requests)
    if run.world > 1:
        shared = torch.tensor([loss_value / run.world, float(stop)], dtype=torch.float64, device=run.device)
        dist.all_reduce(shared)
        loss_value, stop = shared[0].item(), shared[1].item() > 0
    return loss_value, stop


def _train_step(run, x):
    """One optimizer step on this process's share of the global batch x; its loss."""
    noise = None
    if dist.is_initialized():  # every process draws the whole batch's noise and keeps its share: runs do not depend on N
        noise = [layer[:, run.my_shard].contiguous()
                 for layer in run.model.noise(run.config.k, run.config.batch_size, device=run.device)]
    loss = run.loss_module(x[run.my_shard], noise)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    return loss.item()


def _train_epoch(run, stop_requests, *, show_progress, last_checkpoint):
    """The rest of the current epoch from ``run.progress.step``, checkpointing on the config's cadence and
    stopping (TrainingInterrupted, after a checkpoint) when asked; returns the time of the last checkpoint."""
    config, progress, steps = run.config, run.progress, run.steps_per_epoch
    epoch = progress.epoch
    for group in run.optimizer.param_groups:
        group["lr"] = run.learning_rates[epoch]
    # The order of an epoch is a function of (seed, epoch), so a resumed run shuffles the same way.
    order = torch.randperm(run.train_x.shape[0], generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch))
    bar = tqdm(range(progress.step, steps), desc=f"epoch {epoch + 1}/{len(run.learning_rates)}",
               disable=not show_progress or run.rank > 0, initial=progress.step, total=steps, unit="step",
               dynamic_ncols=True)
    epoch_start, resumed_count = time.perf_counter(), progress.epoch_loss_count
    for step in bar:
        batch = run.train_x[order[step * config.batch_size : (step + 1) * config.batch_size]]
        x = datasets.dynamic_binarize(batch, generator=run.data_generator).to(run.device)
        loss_value, stop = _shared_loss_and_stop(run, _train_step(run, x), stop_requests)
        progress.epoch_loss_sum += loss_value
        progress.epoch_loss_count += 1
        progress.interval_loss_sum += loss_value
        progress.step = step + 1
        rate = (progress.epoch_loss_count - resumed_count) * config.batch_size / (time.perf_counter() - epoch_start)
        bar.set_postfix(loss=f"{progress.epoch_loss_sum / progress.epoch_loss_count:.2f}", samples_per_s=f"{rate:.0f}")
        if progress.step % run.log_every == 0:
            progress.step_log.append({"step": epoch * steps + progress.step,
                                      "train_loss": progress.interval_loss_sum / run.log_every})
            progress.interval_loss_sum = 0.0
        now = time.perf_counter()
        if stop:
            bar.close()
            _checkpoint(run)
            raise TrainingInterrupted(
                (stop_requests or ["a signal to another process"])[0],
                run.checkpoint_path,
                epoch=epoch,
                step=progress.step,
            )
        if (config.checkpoint_steps and progress.step % config.checkpoint_steps == 0) or \
                now - last_checkpoint > 60 * config.checkpoint_minutes:
            _checkpoint(run)
            last_checkpoint = now
    progress.history.append({
        "epoch": epoch + 1, "lr": run.learning_rates[epoch],
        "train_loss": progress.epoch_loss_sum / max(progress.epoch_loss_count, 1),
        "samples_per_s": (progress.epoch_loss_count - resumed_count) * config.batch_size
        / (time.perf_counter() - epoch_start),
        "wall_s": progress.elapsed + time.perf_counter() - run.started})
    # An interval cut by the epoch's end (steps_per_epoch not a multiple of log_every) is dropped.
    progress.epoch, progress.step = epoch + 1, 0
    progress.epoch_loss_sum, progress.epoch_loss_count, progress.interval_loss_sum = 0.0, 0, 0.0
    _checkpoint(run)
    return time.perf_counter()


def train(config, out_dir, *, resume=False, overwrite=False, progress=True):
    """Train per ``config``, checkpointing to out_dir/checkpoint.pt; returns (model, history, step_log):
    history has one row per epoch, step_log one {"step", "train_loss"} per CURVE_POINTS_PER_EPOCH-th of an epoch.

    ``resume``/``overwrite`` follow ``start_policy``. SIGINT or SIGTERM checkpoints at the next step boundary
    and raises TrainingInterrupted (also when it came during setup: then with nothing new to checkpoint).
    Assumes the caller holds the folder's RunLock (the CLI does).

    Under torchrun each of the N processes takes 1/N of every global batch of ``config.batch_size`` examples
    and DistributedDataParallel averages the gradients; every process binarizes the whole global batch and draws
    the noise for all of it (then keeps its share), so the run does not depend on N up to float rounding. Rank 0
    alone writes the checkpoint and logs.
    """
    with deferred_stop_signals() as stop_requests:
        resuming = start_policy(out_dir, resume, overwrite)
        run = _prepare(config, out_dir, overwrite)
        if resuming:
            _resume(run)
        if _shared_loss_and_stop(run, 0.0, stop_requests)[1]:
            raise TrainingInterrupted((stop_requests or ["a signal to another process"])[0],
                                      run.checkpoint_path if resuming else None)
        last_checkpoint = run.started
        while run.progress.epoch < len(run.learning_rates):
            last_checkpoint = _train_epoch(run, stop_requests, show_progress=progress, last_checkpoint=last_checkpoint)
    if run.rank == 0:
        _write_log(run.out_dir, run.progress.history, run.progress.step_log)
    return run.model, run.progress.history, run.progress.step_log


def _write_log(out_dir, history, step_log):
    """train_log.csv and .json (one row per epoch), train_steps.csv (the training curve)."""
    for name, rows in (("train_log.csv", history), ("train_steps.csv", step_log)):
        if rows:
            with open(out_dir / name, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    (out_dir / "train_log.json").write_text(json.dumps(history, indent=1))


def describe_schedule(config):
    rates = config.epoch_learning_rates()
    return f"{len(rates)} passes, lr {rates[0]:.2e} -> {rates[-1]:.2e}" if rates else "no passes"

