#!/usr/bin/env bash
# The GPU measurement plan for a task lent 15 device-minutes in all (a machine's start costs 1-2 of them): the first
# call fits in 8 minutes of wall time (stage limits at most PLAN_CALL_SECONDS, default 480, the install included)
# and answers, in priority order: (a) versions, device, clocks; (b) `python -m iwae_kernels selftest` and the GPU
# tests of the default path's kernel families (gaussian_sample, log_likelihood, logsumexp, iwae_loss), six pytest
# processes at once; (c) beside them, compute-sanitizer memcheck on a subset of those tests and racecheck on the
# decoder head's and MLP's; (d) bench_loss at k=50 B=128, k=5000 B=128, k=5000 B=1024 (and k=50 B=1024, the same
# grid) against naive and naive+compile in the same run. Later calls: (e) bench_eval (L_5000, 10,000 images) and
# bench_train_step k=50, then the other families' GPU tests, the head at H=200, a profile, and the CUDA C++ build
# with its tests last. Each stage runs under `timeout` and writes its results the moment it ends; on the lent
# machine ($OUT set) every stage's end also repacks $OUT, so a call cut short still returns what it measured. A
# stage whose marker exists is skipped, so a second call continues; a stage starts only if its limit fits in
# what is left of this call. Stages that share a group run at the same time (they cost the longest one's limit).
#
#   bash benchmarks/gpu_plan.sh --dry-run          each stage's call, limit and command, and each call's total
#   bash benchmarks/gpu_plan.sh --commit <sha>     run (or IWAE_KERNELS_COMMIT=<sha>: the tree's real commit, as a
#                                                  copied tree's git metadata can be stale; it is recorded)
#
# The first call, as the `run` tool's command, with timeout_s 540 (the plan stops itself within 480 s) and the sha
# written out (`git rev-parse --short HEAD` here, after committing: the copied tree may carry no git metadata):
#   export PYTHONUNBUFFERED=1; bash benchmarks/gpu_plan.sh --commit SHA
# What comes back under $OUT (3 files): gpu_plan.md (the stage table, then the figures that decide the pending
# design choices: benchmarks/plan_decisions.py), selftest.json, and results.tar.gz (the whole
# benchmarks/results/<device>/ folder: the benchmarks' files, and gpu_plan-<commit>/ with every stage's log, row
# and marker). Before a second call, unpack it into the tree here so the markers travel with it:
#   tar -xzf <files_at>/results.tar.gz -C benchmarks/results
# and run the same command with PLAN_CALL_SECONDS set to what is left of the 15 minutes (a warm machine: about
# 270 s after the first call), e.g. `export PYTHONUNBUFFERED=1 PLAN_CALL_SECONDS=270; bash benchmarks/gpu_plan.sh ...`.
# Commit what it measured under benchmarks/results/<device>/ with the commit, date and command.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
COMMIT=${IWAE_KERNELS_COMMIT:-}
DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --commit) COMMIT=${2:-}; shift ;;
    *) echo "usage: $0 [--dry-run] [--commit SHA]" >&2; exit 2 ;;
  esac
  shift
done
if [ "$DRY_RUN" = 0 ] && [ -z "$COMMIT" ]; then
  echo "gpu_plan: pass the tree's real commit (--commit SHA or IWAE_KERNELS_COMMIT)" >&2
  exit 2
fi
export IWAE_KERNELS_COMMIT=$COMMIT OMP_NUM_THREADS=1   # the benchmarks record this commit instead of git's
BUDGET=${PLAN_CALL_SECONDS:-480}
PYTEST="$PYTHON -m pytest -q -p no:cacheprovider"
DEFAULT_PATH="tests/ops/test_gaussian_sample.py tests/ops/test_log_likelihood.py tests/ops/test_logsumexp.py"
# memcheck: each default-path kernel at one odd shape, the loss's three reduction paths and the split-k fold.
MEMCHECK_K="triton and (reduction_paths or split_k_fold or (kernel_matches_reference and dtype0 and shape2))"
# racecheck: the head's backward partial sums (and its second pass over dh) and the MLP's row tiles. It sees
# shared-memory hazards only: the MLP's scratch rows are global memory, checked by the tests' values.
RACECHECK_K="triton and (backward_overwrites or several_backward or (kernel_matches_reference and dtype0 and \
(shape2 or shape3)))"
SANITIZE="compute-sanitizer --error-exitcode 1 --tool"
REST_OF_OPS="tests/ops/test_decoder_head.py tests/ops/test_decoder_mlp.py tests/ops/test_categorical.py \
tests/ops/test_local_reparam.py"
TORCH_GPU="tests/ops/test_gpu.py tests/ops/test_compile.py tests/ops/test_opcheck.py tests/ops/test_matmul_precision.py \
tests/ops/test_launch_counts.py"

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
VERSIONS="nvidia-smi && nvidia-smi -q -d CLOCK,PERFORMANCE && compute-sanitizer --version | tail -n 1; \
$PYTHON -c 'import sys, torch, triton, numpy; print(sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", \
torch.version.cuda, \"triton\", triton.__version__, \"numpy\", numpy.__version__, torch.cuda.get_device_name(), \
torch.cuda.get_device_capability())'"

