"""The benchmark scripts run on CPU at tiny sizes, so they never rot (GPU numbers come only from GPU runs)."""

import json
import re
import subprocess
import sys

import pytest
import torch
from pathlib import Path

from helpers import REPO

pytestmark = pytest.mark.slow  # subprocesses

BENCHMARKS = REPO / "benchmarks"


def run_benchmark(tmp_path, script, *args):
    env = {"IWAE_KERNELS_BENCH_RESULTS": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    subprocess.run([sys.executable, str(BENCHMARKS / script), "--device", "cpu", *args], check=True, env=env,
                   capture_output=True, text=True)
    (folder,) = tmp_path.iterdir()
    return folder


def test_bench_loss_runs_and_records_what_it_must(tmp_path):
    folder = run_benchmark(tmp_path, "bench_loss.py", "--k", "1", "4", "--batch", "3", "--dim", "5", "--obs", "11")
    result = json.loads((folder / "bench_loss.json").read_text())
    for key in ("device", "torch", "triton", "command", "date"):
        assert result[key]
    variants = {row["variant"] for row in result["rows"]}
    assert {"naive", "fused-torch"} <= variants
    assert all(row["fwd_bwd_ms"] > 0 and row["speedup_vs_naive"] > 0 for row in result["rows"])
    assert (folder / "bench_loss.md").exists() and (folder / "bench_loss.png").stat().st_size > 1000
    # renyi and vimco beside iwae by default, each timed against fused-torch at its shape (vimco needs k >= 2).
    others = {(row["k"], row["variant"]): row for row in result["rows"] if row["estimator"] != "iwae"}
    assert sorted(others) == [(1, "fused-torch-renyi"), (4, "fused-torch-renyi"), (4, "fused-torch-vimco")]
    assert all(row["vs_iwae"] > 0 and row["checked"] for row in others.values())
    assert others[1, "fused-torch-renyi"]["renyi_alpha"] == 0.5 and "vs_iwae" in (folder / "bench_loss.md").read_text()


def test_bench_eval_runs(tmp_path):
    folder = run_benchmark(tmp_path, "bench_eval.py", "--images", "6", "--k", "40", "--chunk", "16", "--batch", "3")
    rows = json.loads((folder / "bench_eval.json").read_text())["rows"]
    lk_rows, ais_rows = rows[:-2], rows[-2:]
    assert [row["variant"] for row in lk_rows] == ["naive (chunked, eager)", "fused", "fused-head", "fused-mlp",
                                                   "user model", "fused + diagnostics"]
    assert lk_rows[-1]["diagnostics_cost"] > -1
    assert all(row["speedup_vs_naive"] > 0 for row in lk_rows[1:]) and {row["chunk"] for row in lk_rows} == {16}
    assert [row["variant"] for row in ais_rows] == ["naive AIS (torch.distributions)", "ais"]
    assert ais_rows[1]["speedup_vs_naive"] > 0 and all(row["ais_steps"] == 10 for row in ais_rows)
    # Without --chunk each variant runs and records its own: 500 for naive, the models' eval_chunk (all 40 here).
    folder = run_benchmark(tmp_path / "default", "bench_eval.py", "--images", "6", "--k", "40", "--batch", "3",
                           "--ais-steps", "3", "--ais-chains", "2")
    rows = json.loads((folder / "bench_eval.json").read_text())["rows"]
    assert {row["chunk"] for row in rows[:-2]} == {40} and rows[-1]["ais_chains"] == 2


def test_bench_train_step_runs(tmp_path):
    folder = run_benchmark(tmp_path, "bench_train_step.py", "--k", "2", "--batch", "3", "--layers", "1", "2")
    rows = json.loads((folder / "bench_train_step.json").read_text())["rows"]
    variants = ["naive", "fused", "fused-head"]
    assert [(row["layers"], row["variant"]) for row in rows] == [(layers, v) for layers in (1, 2) for v in variants]
    assert all(row["samples_per_s"] > 0 for row in rows)


def test_bench_pyro_times_the_front_door_beside_pyros_elbos(tmp_path):
    pytest.importorskip("pyro")
    folder = run_benchmark(tmp_path, "bench_pyro.py", "--k", "2", "--batch", "3")
    result = json.loads((folder / "bench_pyro.json").read_text())
    assert result["pyro"] and result["git_commit"] is not None
    rows = result["rows"]
    assert [row["variant"] for row in rows] == ["RenyiELBO(alpha=0)", "ImportanceWeightedELBO(iwae)",
                                                "ImportanceWeightedELBO(dreg)", "Trace_ELBO"]
    assert all(row["step_ms"] > 0 and row["speedup_vs_renyi"] > 0 and row["loss_at_start"] > 0 for row in rows)


def test_bench_pyro_says_pyro_is_missing_and_measures_nothing(tmp_path):
    stub = tmp_path / "stub" / "pyro"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('raise ModuleNotFoundError("No module named \'pyro\'", name="pyro")\n')
    results = tmp_path / "results"
    env = {"IWAE_KERNELS_BENCH_RESULTS": str(results), "PATH": "/usr/bin:/bin", "HOME": str(Path.home()),
           "PYTHONPATH": str(stub.parent)}
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_pyro.py"), "--device", "cpu", "--k", "2"],
                          check=True, env=env, capture_output=True, text=True)
    assert "Pyro is not installed" in done.stdout and "pip install pyro-ppl" in done.stdout
    assert not results.exists()


