#!/usr/bin/env bash
# code_debug on the GPU machine: train one policy on interactive oracle trajectories of 4..16
# functions (the task's training distribution, CodeDebug.train_sizes), one device call per policy
# (a call may run 10 minutes; each trains for at most BUDGET_S seconds):
#   device run: command="POLICY=mamba bash eval/gpu_code_debug.sh", carry=[".whl"]
#   device run: command="POLICY=transformer bash eval/gpu_code_debug.sh", carry=[".whl"]
# .whl/ as for eval/gpu_addition.sh. The training data needs no sandbox and no bubblewrap: the
# oracle's runs are simulated (tasks/code_debug_sim.py), so generation is pure Python in the
# data workers. Evaluation is done on the CPU machine with the real sandbox:
#   mamba-agent eval runs/code_debug-mamba runs/code_debug-transformer --sizes 4,8,16,32,64 ...
# STEPS (2000) is cut to what fits BUDGET_S (330) at the step time a short probe measures here
# (the Transformer's attention over ~5,000-12,000 tokens may not fit 2,000 steps); give both
# calls the same STEPS to train both policies on exactly the same batches. BATCH (32), WORKERS (12).
# Out: $OUT/code_debug-$POLICY.tgz (config.json, model.safetensors, train_log.jsonl),
# $OUT/train-$POLICY.log (data speed, probe, chosen steps, training summary), $OUT/machine.txt.
set -euo pipefail
OUT=${OUT:-/tmp/gpu-out}
POLICY=${POLICY:?set POLICY=mamba or POLICY=transformer}
STEPS=${STEPS:-2000} BATCH=${BATCH:-32} WORKERS=${WORKERS:-12} BUDGET_S=${BUDGET_S:-330}
LOG="$OUT/train-$POLICY.log"
. eval/gpu_setup.sh  # wheels and package into /tmp/site, cd /tmp, $OUT/machine.txt
echo "bubblewrap: $(command -v bwrap || echo 'absent (not needed for training)')" | tee "$LOG"

# The data: trajectories per second on one core here, and their length in tokens.
python3 - <<'EOF' 2>&1 | tee -a "$LOG"
import random, statistics, time
from mamba_agent.tasks import get_task
task, rng = get_task("code_debug"), random.Random("speed")
start = time.monotonic()
lengths = [len(task.oracle(task.training_problem(rng))) for _ in range(200)]
seconds = time.monotonic() - start
print(f"data: {200 / seconds:.1f} trajectories/s on one core; tokens mean {statistics.mean(lengths):.0f}, max {max(lengths)}")
EOF

train() {  # STEPS RUN_DIR [timeout seconds]
  timeout -s INT -k 30 "${3:-600}" python3 -m mamba_agent.cli train --task code_debug --policy "$POLICY" \
    --steps "$1" --batch-size "$BATCH" --device cuda --data-workers "$WORKERS" --save-every 100 --out "$2"
}
# Probe: 40 steps, timed from step 20 to 40 (after warm-up, worker start-up and the first batches;
# should it not get there in 2 minutes, from the last two logged steps).
rm -rf "runs/probe-$POLICY" "runs/code_debug-$POLICY"
train 40 "runs/probe-$POLICY" 120 2>&1 | tail -1 | sed "s/^/probe run: /" >>"$LOG" || true
read -r steps step_ms < <(python3 - "runs/probe-$POLICY/train_log.jsonl" "$STEPS" "$BUDGET_S" <<'EOF'
import json, sys
log = [(r["step"], r["seconds"]) for r in map(json.loads, open(sys.argv[1]))]
(s0, t0), (s1, t1) = (log[1], log[3]) if len(log) >= 4 else log[-2:]
step_s = (t1 - t0) / (s1 - s0)
print(max(100, min(int(sys.argv[2]), int(float(sys.argv[3]) / step_s) // 100 * 100)), round(step_s * 1000))
EOF
)
rm -rf "runs/probe-$POLICY"
echo "probe: $step_ms ms per step at batch $BATCH; training $steps steps (asked $STEPS, budget $BUDGET_S s)" | tee -a "$LOG"

# The time limit keeps the call inside 10 minutes should the probe misjudge: the checkpoint saved
# every 100 steps is then what comes back, and its train_log shows where it stopped.
train "$steps" "runs/code_debug-$POLICY" $((BUDGET_S + 60)) 2>&1 | tail -1 | tee -a "$LOG" \
  || echo "training stopped at the time limit" | tee -a "$LOG"
tar czf "$OUT/code_debug-$POLICY.tgz" runs/code_debug-"$POLICY"/{config.json,model.safetensors,train_log.jsonl}
