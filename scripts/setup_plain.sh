#!/usr/bin/env bash
# The "plain" end of docs/SUPPORT.md: what a new user gets from `pip install iwae_kernels[test]` on a clean machine.
# A fresh venv (.venv-plain), no torch chosen beforehand, the package installed from its wheel (not editable), so pip
# resolves torch, Triton and numpy itself (on the CI machine: torch 2.14.1, a CUDA build, and Triton 3.8, under the
# machine's pip cap; docs/SUPPORT.md). CI then runs selftest and the ops tests against that install.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-plain}
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q ".[test]"
"$VENV/bin/python" -I -c "import torch, iwae_kernels; from importlib.metadata import version as v
print('iwae_kernels', iwae_kernels.__version__, 'from', iwae_kernels.__file__)
print('torch', torch.__version__, 'triton', v('triton'), 'numpy', v('numpy'))"