# name | time limit (s) | group ("-": alone; stages of one group run at the same time) | command: in priority order.
STAGES=(
  "install|45|-|IWAE_KERNELS_BUILD_CUDA=0 $PYTHON -m pip install --no-deps --no-build-isolation -e ."
  "versions|15|-|$VERSIONS"
  "selftest|75|-|$PYTHON -m iwae_kernels selftest --json \$PLAN/selftest.json"
  "tests_sample_f32|190|check|$PYTEST tests/ops/test_gaussian_sample.py -k dtype0"
  "tests_sample_rest|190|check|$PYTEST tests/ops/test_gaussian_sample.py -k 'not dtype0'"
  "tests_loss_op|190|check|$PYTEST tests/ops/test_log_likelihood.py -k iwae_loss_op"
  "tests_likelihood|190|check|$PYTEST tests/ops/test_log_likelihood.py -k 'not iwae_loss_op'"
  "tests_logsumexp|190|check|$PYTEST tests/ops/test_logsumexp.py"
  "tests_iwae_loss|190|check|$PYTEST tests/ops/test_iwae_loss.py"
  "memcheck|190|check|$SANITIZE memcheck $PYTEST -x $DEFAULT_PATH -k '$MEMCHECK_K'"
  "racecheck|190|check|$SANITIZE racecheck $PYTEST -x tests/ops/test_decoder_head.py tests/ops/test_decoder_mlp.py \
-k '$RACECHECK_K'"
  "bench_loss|150|-|$PYTHON benchmarks/bench_loss.py --k 50 5000 --batch 128 1024 --dim 50"
  "bench_eval|150|-|$PYTHON benchmarks/bench_eval.py --images 10000 --synthetic"
  "bench_train_step|100|-|$PYTHON benchmarks/bench_train_step.py --k 50"
  "tests_rest_of_ops|240|rest|$PYTEST $REST_OF_OPS"
  "tests_torch_gpu|240|rest|$PYTEST $TORCH_GPU"
  "bench_head_h200|120|-|IWAE_KERNELS_BENCH_RESULTS=\$PLAN/head_h200 $PYTHON benchmarks/bench_loss.py --k 50 5000 \
--batch 128 --dim 200"
  "profile|60|-|$PYTHON -c \"\$PROFILE\""
  "probe_host|90|-|$PYTHON benchmarks/probe_host.py"
  "build_cuda|300|-|IWAE_KERNELS_BUILD_CUDA=1 $PYTHON -m pip install --no-deps --no-build-isolation -e ."
  "selftest_cuda|60|-|$PYTHON -m iwae_kernels selftest --backend cuda --json \$PLAN/selftest_cuda.json"
  "tests_cuda|240|-|$PYTEST tests/ops -k cuda"
  "bench_loss_cuda|150|-|IWAE_KERNELS_BENCH_RESULTS=\$PLAN/with_cuda $PYTHON benchmarks/bench_loss.py --k 50 5000 \
--batch 128 1024 --dim 50"
)

# The stages as calls of BUDGET seconds each: "call|cost|name|limit|group|command" lines; a group costs its longest
# stage's limit (each member's cost is what it adds to the group's so far).
calls() {
  local call=1 used=0 group_cost=0 last_group=- stage name limit group command cost
  for stage in "${STAGES[@]}"; do
    IFS='|' read -r name limit group command <<< "$stage"
    if [ "$group" != - ] && [ "$group" = "$last_group" ]; then
      cost=$(( limit > group_cost ? limit - group_cost : 0 ))
    else
      cost=$limit group_cost=0
    fi
    if [ $((used + cost)) -gt "$BUDGET" ]; then
      call=$((call + 1)) used=0 cost=$limit group_cost=0
    fi
    used=$((used + cost)) group_cost=$(( limit > group_cost ? limit : group_cost )) last_group=$group
    printf '%s|%s|%s|%s|%s|%s\n' "$call" "$cost" "$name" "$limit" "$group" "$command"
  done
}

