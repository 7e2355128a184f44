"""SIGINT and SIGTERM: deferred to a step boundary while training (so it can checkpoint), an exception elsewhere
(so the run lock is released), and the exit status a shell expects of a process they stopped (128 + number)."""

import contextlib
import signal
import threading

from .errors import UserError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_status(signal_name):
    """128 + the signal's number: 130 for SIGINT, 143 for SIGTERM (a stop relayed from another process: 143)."""
    return 128 + int(signal.SIGINT if signal_name == "SIGINT" else signal.SIGTERM)


class TrainingInterrupted(UserError):
    """SIGINT or SIGTERM stopped training at a step boundary: at (epoch, step) after a checkpoint, or with
    epoch None before the first step (nothing new to save; ``checkpoint_path`` the resumed one, or None)."""

    def __init__(self, signal_name, checkpoint_path=None, *, epoch=None, step=None):
        if epoch is not None:
            where = f"stopped at epoch {epoch + 1} step {step}; checkpoint saved to {checkpoint_path}"
        elif checkpoint_path is not None:
            where = f"stopped before the first step; checkpoint {checkpoint_path} unchanged"
        else:
            where = "stopped before the first step (nothing to checkpoint)"
        super().__init__(f"{signal_name}: {where}")
        self.signal_name, self.checkpoint_path = signal_name, checkpoint_path


class Terminated(Exception):
    """SIGTERM outside training, raised where the process is (as SIGINT raises KeyboardInterrupt)."""


def _can_set_handlers():
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_raises():
    """SIGTERM raises Terminated inside the block, so ``with`` blocks unwind (a run lock is released)."""
    if not _can_set_handlers():
        yield
        return

    def terminate(number, frame):
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_deferred = []  # the list of the outermost active deferred_stop_signals block, if any


@contextlib.contextmanager
def deferred_stop_signals():
    """SIGINT and SIGTERM append their name to the yielded list instead of stopping the process, so the training
    loop can checkpoint at the next step boundary. A second signal acts as usual (an impatient second Ctrl-C).
    Nested blocks share the outer block's list: a signal that came during setup is seen by the loop."""
    if _deferred or not _can_set_handlers():  # only the main thread may set handlers
        yield _deferred[0] if _deferred else []
        return
    received = []
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}

    def request_stop(number, frame):
        received.append(signal.Signals(number).name)
        signal.signal(number, previous[number])

    _deferred.append(received)
    for number in STOP_SIGNALS:
        signal.signal(number, request_stop)
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _deferred.clear()
