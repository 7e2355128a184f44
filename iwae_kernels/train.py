"""Training the paper's models: schedule, progress, per-epoch log, atomic checkpoints and exact resume.

A checkpoint holds everything the rest of the run depends on: weights, optimizer state, the position in the
schedule (epoch and step), and every RNG stream (torch's CPU and CUDA generators, which also seed the kernels'
noise, and the data generator for shuffling and dynamic binarization). It is written to a temporary file and
renamed over the old one, so a kill at any moment leaves the previous checkpoint intact; ``--resume``
continues exactly as the uninterrupted run would have.
"""

import csv
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import data as datasets
from .models import paper_model


@dataclasses.dataclass
class TrainConfig:
    dataset: str = "mnist"
    layers: int = 1
    estimator: str = "iwae"
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


def resolve_device(name):
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def save_checkpoint(path, state):
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path`` (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False)
    try:
        with handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def load_checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=True)


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


def train(config, out_dir, resume=False, progress=True):
    """Train per ``config``, checkpointing to out_dir/checkpoint.pt; returns (model, history)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out_dir / "checkpoint.pt"
    device = resolve_device(config.device)
    train_x, _ = datasets.DATASETS[config.dataset]()
    if config.train_subset:
        train_x = train_x[: config.train_subset]
    learning_rates = config.epoch_learning_rates()
    steps_per_epoch = train_x.shape[0] // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size: {config.batch_size} is larger than the training set ({train_x.shape[0]})")

    torch.manual_seed(config.seed)
    data_generator = torch.Generator().manual_seed(config.seed)
    model = build_model(config, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.999), eps=1e-4)
    epoch, step, history, elapsed = 0, 0, [], 0.0
    loss_sum, loss_count = 0.0, 0  # the current epoch's, so a mid-epoch resume logs the same mean
    if resume and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        if state["config"] != dataclasses.asdict(config):
            raise ValueError(f"--resume: {checkpoint_path} was written with another configuration: {state['config']}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, step, history, elapsed = state["epoch"], state["step"], state["history"], state["elapsed"]
        loss_sum, loss_count = state["epoch_loss_sum"], state["epoch_loss_count"]
        _restore_rng(state["rng"], data_generator)

    def checkpoint():
        save_checkpoint(checkpoint_path, {
            "config": dataclasses.asdict(config), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "epoch": epoch, "step": step, "history": history, "elapsed": elapsed + time.perf_counter() - started,
            "epoch_loss_sum": loss_sum, "epoch_loss_count": loss_count,
            "rng": _rng_state(data_generator)})

    started = last_checkpoint = time.perf_counter()
    while epoch < len(learning_rates):
        for group in optimizer.param_groups:
            group["lr"] = learning_rates[epoch]
        # The order of an epoch is a function of (seed, epoch), so a resumed run shuffles the same way.
        order = torch.randperm(train_x.shape[0], generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch))
        bar = tqdm(range(step, steps_per_epoch), desc=f"epoch {epoch + 1}/{len(learning_rates)}", disable=not progress,
                   initial=step, total=steps_per_epoch, unit="step", dynamic_ncols=True)
        epoch_start, resumed_count = time.perf_counter(), loss_count
        for step in bar:
            batch = train_x[order[step * config.batch_size : (step + 1) * config.batch_size]]
            x = datasets.dynamic_binarize(batch, generator=data_generator).to(device)
            loss = model.loss(x, config.k, config.estimator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum, loss_count = loss_sum + loss.item(), loss_count + 1
            rate = (loss_count - resumed_count) * config.batch_size / (time.perf_counter() - epoch_start)
            bar.set_postfix(loss=f"{loss_sum / loss_count:.2f}", samples_per_s=f"{rate:.0f}")
            step += 1
            now = time.perf_counter()
            if (config.checkpoint_steps and step % config.checkpoint_steps == 0) or \
                    now - last_checkpoint > 60 * config.checkpoint_minutes:
                checkpoint()
                last_checkpoint = now
        history.append({"epoch": epoch + 1, "lr": learning_rates[epoch], "train_loss": loss_sum / max(loss_count, 1),
                        "samples_per_s": (loss_count - resumed_count) * config.batch_size / (time.perf_counter() - epoch_start),
                        "wall_s": elapsed + time.perf_counter() - started})
        epoch, step, loss_sum, loss_count = epoch + 1, 0, 0.0, 0
        checkpoint()
        last_checkpoint = time.perf_counter()
    _write_log(out_dir, history)
    return model, history


def _write_log(out_dir, history):
    if history:
        with open(out_dir / "train_log.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)
    (out_dir / "train_log.json").write_text(json.dumps(history, indent=1))


def model_from_checkpoint(path, device="auto"):
    """(model, config, checkpoint state) from a checkpoint written by ``train``."""
    state = load_checkpoint(path)
    config = TrainConfig(**state["config"])
    model = build_model(config, resolve_device(device))
    model.load_state_dict(state["model"])
    return model, config, state


def describe_schedule(config):
    rates = config.epoch_learning_rates()
    return f"{len(rates)} passes, lr {rates[0]:.2e} -> {rates[-1]:.2e}" if rates else "no passes"

