# Sourced first by the eval/gpu_*.sh scripts, from the checkout's root on the GPU machine: install
# the carried wheels (.whl/: the mamba-ssm wheel and .whl/py) and this package into /tmp/site,
# move to /tmp so that Python imports the installed package (with its tools/, tasks/), not the
# checkout ($OLDPWD is the checkout afterwards), and record the GPU in $OUT/machine.txt.
OUT=${OUT:-/tmp/gpu-out}
# --upgrade: on a machine still warm from an earlier call, replace what that call installed
# (without it pip keeps the old package and the call runs the earlier code)
python3 -m pip install -q --upgrade --no-index --no-deps --target /tmp/site .whl/mamba_ssm-*.whl .whl/py/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -m pip install -q --upgrade --no-index --no-deps --no-build-isolation --target /tmp/site .
cd /tmp
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
