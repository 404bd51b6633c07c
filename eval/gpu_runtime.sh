#!/usr/bin/env bash
# Issue 19 on the GPU machine, in one device call of at most ~9 minutes: the compiled GPU tests of
# the runtime, then its targets through `mamba-agent eval` (the product path, nothing else):
#   1,000-digit additions at 32,768 rows (8-bit state; and the exact fp32 default at 16,384),
#   100 Hanoi towers of 12 disks, 100 logical-graph programs of 1,000 nodes (the runtime's own
#   choice: tensor rows, split step), and each task at batch 1 on the GPU and on one CPU core.
#   device run: command="MAMBA_AGENT_COMMIT=<sha> bash eval/gpu_runtime.sh",
#               carry=[".whl/mamba_ssm-2.3.2.post1-cp312-cp312-linux_x86_64.whl", ".whl/py"]
#   MODE=smoke: the same parts, small (about 3 minutes). TESTS=0: the targets without the tests.
# Each part runs in its own time box and writes its own files, so one that fails or runs out of
# time leaves the others' results. Under $OUT: machine.txt, summary.txt (a line per part: exit,
# seconds, and eval's own line: episodes, seconds, a second, rows and step), <part>.log, the
# results <part>.jsonl.gz, two trajectories of the 32,768 additions (traj/).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out} MODE=${MODE:-full} DEADLINE_S=${DEADLINE_S:-540} DEVICE=${DEVICE:-cuda}
START=$(date +%s)
REPO=$(pwd)
if [ "${SETUP:-1}" = 1 ]; then  # SETUP=0 DEVICE=cpu: a dry run of this script where the package is installed
  . eval/gpu_setup.sh  # wheels and package into /tmp/site, cd /tmp, $OUT/machine.txt
fi
nproc >>"$OUT/machine.txt"
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

part() {  # NAME CAP_S COMMAND...: run it for at most CAP_S seconds (and within the deadline)
  local name=$1 cap=$2 left t0 rc
  shift 2
  left=$((START + DEADLINE_S - $(date +%s)))
  [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -lt 10 ]; then echo "$name: skipped (no time left)" | tee -a "$OUT/summary.txt"; return; fi
  t0=$(date +%s%N)
  timeout -s INT -k 15 "$cap" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  printf '%s: exit %s in %s ms; %s\n' "$name" "$rc" "$(( ($(date +%s%N) - t0) / 1000000 ))" \
    "$(tr '\r' '\n' <"$OUT/$name.log" | grep -E '^eval .* episodes in|passed|failed|error' | tail -2 | tr '\n' ' ')" \
    | tee -a "$OUT/summary.txt"
  [ -f "$OUT/$name.jsonl" ] && gzip -f "$OUT/$name.jsonl"
}

ev() {  # NAME CAP_S CHECKPOINT EVAL ARGS...: mamba-agent eval on the GPU, results in $OUT/NAME.jsonl
  local name=$1 cap=$2 checkpoint=$3
  shift 3
  part "$name" "$cap" python3 -m mamba_agent.cli eval "$checkpoint" --device "$DEVICE" --out "$OUT/$name.jsonl" "$@"
}

cpu_ev() {  # NAME CORE CHECKPOINT EVAL ARGS...: the same on one CPU core, in the background
  local name=$1 core=$2 checkpoint=$3
  shift 3
  local pin=""
  command -v taskset >/dev/null && pin="taskset -c $core"
  ($pin timeout -s INT 240 python3 -m mamba_agent.cli eval "$checkpoint" --device cpu \
     --out "$OUT/$name.jsonl" "$@" >"$OUT/$name.log" 2>&1
   echo "$name: exit $? $(tr '\r' '\n' <"$OUT/$name.log" | grep -E '^eval .* episodes in' | tail -1)" >>"$OUT/summary.txt"
   gzip -f "$OUT/$name.jsonl") &
}

