#!/usr/bin/env bash
# Issue 5's throughput work in one call of the device tool (H200): the tests of the step kernels
# and of PointerBatch (compiled), StepKernel's tile shapes at $TILE_BATCH rows and
# SplitStepKernel's at $SPLIT_BATCH (0: skip either; the fastest are used below), and
# 1,000-digit additions with the tools on the GPU, one wave per entry of $ADDITIONS
# (BATCH[:STEP[:STATE_DTYPE]], see `python -m mamba_agent.eval.bench --help`); $TESTS: which GPU tests run.
#   device run: command="bash eval/gpu_throughput.sh", carry=[".whl/mamba_ssm-2.3.2.post1-cp312-cp312-linux_x86_64.whl", ".whl/py"]
# Under $OUT: machine.txt, gpu_tests.log, throughput-h200/ (bench.jsonl, bench.md).
set -euo pipefail
OUT=${OUT:-/tmp/gpu-out}
. eval/gpu_setup.sh  # wheels and package into /tmp/site, cd /tmp, $OUT/machine.txt
# importlib mode: import the installed package (with its tools/), not the checkout
TESTS=${TESTS:-"test_step_kernel.py test_pointer_batch.py"}
(python3 -m pytest -q -p no:cacheprovider --import-mode=importlib $(printf "$OLDPWD/tests/%s " $TESTS) || true) 2>&1 | tail -15 | tee "$OUT/gpu_tests.log"
python3 -m mamba_agent.eval.bench --device cuda --out "$OUT/throughput-h200" --models "" --additions 0 \
  --tile-sweep "${TILE_BATCH:-16384}" --split-sweep "${SPLIT_BATCH:-32768}" --device-additions "${ADDITIONS:-32768:split,32768:kernel}" ${BENCH_ARGS:-} 2>&1 | tail -60
