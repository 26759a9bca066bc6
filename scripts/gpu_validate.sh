#!/usr/bin/env bash
# Validate cifarlab on a single-GPU machine in a fixed time budget; see docs/gpu.md.
#
#   scripts/gpu_validate.sh --data PATH --out DIR [--budget-minutes 10] [--epochs N] [--study-epochs 30]
#                           [--seeds 2] [--work DIR] [--dry-run]
#
# Steps, most valuable first; each writes its figures under --out before the next starts and runs under a time
# limit (`timeout`, a share of what is left of the budget), so a run cut short still leaves every finished step:
#   1 tests     the CUDA tests of the training step (CUDA graph vs eager, capture fallback); a skipped one fails
#               the step (no GPU was seen)
#   2 bench     benchmarks.bench_train (ResNet-20/56, batch 128/512, recipe/engine/fast in one process), then
#               benchmarks.bench_augment, then the compiled path if time is left; speed comes from one process alone
#   3 resnet20  ResNet-20 on --data with its recipe (batch 512), --seeds seeds at once as separate processes
#   4 resnet56  the same for ResNet-56
#   5 study     the ResNet-20 part of the shipped study eca at --study-epochs epochs, one process per run
# Out: steps.jsonl (one line per step: status, seconds, limit), <step>/ with logs, benchmark JSON, summary.json
# (final top-1 per run) and records/ (config.json, metrics.jsonl, result.json, study.json; no checkpoints),
# ready to be copied under results/. --dry-run rehearses every step on the CPU: synthetic data, 1 epoch, tiny
# image counts, benchmarks with a few steps; its tests step notes the status a real run would record, since the
# CUDA tests skip there (tests/test_gpu_validate.py runs it).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage() { sed -n '4,5p' "${BASH_SOURCE[0]}" | sed 's/^# *//' >&2; exit 2; }

DATA="" OUT="" WORK="" MINUTES=10 EPOCHS="" STUDY_EPOCHS=30 SEEDS=2 DRY=0 FAILED=0
while [ $# -gt 0 ]; do
  case "$1" in
    --data) DATA=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    --work) WORK=${2:?}; shift 2 ;;
    --budget-minutes) MINUTES=${2:?}; shift 2 ;;
    --epochs) EPOCHS=${2:?}; shift 2 ;;
    --study-epochs) STUDY_EPOCHS=${2:?}; shift 2 ;;
    --seeds) SEEDS=${2:?}; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage ;;
    *) echo "gpu_validate.sh: unknown argument $1" >&2; usage ;;
  esac
done
[ -n "$OUT" ] || usage
[ -n "$DATA" ] || [ "$DRY" = 1 ] || usage

