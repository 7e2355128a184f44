#!/usr/bin/env bash
# Everything that needs a GPU, for anyone who has one: build the CUDA backend, run the whole test suite on the
# GPU (compiled Triton and CUDA against the float64 torch reference), then compute-sanitizer memcheck and
# racecheck over the kernel tests. Writes a summary to benchmarks/results/<device>/gpu_check.md.
#   bash benchmarks/gpu_check.sh            (uses python3; set PYTHON to choose another)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
IWAE_KERNELS_BUILD_CUDA=1 "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . || exit 1
device=$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))") || exit 1
results="benchmarks/results/$device"
mkdir -p "$results"
log="$results/gpu_check.log"
: > "$log"
status=0
run() {  # run NAME CMD...: log it, keep its pytest summary line
  echo "== $1: ${*:2}" | tee -a "$log"
  "${@:2}" 2>&1 | tee -a "$log" | tail -n 1 > "$results/.last"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || status=1
  printf '| %s | `%s` | %s | %s |\n' "$1" "${*:2}" "$rc" "$(cat "$results/.last")" >> "$results/.rows"
}
rm -f "$results/.rows"
run tests "$PYTHON" -m pytest -q tests
kernel_tests=(tests/ops/test_gaussian_sample.py tests/ops/test_log_likelihood.py tests/ops/test_logsumexp.py -k "kernel or noise")
if command -v compute-sanitizer >/dev/null; then
  run memcheck compute-sanitizer --tool memcheck --error-exitcode 1 "$PYTHON" -m pytest -q -x "${kernel_tests[@]}"
  run racecheck compute-sanitizer --tool racecheck --error-exitcode 1 "$PYTHON" -m pytest -q -x "${kernel_tests[@]}"
else
  echo "| compute-sanitizer | not found on this machine | - | not run |" >> "$results/.rows"
fi
{
  echo "# GPU check: $device"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "- versions: $("$PYTHON" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)")"
  echo "- command: bash benchmarks/gpu_check.sh (full log: gpu_check.log)"
  echo
  echo "| step | command | exit | result |"
  echo "| --- | --- | --- | --- |"
  cat "$results/.rows"
} > "$results/gpu_check.md"
rm -f "$results/.rows" "$results/.last"
cat "$results/gpu_check.md"
exit $status
