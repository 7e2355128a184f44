#!/usr/bin/env bash
# The GPU measurement plan for a task lent 15 device-minutes in all (a machine's start costs 1-2 of them): the first
# call fits in 8 minutes of wall time (stage limits at most PLAN_CALL_SECONDS, default 480, the install included)
# and answers, in priority order: (a) versions, device, clocks; (b) `python -m iwae_kernels selftest` and the GPU
# tests of the default path's kernel families (gaussian_sample, log_likelihood, logsumexp, iwae_loss), six pytest
# processes at once; (c) beside them, compute-sanitizer memcheck on a subset of those tests and racecheck on the
# decoder head's and MLP's; (d) bench_loss at k=50 B=128, k=5000 B=128, k=5000 B=1024 (and k=50 B=1024, the same
# grid) against naive and naive+compile in the same run. Later calls: (e) bench_eval (L_5000, 10,000 images), the
# conv decoder's CUDA memory peak (eval_memory.py), bench_train_step k=50 and bench_pyro (Pyro's SVI step through
# ImportanceWeightedELBO against RenyiELBO; says so and measures nothing where Pyro is not installed), then the
# other families' GPU tests, the head at H=200, a profile, and the CUDA C++ build with its tests last. Each stage
# runs under `timeout` and
# writes its results the moment it ends; on the lent machine ($OUT set) every stage's end also repacks $OUT, so a
# call cut short still returns what it measured. A stage whose marker exists is skipped, so a second call
# continues; a stage starts only if its limit fits in what is left of this call. Stages that share a group run at
# the same time (they cost the longest one's limit).
#
#   bash benchmarks/gpu_plan.sh --dry-run          each stage's call, limit and command, and each call's total
#   bash benchmarks/gpu_plan.sh --commit <sha>     run (or IWAE_KERNELS_COMMIT=<sha>: the tree's real commit, as a
#                                                  copied tree's git metadata can be stale; it is recorded)
#   bash benchmarks/gpu_plan.sh --rehearse         every stage with stand-ins for the GPU, on a CPU (below)
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
#
# The rehearsal, on a machine with no GPU (CI runs it, .ci/run; 56-87 s on 2 cores, half of it the check group's
# eight pytest collections at once):
#   PYTHON=.venv/bin/python bash benchmarks/gpu_plan.sh --rehearse [--only NAME,...] [--stage 'name|limit|group|cmd']
# runs every stage, the first call's and the later calls', through this same script (device detection, the results
# folder, stages, groups, rows, markers, pack() into $OUT), with stand-ins first on PATH, each saying "[rehearsal]":
# nvidia-smi (the device "Rehearsal CPU"), compute-sanitizer (drops its options, runs the wrapped command) and the
# plan's python, which runs `-m pytest` with --collect-only (a selection that collects nothing exits 5, a failure),
# `-m pip install` with --dry-run (installs nothing; the CUDA build's metadata with IWAE_KERNELS_BUILD_CUDA=0),
# `-m iwae_kernels selftest` for real on the CPU (about 7 s; with --backend cuda only up to its argparse), a script
# up to its argparse with the plan's exact arguments (a missing script or a rejected argument fails), `python -c`
# code's compile and import statements, and plan_decisions.py for real. Results go to a temporary root, never
# benchmarks/results/; $OUT (when unset, a fresh temporary folder that it prints) gets the same three files. It
# exits 1 when a stage fails or collects nothing, one of the three files is missing, $OUT holds any other, or a
# stage's row or marker is missing from them; its last line sums it up. --only runs the named stages alone (a
# comma-separated list); --stage appends a stage (to try one before adding it; tests/integration/test_gpu_plan.py).
# What it cannot tell: whether the kernels compile and pass on the GPU, sanitizer findings, timings, and whether a
# stage ends within its limit there. The parametrizations do not depend on the device, so a selection collects the
# same test ids there, but for modules that skip themselves at collection (test_out_of_bounds.py runs on a CPU only).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
COMMIT=${IWAE_KERNELS_COMMIT:-}
DRY_RUN=0 REHEARSE=0 ONLY= EXTRA_STAGES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --commit) COMMIT=${2:-}; shift ;;
    --rehearse) REHEARSE=1 ;;
    --only) ONLY=",${2:-},"; shift ;;
    --stage) EXTRA_STAGES+=("${2:-}"); shift ;;
    *) echo "usage: $0 [--dry-run | --rehearse] [--commit SHA] [--only NAME,...] [--stage 'name|limit|group|cmd']" >&2
       exit 2 ;;
  esac
  shift
