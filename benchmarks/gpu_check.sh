#!/usr/bin/env bash
# The GPU check of issue 16: every CUDA path and the speed figures, in one run of at most --budget seconds
# (default 480) on one GPU, everything written to OUTDIR. Needs only PyTorch and torchvision (no Ray, no
# Optuna). README "Performance" says what each step measures.
#
#   benchmarks/gpu_check.sh OUTDIR [--variants] [--budget SECONDS] [--cpu-smoke]
#
#   --variants   after the core steps, the make-it-fast experiments, while budget is left (none is a default)
#   --cpu-smoke  the same steps on the CPU at tiny sizes (a dry run of the script; tests/test_gpu_check.py)
#
# Each step has its own timeout (cut to the budget left; a step with under 15 s left is skipped) and writes
# OUTDIR/<step>.log plus its result (JSON, junit XML or a trial folder); OUTDIR/steps.jsonl lists the steps
# and `python -m benchmarks.gpu_check summary OUTDIR` (run last) prints the table. Exit status: 0 when every
# step that ran was ok, 1 otherwise, 2 on bad arguments.
set -u

usage() { echo "usage: $0 OUTDIR [--variants] [--budget SECONDS] [--cpu-smoke]" >&2; exit 2; }
[ $# -ge 1 ] || usage
OUTDIR=$1; shift
case "$OUTDIR" in -*) usage ;; esac
SMOKE=0; VARIANTS=0; BUDGET=480
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) SMOKE=1 ;;
    --variants) VARIANTS=1 ;;
    --budget) shift; [ $# -gt 0 ] || usage; BUDGET=$1 ;;
    *) echo "unknown option '$1'" >&2; usage ;;
  esac
  shift
