"""The evaluation sweep: the same rows (both metrics) whichever way the runtime holds the
episodes, trajectories written on request, problems prepared by worker processes as by one."""

import json
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # the tensor rows' kernel, in Triton's interpreter: before it is defined

from mamba_agent.cli import main  # noqa: E402
from mamba_agent.eval import sweep  # noqa: E402
from mamba_agent.tasks import get_task  # noqa: E402
from mamba_agent.trajectory import read_trajectory  # noqa: E402


def eval_rows(tmp_path, name: str, *flags: str) -> list[dict]:
    out = tmp_path / f"{name}.jsonl"
    assert main(["eval", "builtin:addition-mamba", "--sizes", "1,3", "--samples", "2", "--batch-size", "3",
                 "--out", str(out), *flags]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_tensor_rows_give_the_rows_python_rows_give(tmp_path):
    pytest.importorskip("triton")
    keys = ("size", "index", "exact", "correct", "exit", "diverged_at", "model_tokens", "tokens")
    python, tensor = (eval_rows(tmp_path, rows, "--rows", rows) for rows in ("python", "tensor"))
    assert [[r[k] for k in keys] for r in python] == [[r[k] for k in keys] for r in tensor]
    assert {r["rows"] for r in python} == {"python"} and {r["rows"] for r in tensor} == {"tensor"}
    assert all(r["exact"] and r["correct"] and r["step"] == "numpy" for r in python + tensor)


def test_trajectories_of_a_sample(tmp_path):
    rows = eval_rows(tmp_path, "sampled", "--trajectories", str(tmp_path / "t"), "--trajectory-sample", "1")
    written = [r for r in rows if "trajectory" in r]
    assert sorted((r["size"], r["index"]) for r in written) == [(1, 0), (3, 0)]
    for r in written:
        header, trajectory, end = read_trajectory(r["trajectory"])
        assert header["checkpoint_sha256"] == r["checkpoint_sha256"] and header["size"] == r["size"]
        assert end["exit"] == r["exit"] and end["correct"] == r["correct"] and end["tokens"] == len(trajectory)
    assert main(["eval", "builtin:addition-mamba", "--trajectory-sample", "1"]) == 2


def test_worker_processes_prepare_the_same_problems(monkeypatch):
    task = get_task("logical_graph")
    todo = [(n, i) for n in (2, 5) for i in range(16)]
    alone = list(sweep.prepared(task, todo))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)  # 3 workers' worth of cores
    pooled = list(sweep.prepared(task, todo))
    assert [(p.input, list(e)) for p, e in alone] == [(p.input, list(e)) for p, e in pooled]
