#!/usr/bin/env bash
# The paper's addition ablations (tasks/addition_ablations.py) on the GPU machine in one device call:
#   device run: command="bash eval/gpu_ablations.sh", carry=[".whl"]
# Trains Mamba on each variant as the shipped addition checkpoint was trained (2,000 steps of
# batch 128, operands of 1..5 digits, the train defaults), then sweeps 5,10,20,100,1000 digits
# (100 problems each, greedy, exact match of the whole trajectory).
# VARIANTS (default: all three), STEPS (2000), SIZES, SAMPLES (100), BATCH (100).
# .whl/ as for eval/gpu_addition.sh. Under $OUT: checkpoints.tgz, train.log, ablations-eval.jsonl
# (one line per problem), report.md (these results beside the interactive addition's of
# eval/results/2026-11-28-addition-h200), machine.txt.
# No token cap is needed: each task's default limit is about twice its oracle's length (nocot
# 6,020 and calculator 12,050 tokens at 1,000 digits, cot-notool 70,100 as addition), and the
# sweep ends every episode at its first token off the oracle trajectory.
set -euo pipefail
OUT=${OUT:-/tmp/gpu-out}
VARIANTS=${VARIANTS:-"addition-nocot addition-cot-notool addition-calculator"}
BASELINE="$PWD/eval/results/2026-11-28-addition-h200/addition-eval.jsonl.gz"
. eval/gpu_setup.sh  # wheels and package into /tmp/site, cd /tmp, $OUT/machine.txt
for task in $VARIANTS; do
  { time python3 -m mamba_agent.cli train --task "$task" --policy mamba --steps "${STEPS:-2000}" --batch-size 128 \
      --device cuda --data-workers 12 --out "runs/$task-mamba" 2>&1 | tail -1; } 2>&1 | tee -a "$OUT/train.log"
  tar czf "$OUT/checkpoints.tgz" runs/*/config.json runs/*/model.safetensors runs/*/train_log.jsonl
done
for task in $VARIANTS; do
  python3 -m mamba_agent.cli eval "runs/$task-mamba" --device cuda --sizes "${SIZES:-5,10,20,100,1000}" \
    --samples "${SAMPLES:-100}" --batch-size "${BATCH:-100}" --out "$OUT/ablations-eval.jsonl" 2>&1 | tail -4
done
{ gunzip -c "$BASELINE"; cat "$OUT/ablations-eval.jsonl"; } > /tmp/ablations-all.jsonl
python3 -m mamba_agent.cli report /tmp/ablations-all.jsonl | tee "$OUT/report.md"