done
case "$BUDGET" in ''|*[!0-9]*) echo "--budget takes whole seconds, got '$BUDGET'" >&2; exit 2 ;; esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUTDIR" || exit 2
OUTDIR=$(cd "$OUTDIR" && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
: > "$OUTDIR/steps.jsonl"
echo "$0 $OUTDIR $* (budget $BUDGET s, smoke $SMOKE, variants $VARIANTS)" > "$OUTDIR/command.txt"
START=$(date +%s)
MIN_STEP=15

# -- sizes: the real check, or a tiny dry run on the CPU -------------------------------------------------
if [ "$SMOKE" = 1 ]; then
  PACK=2; SCALE=4  # timeouts x4: a shared CPU starts a process slower than the GPU machine runs a step
  BENCH=(--device cpu --student resnet8 --teacher resnet8 --classes 10 --batch-size 8 --steps 2 --warmup 1
         --workers 1 --max-seconds 10)
  SYNC=(--device cpu --student resnet8 --teacher resnet8 --classes 10 --batch-size 8 --steps 1)
  T_ARCH=resnet8; T_CLASSES=10
  TRIAL=(student=resnet8 teacher=resnet8 synthetic_size=128 synthetic_classes=10 batch_size=32 device=cpu)
  export TORCH_COMPILE_DISABLE=1  # the compile steps run their plumbing only: compiling on the CPU takes minutes
else
  PACK=4; SCALE=1
  BENCH=(--device cuda --max-seconds 20)
  SYNC=(--device cuda)
  T_ARCH=resnet32x4; T_CLASSES=100
  # 50,000 CIFAR-shaped training images, the platform's defaults otherwise (amp/channels_last auto, batch 64)
  TRIAL=(student=resnet8x4 teacher=resnet32x4 synthetic_size=50000 synthetic_classes=100 device=cuda)
fi
# Checkpoints (the teacher's, the trials') stay in a scratch folder: OUTDIR keeps only small files to bring back.
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2
trap 'rm -rf "$SCRATCH"' EXIT
TEACHER="$SCRATCH/teacher_$T_ARCH.pt"
TRIAL=(method=ijckd "${TRIAL[@]}" dataset=synthetic epochs=2 seed=0 teacher_checkpoint="$TEACHER")

# record NAME KIND STATUS RC SECONDS TIMEOUT RESULT
record() {
  printf '{"name": "%s", "kind": "%s", "status": "%s", "rc": %s, "seconds": %s, "timeout": %s, "log": "%s", "result": "%s"}\n' \
    "$1" "$2" "$3" "$4" "$5" "$6" "$1.log" "$7" >> "$OUTDIR/steps.jsonl"
}

# step NAME KIND TIMEOUT RESULT CMD...  (RESULT relative to OUTDIR; "NAME.json" takes the command's stdout)
step() {
  local name=$1 kind=$2 limit=$(($3 * SCALE)) result=$4; shift 4
  local left=$((BUDGET - ($(date +%s) - START)))
  if [ "$left" -lt "$MIN_STEP" ]; then
    echo "skipped: ${left}s of the ${BUDGET}s budget left" > "$OUTDIR/$name.log"
    record "$name" "$kind" skipped 0 0 0 "$result"; echo "[gpu_check] $name: skipped (budget)"; return
  fi
  [ "$limit" -le "$left" ] || limit=$left
  echo "[gpu_check] $name (timeout ${limit}s): $*"
  local t0 rc status ms
  t0=$(date +%s%N)
  if [ "$result" = "$name.json" ]; then
    timeout -k 10 "$limit" "$@" > "$OUTDIR/$result" 2> "$OUTDIR/$name.log"
  else
    timeout -k 10 "$limit" "$@" > "$OUTDIR/$name.log" 2>&1
  fi
  rc=$?
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  record "$name" "$kind" "$status" "$rc" "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))" "$limit" "$result"
  echo "[gpu_check] $name: $status (exit $rc)"
}

trial() {  # trial NAME TIMEOUT KEY=VALUE...: a python -m trainables run, its progress.jsonl kept in OUTDIR/NAME
  local name=$1 limit=$2; shift 2
  step "$name" trial "$limit" "$name/progress.jsonl" "$PY" -m trainables "${TRIAL[@]}" "$@" --out "$SCRATCH/$name"
  mkdir -p "$OUTDIR/$name"
  cp "$SCRATCH/$name/progress.jsonl" "$OUTDIR/$name/" 2> /dev/null
  rm -rf "${SCRATCH:?}/$name"
}

skip() {  # skip NAME KIND REASON
  echo "skipped: $3" > "$OUTDIR/$1.log"; record "$1" "$2" skipped 0 0 0 ""; echo "[gpu_check] $1: skipped ($3)"
}

# -- the core steps (issue 16, "Prepare") -----------------------------------------------------------------
step env env 60 env.json "$PY" -m benchmarks.gpu_check env
if command -v nvidia-smi > /dev/null; then
  step nvidia-smi log 30 "" nvidia-smi
else
  skip nvidia-smi log "nvidia-smi not found"
fi
step pytest-gpu pytest 150 pytest_gpu.xml \
  "$PY" -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider --junitxml "$OUTDIR/pytest_gpu.xml"
step bench-single bench 120 bench-single.json "$PY" -m benchmarks "${BENCH[@]}" --json
step teacher log 60 "" "$PY" -m benchmarks.gpu_check teacher "$TEACHER" --arch "$T_ARCH" --classes "$T_CLASSES"
trial epochs-eager 150 compile=false
step "bench-pack$PACK" bench 180 "bench-pack$PACK.json" \
  "$PY" -m benchmarks "${BENCH[@]}" --pack "$PACK" --pack-backend processes --json
trial epochs-compile 180 compile=true

# -- make-it-fast experiments (README "Performance"): measured here, never a default without a figure ---------
if [ "$VARIANTS" = 1 ]; then
  step sync-check sync 90 sync-check.json "$PY" -m benchmarks.sync_check "${SYNC[@]}" --json
  trial epochs-eval2048 120 eval_batch_size=2048
  step bench-compile bench 150 bench-compile.json "$PY" -m benchmarks "${BENCH[@]}" --loops platform --compile --json
  step bench-compile-ro bench 180 bench-compile-ro.json \
    "$PY" -m benchmarks "${BENCH[@]}" --loops platform --compile-mode reduce-overhead --json
  step "bench-pack$PACK-compile" bench 240 "bench-pack$PACK-compile.json" \
    "$PY" -m benchmarks "${BENCH[@]}" --loops platform --pack "$PACK" --pack-backend processes --compile --json
fi

echo "[gpu_check] summary ($(( $(date +%s) - START )) s)"
"$PY" -m benchmarks.gpu_check summary "$OUTDIR"
