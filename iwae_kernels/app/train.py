"""Training the paper's models: schedule, progress, per-epoch log, atomic checkpoints and exact resume.

A checkpoint holds everything the rest of the run depends on: weights, optimizer state, the position in the
schedule (epoch and step), and every RNG stream (torch's CPU and CUDA generators, which also seed the kernels'
noise, and the data generator for shuffling and dynamic binarization). It is written to a temporary file and
renamed over the old one, so a kill at any moment leaves the previous checkpoint intact; ``--resume``
continues exactly as the uninterrupted run would have.
"""

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from . import data as datasets
from .errors import UserError
from ..estimators import check_estimator_options
from ..models import paper_model
from .device import resolve_device
from .evaluate import rank_and_world


@dataclasses.dataclass
class TrainConfig:
    dataset: str = "mnist"
    layers: int = 1
    estimator: str = "iwae"
    groups: int = None            # miwae, piwae: M groups of k / M samples
    ciwae_beta: float = None      # ciwae: the ELBO's share
    k: int = 50
    batch_size: int = 20
    schedule: str = "constant"    # "paper": 3^i passes at lr 1e-3 * 10^(-i/7), i < paper_stages
    epochs: int = 1               # for "constant"
    paper_stages: int = 8
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    backend: str = None
    train_subset: int = 0         # 0: the whole training set
    checkpoint_minutes: float = 10.0
    checkpoint_steps: int = 0     # also every N steps (0: off)

    def epoch_learning_rates(self):
        """The learning rate of each epoch, in order."""
        if self.schedule == "paper":
            return [self.lr * 10 ** (-i / 7) for i in range(self.paper_stages) for _ in range(3**i)]
        return [self.lr] * self.epochs


CHECKPOINT_HEADER = b"iwae_kernels checkpoint, sha256 of the torch.save bytes that follow: "


