#!/usr/bin/env bash
# Compile-only check of csrc/ (CI has no GPU): nvcc builds every .cu for the architectures setup.py uses, and
# binding.cpp is syntax-checked against the installed torch's headers. Kernels that do not build cannot land.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
command -v nvcc >/dev/null || { echo "compile_cuda: nvcc not found (it is on the CI machine); install a CUDA toolkit"; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# Our flags plus the ones torch's extension build adds (no implicit half/bf16 conversions, relaxed constexpr).
mapfile -t nvcc_flags < <("$PYTHON" -c "import runpy; from torch.utils.cpp_extension import COMMON_NVCC_FLAGS as torch_flags; [print(f) for f in runpy.run_path('iwae_kernels/_build.py')['NVCC_FLAGS'] + torch_flags]")
# Both standards a torch build may ask for (cpp_extension picks one per torch version).
pids=()
for standard in c++17 c++20; do
  for source in csrc/*.cu; do
    nvcc -std=$standard "${nvcc_flags[@]}" -c "$source" -o "$out/$standard-$(basename "$source").o" &
    pids+=($!)
  done
done
for pid in "${pids[@]}"; do wait "$pid"; done  # a bare `wait` would hide a failed compile
# binding.cpp: a CPU build of torch ships the headers but not the generated CUDA config header, and the CUDA
# runtime headers come from the toolkit; both are supplied for a syntax check only.
cuda_include=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")/include
for candidate in "$cuda_include" /usr/local/cuda/include /usr/local/cuda-*/include; do
  [ -f "$candidate/cuda_runtime_api.h" ] && { cuda_include=$candidate; break; }
done
mkdir -p "$out/stub/c10/cuda/impl"
echo '#define C10_CUDA_BUILD_SHARED_LIBS' > "$out/stub/c10/cuda/impl/cuda_cmake_macros.h"
mapfile -t torch_includes < <("$PYTHON" -c "from torch.utils.cpp_extension import include_paths; import sysconfig; [print('-I' + p) for p in include_paths() + [sysconfig.get_paths()['include']]]")
g++ -std=c++20 -fsyntax-only -I"$out/stub" "${torch_includes[@]}" -I"$cuda_include" -DTORCH_EXTENSION_NAME=_cuda csrc/binding.cpp
echo "compile_cuda: $(ls csrc/*.cu | wc -l) CUDA files built for sm_80/sm_90 (C++17 and C++20), binding.cpp syntax-checked"
