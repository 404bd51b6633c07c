#!/usr/bin/env bash
# Many training (+ evaluation) jobs side by side on the GPU machine, in one device call: the
# models are small and a step is launch-bound, so one H200 and its 16 cores run ten of them at
# once for little more than the time of the slowest.
#   device run: command="bash eval/gpu_campaign.sh eval/campaigns/FILE",
#               carry=[".whl/mamba_ssm-2.3.2.post1-cp312-cp312-linux_x86_64.whl", ".whl/py"]
# FILE: one job a line, `NAME | TRAIN_S | TRAIN ARGS | EVAL ARGS` (# starts a comment). A job
# trains `mamba-agent train TRAIN ARGS --device cuda --save-every 100 --out runs/NAME` for at
# most TRAIN_S seconds (`--max-seconds` TRAIN_S - 30: the lr decays by steps or time, whichever
# is further, and the run saves and ends at either; `timeout` is the backstop), then, when EVAL ARGS are given, runs `mamba-agent eval
# runs/NAME EVAL ARGS --device cuda` until DEADLINE_S (default 560) seconds after the start
# (results are appended sample by sample, so what finished is kept). TRAIN_S 0: no training,
# evaluate the existing checkpoint NAME (a builtin:<name>, or carry/NAME). Checkpoints a job starts from
# (--init-from carry/NAME) travel in .carry/ (git-ignored; name it in carry).
# Out: $OUT/campaign.tgz.part-* (split at 15 MB; `cat part-* | tar xz`): runs/*/{config.json,
# model.safetensors,train_log.jsonl}, logs/NAME.log, eval/NAME.jsonl; $OUT/machine.txt.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out} DEADLINE_S=${DEADLINE_S:-560} DEVICE=${DEVICE:-cuda}
START=$(date +%s)
JOBS_FILE=$(realpath "$1")
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/mamba_ssm-*.whl .whl/py/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . 2>/dev/null
rm -rf /tmp/carry && { [ ! -d .carry ] || cp -r .carry /tmp/carry; }  # checkpoints to start from: carry/NAME
cd /tmp && rm -rf runs logs eval && mkdir -p runs logs eval  # import the installed package, not the checkout
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || uname -m; nproc; } | tee "$OUT/machine.txt"

job() {  # NAME TRAIN_S "TRAIN ARGS" "EVAL ARGS"
  local name=$1 train_s=$2 checkpoint=runs/$1
  if [ "$train_s" -gt 0 ]; then
    # shellcheck disable=SC2086
    timeout -s INT -k 20 "$train_s" python3 -m mamba_agent.cli train $3 --device "$DEVICE" --save-every 100 \
      --max-seconds $((train_s - 30)) --out "runs/$name" >"logs/$name.log" 2>&1 || echo "training ended early (exit $?)" >>"logs/$name.log"
    tail -c 2000 "logs/$name.log" | tr '\r' '\n' | tail -3 >"logs/$name.tail" && mv "logs/$name.tail" "logs/$name.log"
  else
    checkpoint=$name name=${name#builtin:} name=${name##*/}
  fi
  if [ -n "${4// /}" ] && { [ "$train_s" -eq 0 ] || [ -f "$checkpoint/config.json" ]; }; then
    local left=$((START + DEADLINE_S - $(date +%s)))
    # shellcheck disable=SC2086
    [ "$left" -gt 10 ] && timeout -s INT -k 10 "$left" python3 -m mamba_agent.cli eval "$checkpoint" $4 --device "$DEVICE" \
      --out "eval/$name.jsonl" 2>&1 | tr '\r' '\n' | tail -3 >>"logs/$name.log"
  fi
  echo "$name: done at $(( $(date +%s) - START )) s" | tee -a "logs/$name.log"
}

while IFS='|' read -r name train_s train_args eval_args; do
  name=${name//[[:space:]]/} && [ -n "$name" ] && [ "${name:0:1}" != "#" ] || continue
  job "$name" "${train_s//[[:space:]]/}" "$train_args" "$eval_args" &
done <"$JOBS_FILE"
wait
cp "$JOBS_FILE" logs/jobs.txt
tar czf - runs/*/config.json runs/*/model.safetensors runs/*/train_log.jsonl logs eval 2>/dev/null \
  | split -b 15M - "$OUT/campaign.tgz.part-"
ls -la "$OUT"; cat logs/*.log | grep -v "^$" | tail -80
