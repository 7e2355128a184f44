"""What the CUDA backend compiles and how: shared by setup.py and the JIT build. Imports nothing."""

SOURCES = ["binding.cpp", "gaussian_sample.cu", "log_likelihood.cu", "logsumexp.cu"]
# No -std: torch.utils.cpp_extension picks the C++ standard the installed torch's headers need.
CXX_FLAGS = ["-O3"]
# sm_80 (A100), sm_90 (H100/H200), and PTX so newer GPUs can JIT it.
NVCC_FLAGS = ["-O3", "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
              "-gencode=arch=compute_90,code=compute_90"]
