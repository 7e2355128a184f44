"""The support matrix cannot rot silently: pyproject.toml's lower bounds are the versions CI installs at the oldest
end (scripts/setup_oldest.sh), docs/SUPPORT.md's table names what the CI scripts install at each end, and .ci/run
checks the three ends (oldest, newest, and a plain pip install)."""

import re

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from helpers import REPO

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")


def oldest_pins():
    """{'TORCH': '2.11.0', 'TRITON': ..., 'NUMPY_BELOW': ...}: the OLDEST_* assignments of scripts/setup_oldest.sh."""
    text = (REPO / "scripts" / "setup_oldest.sh").read_text()
    return dict(re.findall(r"^OLDEST_(\w+)=(\S+)$", text, flags=re.MULTILINE))


def newest_torch():
    """The torch version scripts/setup_env.sh installs by default (its TORCH_SPEC default, torch==X)."""
    return re.search(r"\$\{TORCH_SPEC:-torch==([\w.]+)\}", (REPO / "scripts" / "setup_env.sh").read_text()).group(1)


def lower_bounds():
    """{'torch': Version, 'triton': Version}: each dependency's only specifier, >=X, from pyproject.toml."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    bounds = {}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        if requirement.name in ("torch", "triton"):
            (specifier,) = requirement.specifier  # a lower bound only: a cap would need its own CI end
            assert specifier.operator == ">=", line
            bounds[requirement.name] = Version(specifier.version)
    return bounds


def support_table():
    """{end: {column: cell}} from the markdown table of docs/SUPPORT.md whose first column is 'end'."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in (REPO / "docs" / "SUPPORT.md").read_text().splitlines() if line.startswith("|")]
    header = next(row for row in rows if row[0] == "end")
    return {row[0]: dict(zip(header, row)) for row in rows if row is not header and not set(row[0]) <= set("-: ")}


def test_lower_bounds_are_what_ci_installs_at_the_oldest_end():
    pins = oldest_pins()
    assert lower_bounds() == {"torch": Version(pins["TORCH"]), "triton": Version(pins["TRITON"])}


def test_newest_end_is_above_the_oldest():
    assert Version(newest_torch()) > lower_bounds()["torch"]


def test_support_table_names_what_ci_installs():
    pins, table = oldest_pins(), support_table()
    assert set(table) == {"oldest", "newest", "plain"}
    assert table["oldest"]["torch"] == pins["TORCH"]
    assert table["oldest"]["triton"] == pins["TRITON"]
    assert table["oldest"]["numpy"].startswith(f"<{pins['NUMPY_BELOW']}")
    assert table["newest"]["torch"].split()[0] == newest_torch()


def test_ci_checks_both_ends():
    stages = dict(re.findall(r'^stage "([^"]+)" (.+)$', (REPO / ".ci" / "run").read_text(), flags=re.MULTILINE))
    assert stages["newest: setup"] == "bash scripts/setup_env.sh"
    assert stages["newest: test suite"].split("  #")[0] == ".venv/bin/python -m pytest -q -n auto --dist loadfile"
    assert stages["oldest: setup"] == "bash scripts/setup_oldest.sh"
    for end, venv in (("newest", ".venv"), ("oldest", ".venv-oldest")):
        assert stages[f"{end}: AOT sm_90"].startswith(f"{venv}/bin/python benchmarks/aot_report.py --arch 90 ")
    assert stages["oldest: ops tests"] == ".venv-oldest/bin/python -m pytest -q -n auto --dist loadfile tests/ops"
    # The plain end: pip resolves everything (no torch chosen first) and installs from the wheel, not editable.
    assert stages["plain: setup"] == "bash scripts/setup_plain.sh"
    plain = (REPO / "scripts" / "setup_plain.sh").read_text()
    assert 'pip install -q ".[test]"' in plain and "torch" not in plain.split('pip install -q ".[test]"')[0].split(
        "set -euo")[1]
    assert stages["plain: selftest"].endswith('/.venv-plain/bin/python" -m iwae_kernels selftest')
