#!/usr/bin/env bash
# Issue 5's GPU work in one call of the device tool (H200): the GPU tests (kernel prefill into a
# state, CUDA-graph decoders, a GPU checkpoint decoding the same on the CPU) and the benchmark.
#   device run: command="bash eval/gpu_bench.sh", carry=[".whl/mamba_ssm-2.3.2.post1-cp312-cp312-linux_x86_64.whl", ".whl/py"]
# .whl/ as for eval/gpu_addition.sh, plus .whl/numpy (numpy>=2 for the CPU decoder, installed
# only if the machine's is older). Under $OUT: machine.txt, gpu_tests.log, bench-h200/.
set -euo pipefail
OUT=${OUT:-/tmp/gpu-out}
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/mamba_ssm-*.whl .whl/py/*.whl
python3 -c 'import numpy, sys; print("numpy", numpy.__version__); sys.exit(int(numpy.__version__[0]) < 2)' ||
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/numpy/*.whl  # carry it then
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .
cd /tmp  # import the installed package, not the checkout
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
python3 -m pytest -q -p no:cacheprovider "$OLDPWD/tests/test_policies_gpu.py" 2>&1 | tail -15 | tee "$OUT/gpu_tests.log"
python3 -m mamba_agent.eval.bench --device cuda --out "$OUT/bench-h200" ${BENCH_ARGS:-} 2>&1 | tail -40
