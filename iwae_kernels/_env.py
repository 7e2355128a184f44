"""What this process can run: is Triton installed, and is it interpreting (TRITON_INTERPRET=1)? Imports nothing
of the package, so the kernel layer can ask without importing the dispatcher."""

import importlib.util
import os

_TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None


def triton_available():
    return _TRITON_AVAILABLE


def triton_interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
