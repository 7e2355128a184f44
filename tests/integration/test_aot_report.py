"""The ahead-of-time report catches what the interpreter lets through: a kernel reading a module-level Python float
runs under TRITON_INTERPRET=1 but does not compile for a GPU, and the report fails on it (sm_90, one kernel). And
it covers every @triton.jit function in the package: one no case compiles or reaches fails it (one small kernel
compiled; the package's own enumeration is checked without compiling)."""

import importlib
import importlib.util
import json
import os
import re
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


# ---- coverage: every @triton.jit function is compiled by a case or called from a compiled kernel ----

COVERAGE = '''
import torch
import triton
import triton.language as tl


@triton.jit
def _double(x):
    return x * 2


@triton.jit
def _launched_kernel(x_ptr, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    tl.store(x_ptr + offsets, _double(tl.load(x_ptr + offsets)))


@triton.jit
def _forgotten_kernel(x_ptr, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    tl.store(x_ptr + offsets, tl.load(x_ptr + offsets) + 1)


@triton.autotune(configs=[triton.Config({}, num_warps=1)], key=["n"])
@triton.jit
def _forgotten_tuned_kernel(x_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    tl.store(x_ptr + offsets, tl.load(x_ptr + offsets, mask=offsets < n), mask=offsets < n)


def double(x):
    _launched_kernel[(1,)](x, BLOCK=x.numel())


CASES = {"planted": lambda: [("float32", lambda: double(torch.zeros(8, device="meta")))]}
'''


def test_the_report_fails_on_a_kernel_no_case_compiles_or_reaches(tmp_path):
    """The launched kernel is compiled and its helper reached through it; the two kernels nothing launches or calls
    (one autotuned) fail the report by name, although everything that was compiled is fine."""
    cases = tmp_path / "planted_kernels.py"
    cases.write_text(COVERAGE)
    result = report(tmp_path, cases)
    assert result.returncode == 1, result.stderr
    out = json.loads((tmp_path / "out" / "aot_report.json").read_text())
    assert out["errors"] == [] and [row["kernel"] for row in out["rows"]] == ["planted_kernels._launched_kernel"]
    assert out["kernels"] == {"sm_90": {
        "planted_kernels:_double": "called from planted_kernels:_launched_kernel",
        "planted_kernels:_forgotten_kernel": "uncovered", "planted_kernels:_forgotten_tuned_kernel": "uncovered",
        "planted_kernels:_launched_kernel": "compiled"}}
    assert len(out["problems"]) == 2
    for name in ("planted_kernels:_forgotten_kernel", "planted_kernels:_forgotten_tuned_kernel"):
        assert f"sm_90 {name}: no case compiles it and no compiled kernel calls it" in result.stderr


@pytest.fixture(scope="module")
def aot_report():
    """benchmarks/aot_report.py imported here: its import unsets TRITON_INTERPRET (it compiles), and kernels defined
    later in this process must still be interpreted, so the environment is put back."""
    saved = {name: os.environ.get(name) for name in ("TRITON_INTERPRET", "TRITON_DEFAULT_FP_FUSION")}
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import aot_report
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return aot_report


def test_the_package_enumeration_finds_every_kernel_and_the_cases_reach_it(aot_report):
    """Without compiling: the enumeration finds each ``@triton.jit`` def in iwae_kernels' source (read here with a
    regular expression, independently of the report), helpers of ops/utils.py included, and every one is launched by
    a CASES family's module or called, transitively, from such a kernel. The compiled run's roots are the kernels
    the cases actually compiled; these launch sites stand in for them."""
    package = REPO / "iwae_kernels"
    in_source = {f"{'.'.join(path.relative_to(REPO).with_suffix('').parts)}:{name}"
                 for path in package.rglob("*.py")
                 for name in re.findall(r"^@triton\.jit(?:\(.*\))?\s*\ndef (\w+)", path.read_text(), re.M)}
    declared, nested = aot_report.declared_kernels(aot_report.package_modules())
    assert set(declared) == in_source and not nested
    assert {"iwae_kernels.ops.utils:dot_acc", "iwae_kernels.ops.decoder_head:_head_fwd_kernel"} <= set(declared)
    roots = {}
    for family in aot_report.CASES:
        roots.update(aot_report.launched_functions(importlib.import_module(f"iwae_kernels.ops.{family}")))
    coverage = aot_report.coverage(declared, roots)
    assert [name for name, how in coverage.items() if how == "uncovered"] == []
    assert coverage["iwae_kernels.ops.utils:tf32_truncate"].startswith("called from ")


NEW_OP = '''
import triton
import triton.language as tl


@triton.jit
def _new_kernel(x_ptr):
    tl.store(x_ptr, 1.0)


def make_kernel():
    @triton.jit
    def _hidden_kernel(x_ptr):
        tl.store(x_ptr, 2.0)

    return _hidden_kernel
'''


def test_a_new_kernel_file_is_enumerated_and_fails_uncovered(aot_report, tmp_path, monkeypatch):
    """A kernel in a new ops/ file with no CASES entry is found by the package enumeration and fails coverage; a
    @triton.jit def nested in a function, which no import reaches, is a problem of its own. Nothing is compiled."""
    ops = tmp_path / "planted_package" / "ops"
    ops.mkdir(parents=True)
    (ops.parent / "__init__.py").write_text("")
    (ops / "__init__.py").write_text("")
    (ops / "new_op.py").write_text(NEW_OP)
    (ops / "plain.py").write_text("X = 1\n")  # mentions no triton: not imported
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        modules = aot_report.package_modules("planted_package")
        assert [module.__name__ for module in modules] == ["planted_package.ops.new_op"]
        declared, nested = aot_report.declared_kernels(modules)
        assert list(declared) == ["planted_package.ops.new_op:_new_kernel"]
        assert nested == ["planted_package.ops.new_op:make_kernel.<locals>._hidden_kernel"]
        kernels = {"sm_90": aot_report.coverage(declared, roots={})}
        assert kernels == {"sm_90": {"planted_package.ops.new_op:_new_kernel": "uncovered"}}
        found = aot_report.problems([], [], kernels, nested=nested)
        assert len(found) == 2 and found[1].startswith("sm_90 planted_package.ops.new_op:_new_kernel: no case compiles")
        assert "make_kernel.<locals>._hidden_kernel" in found[0]
    finally:
        for name in [name for name in sys.modules if name.split(".")[0] == "planted_package"]:
            del sys.modules[name]
