"""Shared benchmark plumbing: device description, timing, peak memory, and writing results by device."""

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from iwae_kernels.app.device import device_name

# Where results go: benchmarks/results/<device>/, or IWAE_KERNELS_BENCH_RESULTS (the tests point it elsewhere).
RESULTS = Path(os.environ.get("IWAE_KERNELS_BENCH_RESULTS", Path(__file__).resolve().parent / "results"))


def backend_runs(backend, device):
    """Whether iwae_kernels' ``backend`` runs on ``device`` here (the cuda backend needs a GPU and its extension)."""
    import iwae_kernels as ik

    try:
        ik.backend.backend_name(backend, device)
    except ValueError:
        return False
    return True


def parse_args(parser):
    """parser.parse_args() after adding --matmul-precision, which it applies before anything runs: the fused
    kernels and cuBLAS then run every variant at that float32 matmul precision (recorded by ``environment``)."""
    parser.add_argument("--matmul-precision", choices=["highest", "high", "medium"], default=None,
                        help="torch.set_float32_matmul_precision for every variant (default: torch's, highest)")
    args = parser.parse_args()
    if args.matmul_precision:
        torch.set_float32_matmul_precision(args.matmul_precision)
    return args


def environment(device):
    """What a result must record besides its numbers."""
    info = {"device": device_name(device), "torch": torch.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": "python " + " ".join(sys.argv),
            # The fused matmul kernels and cuBLAS (naive, naive+compile) both follow it: every variant runs under it.
            "float32_matmul_precision": torch.get_float32_matmul_precision()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    # A copied tree's git metadata can be stale (the GPU plan passes the real commit in IWAE_KERNELS_COMMIT).
    info["git_commit"] = os.environ.get("IWAE_KERNELS_COMMIT")
    if not info["git_commit"]:
        here = Path(__file__).resolve().parent
        try:
            info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                                text=True, cwd=here).stdout.strip()
            # Code changed since that commit (results files aside) is not that commit's: say so.
            changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "iwae_kernels", "csrc", "*.py", "*.sh"],
                                     cwd=here.parent, capture_output=True).returncode
            if info["git_commit"] and changed:
                info["git_commit"] += "-dirty"
        except OSError:
            info["git_commit"] = None
    return info


def median_ms(fn, device, warmup=5, repeats=25):
    """Median wall time of fn() in ms after warm-up: triton.testing.do_bench on a GPU, perf_counter on a CPU
    (25 repeats: with 10, CPU medians of the same code moved by 30% between runs)."""
    return median_ms_each({"fn": fn}, device, warmup, repeats)["fn"]


def median_ms_each(fns, device, warmup=5, repeats=25):
    """{name: median ms} of each fn in ``fns`` after warm-up: triton.testing.do_bench one after another on a GPU;
    on a CPU the fns take turns call by call, so a slow spell of the machine (medians of the same code moved up to
    1.7x between back-to-back runs on the 2-core development VM) falls on every variant alike."""
    if device.type == "cuda":
        import triton.testing

        return {name: triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") for name, fn in fns.items()}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def peak_memory_mib(fn, device):
    """Peak memory of one fn() call above what was allocated before it. GPU: the caching allocator's peak. CPU
    (no allocator statistics there): torch.profiler's memory accounting, each op's own allocations counted at its
    start and each free when it happens, the running total's maximum; transients inside one op are missed."""
    if device.type != "cuda":
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        total = peak = 0
        for event in sorted(prof.events(), key=lambda e: e.time_range.start):
            total += event.self_cpu_memory_usage
            peak = max(peak, total)
        return peak / 2**20
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def table_cell(value, digits=4):
    """A markdown table cell: "-" for None, floats to ``digits`` significant digits, anything else as str."""
    return "-" if value is None else (f"{value:.{digits}g}" if isinstance(value, float) else str(value))


def write_results(name, device, env, rows, columns, notes=(), show=True):
    """benchmarks/results/<device>/<name>.json and .md (and the table on stdout when ``show``); returns the folder."""
    folder = RESULTS / env["device"].split(" (")[0].replace(" ", "_")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({**env, "rows": rows}, indent=1))
    lines = [f"# {name} on {env['device']}", "",
             f"- {env['date']}, torch {env['torch']}, triton {env['triton']}, commit {env['git_commit']}, "
             f"float32 matmul precision {env['float32_matmul_precision']!r}",
             f"- command: `{env['command']}`", *[f"- {note}" for note in notes], "",
             "| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(table_cell(row.get(c)) for c in columns) + " |" for row in rows]
    (folder / f"{name}.md").write_text("\n".join(lines) + "\n")
    if show:
        print("\n".join(lines[len(notes) + 4:]))
    return folder