def test_estimator_variance_runs_every_estimator(tmp_path):
    import iwae_kernels as ik

    folder = run_benchmark(tmp_path, "estimator_variance.py", "--draws", "4", "--k", "10")
    rows = json.loads((folder / "estimator_variance.json").read_text())["rows"]
    assert {row["estimator"] for row in rows} == set(ik.ESTIMATORS) - {"vae", "stl"}
    assert all(row["encoder variance / iwae"] > 0 for row in rows)


def test_roofline_reads_the_committed_h100_results(tmp_path):
    source = BENCHMARKS / "results" / "NVIDIA_H100_80GB_HBM3"
    for name in ("bench_loss.json", "bench_loss.md", "bench_eval.json"):
        (tmp_path / name).write_text((source / name).read_text())
    subprocess.run([sys.executable, str(BENCHMARKS / "roofline.py"), "--results", str(tmp_path)], check=True,
                   capture_output=True, text=True)
    result = json.loads((tmp_path / "roofline.json").read_text())
    loss_rows = [row for row in json.loads((source / "bench_loss.json").read_text())["rows"] if row.get("fwd_bwd_ms")]
    assert result["copy_gbps"] > 2000  # recorded in that run's notes
    assert len([row for row in result["rows"] if row["bench"].startswith("bench_loss")]) == len(loss_rows)
    assert all(0 < row["pct_of_bound"] <= 100 and row["bound_ms"] > 0 for row in result["rows"])
    assert "pct_of_bound" in (tmp_path / "roofline.md").read_text()


def gpu_plan_dry_run():
    """{stage: (call, command)} in order, and {call: total seconds of stage limits} from ``--dry-run``."""
    result = subprocess.run(["bash", str(BENCHMARKS / "gpu_plan.sh"), "--dry-run"], check=True, capture_output=True,
                            text=True, env={"PATH": "/usr/bin:/bin"})
    stages, totals = {}, {}
    for line in result.stdout.splitlines():
        if line.startswith("call "):
            call, total = re.match(r"call (\d+): (\d+)s of stage limits", line).groups()
            totals[int(call)] = int(total)
        else:
            name, call, command = re.match(r"(\w+) \(call (\d+), timeout \d+s[^)]*\): (.*)", line).groups()
            stages[name] = (int(call), command)
    return stages, totals


def test_gpu_plan_first_call_fits_480s_and_covers_the_priorities():
    stages, totals = gpu_plan_dry_run()
    first = [name for name, (call, _) in stages.items() if call == 1]
    assert totals[1] <= 480
    # (a) versions, (b) selftest and the default path's GPU tests, (c) the sanitizers, (d) bench_loss, in that order.
    assert first[:3] == ["install", "versions", "selftest"] and first[-1] == "bench_loss"
    assert {"memcheck", "racecheck"} <= set(first)
    tested = " ".join(stages[name][1] for name in first if name.startswith("tests_"))
    for family in ("gaussian_sample", "log_likelihood", "logsumexp", "iwae_loss"):
        assert f"tests/ops/test_{family}.py" in tested
    assert "--k 50 5000 --batch 128 1024" in stages["bench_loss"][1]
    later = [name for name, (call, _) in stages.items() if call > 1]
    assert later[:3] == ["bench_eval", "eval_memory", "bench_train_step"] and "build_cuda" in later
    # Every test file a stage names exists (the tests moved into folders once, and the plan kept the old paths).
    commands = " ".join(command for _, command in stages.values())
    named = set(re.findall(r"tests/[\w/]+\.py", commands))
    assert all((REPO / path).exists() for path in named), named


