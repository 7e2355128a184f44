"""benchmarks/gpu_plan.sh: its dry run lists every stage within each call's budget, and its rehearsal (the
stand-ins for what needs a GPU) fails where a lent GPU's first call would be lost to the plan itself: a pytest
selection that collects nothing, a missing script, an argument a script rejects. CI runs the whole rehearsal
(.ci/run); these run it on planted stages alone (--only, --stage), in seconds."""

import os
import re
import shlex
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


# What the plan's narrow -k selections mean, per test function (file::name: how many of its tests): the sanitizers'
# subsets. -k matches substrings (k7-B5 also selects a k7-B50 or a k17-B5), and a test list that grows changes what a
# selection collects without making it collect nothing, which the rehearsal would catch.
INTENDED = {
    "memcheck": {
        "test_gaussian_sample.py::test_kernel_matches_reference": 24,  # k5-B3-D17: 2 layouts x 3 priors x 4 estimators
        "test_log_likelihood.py::test_kernel_matches_reference": 2,  # k3-B5-P33: bernoulli, gaussian
        "test_log_likelihood.py::test_iwae_loss_op_kernel_reduction_paths": 6,
        "test_logsumexp.py::test_kernel_matches_reference": 2,  # k7-B5: iwae_bound, normalized_weights
        "test_logsumexp.py::test_split_k_fold_matches_reference": 6,
        "test_logsumexp.py::test_split_k_fold_covers_the_last_row": 2,
    },
    "racecheck": {
        "test_decoder_head.py::test_kernel_matches_reference": 2,  # k2-B20-H40-P100, k40-B30-H37-P70
        "test_decoder_head.py::test_kernel_with_several_backward_passes": 2,
        "test_decoder_head.py::test_backward_overwrites_its_partial_sums": 1,
        "test_decoder_mlp.py::test_kernel_matches_reference": 4,  # two shapes, latent term or not
    },
}
SHAPES_PER_FILE = {"memcheck": 1, "racecheck": 2}  # of kernel_matches_reference, each in float32 on triton
POSITIONAL_ID = re.compile(r"[\[-](dtype|shape|overrides)\d+[\]-]")  # pytest's own ids for values it cannot name


def plan_selections():
    """The plan's stages that select tests with -k: {name: (the pytest arguments, the files, the expression)}, read
    from the dry run's commands as bash expands them."""
    result = plan("--dry-run", env={"PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    selections = {}
    for name, command in re.findall(r"^([a-z0-9_]+) \(call \d+, timeout \d+s[^)]*\): (.*)$", result.stdout, flags=re.M):
        words = shlex.split(command)
        starts = [i + 2 for i, word in enumerate(words[:-1]) if word == "-m" and words[i + 1] == "pytest"]
        if starts and "-k" in words[starts[0]:]:
            args = words[starts[0]:]
            selections[name] = (args, [word for word in args if word.startswith("tests/")], args[args.index("-k") + 1])
    return selections


def collect(*argument_lists):
    """Each pytest argument list's collected test ids (its -q prints them), collected at once in subprocesses."""
    processes = [subprocess.Popen([sys.executable, "-m", "pytest", *args, "--collect-only"], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, cwd=REPO) for args in argument_lists]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output
    return [[line for line in output.splitlines() if "::" in line] for output in outputs]


@pytest.mark.slow  # eight pytest collections at once in subprocesses, 30-60 s on 2 cores
def test_each_k_selection_of_the_plan_collects_what_it_means():
    selections = plan_selections()
    assert {"memcheck", "racecheck", "tests_sample_f32", "tests_sample_rest", "tests_cuda"} <= set(selections)
    everything, *selected = collect(["-q", "-p", "no:cacheprovider", "tests/ops"],
                                    *(args for args, _, _ in selections.values()))
    positional = [test for test in everything if POSITIONAL_ID.search(test)]
    assert not positional, f"ids that are list positions, which a -k selection cannot name: {positional[:5]}"
    selected = dict(zip(selections, selected))
    for name, (_, files, expression) in selections.items():
        tests = selected[name]
        in_files = [test for test in everything if any(test.startswith(file) for file in files)]
        assert tests and set(tests) <= set(in_files), f"{name}: -k '{expression}' collects {len(tests)}"
        if name in INTENDED:
            counts = {}
            for test in tests:
                key = test.removeprefix("tests/ops/").split("[")[0]
                counts[key] = counts.get(key, 0) + 1
            assert counts == INTENDED[name], f"{name}: -k '{expression}' collects {counts}"
            shapes = {}
            for test in tests:
                if "::test_kernel_matches_reference[" in test:
                    assert test.split("[")[1].startswith("triton-") and "-float32-" in test, test
                    shape = re.search(r"-(k\d+-B\d+(?:-[A-Z]\d+)*)(?:-|\])", test).group(1)
                    shapes.setdefault(test.split("::")[0], set()).add(shape)
            assert all(len(found) == SHAPES_PER_FILE[name] for found in shapes.values()), f"{name}: {shapes}"
        # A stage and its complement ("-k 'not X'" beside "-k X" on the same files) split those files' tests in two
        # processes that run at once: neither half may be tiny (a -k word that no longer names its ids selects
        # the few tests that happen to contain it, not a share of the file).
        for other, (_, other_files, other_expression) in selections.items():
            if other_files == files and other_expression in (f"not {expression}", f"not ({expression})"):
                halves = (set(tests), set(selected[other]))
                assert not halves[0] & halves[1] and halves[0] | halves[1] == set(in_files), (name, other)
                assert min(map(len, halves)) >= len(in_files) / 10, (name, len(tests), other, len(selected[other]))
    # tests_cuda: every test of the cuda backend (a parameter "cuda" of its id) is in it.
    cuda_backend = {test for test in everything if "cuda" in re.split(r"[\[\]-]", test.split("::")[1])}
    assert cuda_backend and cuda_backend <= set(selected["tests_cuda"])
