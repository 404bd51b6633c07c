"""How fast a `mamba-agent view` page of a long trajectory opens in headless Chromium.

    python -m mamba_agent.eval.bench_view [--disks 12] [--repeats 5] [--out results.json]

Records the Hanoi oracle of `--disks` disks (12: 555,633 tokens) through TrajectoryWriter, as
solve would, writes its page, then opens the page `--repeats` times, each in a fresh browser
(eval/browser.py), and reports: the JSONL and HTML sizes, the seconds `view` took, the seconds
from navigation until the page says it is ready (wall, from Python, and the page's own
performance.now()), a first search over every token, a jump to the end, and the DOM's size.
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from mamba_agent.eval.browser import Chromium
from mamba_agent.tasks import get_task
from mamba_agent.trajectory import TrajectoryWriter
from mamba_agent.view import write_view

IN_PAGE = """(() => {
  const t0 = performance.now(); document.getElementById('q').value = '[P4.read]'; search('[P4.read]');
  const t1 = performance.now(); document.getElementById('toend').click();
  const t2 = performance.now();
  return {search_ms: t1 - t0, matches: mStart.length, to_end_ms: t2 - t1,
          dom_elements: document.querySelectorAll('*').length, rows_built: document.querySelectorAll('#rows .row').length};
})()"""


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--disks", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", help="also write the result JSON here")
    args = ap.parse_args()
    task = get_task("hanoi")
    problem = task.problem({"disks": list(range(args.disks, 0, -1))})
    with tempfile.TemporaryDirectory() as tmp:
        jsonl, html = Path(tmp, "hanoi.jsonl"), Path(tmp, "hanoi.html")
        ep = task.episode(problem, writer=TrajectoryWriter(jsonl, {"task": task.name, "input": problem.input}))
        task.solve(ep, problem)
        end = ep.close(task.check(problem, ep.answer))
        started = time.perf_counter()
        write_view(jsonl, html)
        view_s = time.perf_counter() - started
        runs = []
        for _ in range(args.repeats):
            with Chromium(width=1280, height=900) as browser:
                wall = browser.open(html.as_uri(), ready="document.body.dataset.ready")
                runs.append({"open_s": round(wall, 3), "page_ready_ms": int(browser.eval("document.body.dataset.openMs")),
                             **{k: round(v, 1) for k, v in browser.eval(IN_PAGE).items()}})
        version = subprocess.run(["chromium", "--version"], capture_output=True, text=True).stdout.strip()
        result = {
            "date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "cores": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "browser": version, "disks": args.disks, "tokens": end["tokens"], "correct": end["correct"],
            "jsonl_bytes": jsonl.stat().st_size, "html_bytes": html.stat().st_size, "view_s": round(view_s, 2),
            "median_open_s": statistics.median(r["open_s"] for r in runs),
            "median_page_ready_ms": statistics.median(r["page_ready_ms"] for r in runs), "runs": runs,
        }
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
