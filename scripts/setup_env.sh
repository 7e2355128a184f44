#!/usr/bin/env bash
# Create .venv (if missing) and install iwae_kernels with its test extras into it.
# TORCH_SPEC picks the torch to install when the venv has none (default: a release known to work on CPU
# and GPU; the library itself supports torch >= 2.4, as pyproject.toml says).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -c "import torch, iwae_kernels; print('iwae_kernels', iwae_kernels.__version__, 'torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')"
