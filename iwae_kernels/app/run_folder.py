"""A run folder owned by one run: a preflight check, a lock naming its holder, and stale temporary files removed.

``train`` and ``evaluate`` write into a run folder (checkpoint.pt, logs, report.json, pictures). Two writers
would replace each other's checkpoints, and a folder that cannot be written would lose a whole training run at
its first checkpoint, so both are checked before any work starts.
"""

import os
import shutil
import socket
import tempfile
from pathlib import Path

from .errors import UserError

LOCK_NAME = "run.lock"


def preflight(out_dir, needed_bytes=0):
    """Create ``out_dir`` if needed and prove it writable with ``needed_bytes`` free, before any work starts."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out: {out_dir} exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # Writing a file is the only reliable test: os.access ignores read-only mounts and is always true for root.
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".preflight", suffix=".tmp"):
            pass
    except OSError as error:
        raise UserError(f"--out: cannot write to {out_dir} ({error.strerror or error})") from None
    free = shutil.disk_usage(out_dir).free
    if free < needed_bytes:
        raise UserError(f"--out: {out_dir} has {free / 2**20:.0f} MiB free; a checkpoint needs "
                        f"{needed_bytes / 2**20:.0f} MiB")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class RunLock:
    """``with RunLock(out_dir):`` holds ``out_dir/run.lock`` (pid and host of the holder) for the block.

    A second writer is refused with the holder's pid. A lock whose process is gone on this host (killed with
    -9, a crashed machine) is stale: it is taken over, and the ``*.tmp`` files such a run left are removed.
    """

    def __init__(self, out_dir):
        self.path = Path(out_dir) / LOCK_NAME

    def _holder(self):
        try:
            pid, host = self.path.read_text().split()[:2]
            return int(pid), host
        except (OSError, ValueError):
            return None, None  # unreadable or half-written: treated as stale

    def __enter__(self):
        for _ in range(2):  # the second try follows the removal of a stale lock
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid, host = self._holder()
                if pid is not None and (host != socket.gethostname() or _pid_alive(pid)):
                    raise UserError(f"{self.path.parent} is in use by process {pid} on {host} (lock file {self.path}); "
                                    "wait for it, or stop it") from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(descriptor, "w") as handle:
                handle.write(f"{os.getpid()} {socket.gethostname()}\n")
            remove_stale_temporaries(self.path.parent)
            return self
        raise UserError(f"could not take the lock {self.path}")

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def remove_stale_temporaries(out_dir):
    """Delete ``*.tmp`` files left by a killed checkpoint write; only the lock holder may call this."""
    for leftover in Path(out_dir).glob("*.tmp"):
        leftover.unlink(missing_ok=True)
