#!/usr/bin/env bash
# The GPU measurement plan for a machine lent for at most 30 minutes, run as several calls of at most 10 minutes:
# stages in priority order, each under `timeout`; a stage whose marker exists in the results folder is skipped,
# so calling the script again continues where the last call stopped. Each stage writes its results when it ends.
# A stage is started only if its time limit fits in what is left of this call (PLAN_CALL_SECONDS, default 570).
#
#   bash benchmarks/gpu_plan.sh --commit <sha>      (or IWAE_KERNELS_COMMIT=<sha>: the tree's real commit, since a
#                                                   copied tree's git metadata can be stale; it is recorded)
#   bash benchmarks/gpu_plan.sh --dry-run           (lists the stages and their commands; needs no GPU)
#
# Stages: versions and clocks; build (with the CUDA extension); the GPU tests of the kernel families changed
# since the last GPU run (PLAN_SINCE, default the commit of the committed H100 results) plus the backend="cuda"
# and torch.compile tests; bench_loss at the target shapes; bench_eval (warmed up); bench_train_step; a
# torch.profiler kernel table of one forward+backward; probe_host (where a small loss's host time goes);
# compute-sanitizer memcheck and racecheck on five kernel families' tests. Results: benchmarks/results/<device>/ (the
# benchmarks' files) and its gpu_plan/ folder (logs, markers, gpu_plan.md: stage, exit status, seconds, last line).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
COMMIT=${IWAE_KERNELS_COMMIT:-}
DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --commit) COMMIT=$2; shift ;;
    *) echo "usage: $0 [--dry-run] [--commit SHA]" >&2; exit 2 ;;
  esac
  shift
done
if [ "$DRY_RUN" = 0 ] && [ -z "$COMMIT" ]; then
  echo "gpu_plan: pass the tree's real commit (--commit SHA or IWAE_KERNELS_COMMIT)" >&2
  exit 2
fi
export IWAE_KERNELS_COMMIT=$COMMIT OMP_NUM_THREADS=1   # the benchmarks record this commit instead of git's
BUDGET=${PLAN_CALL_SECONDS:-570}
# pytest-xdist, where installed, spreads the GPU tests over processes (Triton compiles on the CPU).
XDIST=$($PYTHON -c "import xdist" 2>/dev/null && echo "-n 8")
# The commit the committed H100 results were measured at, read from them (empty when unreadable: every family).
H100_RESULTS=benchmarks/results/NVIDIA_H100_80GB_HBM3/bench_loss.json
SINCE=${PLAN_SINCE:-$($PYTHON -c "import json, sys; print(json.load(open(sys.argv[1]))['git_commit'])" "$H100_RESULTS" 2>/dev/null)}

# The kernel families changed since SINCE (every family when git cannot tell), as their test files.
changed_tests() {
  local files family tests=()
  files=$([ -n "$SINCE" ] && git diff --name-only "$SINCE" -- iwae_kernels/ops csrc 2>/dev/null) || files="iwae_kernels/ops/utils.py"
  for family in gaussian_sample log_likelihood logsumexp decoder_head decoder_mlp categorical local_reparam; do
    if grep -q -e "ops/$family.py" -e "ops/utils.py" -e "csrc/" <<< "$files"; then
      tests+=("tests/ops/test_$family.py")
    fi
  done
  echo "${tests[@]}"
}

export PROFILE='
import torch, iwae_kernels as ik
from iwae_kernels.models import paper_model
from torch.profiler import ProfilerActivity, profile
model, x = paper_model(1).cuda(), torch.bernoulli(torch.full((128, 784), 0.3, device="cuda"))
for _ in range(2):
    model.loss(x, k=50).backward()  # warm-up: compilation and autotuning stay out of the table
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    model.loss(x, k=50).backward()
    torch.cuda.synchronize()