done
[ "$REHEARSE" = 0 ] || COMMIT=${COMMIT:-rehearsal}
if [ "$DRY_RUN" = 0 ] && [ -z "$COMMIT" ]; then
  echo "gpu_plan: pass the tree's real commit (--commit SHA or IWAE_KERNELS_COMMIT)" >&2
  exit 2
fi
export IWAE_KERNELS_COMMIT=$COMMIT OMP_NUM_THREADS=1   # the benchmarks record this commit instead of git's
BUDGET=${PLAN_CALL_SECONDS:-480}
RESULTS_ROOT=benchmarks/results
REHEARSAL= PACK_LOCK=
trap 'rm -rf "$REHEARSAL" "$PACK_LOCK"' EXIT

# The rehearsal's stand-ins (see the header): written into a temporary folder that goes first on PATH.
write_standins() {  # folder
  mkdir -p "$1"
  cat > "$1/nvidia-smi" <<'STANDIN'
#!/usr/bin/env bash
echo "[rehearsal] stand-in for nvidia-smi $*" >&2
case " $* " in
  *" --query-gpu=name "*) echo "Rehearsal CPU" ;;
  *) echo "[rehearsal] stand-in for nvidia-smi: no GPU here" ;;
esac
STANDIN
  cat > "$1/compute-sanitizer" <<'STANDIN'
#!/usr/bin/env bash
# Drops compute-sanitizer's own options (each "--option value" or "--option=value": the plan passes no bare flag).
tool=memcheck
case "${1:-}" in --version|--help) echo "[rehearsal] stand-in for compute-sanitizer $1"; exit 0 ;; esac
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do
  case "$1" in
    --tool) tool=${2:-} ;;
    --tool=*) tool=${1#--tool=} ;;
  esac
  case "$1" in
    *=*) shift ;;
    *) shift 2 || { echo "[rehearsal] compute-sanitizer: $1 lacks its value" >&2; exit 1; } ;;
  esac
done
[ $# -gt 0 ] || { echo "[rehearsal] stand-in for compute-sanitizer: no command to run" >&2; exit 1; }
echo "[rehearsal] stand-in for compute-sanitizer --tool $tool: runs the command without it: $*"
exec "$@"
STANDIN
  cat > "$1/python" <<'STANDIN'
#!/usr/bin/env bash
# The plan's python: what needs CUDA is checked, not run (gpu_plan.sh's header says how).
real=${GPU_PLAN_REAL_PYTHON:?}
check="$(dirname "$0")/rehearse_check.py"
say() { echo "[rehearsal] stand-in for python $*"; }
case "${1:-} ${2:-} ${3:-}" in
  "-m pytest "*)
    say "-m pytest: collects its selection only (--collect-only; nothing collected exits 5)"
    exec "$real" "$@" --collect-only ;;
  "-m pip install")
    note=
    [ "${IWAE_KERNELS_BUILD_CUDA:-}" != 1 ] || note="; the CUDA build needs nvcc: its metadata without it"
    say "-m pip install: pip install --dry-run with the plan's arguments, installs nothing$note"
    IWAE_KERNELS_BUILD_CUDA=0 exec "$real" -m pip install --dry-run "${@:4}" ;;
  "-m iwae_kernels selftest")
    if [[ " $* " == *" --backend cuda "* ]]; then
      say "-m iwae_kernels selftest --backend cuda: needs CUDA, its arguments parsed only"
      exec "$real" "$check" module iwae_kernels "${@:3}"
    fi
    say "-m iwae_kernels selftest: runs for real on the CPU"
    exec "$real" "$@" ;;
  "-c "*)
    say "-c: compiles the code and runs its import statements only (the rest needs CUDA)"
    exec "$real" "$check" imports "$2" ;;
  *.py*)
    case "$1" in */plan_decisions.py) exec "$real" "$@" ;; esac
    [ -f "$1" ] || { say "$1: FAILED: there is no such script"; exit 2; }
    say "$1: runs it up to its argparse with the plan's arguments (the run needs CUDA)"
    exec "$real" "$check" script "$@" ;;
esac
say "$*: FAILED: the rehearsal has no stand-in for this command (add one in gpu_plan.sh)"
exit 3
STANDIN
  cat > "$1/rehearse_check.py" <<'STANDIN'
"""[rehearsal] Checks that a stage's python command can start, without running what needs CUDA.

    rehearse_check.py imports CODE              compile python -c's code, run its import statements only
    rehearse_check.py script PATH ARGS...       run the script until it parses ARGS with argparse, then stop
    rehearse_check.py module NAME ARGS...       the same for python -m NAME ARGS...
"""
import argparse
import ast
import os
import runpy
import sys

