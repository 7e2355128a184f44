"""``python -m iwae_kernels selftest``: it passes here, covers every op of the contract on the torch and triton
backends, and fails when an op computes a wrong result."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iwae_kernels import backend, selftest
from iwae_kernels.contract import OPS

from helpers import REPO, backend_device


def ops_checked(records, name):
    return {r.op.split("[")[0] for r in records if r.backend == name and r.ok}


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
        assert {r.dtype for r in records if r.backend == name} == {"float32", "bfloat16"}
    estimators = {r.op.split("[")[1].rstrip("]") for r in records if "[" in r.op}
    assert estimators == {"iwae", "vae", "stl", "dreg", "iwae-resample"}
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
    (record,) = selftest.check_case(case, "triton", device, torch.float32)
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