def save_checkpoint(path, state):
    """Write ``state`` as a header line with the SHA-256 of its torch.save bytes, then those bytes: to a temporary
    file in the same folder, fsync, then rename over ``path`` (atomic: a kill leaves the old checkpoint)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = io.BytesIO()
    torch.save(state, payload)
    payload = payload.getbuffer()
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False)
    try:
        with handle:
            handle.write(CHECKPOINT_HEADER + hashlib.sha256(payload).hexdigest().encode() + b"\n")
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def load_checkpoint(path):
    """The state ``save_checkpoint`` wrote to ``path``, after checking its SHA-256; UserError naming the file and
    the fault for anything else (missing, a folder, empty, damaged, a bare state_dict, another program's file)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"checkpoint {path} is a folder; give the checkpoint.pt inside it") from None
    except OSError as error:
        raise UserError(f"checkpoint {path} cannot be read ({error.strerror or error})") from None
    if not raw.startswith(CHECKPOINT_HEADER):
        if not raw:
            raise UserError(f"checkpoint {path} is empty")
        try:
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        except Exception:
            raise UserError(f"checkpoint {path} is not a checkpoint (unreadable bytes)") from None
        if isinstance(state, dict) and {"config", "model"} <= state.keys():
            print(f"warning: checkpoint {path} has no digest (written before checkpoints carried one); "
                  "loading it unverified", file=sys.stderr)
            return state
        raise UserError(f"checkpoint {path} was not written by iwae_kernels train (a bare state_dict or another "
                        "program's file); it has no config or digest")
    digest_end = raw.find(b"\n", len(CHECKPOINT_HEADER))
    digest, payload = raw[len(CHECKPOINT_HEADER):digest_end].decode(errors="replace"), memoryview(raw)[digest_end + 1:]
    if digest_end < 0 or hashlib.sha256(payload).hexdigest() != digest:
        raise UserError(f"checkpoint {path} is damaged: its SHA-256 does not match the one it was written with")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as error:  # a digest that matches bytes torch refuses: written by something else
        raise UserError(f"checkpoint {path} cannot be loaded ({type(error).__name__}: {error})".splitlines()[0]) \
            from None


def _rng_state(data_generator):
    return {"torch": torch.get_rng_state(), "data": data_generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _restore_rng(state, data_generator):
    torch.set_rng_state(state["torch"])
    data_generator.set_state(state["data"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_model(config, device):
    return paper_model(config.layers, backend=config.backend).to(device)


# Options that change neither the model nor the optimization: a resumed run may give new values.
RESUMABLE_FIELDS = ("checkpoint_minutes", "checkpoint_steps", "device", "epochs")


class TrainingInterrupted(UserError):
    """SIGINT or SIGTERM stopped training after a checkpoint at a step boundary."""

    def __init__(self, signal_name, checkpoint_path, epoch, step):
        super().__init__(f"{signal_name}: stopped at epoch {epoch + 1} step {step}; checkpoint saved to {checkpoint_path}")
        self.signal_name, self.checkpoint_path = signal_name, checkpoint_path


@contextlib.contextmanager
def deferred_stop_signals():
    """SIGINT and SIGTERM append their name to the yielded list instead of stopping the process, so the training
    loop can checkpoint at the next step boundary. A second signal acts as usual (an impatient second Ctrl-C)."""
    received = []
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield received
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.getsignal(number) for number in signals}

    def request_stop(number, frame):
        received.append(signal.Signals(number).name)
        signal.signal(number, previous[number])

    for number in signals:
        signal.signal(number, request_stop)
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def config_from_dict(saved, source):
    """TrainConfig from a checkpoint's config dict; UserError naming ``source`` for a missing or unknown key."""
    if not isinstance(saved, dict):
        raise UserError(f"checkpoint {source} holds no training config (was it written by iwae_kernels train?)")
    unknown = sorted(set(saved) - {field.name for field in dataclasses.fields(TrainConfig)})
    if unknown:
        raise UserError(f"checkpoint {source}: unknown config key {unknown[0]!r} (written by another version?)")
    return TrainConfig(**saved)


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


def estimator_options(config):
    """The estimator's ``groups`` / ``ciwae_beta`` as loss keyword arguments; UserError (naming the option) when
    they do not fit the estimator or k."""
    try:
        check_estimator_options(config.estimator, config.k, config.groups, config.ciwae_beta)
    except ValueError as error:
        name, reason = str(error).split(": ", 1)
        raise UserError(f"--{name.replace('_', '-')}: {reason}") from None
    return {name: value for name, value in (("groups", config.groups), ("ciwae_beta", config.ciwae_beta))
            if value is not None}


class _LossModule(torch.nn.Module):
    """``model.loss`` as a forward(): DistributedDataParallel synchronizes the gradients of what forward computes."""

    def __init__(self, model, k, estimator, options):
        super().__init__()
        self.model, self.k, self.estimator, self.options = model, k, estimator, options

    def forward(self, x, noise=None):
        return self.model.loss(x, self.k, self.estimator, noise=noise, **self.options)


# Points per epoch on the training curve (train_steps.csv, curves.png): each the mean loss of its interval.
CURVE_POINTS_PER_EPOCH = 20


def train(config, out_dir, resume=False, overwrite=False, progress=True):
    """Train per ``config``, checkpointing to out_dir/checkpoint.pt; returns (model, history, step_log):
    history has one row per epoch, step_log one {"step", "train_loss"} per CURVE_POINTS_PER_EPOCH-th of an epoch.

    ``resume``/``overwrite`` follow ``start_policy``. SIGINT or SIGTERM checkpoints at the next step boundary
    and raises TrainingInterrupted. Assumes the caller holds the folder's RunLock (the CLI does).

    Under torchrun each of the N processes takes 1/N of every global batch of ``config.batch_size`` examples
    and DistributedDataParallel averages the gradients; every process binarizes the whole global batch and draws
    the noise for all of it (then keeps its share), so the run does not depend on N up to float rounding. Rank 0
    alone writes the checkpoint and logs.
    """
    rank, world = rank_and_world()
    out_dir = Path(out_dir)
    resuming = start_policy(out_dir, resume, overwrite)
    if config.batch_size % world:
        raise UserError(f"--batch-size: {config.batch_size} does not split evenly over {world} processes")
    checkpoint_path = out_dir / "checkpoint.pt"
    if overwrite and rank == 0:
        checkpoint_path.unlink(missing_ok=True)  # a run stopped before its first checkpoint must not resume the old one
    device = resolve_device(config.device)
    train_x, _ = datasets.DATASETS[config.dataset]()
    if config.train_subset:
        train_x = train_x[: config.train_subset]
    learning_rates = config.epoch_learning_rates()
    steps_per_epoch = train_x.shape[0] // config.batch_size
    if steps_per_epoch == 0:
        raise UserError(f"--batch-size: {config.batch_size} is larger than the training set ({train_x.shape[0]})")
    log_every = max(1, steps_per_epoch // CURVE_POINTS_PER_EPOCH)
    shard_size = config.batch_size // world
    my_shard = slice(rank * shard_size, (rank + 1) * shard_size)

    torch.manual_seed(config.seed)
    data_generator = torch.Generator().manual_seed(config.seed)
    model = build_model(config, device)
    loss_module = _LossModule(model, config.k, config.estimator, estimator_options(config))
    if world > 1:
        loss_module = torch.nn.parallel.DistributedDataParallel(loss_module)
    # fused=True: Adam's whole update in one kernel per step (CPU and CUDA) instead of a few per parameter tensor.
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.999), eps=1e-4, fused=True)
    epoch, step, history, step_log, elapsed = 0, 0, [], [], 0.0
    # Running sums of the current epoch and curve interval, checkpointed so a resume logs the same means.
    loss_sum, loss_count, interval_sum = 0.0, 0, 0.0
    if resuming:
        state = load_checkpoint(checkpoint_path)
        check_resumable(config_from_dict(state.get("config"), checkpoint_path), config, checkpoint_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, step, history, elapsed = state["epoch"], state["step"], state["history"], state["elapsed"]
        step_log, interval_sum = state.get("step_log", []), state.get("interval_loss_sum", 0.0)  # none before the curve
        loss_sum, loss_count = state["epoch_loss_sum"], state["epoch_loss_count"]
        _restore_rng(state["rng"], data_generator)

    def checkpoint():
        if rank == 0:
            save_checkpoint(checkpoint_path, {
                "config": dataclasses.asdict(config), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "epoch": epoch, "step": step, "history": history, "step_log": step_log,
                "elapsed": elapsed + time.perf_counter() - started, "epoch_loss_sum": loss_sum,
                "epoch_loss_count": loss_count, "interval_loss_sum": interval_sum, "rng": _rng_state(data_generator)})
        if world > 1:
            dist.barrier()  # no process leaves (on an interrupt) before rank 0 has written

    started = last_checkpoint = time.perf_counter()
    with deferred_stop_signals() as stop_requests:
        while epoch < len(learning_rates):
            for group in optimizer.param_groups:
                group["lr"] = learning_rates[epoch]
            # The order of an epoch is a function of (seed, epoch), so a resumed run shuffles the same way.
            order = torch.randperm(train_x.shape[0],
                                   generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch))
            bar = tqdm(range(step, steps_per_epoch), desc=f"epoch {epoch + 1}/{len(learning_rates)}",
                       disable=not progress or rank > 0, initial=step, total=steps_per_epoch, unit="step",
                       dynamic_ncols=True)
            epoch_start, resumed_count = time.perf_counter(), loss_count
            for step in bar:
                batch = train_x[order[step * config.batch_size : (step + 1) * config.batch_size]]
                x = datasets.dynamic_binarize(batch, generator=data_generator).to(device)
                noise = None
                if dist.is_initialized():
                    noise = [torch.randn((config.k, config.batch_size, size), device=device)[:, my_shard].contiguous()
                             for size in model.latent]
                loss = loss_module(x[my_shard], noise)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_value, stop = loss.item(), bool(stop_requests)
                if world > 1:  # the global batch's mean loss, and whether any process was asked to stop
                    shared = torch.tensor([loss_value / world, float(stop)], dtype=torch.float64, device=device)
                    dist.all_reduce(shared)
                    loss_value, stop = shared[0].item(), shared[1].item() > 0
                loss_sum, loss_count, interval_sum = loss_sum + loss_value, loss_count + 1, interval_sum + loss_value
                rate = (loss_count - resumed_count) * config.batch_size / (time.perf_counter() - epoch_start)
                bar.set_postfix(loss=f"{loss_sum / loss_count:.2f}", samples_per_s=f"{rate:.0f}")
                step += 1
                if step % log_every == 0:
                    step_log.append({"step": epoch * steps_per_epoch + step, "train_loss": interval_sum / log_every})
                    interval_sum = 0.0
                now = time.perf_counter()
                if stop:
                    bar.close()
                    checkpoint()
                    raise TrainingInterrupted((stop_requests or ["a signal to another process"])[0], checkpoint_path,
                                              epoch, step)
                if (config.checkpoint_steps and step % config.checkpoint_steps == 0) or \
                        now - last_checkpoint > 60 * config.checkpoint_minutes:
                    checkpoint()
                    last_checkpoint = now
            history.append({"epoch": epoch + 1, "lr": learning_rates[epoch], "train_loss": loss_sum / max(loss_count, 1),
                            "samples_per_s": (loss_count - resumed_count) * config.batch_size
                            / (time.perf_counter() - epoch_start),
                            "wall_s": elapsed + time.perf_counter() - started})
            # An interval cut by the epoch's end (steps_per_epoch not a multiple of log_every) is dropped.
            epoch, step, loss_sum, loss_count, interval_sum = epoch + 1, 0, 0.0, 0, 0.0
            checkpoint()
            last_checkpoint = time.perf_counter()
    if rank == 0:
        _write_log(out_dir, history, step_log)
    return model, history, step_log


def _write_log(out_dir, history, step_log):
    """train_log.csv and .json (one row per epoch), train_steps.csv (the training curve)."""
    for name, rows in (("train_log.csv", history), ("train_steps.csv", step_log)):
        if rows:
            with open(out_dir / name, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    (out_dir / "train_log.json").write_text(json.dumps(history, indent=1))


def model_from_checkpoint(path, device="auto"):
    """(model, config, checkpoint state) from a checkpoint written by ``train``; UserError for anything else."""
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"checkpoint {path} holds no model (was it written by iwae_kernels train?)")
    config = config_from_dict(state.get("config"), path)
    model = build_model(config, resolve_device(device))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:  # e.g. 2-layer weights under a 1-layer config
        first_problem = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise UserError(f"checkpoint {path}: the weights do not fit its config (layers={config.layers}): "
                        f"{first_problem}") from None
    return model, config, state


def describe_schedule(config):
    rates = config.epoch_learning_rates()
    return f"{len(rates)} passes, lr {rates[0]:.2e} -> {rates[-1]:.2e}" if rates else "no passes"

