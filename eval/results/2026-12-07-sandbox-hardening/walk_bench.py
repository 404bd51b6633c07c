"""`true` in a bubblewrap sandbox whose workspace holds 10,000 files: the old code walked the
workspace (lchown of every entry) before every run; the new one never does.

    PYTHONPATH=OLD_SITE python walk_bench.py old; python walk_bench.py new   (from /tmp)
"""
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mamba_agent.sandboxes import get_sandbox

try:
    from mamba_agent.sandboxes.workspace import Workspace
    workspace = Workspace(inodes=20_000)
    path = workspace.path
except ImportError:  # the old code: a plain directory
    workspace, path = None, Path(tempfile.mkdtemp(prefix="mamba-agent-walk-"))
sandbox = get_sandbox("bubblewrap", path)
sandbox.run("for i in $(seq 10000); do : > f$i; done")
times = []
for _ in range(20):
    start = time.perf_counter()
    sandbox.run("true")
    times.append((time.perf_counter() - start) * 1000)
print(sys.argv[1], "10,000 files: median", round(statistics.median(times), 1), "ms")
sandbox.close()
if workspace is None:
    shutil.rmtree(path)
else:
    workspace.close()
