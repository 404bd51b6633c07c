"""Results say which weights, which trajectory and which code made them; checkpoints of another
trajectory version or format are refused; reports never pool different weights under one label."""

import hashlib
import json
import shutil

import pytest
import torch

from mamba_agent.checkpoint import BUILTIN_DIR, CheckpointError, load_checkpoint, save_checkpoint
from mamba_agent.episode import DIVERGED, FINISHED
from mamba_agent.eval.report import report
from mamba_agent.eval.sweep import evaluate
from mamba_agent import provenance
from mamba_agent.tasks import get_task

task = get_task("addition")


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(BUILTIN_DIR / "addition-mamba", path)
    return path


def edit_config(path, **changes):
    meta = json.loads((path / "config.json").read_text())
    meta.update(changes)
    (path / "config.json").write_text(json.dumps(meta))


def test_checkpoint_sha256_is_the_weights_files(checkpoint):
    _, meta = load_checkpoint(checkpoint)
    assert meta["checkpoint_sha256"] == hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
    assert meta["task_version"] == task.version


@pytest.mark.parametrize("changes,said", [
    ({"task_version": 99}, "version 99 of the addition trajectory"),
    ({"task_version": None}, "version None of the addition trajectory"),
    ({"version": 1}, "checkpoint format 1"),
    ({"task": "subtraction"}, "unknown task 'subtraction'"),
])
def test_a_checkpoint_of_another_trajectory_or_format_is_refused(checkpoint, changes, said):
    edit_config(checkpoint, **changes)
    with pytest.raises(CheckpointError, match=said) as e:
        load_checkpoint(checkpoint)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_weights_and_config_are_one_line_errors(checkpoint, damage):
    weights = checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\xff" * 100}[damage])
    with pytest.raises(CheckpointError, match="cannot load the weights") as e:
        load_checkpoint(checkpoint)
    assert "\n" not in str(e.value)
    (checkpoint / "config.json").write_text('{"format": ')
    with pytest.raises(CheckpointError, match="not readable JSON"):
        load_checkpoint(checkpoint)


def test_eval_rows_carry_weights_trajectory_version_and_commit(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("MAMBA_AGENT_COMMIT", "abc123 (given)")
    provenance.commit.cache_clear()
    out = tmp_path / "r.jsonl"
    rows = evaluate(str(checkpoint), [3], samples=2, out=out, label="x", progress=False)
    sha = hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
    assert len(rows) == 2
    assert all(r["checkpoint_sha256"] == sha and r["task_version"] == task.version and r["commit"] == "abc123 (given)"
               for r in rows)
    # Other weights under the same label: evaluated anew (not skipped as done), reported apart.
    policy, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        next(policy.parameters()).mul_(0.5)
    save_checkpoint(policy, checkpoint, "addition", {})
    rows2 = evaluate(str(checkpoint), [3], samples=2, out=out, label="x", progress=False)
    assert len(rows2) == 2 and {r["checkpoint_sha256"] for r in rows2} != {sha}
    table = report(rows + rows2)
    assert f"| x @{sha[:8]} |" in table and f"| x @{rows2[0]['checkpoint_sha256'][:8]} |" in table
    provenance.commit.cache_clear()


def test_commit_names_this_repository_and_marks_local_changes(monkeypatch):
    monkeypatch.delenv("MAMBA_AGENT_COMMIT", raising=False)
    provenance.commit.cache_clear()
    c = provenance.commit()
    provenance.commit.cache_clear()
    assert c == "unknown" or (len(c.removesuffix("+dirty")) == 12 and all(ch in "0123456789abcdef" for ch in c[:12]))


def test_both_metrics_when_an_episode_runs_past_its_divergence():
    """A policy that writes a different trajectory: `exact` is false either way; run to its end,
    the checker still judges the answer; stopped at the divergence, there is no answer to judge."""
    p = task.problem({"a": "12", "b": "34"})
    oracle = task.oracle(p).model_tokens()
    for stop in (True, False):
        ep = task.episode(p, keep=True, expected=oracle[:5] + [0] + oracle[5:], stop_at_divergence=stop)
        for t in oracle:
            if ep.done:
                break
            ep.act(t)
        assert ep.diverged_at == 5 and not ep.exact
        assert ep.exit == (DIVERGED if stop else FINISHED)
        if not stop:
            assert task.check(p, ep.answer) and ep.close(True)["diverged_at"] == 5
