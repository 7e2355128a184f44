#!/usr/bin/env bash
# Create .venv-oldest with the oldest torch and Triton iwae_kernels supports (pyproject.toml's lower bounds, which
# tests/integration/test_packaging.py holds equal to these), for CI's second environment.
# numpy<2.4: Triton 3.6's interpreter (TRITON_INTERPRET=1) calls int() on one-element arrays, which numpy 2.4
# refuses, so every kernel launch under the interpreter fails with numpy 2.4; compiled GPU launches are unaffected.
set -euo pipefail
cd "$(dirname "$0")/.."
OLDEST_TORCH=2.11.0
OLDEST_TRITON=3.6.0
OLDEST_NUMPY_BELOW=2.4
VENV=${VENV:-.venv-oldest} TORCH_SPEC="torch==$OLDEST_TORCH" \
  EXTRA_PINS="triton==$OLDEST_TRITON numpy<$OLDEST_NUMPY_BELOW" exec bash scripts/setup_env.sh