if [ "$DRY_RUN" = 1 ]; then
  calls | while IFS='|' read -r call _ name limit group command; do
    printf '%s (call %s, timeout %ss%s): %s\n' "$name" "$call" "$limit" \
      "$([ "$group" = - ] || echo ", at once with group $group")" "$command"
  done
  calls | awk -F'|' -v budget="$BUDGET" '{ total[$1] += $2; stages[$1] = stages[$1] " " $3 }
    END { for (c = 1; c in total; c++) printf "call %d: %ds of stage limits (budget %ds):%s\n", c, total[c], budget, stages[c] }'
  exit 0
fi

device=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 | tr ' ' '_') || exit 1
results="benchmarks/results/$device"
export PLAN="$results/gpu_plan-$COMMIT"
mkdir -p "$PLAN"

# gpu_plan.md: the stage table and the figures that decide the pending design choices; on the lent machine, copied
# with selftest.json and a tar of the device's results into $OUT (written aside, then moved: concurrent stages).
pack() {
  {
    echo "# GPU plan on $device"
    echo
    echo "- commit $COMMIT; updated $(date -u +%Y-%m-%dT%H:%MZ); logs: $PLAN/<stage>.log"
    echo
    echo "| stage | exit | seconds | last line |"
    echo "| --- | --- | --- | --- |"
    for stage in "${STAGES[@]}"; do cat "$PLAN/${stage%%|*}.row" 2>/dev/null; done
    echo
    $PYTHON benchmarks/plan_decisions.py "$results" 2>&1
  } > "$PLAN/gpu_plan.md.$BASHPID" && mv "$PLAN/gpu_plan.md.$BASHPID" "$PLAN/gpu_plan.md"
  [ -n "${OUT:-}" ] || return 0
  cp "$PLAN/gpu_plan.md" "$OUT/gpu_plan.md.$BASHPID" && mv "$OUT/gpu_plan.md.$BASHPID" "$OUT/gpu_plan.md"
  [ -e "$PLAN/selftest.json" ] && cp "$PLAN/selftest.json" "$OUT/selftest.json"
  tar -czf "$OUT/results.tar.gz.$BASHPID" -C benchmarks/results "$device" && \
    mv "$OUT/results.tar.gz.$BASHPID" "$OUT/results.tar.gz"
}

run_stage() {  # name limit command: run it, then its row, marker and the packed results
  local name=$1 limit=$2 command=$3 begin=$SECONDS rc
  timeout --kill-after=10 "$limit" bash -c "$command" > "$PLAN/$name.log" 2>&1
  rc=$?
  printf '| %s | %s | %s | %s |\n' "$name" "$rc" "$((SECONDS - begin))" \
    "$(grep -v '^\s*$' "$PLAN/$name.log" | tail -n 1 | tr '|' '/' | head -c 200)" > "$PLAN/$name.row"
  touch "$PLAN/$name.done"  # even when it failed or timed out (exit 124): delete the marker to run it again
  echo "== $name: exit $rc in $((SECONDS - begin))s: $(tail -n 1 "$PLAN/$name.log" | head -c 200)"
  pack
}

start=$SECONDS
pending_group=- group_end=0
while IFS='|' read -r _ _ name limit group command; do
  [ -e "$PLAN/$name.done" ] && continue
  if [ "$group" = - ] || [ "$group" != "$pending_group" ]; then
    wait  # the previous group's stages end before the next stage starts
    pending_group=$group group_end=0
  fi
  # A group member must end by the time the group's longest stage started so far ends, or by its own limit.
  ends=$(( SECONDS - start + limit ))
  if [ "$ends" -gt "$BUDGET" ] && [ "$ends" -gt $((group_end + 5)) ]; then
    wait
    echo "gpu_plan: $name needs up to ${limit}s, $((BUDGET - SECONDS + start))s left in this call: run again"
    exit 0
  fi
  group_end=$(( ends > group_end ? ends : group_end ))
  echo "== $name (timeout ${limit}s): $command"
  if [ "$group" = - ]; then
    run_stage "$name" "$limit" "$command" < /dev/null
  else
    run_stage "$name" "$limit" "$command" < /dev/null &
  fi
done < <(calls)
wait
echo "gpu_plan: every stage has run"
