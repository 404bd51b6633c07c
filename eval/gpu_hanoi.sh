#!/usr/bin/env bash
# Tower of Hanoi on the GPU machine in one device call: train Mamba (SEEDS, default "0") on 1..8
# disks, then sweep 8, 9, 10 and 12 disks (SAMPLES problems each, greedy, exact match of the
# whole trajectory: ~30,000 tokens at 8 disks, ~550,000 at 12).
#   device run: command="bash eval/gpu_hanoi.sh", carry=[".whl/mamba_ssm-2.3.2.post1-cp312-cp312-linux_x86_64.whl", ".whl/py"]
# STEPS (600), BATCH (16: trajectories run to 30,000 tokens), SIZES, SAMPLES (10).
# Under $OUT: checkpoints.tgz, train.log, hanoi-eval.jsonl, report.md, machine.txt.
set -euo pipefail
OUT=${OUT:-/tmp/gpu-out}
. eval/gpu_setup.sh  # wheels and package into /tmp/site, cd /tmp, $OUT/machine.txt
for seed in ${SEEDS:-0}; do
  { time python3 -m mamba_agent.cli train --task hanoi --policy mamba --steps "${STEPS:-600}" --batch-size "${BATCH:-16}" \
      --seed "$seed" --device cuda --data-workers 12 --out "runs/hanoi-mamba-s$seed" 2>&1 | tail -1; } 2>&1 | tee -a "$OUT/train.log"
  tar czf "$OUT/checkpoints.tgz" runs/*/config.json runs/*/model.safetensors runs/*/train_log.jsonl
done
for seed in ${SEEDS:-0}; do
  python3 -m mamba_agent.cli eval "runs/hanoi-mamba-s$seed" --device cuda --sizes "${SIZES:-8,9,10,12}" \
    --samples "${SAMPLES:-10}" --batch-size 64 --out "$OUT/hanoi-eval.jsonl" 2>&1 | tail -2
done
python3 -m mamba_agent.cli report "$OUT/hanoi-eval.jsonl" | tee "$OUT/report.md"
