"""The CUDA header's codes mirror ``contract``'s: the Python side passes ``int(Estimator.X)`` and
``int(Likelihood.X)`` to kernels that switch on ``enum Estimator`` / ``enum Likelihood`` in csrc/iwae_kernels.h."""

import re
from pathlib import Path

import pytest

from iwae_kernels.contract import Estimator, Likelihood

HEADER = Path(__file__).resolve().parent.parent / "csrc" / "iwae_kernels.h"


def header_enum(name):
    """{enumerator: value} of ``enum name : int { ... };`` in the header; an alias (kLast = kX) takes kX's value."""
    match = re.search(rf"enum\s+{name}\s*:\s*int\s*\{{(.*?)\}};", HEADER.read_text(), re.S)
    assert match, f"enum {name} not found in {HEADER}"
    values = {}
    for entry in filter(None, (e.strip() for e in match.group(1).split(","))):
        key, value = (part.strip() for part in entry.split("="))
        values[key] = values[value] if value in values else int(value)
    return values


def python_name(enumerator):
    """kStickingTheLanding -> STICKING_THE_LANDING."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enumerator.removeprefix("k")).upper()


@pytest.mark.parametrize("enum", [Estimator, Likelihood], ids=lambda e: e.__name__)
def test_cuda_header_enums_mirror_contract(enum):
    values = header_enum(enum.__name__)
    aliases = {key for key in values if key.startswith("kLast")}
    assert {python_name(key): value for key, value in values.items() if key not in aliases} == {
        member.name: int(member) for member in enum}
    for alias in aliases:  # the bound binding.cpp checks codes against is the largest code
        assert values[alias] == max(int(member) for member in enum)