mode, target, *args = sys.argv[1:]
if mode == "imports":
    tree = ast.parse(target, "<python -c>")
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    exec(compile(ast.Module(body=imports, type_ignores=[]), "<python -c>", "exec"), {})
    print(f"[rehearsal] python -c: compiled; its {len(imports)} top-level import statement(s) ran, nothing else")
    sys.exit(0)
parse_args = argparse.ArgumentParser.parse_args


def parse_and_stop(self, args=None, namespace=None):
    parsed = parse_args(self, args, namespace)  # an argument it does not accept exits 2 here
    print(f"[rehearsal] {target}: its argparse accepted {sys.argv[1:]}: {parsed}; stopped there")
    sys.exit(0)


argparse.ArgumentParser.parse_args = parse_and_stop
sys.argv = [target, *args]
if mode == "script":
    sys.path[0] = os.path.dirname(os.path.abspath(target))
    runpy.run_path(target, run_name="__main__")
else:
    runpy.run_module(target, run_name="__main__", alter_sys=True)
print(f"[rehearsal] {target}: parsed no arguments with argparse, and ran to its end on the CPU")
STANDIN
  chmod +x "$1/nvidia-smi" "$1/compute-sanitizer" "$1/python"
}

if [ "$REHEARSE" = 1 ] && [ "$DRY_RUN" = 0 ]; then
  rehearsal_start=$SECONDS
  REHEARSAL=$(mktemp -d "${TMPDIR:-/tmp}/gpu_plan_rehearsal.XXXXXX") || exit 1
  write_standins "$REHEARSAL/bin"
  case "$PYTHON" in
    */*) real_python="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")" ;;  # a venv's: links not resolved
    *) real_python=$(command -v "$PYTHON") ;;
  esac
  [ -x "$real_python" ] || { echo "gpu_plan: no python at $PYTHON" >&2; exit 2; }
  export PATH="$REHEARSAL/bin:$PATH" GPU_PLAN_REAL_PYTHON=$real_python
  PYTHON=$REHEARSAL/bin/python
  RESULTS_ROOT=$REHEARSAL/results
  export IWAE_KERNELS_BENCH_RESULTS=$RESULTS_ROOT  # whatever does run writes there, not into benchmarks/results
  if [ -z "${OUT:-}" ]; then
    OUT=$(mktemp -d "${TMPDIR:-/tmp}/gpu_plan_rehearsal_out.XXXXXX") || exit 1
  fi
  mkdir -p "$OUT"
  if [ -n "$(ls -A "$OUT")" ]; then echo "gpu_plan: \$OUT ($OUT) must be empty for a rehearsal" >&2; exit 2; fi
  echo "[rehearsal] PYTHON $real_python behind a stand-in; results under $RESULTS_ROOT; \$OUT: $OUT"
fi
PYTEST="$PYTHON -m pytest -q -p no:cacheprovider"
export PYTHON PYTEST  # for the commands of --stage
DEFAULT_PATH="tests/ops/test_gaussian_sample.py tests/ops/test_log_likelihood.py tests/ops/test_logsumexp.py"
# The -k selections name the tests' ids (float32, k5-B3-D17: tests/conftest.py). -k matches substrings (k5-B3-D17
# would also select a k15-B3-D170), so tests/integration/test_gpu_plan.py checks what each one collects.
# memcheck: each default-path kernel at one odd shape in float32 (gaussian_sample's k5-B3-D17 with every layout,
# prior and estimator: 24 tests; both likelihoods at k3-B5-P33; both logsumexp ops at k7-B5), the loss's three
# reduction paths and the split-k fold: 42 tests.
MEMCHECK_K="triton and (reduction_paths or split_k_fold or (kernel_matches_reference and float32 and \
(k5-B3-D17 or k3-B5-P33 or k7-B5)))"
# racecheck: the head's backward partial sums (and its second pass over dh) and the MLP's row tiles (two shapes each,
# in float32): 9 tests. It sees shared-memory hazards only: the MLP's scratch rows are global memory, checked by the
# tests' values.
RACECHECK_K="triton and (backward_overwrites or several_backward or (kernel_matches_reference and float32 and \
(k2-B20-H40-P100 or k40-B30-H37-P70 or k4-B3-D20-H9-H40-P130 or k7-B11-D5-H21-H19-P37)))"
# The lent machine reaches no network: pip must not look for an index or a newer pip (its retries could outlast
# the stage's limit after the install itself is done).
PIP_OFFLINE="--no-index --disable-pip-version-check"
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
  "install|45|-|IWAE_KERNELS_BUILD_CUDA=0 $PYTHON -m pip install $PIP_OFFLINE --no-deps --no-build-isolation -e ."
  "versions|15|-|$VERSIONS"
  "selftest|75|-|$PYTHON -m iwae_kernels selftest --json \$PLAN/selftest.json"
  "tests_sample_f32|190|check|$PYTEST tests/ops/test_gaussian_sample.py -k float32"
  "tests_sample_rest|190|check|$PYTEST tests/ops/test_gaussian_sample.py -k 'not float32'"
  "tests_loss_op|190|check|$PYTEST tests/ops/test_log_likelihood.py -k iwae_loss_op"
  "tests_likelihood|190|check|$PYTEST tests/ops/test_log_likelihood.py -k 'not iwae_loss_op'"
  "tests_logsumexp|190|check|$PYTEST tests/ops/test_logsumexp.py"
  "tests_iwae_loss|190|check|$PYTEST tests/ops/test_iwae_loss.py"
  "memcheck|190|check|$SANITIZE memcheck $PYTEST -x $DEFAULT_PATH -k '$MEMCHECK_K'"
  "racecheck|190|check|$SANITIZE racecheck $PYTEST -x tests/ops/test_decoder_head.py tests/ops/test_decoder_mlp.py \
-k '$RACECHECK_K'"
  "bench_loss|150|-|$PYTHON benchmarks/bench_loss.py --k 50 5000 --batch 128 1024 --dim 50"
  "bench_eval|150|-|$PYTHON benchmarks/bench_eval.py --images 10000 --synthetic"
  "eval_memory|60|-|$PYTHON benchmarks/eval_memory.py --batch 100 --budget-mib 512 && \
$PYTHON benchmarks/eval_memory.py --decoder attention --size 32 --batch 100 --budget-mib 512"
  "bench_train_step|100|-|$PYTHON benchmarks/bench_train_step.py --k 50"
  "bench_pyro|90|-|$PYTHON benchmarks/bench_pyro.py --k 50 500"
  "tests_rest_of_ops|240|rest|$PYTEST $REST_OF_OPS"
  "tests_torch_gpu|240|rest|$PYTEST $TORCH_GPU"
  "bench_head_h200|120|-|IWAE_KERNELS_BENCH_RESULTS=\$PLAN/head_h200 $PYTHON benchmarks/bench_loss.py --k 50 5000 \
--batch 128 --dim 200"
  "profile|60|-|$PYTHON -c \"\$PROFILE\""
  "probe_host|90|-|$PYTHON benchmarks/probe_host.py"
  "build_cuda|300|-|IWAE_KERNELS_BUILD_CUDA=1 $PYTHON -m pip install $PIP_OFFLINE --no-deps --no-build-isolation -e ."
  "selftest_cuda|60|-|$PYTHON -m iwae_kernels selftest --backend cuda --json \$PLAN/selftest_cuda.json"
  "tests_cuda|240|-|$PYTEST tests/ops -k cuda"
  "bench_loss_cuda|150|-|IWAE_KERNELS_BENCH_RESULTS=\$PLAN/with_cuda $PYTHON benchmarks/bench_loss.py --k 50 5000 \
--batch 128 1024 --dim 50"
)
STAGES+=(${EXTRA_STAGES[@]+"${EXTRA_STAGES[@]}"})
selected() { [ -z "$ONLY" ] || [[ "$ONLY" == *",$1,"* ]]; }  # name: whether --only (if given) names it

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

device=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 | tr ' ' '_')
if [ -z "$device" ]; then echo "gpu_plan: nvidia-smi names no GPU" >&2; exit 1; fi
results="$RESULTS_ROOT/$device"
export PLAN="$results/gpu_plan-$COMMIT"
mkdir -p "$PLAN" || exit 1
[ -z "${OUT:-}" ] || mkdir -p "$OUT" || exit 1
PACK_LOCK=$(mktemp "${TMPDIR:-/tmp}/gpu_plan_pack.XXXXXX") || exit 1

# gpu_plan.md: the stage table and the figures that decide the pending design choices; on the lent machine, copied
# with selftest.json and a tar of the device's results into $OUT (written aside, then moved). Concurrent stages'
# packs take turns (flock, where there is one): otherwise each one's temporary files land in the others' tars, and
# a call cut short could leave up to eight of them in $OUT, which returns 8 files at most.
pack() (
  command -v flock > /dev/null && flock 9
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
  [ -n "${OUT:-}" ] || exit 0
  cp "$PLAN/gpu_plan.md" "$OUT/gpu_plan.md.$BASHPID" && mv "$OUT/gpu_plan.md.$BASHPID" "$OUT/gpu_plan.md"
  [ ! -e "$PLAN/selftest.json" ] || cp "$PLAN/selftest.json" "$OUT/selftest.json"
  # GNU tar exits 1 when a file changed as it read it (a running stage's log): the archive is whole all the same.
  tar -czf "$OUT/results.tar.gz.$BASHPID" -C "$RESULTS_ROOT" "$device"
  if [ $? -le 1 ]; then
    mv "$OUT/results.tar.gz.$BASHPID" "$OUT/results.tar.gz"
  else
    rm -f "$OUT/results.tar.gz.$BASHPID"
  fi
) 9> "$PACK_LOCK"

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
pending_group=- group_end=0 stopped=
while IFS='|' read -r _ _ name limit group command; do
  selected "$name" || continue
  [ -e "$PLAN/$name.done" ] && continue
  if [ "$group" = - ] || [ "$group" != "$pending_group" ]; then
    wait  # the previous group's stages end before the next stage starts
    pending_group=$group group_end=0
  fi
  # A group member must end by the time the group's longest stage started so far ends, or by its own limit.
  ends=$(( SECONDS - start + limit ))
  if [ "$ends" -gt "$BUDGET" ] && [ "$ends" -gt $((group_end + 5)) ]; then
    stopped="gpu_plan: $name needs up to ${limit}s, $((BUDGET - SECONDS + start))s left in this call: run again"
    break
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
echo "${stopped:-gpu_plan: every stage has run}"
[ "$REHEARSE" = 1 ] || exit 0

# The rehearsal's verdict: every selected stage ran and exited 0, with its row and marker in what $OUT holds.
problems=() ran=0
listing=$(tar -tzf "$OUT/results.tar.gz" 2>/dev/null)
for stage in "${STAGES[@]}"; do
  IFS='|' read -r name limit _ <<< "$stage"
  selected "$name" || continue
  if [ ! -e "$PLAN/$name.row" ]; then problems+=("$name: did not run"); continue; fi
  ran=$((ran + 1))
  rc=$(cut -d'|' -f3 "$PLAN/$name.row" | tr -d ' ')
  case "$rc" in
    0) ;;
    5) problems+=("$name: exit 5, its pytest selection collects nothing") ;;
    124|137) problems+=("$name: exit $rc, past its ${limit}s limit") ;;
    *) problems+=("$name: exit $rc") ;;
  esac
  if [ "$rc" != 0 ]; then
    echo "[rehearsal] $name: exit $rc; the end of its log:"
    grep -v '^\s*$' "$PLAN/$name.log" | tail -n 6 | cut -c1-240 | sed 's/^/    /'
  fi
  grep -q "^| $name | " "$OUT/gpu_plan.md" 2>/dev/null || problems+=("$name: no row in \$OUT/gpu_plan.md")
  grep -qx "$device/gpu_plan-$COMMIT/$name.done" <<< "$listing" || problems+=("$name: no marker in results.tar.gz")
done
for file in gpu_plan.md selftest.json results.tar.gz; do
  [ "$file" != selftest.json ] || selected selftest || continue
  [ -s "$OUT/$file" ] || problems+=("\$OUT/$file is missing")
done
others=$(ls -A "$OUT" | grep -vx -e gpu_plan.md -e selftest.json -e results.tar.gz | tr '\n' ' ')
[ -z "$others" ] || problems+=("\$OUT holds other files: $others")
[ ! -e "benchmarks/results/$device" ] || problems+=("benchmarks/results/$device exists: a rehearsal writes elsewhere")
first_call=$(calls | awk -F'|' '$1 == 1' | while IFS='|' read -r _ _ name _; do selected "$name" && echo x; done |
  wc -l)
summary="$ran stages ($first_call of them the first call's) through the plan with stand-ins"
summary+=" in $((SECONDS - rehearsal_start))s"
if [ ${#problems[@]} -gt 0 ]; then
  printf '[rehearsal] FAILED: %s\n' "${problems[@]}"
  echo "gpu_plan rehearsal: FAILED (${#problems[@]} problems): $summary; \$OUT: $OUT"
  exit 1
fi
echo "gpu_plan rehearsal: OK: $summary; \$OUT: $OUT holds gpu_plan.md selftest.json results.tar.gz"
