"""Per-command latency of the sandbox backends: `python3 -c pass`, timed from the host.

    python -m mamba_agent.eval.sandbox_latency --runs 50 [--old SITE] [--command "python3 -c pass"]

`--command` is timed as `bash -c COMMAND`. Each backend runs in a worker process of its own, one command at a time, in a workspace holding
the code task's 16-function codebase. With `--old SITE` (a directory whose `mamba_agent` is an
older copy of the package) a second worker runs that code, and the commands alternate between
the two, so that a busy machine slows both alike. Prints one JSON line per backend and code
(median, quartiles, min, max, in ms).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

_WORKER = r"""
import sys, tempfile, time
from pathlib import Path
from mamba_agent.sandboxes import get_sandbox
from mamba_agent.tasks.code_debug import generate
files = generate(16, 0).files()
try:
    from mamba_agent.sandboxes.workspace import Workspace
    workspace = Workspace(files)  # removed when dropped: keep it
    path = workspace.path
except ImportError:  # code from before workspaces: a plain directory, as its task made one
    path = Path(tempfile.mkdtemp(prefix="mamba-agent-code-"))
    for name, text in files.items():
        (path / name).write_text(text)
sandbox = get_sandbox(sys.argv[1], path)
for line in sys.stdin:
    start = time.perf_counter()
    result = sandbox.run(sys.argv[2])
    assert result.exit_code == 0, result
    print(round((time.perf_counter() - start) * 1000, 2), flush=True)
sandbox.close()
"""


def _worker(backend: str, command: str, site: str | None) -> subprocess.Popen:
    env = dict(os.environ)
    if site:
        env["PYTHONPATH"] = site
    return subprocess.Popen([sys.executable, "-c", _WORKER, backend, command], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd="/tmp")


def _ask(worker: subprocess.Popen) -> float:
    worker.stdin.write("run\n")
    worker.stdin.flush()
    return float(worker.stdout.readline())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--backends", default="bubblewrap,docker")
    p.add_argument("--old", help="a directory holding an older mamba_agent package, timed alongside")
    p.add_argument("--command", default="python3 -c pass", help="the command timed (bash -c)")
    args = p.parse_args(argv)
    for backend in args.backends.split(","):
        workers = {"new": _worker(backend, args.command, None)}
        if args.old:
            workers["old"] = _worker(backend, args.command, args.old)
        times = {code: [] for code in workers}
        for code, worker in workers.items():  # one warm-up run each, not counted
            _ask(worker)
        for i in range(args.runs):
            for code in (list(workers) if i % 2 == 0 else list(workers)[::-1]):
                times[code].append(_ask(workers[code]))
        for code, worker in workers.items():
            worker.stdin.close()
            worker.wait()
            t = times[code]
            q1, median, q3 = statistics.quantiles(t, n=4)
            print(json.dumps({"backend": backend, "command": args.command, "code": code, "runs": len(t), "median_ms": round(median, 1),
                              "q1_ms": round(q1, 1), "q3_ms": round(q3, 1), "min_ms": min(t), "max_ms": max(t)}))


if __name__ == "__main__":
    main()
