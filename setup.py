"""The optional CUDA extension (metadata: pyproject.toml). Install: pip install -e .[test]

The CUDA backend (csrc/) is built with torch.utils.cpp_extension when nvcc and a CUDA build of torch are
present; that needs torch at build time, so use `pip install --no-build-isolation -e .`.
    IWAE_KERNELS_BUILD_CUDA=1  build it, and fail loudly if it cannot be built
    IWAE_KERNELS_BUILD_CUDA=0  never build it
    MAX_JOBS                   ninja's parallel compile jobs (default 4)
Without it the package still imports and works (torch and Triton backends); backend="cuda" then says how to
build it, including a just-in-time build (iwae_kernels.cuda_backend.build_extension()).
"""

import os
import runpy
from pathlib import Path

from setuptools import setup

BUILD = runpy.run_path(str(Path(__file__).parent / "iwae_kernels" / "_build.py"))


def cuda_extension():
    """([extension], cmdclass) for the CUDA backend, or ([], {}) when it is not to be built."""
    flag = os.environ.get("IWAE_KERNELS_BUILD_CUDA")
    if flag == "0":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        if flag == "1":
            raise RuntimeError("IWAE_KERNELS_BUILD_CUDA=1 needs torch at build time: pip install --no-build-isolation -e .")
        return [], {}
    if flag != "1" and (CUDA_HOME is None or torch.version.cuda is None):
        return [], {}
    os.environ.setdefault("MAX_JOBS", "4")
    extension = CUDAExtension(
        "iwae_kernels._cuda", [f"csrc/{source}" for source in BUILD["SOURCES"]],
        extra_compile_args={"cxx": BUILD["CXX_FLAGS"], "nvcc": BUILD["NVCC_FLAGS"]},
    )
    return [extension], {"build_ext": BuildExtension}


ext_modules, cmdclass = cuda_extension()

# Metadata lives in pyproject.toml; this file only adds the extension when it is to be built.
setup(ext_modules=ext_modules, cmdclass=cmdclass)