T="$REPO/tests"
if [ "$MODE" = smoke ]; then
  part tests 150 python3 -m pytest -q -p no:cacheprovider --import-mode=importlib -m "not slow" \
    "$T/test_runtime_gpu.py" "$T/test_tensor_rows.py" -k "addition or pointer_rows or search_rows"
  ev additions 90 builtin:addition-mamba --sizes 1000 --samples 1024 --batch-size 1024 --state-dtype float8_e4m3fn \
    --trajectories "$OUT/traj" --trajectory-sample 1
  ev hanoi 90 builtin:hanoi-mamba --sizes 10 --samples 8 --batch-size 8
  ev logical_graph 90 builtin:logical_graph-mamba --sizes 200 --samples 8 --batch-size 8
  cpu_ev batch1-cpu-addition 1 builtin:addition-mamba --sizes 200 --samples 1 --batch-size 1
  ev batch1-gpu-addition 60 builtin:addition-mamba --sizes 200 --samples 1 --batch-size 1
else
  [ "${TESTS:-1}" = 1 ] && part tests 170 python3 -m pytest -q -p no:cacheprovider --import-mode=importlib -m "not slow" \
    "$T/test_runtime_gpu.py" "$T/test_tensor_rows.py" "$T/test_step_kernel.py" "$T/test_policies_gpu.py" \
    "$T/test_saved_episode.py"
  ev additions 140 builtin:addition-mamba --sizes 1000 --samples 32768 --batch-size 32768 --state-dtype float8_e4m3fn \
    --trajectories "$OUT/traj" --trajectory-sample 2
  ev hanoi 110 builtin:hanoi-mamba --sizes 12 --samples 100 --batch-size 100
  ev logical_graph 150 builtin:logical_graph-mamba --sizes 1000 --samples 100 --batch-size 100
  # Batch 1: each task on the GPU, and at the same time on one CPU core each (cores 1-4).
  cpu_ev batch1-cpu-addition 1 builtin:addition-mamba --sizes 1000 --samples 1 --batch-size 1
  cpu_ev batch1-cpu-multiplication 2 builtin:multiplication-2-mamba --sizes 1000 --samples 1 --batch-size 1
  cpu_ev batch1-cpu-hanoi 3 builtin:hanoi-mamba --sizes 10 --samples 1 --batch-size 1
  cpu_ev batch1-cpu-logical_graph 4 builtin:logical_graph-mamba --sizes 200 --samples 1 --batch-size 1
  ev batch1-gpu-addition 40 builtin:addition-mamba --sizes 1000 --samples 1 --batch-size 1
  ev batch1-gpu-multiplication 40 builtin:multiplication-2-mamba --sizes 1000 --samples 1 --batch-size 1
  ev batch1-gpu-hanoi 60 builtin:hanoi-mamba --sizes 10 --samples 1 --batch-size 1
  ev batch1-gpu-logical_graph 40 builtin:logical_graph-mamba --sizes 200 --samples 1 --batch-size 1
  ev additions-fp32 90 builtin:addition-mamba --sizes 1000 --samples 16384 --batch-size 16384
fi
wait  # the CPU runs
python3 - "$OUT" <<'EOF' >>"$OUT/summary.txt" 2>&1
import gzip, json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.jsonl.gz")):
    rows = [json.loads(line) for line in gzip.open(path, "rt")]
    seconds = [r["seconds"] for r in rows]
    print(f"{path.name}: {len(rows)} rows, exact {sum(bool(r['exact']) for r in rows)}, correct "
          f"{sum(bool(r['correct']) for r in rows)}, rows {sorted({r['rows'] for r in rows})}, step "
          f"{sorted({r['step'] for r in rows})}, state {sorted({r['state_dtype'] for r in rows})}, episode seconds "
          f"max {max(seconds, default=0):.1f}, tokens {sum(r['tokens'] for r in rows):,}, commit {rows[0]['commit'] if rows else ''}")
EOF
echo "total: $(( $(date +%s) - START )) s" | tee -a "$OUT/summary.txt"
cat "$OUT/summary.txt"
