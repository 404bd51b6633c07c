"""Old and new code side by side on this machine, interleaved: the same command run alternately
with each installed copy (PYTHONPATH), a JSON line per run.

    python ab.py OLD_SITE NEW_SITE ROUNDS OUT.jsonl -- mamba-agent ARGS...

Each site is `pip install --no-deps --target SITE` of one commit (`git archive COMMIT`). The
rounds alternate which copy goes first; what each run prints as JSON on stdout (solve --json) is
kept, with its wall time. `{out}` in the command becomes a fresh results file a run (eval), of
which the episodes' seconds and verdicts are kept.
"""

import json
import os
import subprocess
import sys
import time

old, new, rounds, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
command = sys.argv[sys.argv.index("--") + 1 :]
with open(out, "a") as f:
    for r in range(rounds):
        for name, site in [("old", old), ("new", new)][:: 1 if r % 2 == 0 else -1]:
            env = {**os.environ, "PYTHONPATH": site}
            results = f"/tmp/ab-{os.getpid()}-{r}-{name}.jsonl"
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "mamba_agent", *[a.replace("{out}", results) for a in command]],
                                  env=env, capture_output=True, text=True, cwd="/tmp")
            wall = time.perf_counter() - start
            last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "{}"
            try:
                result = json.loads(last)
            except json.JSONDecodeError:
                result = {"stdout_tail": done.stdout[-300:]}
            row = {"round": r, "code": name, "site": site, "rc": done.returncode, "wall_s": round(wall, 2),
                   "command": command, **{k: result.get(k) for k in ("tokens", "seconds", "correct", "exit") if k in result}}
            if os.path.exists(results):
                evaluated = [json.loads(line) for line in open(results)]
                row |= {"episodes": len(evaluated), "episode_seconds": round(sum(e["seconds"] for e in evaluated), 2),
                        "exact": sum(bool(e["exact"]) for e in evaluated), "correct": sum(bool(e["correct"]) for e in evaluated)}
                os.remove(results)
            if done.returncode not in (0, 1):
                row["stderr"] = done.stderr[-500:]
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(json.dumps(row), flush=True)
