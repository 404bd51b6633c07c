#!/usr/bin/env bash
# Issue 2's GPU work in one call of the device tool (H200): kernel tests, training of the shipped
# Mamba and of the Transformer baseline on the same data and budget, and their exact-match sweep.
#   device run: command="bash eval/gpu_addition.sh", carry=[".whl"]
# .whl/ holds the mamba-ssm 2.3.2.post1 wheel built for the GPU machine and, in .whl/py, the
# pure-Python wheels the GPU image lacks (pydantic stack, pyyaml, rich, pytest): eval/README.md.
set -euo pipefail
OUT=${OUT:-/tmp/gpu-out}
STEPS=${STEPS:-2000}
. eval/gpu_setup.sh  # wheels and package into /tmp/site, cd /tmp, $OUT/machine.txt
python3 -m pytest -q -p no:cacheprovider "$OLDPWD/tests/test_policies_gpu.py" 2>&1 | tail -5 | tee "$OUT/gpu_tests.log"
for policy in mamba transformer; do
  python3 -m mamba_agent.cli train --policy "$policy" --steps "$STEPS" --device cuda --out "runs/addition-$policy" 2>&1 | tail -2
done
tar czf "$OUT/checkpoints.tgz" runs/*/config.json runs/*/model.safetensors runs/*/train_log.jsonl
python3 -m mamba_agent.cli eval runs/addition-mamba runs/addition-transformer --device cuda \
  --sizes "${SIZES:-5,10,20,100,1000}" --samples 100 --batch-size 100 --out "$OUT/addition-eval.jsonl" 2>&1 | tail -8
