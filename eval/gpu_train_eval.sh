#!/usr/bin/env bash
# Train and evaluate task/policy pairs on the GPU machine in one device call:
#   device run: command="JOBS='multiplication-2:mamba:10,20,100,1000' bash eval/gpu_train_eval.sh", carry=[".whl"]
# JOBS: space-separated TASK:POLICY:SIZES; STEPS (2000), SAMPLES (100), BATCH (100).
# .whl/ as for eval/gpu_addition.sh. Checkpoints come back in $OUT/checkpoints.tgz, results in
# $OUT/eval.jsonl (one line per problem), training output in $OUT/train.log.
set -euo pipefail
OUT=${OUT:-/tmp/gpu-out}
. eval/gpu_setup.sh  # wheels and package into /tmp/site, cd /tmp, $OUT/machine.txt
for job in $JOBS; do
  IFS=: read -r task policy sizes <<<"$job"
  python3 -m mamba_agent.cli train --task "$task" --policy "$policy" --steps "${STEPS:-2000}" --device cuda --data-workers 12 \
    --out "runs/$task-$policy" 2>&1 | tail -1 | tee -a "$OUT/train.log"
  tar czf "$OUT/checkpoints.tgz" runs/*/config.json runs/*/model.safetensors runs/*/train_log.jsonl
done
for job in $JOBS; do
  IFS=: read -r task policy sizes <<<"$job"
  python3 -m mamba_agent.cli eval "runs/$task-$policy" --device cuda --sizes "$sizes" \
    --samples "${SAMPLES:-100}" --batch-size "${BATCH:-100}" --out "$OUT/eval.jsonl" 2>&1 | tail -4
done