# The package from this checkout (installed or not) and the benchmarks next to it; the machine's own torch.
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT/src:$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cifarlab() { "$PYTHON" -m cifarlab.cli "$@"; }

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ -z "$WORK" ]; then
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/cifarlab-validate.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
# Every step runs in the checkout; a relative data path is re-expressed from there (records keep it relative).
case "$DATA" in /*|"") ;; *) [ -e "$DATA" ] && DATA=$(realpath --relative-to="$ROOT" "$DATA") ;; esac
cd "$ROOT"

BATCH=512 TRAIN_SET=() TESTS=(tests/test_train_step.py tests/test_engine.py -k "cuda or captur or graph")
BENCH=() AUGMENT=() COMPILED=1 STUDY_VARIANTS='*resnet20*'
[ -n "$EPOCHS" ] && TRAIN_SET=(--epochs "$EPOCHS")
if [ "$DRY" = 1 ]; then
  DATA=synthetic:100:100 BATCH=50 EPOCHS=1 STUDY_EPOCHS=1 COMPILED=0 STUDY_VARIANTS=resnet20
  TRAIN_SET=(--epochs 1 --set eval_batch_size=50)
  TESTS=(tests/test_train_step.py -k "cuda or captur")
  BENCH=(--quick --models resnet20 --batches 16 --images 32 --warmup-steps 1)
  AUGMENT=(--quick --batches 32 --images 64 --epochs 1 --warmup-epochs 1 --cutouts 0)
  export CIFARLAB_CACHE="$WORK/cache" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
fi

START=$(date +%s)
BUDGET=$(awk -v m="$MINUTES" 'BEGIN { printf "%d", m * 60 }')
# limit WEIGHT WEIGHTS_AFTER: this step's share of the seconds left (at least 1)
limit() {
  local left=$(( START + BUDGET - $(date +%s) )); local s=$(( left * $1 / ($1 + $2) ))
  echo $(( s > 0 ? s : 1 ))
}
# until END NUM DEN: NUM/DEN of the seconds left before END (at least 1)
until_() { local s=$(( ($1 - $(date +%s)) * $2 / $3 )); echo $(( s > 0 ? s : 1 )); }
# timed LIMIT LOG CMD...: run under the limit, output to LOG; returns its status. At the limit: SIGTERM (cifarlab
# stops like on Ctrl-C, the last complete epoch checkpointed), SIGKILL 30 s later.
timed() { local t=$1 log=$2; shift 2; timeout --signal=TERM --kill-after=30 "$t" "$@" >"$log" 2>&1; }
status_of() { case "$1" in 0) echo ok ;; 124|137) echo cut ;; *) echo "failed ($1)" ;; esac; }
# record NAME STATUS T0 LIMIT [NOTE]: one line of steps.jsonl
record() {
  printf '{"step": "%s", "status": "%s", "seconds": %d, "limit_s": %d, "dry_run": %s%s}\n' \
    "$1" "$2" $(( $(date +%s) - $3 )) "$4" "$([ "$DRY" = 1 ] && echo true || echo false)" \
    "${5:+, \"note\": \"$5\"}" >>"$OUT/steps.jsonl"
  echo "[$(date -u +%H:%M:%S)] $1: $2${5:+ ($5)}"
  case "$2" in failed*) FAILED=$(( FAILED + 1 )) ;; esac
}
# skipped JUNIT: the tests a pytest JUnit XML file reports skipped or xfailed (0 if there is no such file)
skipped() {
  "$PYTHON" -c 'import sys, xml.etree.ElementTree as ET
try:
    print(sum(1 for _ in ET.parse(sys.argv[1]).iter("skipped")))
except (OSError, ET.ParseError):
    print(0)' "$1"
}
# tests_status RC SKIPPED: a CUDA test that skipped did not run (no GPU was seen): the step failed, whatever pytest says
tests_status() {
  if [ "$1" = 0 ] && [ "$2" -gt 0 ]; then echo "failed ($2 tests skipped: no CUDA device seen)"; else status_of "$1"; fi
}
# collect FROM TO: the compact records of every run under FROM (no checkpoints, no TensorBoard logs)
collect() {
  (cd "$1" 2>/dev/null && find . \( -name checkpoints -o -name tensorboard \) -prune -o -type f \
     \( -name result.json -o -name metrics.jsonl -o -name config.json -o -name study.json \) -print) |
  while read -r f; do mkdir -p "$2/$(dirname "$f")" && cp "$1/$f" "$2/$f"; done
}
# summarize RECORDS: final-epoch top-1 of every run (finished or cut) and mean ± sd over the finished ones
summarize() {
  "$PYTHON" - "$1" <<'EOF'
import json, statistics, sys
from pathlib import Path
root, runs = Path(sys.argv[1]), []
for cfg in sorted(root.rglob("config.json")):
    run = cfg.parent
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()] \
        if (run / "metrics.jsonl").is_file() else []
    res = json.loads((run / "result.json").read_text()) if (run / "result.json").is_file() else None
    runs.append({"run": run.relative_to(root).as_posix(), "finished": res is not None,
                 "epochs_done": len(rows), "epochs": json.loads(cfg.read_text()).get("epochs"),
                 "top1": res["top1"] if res else (rows[-1].get("test_top1") if rows else None),
                 **({k: res.get(k) for k in ("train_seconds", "images_per_second", "device", "train_step")}
                    if res else {})})
done = [r["top1"] for r in runs if r["finished"]]
out = {"runs": runs, "finished": len(done), "top1_mean": statistics.mean(done) if done else None,
       "top1_sd": statistics.stdev(done) if len(done) > 1 else None}
print(json.dumps(out, indent=1))
EOF
}

# ---------------------------------------------------------------- steps (weights: 1, 3, 3, 3, 2)

step_tests() {
  local t0 lim rc status
  t0=$(date +%s); lim=$(limit 1 11); mkdir -p "$OUT/tests"
  timed "$lim" "$OUT/tests/pytest.log" "$PYTHON" -m pytest -q -p no:cacheprovider -p no:xdist \
    --junitxml="$OUT/tests/junit.xml" "${TESTS[@]}"
  rc=$?
  status=$(tests_status "$rc" "$(skipped "$OUT/tests/junit.xml")")
  if [ "$DRY" = 1 ] && [ "$status" != "$(status_of "$rc")" ]; then  # the CPU rehearsal: say what a GPU run checks
    record tests "$(status_of "$rc")" "$t0" "$lim" "a real run records: $status"
  else
    record tests "$status" "$t0" "$lim"
  fi
}

step_bench() {
  local t0 lim end rc
  t0=$(date +%s); lim=$(limit 3 8); end=$(( t0 + lim )); mkdir -p "$OUT/bench"
  timed "$(until_ "$end" 6 10)" "$OUT/bench/train.log" "$PYTHON" -m benchmarks.bench_train \
    --models resnet20,resnet56 --batches 128,512 --paths recipe,engine,fast --out "$OUT/bench" "${BENCH[@]}"
  rc=$?
  timed "$(until_ "$end" 1 2)" "$OUT/bench/augment.log" "$PYTHON" -m benchmarks.bench_augment \
    --out "$OUT/bench" "${AUGMENT[@]}" || rc=$(( rc ? rc : $? ))
  local rest=$(( end - $(date +%s) ))
  if [ "$COMPILED" = 1 ] && [ "$rest" -ge 60 ]; then  # torch.compile takes a while: only with a minute left
    timed "$rest" "$OUT/bench/compiled.log" "$PYTHON" -m benchmarks.bench_train \
      --models resnet20,resnet56 --batches 128,512 --paths compiled --out "$OUT/bench"
  else
    echo "compiled path skipped: $([ "$COMPILED" = 1 ] && echo "${rest} s left" || echo "dry run")" \
      >"$OUT/bench/compiled.log"
  fi
  record bench "$(status_of $rc)" "$t0" "$lim"
}

# step_train NAME MODEL WEIGHT WEIGHTS_AFTER: --seeds runs of MODEL at once, separate processes
step_train() {
  local name=$1 model=$2 t0 lim pids=() rc=0
  t0=$(date +%s); lim=$(limit "$3" "$4")
  mkdir -p "$OUT/$name/logs"
  for seed in $(seq 0 $(( SEEDS - 1 ))); do
    timed "$lim" "$OUT/$name/logs/seed$seed.log" "$PYTHON" -m cifarlab.cli train --model "$model" --data "$DATA" \
      --batch-size "$BATCH" --seed "$seed" --out "$WORK/$name" --no-progress "${TRAIN_SET[@]}" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || { local r=$?; rc=$(( rc ? rc : r )); }; done
  collect "$WORK/$name" "$OUT/$name/records"
  summarize "$OUT/$name/records" >"$OUT/$name/summary.json"
  record "$name" "$(status_of $rc)" "$t0" "$lim"
}

step_study() {
  local t0 lim pids=() rc=0 n
  t0=$(date +%s); lim=$(limit 2 0)
  mkdir -p "$OUT/study/logs"
  local study=(eca --variants "$STUDY_VARIANTS" --out "$WORK/study" --set "data=$DATA"
               --set "epochs=$STUDY_EPOCHS")
  [ "$DRY" = 1 ] && study+=(--set batch_size=50 --set eval_batch_size=50)
  if [ "$DRY" = 1 ]; then
    n=2  # two processes rehearse the sharding
  else  # one process per run: every variant x seed at once
    n=$("$PYTHON" -c 'import sys; from cifarlab.studies.spec import load_study
print(len(load_study(sys.argv[1]).select([sys.argv[2]]).runs()))' eca "$STUDY_VARIANTS") || n=1
  fi
  for i in $(seq 0 $(( n - 1 ))); do
    timed "$lim" "$OUT/study/logs/shard$i.log" "$PYTHON" -m cifarlab.cli study run "${study[@]}" \
      --shard "$i/$n" --no-progress &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || { local r=$?; rc=$(( rc ? rc : r )); }; done
  collect "$WORK/study" "$OUT/study/records"
  cifarlab study table "$WORK/study/eca" >"$OUT/study/table.txt" 2>&1
  summarize "$OUT/study/records" >"$OUT/study/summary.json"
  record study "$(status_of $rc)" "$t0" "$lim"
}

: >"$OUT/steps.jsonl"
echo "cifarlab validation: budget ${MINUTES} min, data ${DATA}, out ${OUT}$([ "$DRY" = 1 ] && echo ', DRY RUN (CPU)')"
step_tests
step_bench
step_train resnet20 resnet20 3 5
step_train resnet56 resnet56 3 2
step_study
echo "done: $OUT/steps.jsonl ($FAILED steps failed)"
exit $(( FAILED > 0 ))
