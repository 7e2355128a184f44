"""The ahead-of-time report catches what the interpreter lets through: a kernel reading a module-level Python float
runs under TRITON_INTERPRET=1 but does not compile for a GPU, and the report fails on it (sm_90, one kernel)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import REPO

REPORT = REPO / "benchmarks" / "aot_report.py"
PLANTED = '''
import torch
import triton
import triton.language as tl

SCALE = {scale}


@triton.jit
def _planted_kernel(x_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    mask = offsets < n
    tl.store(x_ptr + offsets, tl.load(x_ptr + offsets, mask=mask) * SCALE, mask=mask)


def scale(x):
    _planted_kernel[(1,)](x, x.numel(), BLOCK=triton.next_power_of_2(x.numel()))


CASES = {{"planted": lambda: [("float32", lambda: scale(torch.zeros(8, device="meta")))]}}
'''


def plant(tmp_path, scale):
    path = tmp_path / "planted_kernels.py"
    path.write_text(PLANTED.format(scale=scale))
    return path


def report(tmp_path, cases):
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, str(REPORT), "--arch", "90", "--cases", str(cases), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="shows what the interpreter accepts")
def test_the_interpreter_runs_a_kernel_with_a_module_level_float(tmp_path):
    spec = importlib.util.spec_from_file_location("planted_kernels", plant(tmp_path, 0.5))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x = torch.ones(8)
    module.scale(x)
    assert torch.equal(x, torch.full((8,), 0.5))


def test_the_report_fails_on_a_module_level_float(tmp_path):
    result = report(tmp_path, plant(tmp_path, 0.5))
    assert result.returncode == 1, result.stderr
    errors = json.loads((tmp_path / "out" / "aot_report.json").read_text())["errors"]
    assert [e["kernel"] for e in errors] == ["planted_kernels._planted_kernel"]
    assert "SCALE" in errors[0]["error"] and "_planted_kernel" in result.stderr


def test_the_report_passes_the_same_kernel_with_a_constexpr(tmp_path):
    result = report(tmp_path, plant(tmp_path, "tl.constexpr(0.5)"))
    assert result.returncode == 0, result.stderr
    (row,) = json.loads((tmp_path / "out" / "aot_report.json").read_text())["rows"]
    assert row["kernel"] == "planted_kernels._planted_kernel" and row["arch"] == "sm_90" and row["fits"]
    assert row["registers"] > 0 and row["spill_store_bytes"] == 0