print("one forward+backward of the 1-layer paper model, k=50, B=128; Calls = launches")
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40))
'
# (the decoder head's backward shares partial sums, and the decoder MLP scratch rows, between a program's threads:
# racecheck checks their barriers, which the interpreter's one-program-at-a-time runs cannot)
SANITIZED="tests/ops/test_gaussian_sample.py tests/ops/test_log_likelihood.py tests/ops/test_logsumexp.py \
tests/ops/test_decoder_head.py tests/ops/test_decoder_mlp.py -k 'kernel or noise or partial'"

# name, time limit (s), command: in priority order.
STAGES=(
  "versions|60|nvidia-smi && nvidia-smi -q -d CLOCK,PERFORMANCE && $PYTHON -c 'import torch, triton; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"triton\", triton.__version__)'"
  "build|480|IWAE_KERNELS_BUILD_CUDA=1 $PYTHON -m pip install --no-deps --no-build-isolation -e ."
  "tests|540|$PYTHON -m pytest -q $XDIST $(changed_tests) tests/ops/test_gpu.py tests/ops/test_iwae_loss.py tests/ops/test_compile.py tests/ops/test_opcheck.py tests/ops/test_matmul_precision.py"
  "bench_loss|540|$PYTHON benchmarks/bench_loss.py --batch 128 1024 20 --k 50 500 5000 --dim 50"
  "bench_eval|420|$PYTHON benchmarks/bench_eval.py --images 10000 --synthetic"
  "bench_train_step|360|$PYTHON benchmarks/bench_train_step.py --k 50"
  "profile|180|$PYTHON -c \"\$PROFILE\""
  "probe_host|180|$PYTHON benchmarks/probe_host.py"
  "memcheck|420|compute-sanitizer --tool memcheck --error-exitcode 1 $PYTHON -m pytest -q -x $SANITIZED"
  "racecheck|420|compute-sanitizer --tool racecheck --error-exitcode 1 $PYTHON -m pytest -q -x $SANITIZED"
)

if [ "$DRY_RUN" = 1 ]; then
  for stage in "${STAGES[@]}"; do
    IFS='|' read -r name limit command <<< "$stage"
    printf '%s (timeout %ss): %s\n' "$name" "$limit" "$command"
  done
  exit 0
fi

device=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 | tr ' ' '_') || exit 1
plan="benchmarks/results/$device/gpu_plan"
mkdir -p "$plan"
# On the lent machine ($OUT is the folder that comes back), every exit packs the device's results for fetching.
[ -n "${OUT:-}" ] && trap 'tar -czf "$OUT/results.tar.gz" "benchmarks/results/$device"' EXIT
start=$SECONDS
for stage in "${STAGES[@]}"; do
  IFS='|' read -r name limit command <<< "$stage"
  [ -e "$plan/$name.done" ] && continue
  if [ $((SECONDS - start + limit)) -gt "$BUDGET" ]; then
    echo "gpu_plan: $name needs up to ${limit}s, $((BUDGET - SECONDS + start))s left in this call: run again"
    exit 0
  fi
  echo "== $name (timeout ${limit}s): $command"
  begin=$SECONDS
  timeout --kill-after=10 "$limit" bash -c "$command" > "$plan/$name.log" 2>&1
  rc=$?
  tail -n 3 "$plan/$name.log"
  printf '| %s | %s | %s | %s | %s |\n' "$name" "$rc" "$((SECONDS - begin))" "$COMMIT" \
    "$(grep -v '^\s*$' "$plan/$name.log" | tail -n 1 | tr '|' '/' | head -c 200)" >> "$plan/rows"
  touch "$plan/$name.done"  # even when it failed or timed out (exit 124): delete the marker to run it again
  {
    echo "# GPU plan on $device"
    echo
    echo "- commit $COMMIT; date $(date -u +%Y-%m-%dT%H:%MZ); logs: <stage>.log beside this file"
    echo
    echo "| stage | exit | seconds | commit | last line |"
    echo "| --- | --- | --- | --- | --- |"
    cat "$plan/rows"
  } > "$plan/gpu_plan.md"
done
echo "gpu_plan: every stage has run"
