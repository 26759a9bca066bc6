#!/usr/bin/env bash
# Issue 7's checks on the lent GPU machine, one step per device call (carry .whl, and stage/a or stage/b where
# named; see docs/gpu.md). Everything lands under $OUT: logs, benchmark JSON, a study table and a tarball of
# the runs' compact records (result.json, metrics.jsonl, config.json; no checkpoints).
#   bash scripts/device_issue7.sh bench [ARGS]     CUDA tests of the step, augmentation + training benchmarks
#                                                  (ARGS go to bench_train, e.g. --paths recipe,engine,fast)
#   bash scripts/device_issue7.sh stage            first staging call (carry stage/a): /root/c100
#   bash scripts/device_issue7.sh fast_vs_eager    (carry stage/b) studies/fast_vs_eager.yaml, 6 runs
#   bash scripts/device_issue7.sh time_to_accuracy (carry stage/b) studies/time_to_accuracy.yaml, 6 runs
# A study step resumes where an earlier call stopped while the machine stays warm (runs under /root/runs); it
# stops its runs after SECONDS_FOR_RUNS (default 480) so that the table and the records still come back.
set -euo pipefail
step=${1:?usage: device_issue7.sh bench|stage|fast_vs_eager|time_to_accuracy [extra study-run args]}
shift
source scripts/device_env.sh
case "$step" in
  bench)
    python3 -m pytest -q -p no:cacheprovider tests/test_train_step.py 2>&1 | tee "$OUT/tests.log" \
      || echo "CUDA tests failed; benchmarks follow anyway" | tee -a "$OUT/tests.log"
    python3 -m benchmarks.bench_augment --out "$OUT" 2>&1 | tee "$OUT/augment.log"
    python3 -m benchmarks.bench_train --out "$OUT" --profile-steps 20 "$@" 2>&1 | tee "$OUT/train.log"
    ;;
  stage)
    mkdir -p /root/c100 && cp stage/a/* /root/c100/ && ls -l /root/c100
    ;;
  fast_vs_eager|time_to_accuracy)
    if [ -d stage/b ]; then cp stage/b/* /root/c100/; fi
    # stop the runs in time to bring back what finished (SECONDS_FOR_RUNS, default 480 s); the rest resumes
    timeout --signal=INT "${SECONDS_FOR_RUNS:-480}" python3 -m cifarlab.cli study run "studies/$step.yaml" \
      --set data=/root/c100 --out /root/runs --no-progress "$@" 2>&1 | tee "$OUT/$step.log" || true
    python3 -m cifarlab.cli study table "/root/runs/$step" 2>&1 | tee "$OUT/$step-table.txt" || true
    (cd /root/runs && tar czf "$OUT/$step-records.tgz" --exclude=checkpoints --exclude=tensorboard "$step")
    ;;
  *)
    echo "unknown step $step" >&2; exit 2
    ;;
esac
