"""benchmarks/gpu_plan.sh: its dry run lists every stage within each call's budget, and its rehearsal (the
stand-ins for what needs a GPU) fails where a lent GPU's first call would be lost to the plan itself: a pytest
selection that collects nothing, a missing script, an argument a script rejects. CI runs the whole rehearsal
(.ci/run); these run it on planted stages alone (--only, --stage), in seconds."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from helpers import REPO

PLAN = REPO / "benchmarks" / "gpu_plan.sh"
BUDGET = 480  # the first call's default (PLAN_CALL_SECONDS)

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="the plan is a bash script that needs timeout")


def plan(*args, env=None, timeout=120):
    environment = {key: value for key, value in os.environ.items() if key not in ("OUT", "PLAN_CALL_SECONDS")}
    environment.update(env or {})
    return subprocess.run(["bash", str(PLAN), *args], capture_output=True, text=True, timeout=timeout,
                          env=environment, cwd=REPO)


def stage_names():
    """The names of the STAGES array, in the script's order."""
    text = PLAN.read_text()
    block = text[text.index("\nSTAGES=(") : text.index("\n)\n", text.index("\nSTAGES=("))]
    return re.findall(r'^  "([a-z0-9_]+)\|', block, flags=re.M)


def test_dry_run_lists_every_stage_within_each_calls_budget():
    result = plan("--dry-run")
    assert result.returncode == 0, result.stderr
    listed = re.findall(r"^([a-z0-9_]+) \(call (\d+), timeout (\d+)s", result.stdout, flags=re.M)
    names = stage_names()
    assert [name for name, _, _ in listed] == names and len(names) >= 20
    assert names[names.index("bench_eval") + 1] == "eval_memory"
    totals = {int(call): int(seconds) for call, seconds in
              re.findall(r"^call (\d+): (\d+)s of stage limits \(budget 480s\)", result.stdout, flags=re.M)}
    assert totals and all(seconds <= BUDGET for seconds in totals.values())
    first_call = {name for name, call, _ in listed if call == "1"}
    assert {"install", "versions", "selftest", "memcheck", "racecheck", "bench_loss"} <= first_call


@pytest.mark.slow  # subprocesses: pytest's collection and a benchmark's imports, about 10 s
def test_rehearsal_fails_on_a_selection_that_collects_nothing_or_a_script_that_cannot_start(tmp_path):
    out = tmp_path / "out"
    result = plan(
        "--rehearse", "--only", "good_k,broken_k,gone,bad_arg,good_arg",
        "--stage", "good_k|60|g|$PYTEST tests/ops/test_logsumexp.py -k split_k_fold",
        "--stage", "broken_k|60|g|$PYTEST tests/ops/test_logsumexp.py -k no_such_selection",
        "--stage", "gone|60|-|$PYTHON benchmarks/no_such_script.py",
        "--stage", "bad_arg|60|-|$PYTHON benchmarks/bench_train_step.py --no-such-option",
        "--stage", "good_arg|60|-|$PYTHON benchmarks/bench_train_step.py --k 50",
        env={"PYTHON": sys.executable, "OUT": str(out)})
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    failed = re.findall(r"^\[rehearsal\] FAILED: (\w+): (.*)$", output, flags=re.M)
    assert dict(failed) == {"broken_k": "exit 5, its pytest selection collects nothing", "gone": "exit 2",
                            "bad_arg": "exit 2"}, output
    assert "there is no such script" in output and "unrecognized arguments: --no-such-option" in output
    assert result.stdout.rstrip().splitlines()[-1].startswith("gpu_plan rehearsal: FAILED (3 problems): 5 stages")
    # What $OUT gets is what a lent machine returns: the table (a row per stage) and the tar, no other file.
    assert sorted(path.name for path in out.iterdir()) == ["gpu_plan.md", "results.tar.gz"]
    table = (out / "gpu_plan.md").read_text()
    assert "| good_k | 0 |" in table and "| good_arg | 0 |" in table and "| broken_k | 5 |" in table
    assert not (REPO / "benchmarks" / "results" / "Rehearsal_CPU").exists()
