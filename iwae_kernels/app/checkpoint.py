"""The checkpoint file of a training run: a plain ``torch.save`` file beside its SHA-256, both written atomically.

    checkpoint.pt          torch.save of a dict of tensors, numbers and lists: ``torch.load(path, weights_only=True)``
                           opens it (keys: config, model, optimizer, epoch, step, history, step_log, rng, ...)
    checkpoint.pt.sha256   "<sha256>  checkpoint.pt" (``sha256sum -c`` checks it), then "previous <sha256>"
                           (which sha256sum skips with a warning)

Both are written to temporary files in the same folder and fsynced, then renamed: the digest file first, the
checkpoint last. The digest file lists the checkpoint it replaces too, so a kill between the two renames
leaves the previous checkpoint, still verified. ``load_checkpoint`` refuses a file matching neither.

Files from before the digest file (one header line with the SHA-256, then the torch.save bytes) still load,
verified; the next checkpoint of a resumed run is written in this format.
"""

import dataclasses
import hashlib
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch

from .config import TrainConfig, build_model, config_from_dict
from .device import resolve_device
from .errors import UserError
from ..models import PaperModel

DIGEST_SUFFIX = ".sha256"
# The older single-file format: this line, the hex digest, a newline, then the torch.save bytes.
HEADER_FORMAT_PREFIX = b"iwae_kernels checkpoint, sha256 of the torch.save bytes that follow: "


def digest_path(path):
    """Where the SHA-256 of the checkpoint at ``path`` is kept: ``path`` + ".sha256"."""
    path = Path(path)
    return path.with_name(path.name + DIGEST_SUFFIX)


def _synced_temporary(folder, prefix, data):
    """A temporary file in ``folder`` holding ``data``, flushed to disk; its name (``*.tmp``: RunLock clears them)."""
    handle = tempfile.NamedTemporaryFile(dir=folder, prefix=prefix, suffix=".tmp", delete=False)
    try:
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return handle.name


def _listed_digests(path):
    """The digests ``path``'s digest file lists (the current one first), or [] when there is none."""
    try:
        lines = digest_path(path).read_text().splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return []
    return [line.split()[-1] if line.startswith("previous ") else line.split()[0] for line in lines if line.split()]


