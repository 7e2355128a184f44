"""probe_host.py's timer: host, wall and device time per call of a callable, over rounds, as result rows.

``Probe.add(section, item, fn, backend)`` measures one item: host_us, the median of the per-call perf_counter
deltas over ``calls`` calls with no synchronize inside (then one synchronize); host_mean_us, their mean; wall_us,
the whole loop to after that synchronize, per call; on a GPU gpu_us, CUDA events around ``gpu_calls`` calls queued
behind torch.cuda._sleep (the device time per call back to back); triton_launches, the Triton kernel launches one
call makes. Called again in a later round, an item's measurements join its row; ``results()`` reports their
medians and host_us_min/max, the rounds' range. It measures nothing by itself: run ``python
benchmarks/probe_host.py``, whose sections (probe_host_launches.py, probe_host_loss.py) call it.
"""

import contextlib
import statistics
import sys
import time

import torch

from launches import wrapped_launches


@contextlib.contextmanager
def captured_launches():
    """The Triton launches made inside the block, as (kernel, grid, args, kwargs), still executed."""
    launches = []

    def wrap(kernel, grid, launch):
        """Triton's launch for that grid, recording each call first."""
        def record(*args, **kwargs):
            """Record this launch, then make it."""
            launches.append((kernel, grid, args, kwargs))
            return launch(*args, **kwargs)

        return record

    with wrapped_launches(wrap):
        yield launches


class Probe:
    """Times callables (see the module docstring) and collects the rows; called again in later rounds, an item's
    measurements join its row, and ``results`` reports their medians."""

    FIELDS = ("host_us", "host_mean_us", "wall_us", "gpu_us", "gpu_queued_us", "gpu_slept_us")

    def __init__(self, device, calls, warmup, gpu_calls):
        """A probe of ``calls`` timed calls after ``warmup`` untimed ones per item, ``gpu_calls`` for gpu_us."""
        self.device, self.calls, self.warmup, self.gpu_calls = device, calls, warmup, gpu_calls
        self.rows = {}  # (section, item, backend) -> row, with each round's measurements in row["rounds"]
        self.cuda = device.type == "cuda"
        self.cycles_per_us = self._calibrate_sleep() if self.cuda else None

    def sync(self):
        """Wait for the device (nothing to wait for off a GPU)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _calibrate_sleep(self):
        """torch.cuda._sleep's cycles per microsecond, measured after the clocks ramp up."""
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        cycles = 20_000_000
        for _ in range(5):  # warm-up: the clocks ramp up
            torch.cuda._sleep(cycles)
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        return cycles / (1000 * start.elapsed_time(end))

    def _row(self, section, item, backend, note=""):
        """The row of (section, item, backend), made with ``note`` the first time."""
        key = (section, item, backend)
        if key not in self.rows:
            self.rows[key] = {"section": section, "item": item, "backend": backend, "note": note, "rounds": []}
        return self.rows[key]

    def add(self, section, item, fn, backend="-", note=""):
        """Time fn() for this round into its row; an error becomes the row's note and ends its rounds."""
        row = self._row(section, item, backend, note)
        if row["note"].startswith("error"):
            return  # it broke in an earlier round
        try:
            with captured_launches() as launches:
                fn()
            row["triton_launches"] = len(launches)
            for _ in range(self.warmup):
                fn()
            self.sync()
            stamps = [0.0] * (self.calls + 1)
            stamps[0] = time.perf_counter()
            for i in range(1, self.calls + 1):
                fn()
                stamps[i] = time.perf_counter()
            self.sync()
            end = time.perf_counter()
            deltas = sorted(b - a for a, b in zip(stamps, stamps[1:]))
            measured = {"host_us": 1e6 * deltas[len(deltas) // 2],
                        "host_mean_us": 1e6 * (stamps[-1] - stamps[0]) / self.calls,
                        "wall_us": 1e6 * (end - stamps[0]) / self.calls}
            if self.cuda:
                measured["gpu_us"], measured["gpu_queued_us"], measured["gpu_slept_us"] = self._gpu_us(
                    fn, measured["host_mean_us"])
        except Exception as error:  # noqa: BLE001 - one broken item must not lose the rest of a one-shot run
            row["note"] = f"error: {type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"
            print(f"{section} / {item} / {backend}: {row['note']}", file=sys.stderr)
            return
        row["rounds"].append(measured)

    def _gpu_us(self, fn, host_us):
        """(device time per call, host time queueing the calls, the sleep's device time): the calls queued back to
        back behind a sleep meant to outlast their queueing (exact where the sleep did)."""
        before, start, end = (torch.cuda.Event(enable_timing=True) for _ in range(3))
        sleep_us = 3 * host_us * self.gpu_calls + 500
        self.sync()
        before.record()
        torch.cuda._sleep(int(sleep_us * self.cycles_per_us))
        start.record()
        begin = time.perf_counter()
        for _ in range(self.gpu_calls):
            fn()
        end.record()
        queued_us = 1e6 * (time.perf_counter() - begin)
        end.synchronize()
        return 1000 * start.elapsed_time(end) / self.gpu_calls, queued_us, 1000 * before.elapsed_time(start)

    def record(self, section, item, backend, note="", **measured):
        """A row measured by the caller (the in-loss timers); the last round's note stands."""
        row = self._row(section, item, backend)
        row["note"] = note
        row["rounds"].append(measured)

    def skip(self, section, item, backend, why):
        """A row that cannot be measured here, its note saying why."""
        self._row(section, item, backend, f"n/a: {why}")

    def results(self):
        """The rows: each field the median over rounds; host_us_min/max the range of the rounds' host_us."""
        rows = []
        for row in self.rows.values():
            rounds = row["rounds"]
            out = {key: value for key, value in row.items() if key != "rounds"}
            for field in self.FIELDS:
                values = [m[field] for m in rounds if m.get(field) is not None]
                if values:
                    out[field] = statistics.median(values)
            host = [m["host_us"] for m in rounds if m.get("host_us") is not None]
            if host:
                out.update(host_us_min=min(host), host_us_max=max(host), rounds=len(host))
            short = [m for m in rounds if m.get("gpu_queued_us", 0) > m.get("gpu_slept_us", float("inf"))]
            if short:
                worst = max(short, key=lambda m: m["gpu_queued_us"] - m["gpu_slept_us"])
                out["note"] = (out["note"] + "; " if out["note"] else "") + (
                    f"gpu_us inexact in {len(short)} of {len(rounds)} rounds: queueing {self.gpu_calls} calls took up "
                    f"to {worst['gpu_queued_us']:.0f} us, the sleep ahead of them {worst['gpu_slept_us']:.0f} us "
                    "(a device sync inside?)")
            rows.append(out)
        return rows
