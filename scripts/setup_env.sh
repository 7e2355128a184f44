#!/usr/bin/env bash
# Create a venv (if missing) and install iwae_kernels with its test extras into it.
#   VENV        the venv's folder (default .venv)
#   TORCH_SPEC  the torch to install when the venv has none (default: the newest end of docs/SUPPORT.md that
#               installs here; pip's own resolution picks the Triton it pins)
#   EXTRA_PINS  requirements held while installing torch and the package, e.g. "triton==3.6.0 numpy<2.4"
#               (scripts/ci_oldest.sh uses them for the oldest supported end)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
read -r -a extra_pins <<< "${EXTRA_PINS:-}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" "${extra_pins[@]}"
fi
"$VENV/bin/python" -m pip install -q -e ".[test]" "${extra_pins[@]}"
# The MIWAE/PIWAE/CIWAE peer of tests/models/test_peers_pythae.py; what it imports is in the test extra.
"$VENV/bin/python" -m pip install -q --no-deps pythae==0.1.2
# TFP's VIMCO on its JAX substrate, the peer of tests/models/test_peers_tfp.py (the tfp extra, pinned to a pair that
# imports together; tensorflow-probability 0.25 does not import with jax 0.10). Optional: where it cannot install,
# that module is skipped.
"$VENV/bin/python" -m pip install -q jax==0.10.2 tfp-nightly==0.26.0.dev20261027 "${extra_pins[@]}" ||
  echo "setup_env: jax and tfp-nightly did not install; tests/models/test_peers_tfp.py will be skipped"
"$VENV/bin/python" -c "import torch, iwae_kernels; from importlib.metadata import version as v
print('iwae_kernels', iwae_kernels.__version__, 'torch', torch.__version__, 'triton', v('triton'), 'numpy', v('numpy'),
      'cuda' if torch.cuda.is_available() else 'cpu')"
