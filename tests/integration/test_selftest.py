"""``python -m iwae_kernels selftest``: it passes here, covers every op of the contract and every estimator on the
torch and triton backends, fails when an op computes a wrong result, and honors IWAE_KERNELS_BACKEND."""

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iwae_kernels import ESTIMATORS, backend, estimators, selftest
from iwae_kernels.contract import OPS

from helpers import REPO, backend_device


def ops_checked(records, name):
    return {r.op.split("[")[0] for r in records if r.backend == name and r.ok}


def estimators_checked(records, name):
    return {r.op.split("[")[1].rstrip("]") for r in records if r.backend == name and r.ok and "[" in r.op}


@pytest.mark.slow  # a subprocess, which runs the triton checks in another one under the interpreter
def test_selftest_exits_0_and_covers_every_op_on_torch_and_triton(tmp_path):
    path = tmp_path / "selftest.json"
    # No TRITON_INTERPRET: on a CPU the selftest sets it for the triton checks, in a subprocess of its own.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(Path.home())}
    done = subprocess.run([sys.executable, "-m", "iwae_kernels", "selftest", "--json", str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(path.read_text())
    assert result["status"] == 0
    assert {"python", "torch", "triton", "numpy", "cuda", "device", "compute_capability"} <= set(result["versions"])
    records = [selftest.Record(**row) for row in result["records"]]
    for name in ("triton",) if torch.cuda.is_available() else ("torch", "triton"):  # a GPU: triton and cuda
        assert set(OPS) <= ops_checked(records, name)
        assert estimators_checked(records, name) == set(ESTIMATORS)
        assert {r.dtype for r in records if r.backend == name} == {"float32", "bfloat16"}
    assert {r.check for r in records if r.ok} == {"forward", "backward"}
    assert all(r.ok is None and r.check.startswith("skipped:") for r in records if not r.ok)
    if not torch.cuda.is_available():
        assert "needs CUDA tensors" in result["backends"]["cuda"]
    for heading in ("max error", "tolerance", "torch", "triton", "checks hold"):
        assert heading in done.stdout


@pytest.mark.parametrize("planted", ["iwae_bound", "bernoulli_log_likelihood"])
def test_a_wrong_op_fails_the_selftest(monkeypatch, planted):
    """A triton op whose result is off by 1e-3 fails its forward row (a constant offset leaves the gradient
    right), and no row of an op that does not use it fails."""
    ops = backend.get_backend("triton", backend_device("triton"))
    right = getattr(ops, planted)
    monkeypatch.setattr(ops, planted, lambda *args: right(*args) + 1e-3)
    monkeypatch.setattr(selftest, "DTYPES", (torch.float32,))
    monkeypatch.setattr(selftest, "plan", lambda device: [("triton", "here")])
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    status, _, _, records = selftest.selftest(quiet=True)
    assert status == 1
    failed = {r.op for r in records if r.ok is False}
    assert planted in failed and "normalized_weights" not in failed
    (forward,) = [r for r in records if r.op == planted and r.check == "forward"]
    assert forward.ok is False and forward.error > forward.tolerance


def test_a_crashing_op_is_a_failed_row(monkeypatch):
    device = backend_device("triton")
    ops = backend.get_backend("triton", device)

    def broken(*args):
        raise RuntimeError("planted")

    monkeypatch.setattr(ops, "normalized_weights", broken)
    (case,) = [c for c in selftest.op_cases() if c.op == "normalized_weights"]
    (record,) = selftest.check_case(case, "triton", device, dtype=torch.float32)
    assert record.ok is False and "RuntimeError: planted" in record.check


def test_backends_that_cannot_run_say_why():
    status = selftest.backend_availability(torch.device("cpu"))
    assert status["torch"] is None
    if not torch.cuda.is_available():
        assert "CUDA tensors" in status["cuda"]
        assert [name for name, _ in selftest.plan(torch.device("cpu"))] == ["torch", "triton"]


def test_selftest_needs_none_of_the_apps_dependencies():
    """The dispatch in __main__ runs before the app's import: tqdm and matplotlib blocked, selftest still starts."""
    code = ("import sys; sys.modules['tqdm'] = None; sys.modules['matplotlib'] = None; sys.argv = "
            "['iwae_kernels', 'selftest', '--help']; import runpy; runpy.run_module('iwae_kernels', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--json" in done.stdout


def test_selftest_checks_every_estimator_of_ESTIMATORS():
    """A declared fact: an estimator added to ESTIMATORS without a selftest check fails here (and run_checks)."""
    assert selftest.covered_estimators() == set(ESTIMATORS)
    # Those that act on the log-weights: through estimator_bound and end to end through iwae_loss, each in reach of
    # the options, log_w_fixed or log_q that it needs.
    ops = {case.op for case in selftest.estimator_cases()}
    for estimator in selftest.LOG_WEIGHT_ESTIMATORS:
        assert {f"estimator_bound[{estimator}]", f"iwae_loss[{estimator}]"} <= ops


@pytest.mark.parametrize("dtype", selftest.DTYPES)
def test_the_estimator_checks_hold_on_the_triton_backend(dtype):
    device = backend_device("triton")
    records = [record for case in selftest.estimator_cases()
               for record in selftest.check_case(case, "triton", device, dtype=dtype)]
    assert records and all(r.ok for r in records), selftest.format_table(records)
    assert {r.check for r in records} == {"forward", "backward"}


def test_a_wrong_estimator_coefficient_fails_its_rows(monkeypatch):
    """VIMCO's baselines off by 1e-2 in the checked dtypes (the float64 reference untouched): the backward rows of
    the estimators that use them (vimco, renyi with log_q) fail, and no other row."""
    right = estimators.leave_one_out_bounds
    monkeypatch.setattr(estimators, "leave_one_out_bounds",
                        lambda log_w: right(log_w) + (0.0 if log_w.dtype == torch.float64 else 1e-2))
    monkeypatch.setattr(selftest, "DTYPES", (torch.float32,))
    monkeypatch.setattr(selftest, "plan", lambda device: [("torch", "here")])
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    status, _, _, records = selftest.selftest(quiet=True)
    assert status == 1
    failed = {(r.op, r.check) for r in records if r.ok is False}
    assert failed == {("estimator_bound[vimco]", "backward"), ("estimator_bound+log_q[renyi]", "backward"),
                      ("iwae_loss[vimco]", "backward")}


def test_the_backend_variable_restricts_the_checks_to_its_backend(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv(backend.ENV_VAR, "triton")
    assert selftest.backends_to_check(cpu) == [("triton", "here")]  # TRITON_INTERPRET=1 here (conftest)
    monkeypatch.delenv("TRITON_INTERPRET")
    assert selftest.backends_to_check(cpu) == [("triton", "interpreter")]
    assert selftest.backends_to_check(cpu, "torch") == [("torch", "here")]  # --backend wins over the variable
    monkeypatch.setenv(backend.ENV_VAR, "torch")
    monkeypatch.setattr(selftest, "DTYPES", (torch.float32,))
    monkeypatch.setattr(selftest, "check_device", lambda: cpu)
    out = io.StringIO()
    status, _, notes, records = selftest.selftest(out=out)
    assert status == 0 and {r.backend for r in records} == {"torch"}
    assert notes["triton"] == "IWAE_KERNELS_BACKEND=torch (only torch is checked)"
    assert "backends on cpu (IWAE_KERNELS_BACKEND=torch: torch only):" in out.getvalue()


@pytest.mark.parametrize("value, complaint", [
    ("numpy", "error: IWAE_KERNELS_BACKEND: expected one of ('torch', 'triton', 'cuda'), got 'numpy'"),
    ("cuda", "error: IWAE_KERNELS_BACKEND='cuda' needs CUDA tensors (got cpu)")])
def test_a_bad_backend_variable_is_one_line_and_exit_2(value, complaint, monkeypatch, capsys):
    """An unknown backend, or one that cannot run here, is the command line's user error: one line, exit 2."""
    monkeypatch.setenv(backend.ENV_VAR, value)
    monkeypatch.setattr(selftest, "check_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(selftest, "run_checks", lambda *args: pytest.fail("checks ran"))
    assert selftest.main([]) == selftest.EXIT_USER_ERROR
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(complaint) and captured.out == ""
    # --backend too: cuda on a CPU.
    assert selftest.main(["--backend", "cuda"]) == selftest.EXIT_USER_ERROR
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --backend cuda: backend='cuda' needs CUDA tensors (got cpu)")


def test_the_command_exits_2_on_a_bad_backend_variable():
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(Path.home()), backend.ENV_VAR: "numpy"}
    done = subprocess.run([sys.executable, "-m", "iwae_kernels", "selftest"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "error: IWAE_KERNELS_BACKEND: expected one of ('torch', 'triton', 'cuda'), got 'numpy'"]