def test_gpu_plan_passes_only_flags_the_benchmarks_accept():
    stages, _ = gpu_plan_dry_run()
    flags = {}  # script -> the flags the plan passes it
    for _, command in stages.values():
        for script, passed in re.findall(r"benchmarks/(\w+\.py)((?: --[\w-]+(?: [\w.]+)*)*)", command):
            flags.setdefault(script, set()).update(re.findall(r"--[\w-]+", passed))
    assert {"--k", "--batch", "--dim"} <= flags["bench_loss.py"] and {"--images", "--synthetic"} <= flags["bench_eval.py"]
    for script, passed in flags.items():
        usage = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], check=True, capture_output=True,
                               text=True).stdout
        assert passed <= set(re.findall(r"--[\w-]+", usage)), (script, passed)


def test_plan_decisions_reads_the_committed_h100_results_and_names_what_is_missing(tmp_path):
    source = BENCHMARKS / "results" / "NVIDIA_H100_80GB_HBM3"
    for name in ("bench_loss.json", "bench_eval.json"):
        (tmp_path / name).write_text((source / name).read_text())
    done = subprocess.run([sys.executable, str(BENCHMARKS / "plan_decisions.py"), str(tmp_path)], check=True,
                          capture_output=True, text=True)
    text = done.stdout
    for choice in ("fused_head", "fused_mlp", "PERSISTENT_PROGRAMS_PER_SM", "two-pass float32 backward",
                   "CUDA C++ backend"):
        assert choice in text
    # bench_loss's fused-head over fused-triton at k=50, B=128, computed from that file's rows.
    rows = {(r["variant"], r["k"], r["B"], r["D"]): r for r in json.loads((source / "bench_loss.json").read_text())["rows"]}
    head = rows[("fused-head-triton", 50, 128, 50)]["fwd_bwd_ms"] / rows[("fused-triton", 50, 128, 50)]["fwd_bwd_ms"]
    assert f"| 50 | 128 | {head:.2f}x |" in text
    assert "stage `bench_train_step` measures it" in text and "stage `bench_head_h200` measures it" in text
    assert "no fused-mlp row" in text


def test_probe_host_runs_every_item(tmp_path):
    folder = run_benchmark(tmp_path, "probe_host.py", "--k", "2", "--batch", "3", "--dim", "4", "--obs", "5",
                           "--calls", "2", "--warmup", "1", "--profile-calls", "1", "--rounds", "2")
    result = json.loads((folder / "probe_host.json").read_text())
    assert result["device"] and result["git_commit"] is not None
    rows = result["rows"]
    assert not [row for row in rows if row["note"].startswith("error")]
    assert {row["section"] for row in rows} == {"launch", "torch", "launcher", "autograd", "loss", "in-loss"}
    timed = [row for row in rows if row.get("host_us") is not None]
    assert len(timed) > 30 and all(row["host_us"] > 0 and row["wall_us"] > 0 for row in timed if "wall_us" in row)
    assert all(row["rounds"] == 2 and row["host_us_min"] <= row["host_us"] <= row["host_us_max"]
               for row in timed if row["section"] != "in-loss")
    loss = {(row["item"], row["backend"]): row for row in rows if row["section"] == "loss"}
    assert loss[("iwae_loss forward+backward (autograd.grad)", "torch")]["triton_launches"] == 0
    if not torch.cuda.is_available():  # then the script runs Triton under its interpreter on the CPU tensors
        assert loss[("iwae_loss forward+backward (autograd.grad)", "triton")]["triton_launches"] == 5
        in_loss = [row for row in rows if row["section"] == "in-loss" and row["backend"] == "triton"]
        assert len([row for row in in_loss if "kernel[grid]" in row["item"]]) == 5
        assert any(row["item"].startswith("garbage collection") for row in in_loss)
    assert "self CPU time" in (folder / "probe_host_profile.txt").read_text()
    assert "cProfile" in (folder / "probe_host_cprofile.txt").read_text()


def test_bench_host_alternates_trees_and_counts_launches(tmp_path):
    folder = run_benchmark(tmp_path, "bench_host.py", "--repeats", "40", "--rounds", "2", "--baseline-tree", str(REPO))
    rows = json.loads((folder / "bench_host.json").read_text())["rows"]
    variants = {("loss", "naive"): 0, ("loss", "iwae_loss-torch"): 0, ("loss", "iwae_loss-triton"): 5,
                ("train step", "naive"): 0, ("train step", "PaperModel-torch"): 0,
                ("train step", "PaperModel-triton"): 5}  # workload, variant -> Triton launches per call
    assert {(row["tree"], row["workload"], row["variant"]) for row in rows} == {
        (tree, *variant) for tree in ("this checkout", f"baseline {REPO.name}") for variant in variants}
    assert all(0 < row["host_us_min"] <= row["host_us"] <= row["host_us_max"] for row in rows)
    assert {(row["workload"], row["variant"]): row["triton_launches"] for row in rows} == variants
