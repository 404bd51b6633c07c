"""The worked example of docs/extending.md, as a user runs it: the plugin package in
examples/plugin installed with pip (into a folder of its own, so the environment running the
tests is left as it was), then found by its entry points alone: `locality`, a short `train` of
its window policy, `solve` and `eval` with that checkpoint, `report`, and `train --data` on the
trajectory that `solve` wrote.

The install is offline (--no-index --no-build-isolation): it builds with the setuptools of this
environment (the test extra asks for one that builds wheels by itself, >= 70.1)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

EXAMPLE = Path(__file__).parent.parent / "examples" / "plugin"


@pytest.mark.slow
def test_the_example_plugin_installs_trains_solves_and_evaluates(tmp_path):
    source, site = tmp_path / "src", tmp_path / "site"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                          "--no-build-isolation", "--target", str(site), str(source)], capture_output=True, text=True)
    assert pip.returncode == 0, "offline build failed (setuptools>=70.1 is in the test extra): " + pip.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}  # one thread: 5x faster on 2 busy cores

    def cli(*argv: str) -> subprocess.CompletedProcess:
        run = subprocess.run([sys.executable, "-m", "mamba_agent", *argv], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert "Traceback" not in run.stderr, run.stderr
        return run

    locality = cli("locality", "--task", "sort", "--per-size", "5")  # `sort` names the entry point only
    assert locality.returncode == 0, locality.stderr
    assert json.loads(locality.stdout)["k"] == 3  # as mamba_sort/task.py says

    train = cli("train", "--task", "sort", "--policy", "window", "--steps", "150", "--batch-size", "32",
                "--save-every", "150", "--out", "runs/sort-window")
    assert train.returncode == 0, train.stderr
    config = json.loads((tmp_path / "runs" / "sort-window" / "config.json").read_text())
    assert config["task"] == "sort" and config["policy"]["kind"] == "window" and config["policy"]["k"] == 4

    shutil.copy(EXAMPLE / "sort.yaml", tmp_path)  # its checkpoint: runs/sort-window, where train wrote it
    solve = cli("solve", "sort.yaml", "--json", "--trajectory", "sort.jsonl")
    result, text = json.loads(solve.stdout), yaml.safe_load((EXAMPLE / "sort.yaml").read_text())["input"]["text"]
    assert solve.returncode == 0 and result["correct"] and result["answer"] == "".join(sorted(text))
    assert len(text) > 50  # trained on 1..10 letters

    more = cli("train", "--data", "sort.jsonl", "--policy", "window", "--steps", "3", "--batch-size", "2", "--out", "runs/from-solve")
    assert more.returncode == 0, more.stderr  # the trajectory solve recorded is training data as it is
    assert json.loads((tmp_path / "runs" / "from-solve" / "config.json").read_text())["task"] == "sort"

    evaluation = cli("eval", "runs/sort-window", "--sizes", "10,100", "--samples", "4", "--out", "results.jsonl")
    assert evaluation.returncode == 0, evaluation.stderr
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["task"] for r in rows} == {"sort"} and all(r["exact"] and r["correct"] for r in rows)

    report = cli("report", "results.jsonl")
    assert report.returncode == 0 and "### sort" in report.stdout and "10 -> 100 (100%)" in report.stdout