def save_checkpoint(path, state):
    """Write ``state`` (tensors, numbers, strings, lists and dicts of them) to ``path`` with torch.save and its
    SHA-256 to ``path``.sha256, atomically: a kill at any moment leaves the previous checkpoint, still verified."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = io.BytesIO()
    torch.save(state, payload)
    payload = payload.getbuffer()
    digest = hashlib.sha256(payload).hexdigest()
    previous = _listed_digests(path)[:1] if path.exists() else []
    listing = f"{digest}  {path.name}\n" + "".join(f"previous {old}\n" for old in previous if old != digest)
    written = []
    try:
        written.append(_synced_temporary(path.parent, path.name, payload))
        written.append(_synced_temporary(path.parent, digest_path(path).name, listing.encode()))
        os.replace(written.pop(), digest_path(path))
        os.replace(written.pop(), path)
    finally:
        for leftover in written:
            Path(leftover).unlink(missing_ok=True)
    if hasattr(os, "O_DIRECTORY"):  # the renames themselves on disk
        folder = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def _read_bytes(path):
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"checkpoint {path} is a folder; give the checkpoint.pt inside it") from None
    except OSError as error:
        raise UserError(f"checkpoint {path} cannot be read ({error.strerror or error})") from None
    if not raw:
        raise UserError(f"checkpoint {path} is empty")
    return raw


def _verified_payload(path, raw):
    """(the torch.save bytes, their SHA-256) of the checkpoint file ``raw``; (raw, None) when it has no digest."""
    if raw.startswith(HEADER_FORMAT_PREFIX):
        digest_end = raw.find(b"\n", len(HEADER_FORMAT_PREFIX))
        payload = memoryview(raw)[digest_end + 1:]
        digest = raw[len(HEADER_FORMAT_PREFIX):digest_end].decode(errors="replace")
        if digest_end < 0 or hashlib.sha256(payload).hexdigest() != digest:
            raise UserError(f"checkpoint {path} is damaged: its SHA-256 does not match the one it was written with")
        return payload, digest
    listed = _listed_digests(path)
    if not listed:
        return raw, None
    digest = hashlib.sha256(raw).hexdigest()
    if digest not in listed:
        raise UserError(f"checkpoint {path} is damaged: its SHA-256 does not match the one it was written with "
                        f"({digest_path(path).name})")
    return raw, digest


def read_checkpoint_state(path, map_location="cpu"):
    """(state, sha256) of the checkpoint ``save_checkpoint`` wrote to ``path``, its digest checked and loaded with
    weights_only=True; sha256 is None for a file with no digest (loaded with a warning). UserError naming the
    file and the fault for anything else (missing, a folder, empty, damaged, a bare state_dict, another
    program's file)."""
    path = Path(path)
    payload, digest = _verified_payload(path, _read_bytes(path))
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as error:
        if digest is None:
            raise UserError(f"checkpoint {path} is not a checkpoint (unreadable bytes)") from None
        # A digest that matches bytes torch refuses: written by something else.
        raise UserError(f"checkpoint {path} cannot be loaded ({type(error).__name__}: {error})".splitlines()[0]) \
            from None
    if digest is None:
        if not (isinstance(state, dict) and {"config", "model"} <= state.keys()):
            raise UserError(f"checkpoint {path} was not written by iwae_kernels train (a bare state_dict or another "
                            "program's file); it has no config or digest")
        print(f"warning: checkpoint {path} has no digest ({digest_path(path).name} is missing); loading it unverified",
              file=sys.stderr)
    return state, digest


def read_checkpoint(path):
    """The state dict ``save_checkpoint`` wrote to ``path`` (on the CPU), verified as ``read_checkpoint_state``."""
    return read_checkpoint_state(path)[0]


@dataclasses.dataclass(frozen=True)
class CheckpointMetadata:
    """Where the run stood at its checkpoint.

    epoch: passes completed; step: steps into the next pass; history: one dict per completed pass (epoch, lr,
    train_loss, samples_per_s, wall_s); step_log: the training curve ({"step", "train_loss"}); elapsed_s:
    training wall time so far; sha256: the digest the file was verified against (None: a file with no digest).
    """

    epoch: int
    step: int
    history: list
    step_log: list
    elapsed_s: float
    sha256: str


class Checkpoint(NamedTuple):
    """What ``load_checkpoint`` returns."""

    model: PaperModel
    config: TrainConfig
    metadata: CheckpointMetadata


def model_from_state(state, path, device):
    """The PaperModel of a checkpoint's ``state`` (read from ``path``) on ``device``, and its TrainConfig;
    UserError when the state holds no model or the weights do not fit its config."""
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"checkpoint {path} holds no model (was it written by iwae_kernels train?)")
    config = config_from_dict(state.get("config"), path)
    model = build_model(config, device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:  # e.g. 2-layer weights under a 1-layer config
        first_problem = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise UserError(f"checkpoint {path}: the weights do not fit its config (layers={config.layers}): "
                        f"{first_problem}") from None
    return model, config


def load_checkpoint(path, map_location=None):
    """Open a checkpoint written by ``python -m iwae_kernels train``: ``(model, config, metadata)``.

    Args:
        path: the run's checkpoint.pt (its digest file checkpoint.pt.sha256 beside it).
        map_location: the device for the model: a torch.device or its name ("cpu", "cuda:1"), "auto" (CUDA when
            available), or None for the CPU.

    Returns:
        Checkpoint(model, config, metadata): the PaperModel with the trained weights in eval mode (call
        ``model.log_likelihood(x, k=5000)`` on binarized x [B, 784]), its TrainConfig, and CheckpointMetadata.

    The file's SHA-256 is checked against its digest file and the state is read with ``weights_only=True`` (no
    code runs); a missing, damaged or foreign file raises ``iwae_kernels.app.UserError`` saying what is wrong.
    """
    device = resolve_device("cpu" if map_location is None else str(map_location))
    state, digest = read_checkpoint_state(path)
    model, config = model_from_state(state, path, device)
    metadata = CheckpointMetadata(epoch=state.get("epoch", 0), step=state.get("step", 0),
                                  history=state.get("history", []), step_log=state.get("step_log", []),
                                  elapsed_s=state.get("elapsed", 0.0), sha256=digest)
    return Checkpoint(model.eval(), config, metadata)
