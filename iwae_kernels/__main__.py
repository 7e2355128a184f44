"""``python -m iwae_kernels``: ``selftest`` (iwae_kernels.selftest, needs only the library's dependencies), else
the paper application's command line (iwae_kernels.app.cli)."""

import sys

if sys.argv[1:2] == ["selftest"]:
    from iwae_kernels.selftest import main as selftest

    sys.exit(selftest(sys.argv[2:]))

try:
    from iwae_kernels.app.cli import main
except ModuleNotFoundError as missing:  # the app's extra dependencies; the library itself needs neither
    if missing.name not in ("tqdm", "matplotlib"):
        raise
    sys.exit(f"error: the command line needs {missing.name}: pip install 'iwae_kernels[app]'")

sys.exit(main())
