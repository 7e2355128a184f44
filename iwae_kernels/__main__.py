"""``python -m iwae_kernels``: the paper application's command line (iwae_kernels.app.cli)."""

import sys

try:
    from iwae_kernels.app.cli import main
except ModuleNotFoundError as missing:  # the app's extra dependencies; the library itself needs neither
    if missing.name not in ("tqdm", "matplotlib"):
        raise
    sys.exit(f"error: the command line needs {missing.name}: pip install 'iwae_kernels[app]'")

sys.exit(main())
