"""Training on trajectory files (`train --data`): the runtime's own JSONL, recorded through the
runtime as `solve` records it, gives the batches the generator gives for the same trajectories;
every trajectory once an epoch, shuffled by the seed; resumable; bad files are one-line errors."""

import json
import random
import shutil

import pytest
import safetensors.torch
import torch

from mamba_agent.cli import main
from mamba_agent.data import DataError, TrajectoryFiles
from mamba_agent.runtime import run_episodes
from mamba_agent.tasks import get_task
from mamba_agent.train import Batches, pad_batch, step_trajectories
from mamba_agent.trajectory import TrajectoryWriter, read_trajectories
from mamba_agent.vocab import PAD
from tests.scripted import ScriptedPolicy

task = get_task("addition")
STEPS, B = 3, 4


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train several times faster on one thread than on two busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def record(folder, steps=STEPS, seed=0) -> list:
    """The generator's trajectories of `steps` steps, run through the runtime with a policy that
    replays them and written by TrajectoryWriter as `solve` writes them: one file each, except
    that the first two are one file (cat of two). Returns the trajectories, in step order."""
    folder.mkdir(exist_ok=True)
    trajs, episodes = [], []
    for step in range(steps):
        rng = random.Random(f"{seed}-0-{step}")  # the generator's seed of this step
        for _ in range(B):
            p = task.training_problem(rng)
            writer = TrajectoryWriter(folder / f"{len(episodes)}.jsonl", {"task": "addition", "input": p.input,
                                                                             "task_version": task.version})
            episodes.append((p, task.episode(p, writer=writer)))
            trajs.append(task.oracle(p))
    run_episodes(ScriptedPolicy(trajs), [ep for _, ep in episodes])
    for p, ep in episodes:
        ep.close(task.check(p, ep.answer))
    both = (folder / "0.jsonl").read_text() + (folder / "1.jsonl").read_text()
    (folder / "1.jsonl").unlink()
    (folder / "0.jsonl").write_text(both)
    return trajs


def loader_batches(data: Batches, workers: int = 0) -> list:
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers)
    return [b for block in loader for b in block]


def rows(batch) -> list[tuple]:
    inputs, targets, _ = batch
    full = torch.cat([inputs[:, :1], targets], 1)
    return [tuple(t[t != PAD].tolist()) for t in full]


def test_file_batches_are_the_generators_batches_of_the_same_trajectories(tmp_path):
    trajs = record(tmp_path / "recorded")
    assert trajs == [t for s in range(STEPS) for t in step_trajectories(task, 0, 0, s, B)]
    files = TrajectoryFiles([str(tmp_path / "recorded")])
    assert len(files) == STEPS * B and len(files.paths) == STEPS * B - 1 and files.task == "addition"
    index = {tuple(t.tokens): i for i, t in enumerate(trajs)}
    batches = loader_batches(Batches("addition", 0, 0, B, 0, STEPS, files=files, file_rows=B))
    seen = []
    for batch in batches:
        ids = [index[r] for r in rows(batch)]
        expected = pad_batch([trajs[i] for i in ids])  # the generator's trajectories, roles and all
        assert all(torch.equal(x, y) for x, y in zip(batch, expected))
        seen += ids
    assert sorted(seen) == list(range(STEPS * B)) and seen != sorted(seen)  # each once an epoch, shuffled

    resumed = loader_batches(Batches("addition", 0, 0, B, 1, STEPS + 2, files=files, file_rows=B), workers=2)
    assert all(torch.equal(x, y) for a, b in zip(batches[1:], resumed) for x, y in zip(a, b))
    next_epoch = [index[r] for b in resumed[STEPS - 1:] for r in rows(b)]
    assert len(next_epoch) == 2 * B and next_epoch != seen[:2 * B]  # epoch 1: another order
    other_seed = [index[r] for b in loader_batches(Batches("addition", 1, 0, B, 0, STEPS, files=files, file_rows=B)) for r in rows(b)]
    assert sorted(other_seed) == sorted(seen) and other_seed != seen

    mixed = loader_batches(Batches("addition", 0, 0, B, 0, STEPS, files=files, file_rows=1))
    for step, batch in enumerate(mixed):  # 3 of 4 rows generated as without files, then 1 from the files
        assert rows(batch)[:3] == [tuple(t.tokens) for t in step_trajectories(task, 0, 0, step, B)[:3]]
        assert rows(batch)[3] == rows(batches[0])[step]  # stream positions 0, 1, 2


def test_train_on_recorded_trajectories_resumes_exactly_and_notices_changed_files(tmp_path, capsys):
    record(tmp_path / "recorded")
    common = ["train", "--data", str(tmp_path / "recorded"), "--policy", "gru", "--set", "d_model=16", "--set", "hidden=16",
              "--batch-size", "4", "--save-every", "2", "--device", "cpu"]
    assert main(common + ["--steps", "4", "--out", str(tmp_path / "straight")]) == 0  # 16 rows: into a second epoch
    summary = json.loads(capsys.readouterr().out)
    assert summary["task_sizes"].startswith("12 trajectories of addition in 11 files")
    assert main(common + ["--steps", "2", "--out", str(tmp_path / "resumed")]) == 0
    assert main(common + ["--steps", "4", "--data-workers", "2", "--out", str(tmp_path / "resumed")]) == 0
    w1, w2 = (safetensors.torch.load_file(tmp_path / run / "model.safetensors") for run in ("straight", "resumed"))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    meta = json.loads((tmp_path / "resumed" / "config.json").read_text())
    assert meta["task"] == "addition" and meta["training"]["config"]["data"] == [str(tmp_path / "recorded")]

    shutil.copy(tmp_path / "recorded" / "2.jsonl", tmp_path / "recorded" / "extra.jsonl")
    capsys.readouterr()
    assert main(common + ["--steps", "5", "--out", str(tmp_path / "resumed")]) == 2
    assert "--data: the trajectory files changed since" in capsys.readouterr().err


def test_lookup_counts_file_trajectories_too(tmp_path, capsys):
    record(tmp_path / "recorded")
    assert main(["train", "--data", str(tmp_path / "recorded"), "--policy", "lookup", "--set", "k=7", "--steps", "3",
                 "--batch-size", "4", "--out", str(tmp_path / "lookup")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["problems"] == 12 and summary["conflicts"] == 0 and summary["contexts"] > 50


def lines_of(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def damage(lines: list[dict], how: str) -> list[dict]:
    header, *runs, end = lines
    if how == "format version":
        return [{**header, "version": 2}, *runs, end]
    if how == "vocabulary":
        return [{**header, "vocab_version": 0}, *runs, end]
    if how == "task version":
        return [{**header, "task_version": task.version + 1}, *runs, end]
    if how == "other task":
        return [{**header, "task": "hanoi"}, *runs, end]
    if how == "unknown task":
        return [{**header, "task": "subtraction"}, *runs, end]
    if how == "no end":
        return [header, *runs]
    if how == "no model tokens":
        return [header, *(r for r in runs if r["role"] in ("input", "observation")), end]
    if how == "token":
        return [header, {**runs[0], "tokens": [1000]}, *runs[1:], end]
    if how == "role":
        return [header, {**runs[0], "role": "question"}, *runs[1:], end]
    if how == "results":
        return [{"label": "runs/x", "task": "addition", "size": 5, "exact": True}]
    raise AssertionError(how)


@pytest.mark.parametrize("how, said", [
    ("format version", "2.jsonl: trajectory version 2 (vocabulary 1); this mamba-agent reads version 1"),
    ("vocabulary", "2.jsonl: trajectory version 1 (vocabulary 0); this mamba-agent reads version 1 (vocabulary 1)"),
    ("task version", "2.jsonl:1: recorded on version 2 of the addition trajectory, this addition is version 1"),
    ("other task", "2.jsonl:1: a trajectory of task 'hanoi', and this run trains 'addition': give one task's files"),
    ("unknown task", "0.jsonl:1: its task is not known here (unknown task 'subtraction'"),
    ("no end", "2.jsonl:1: the trajectory has no end line (its run did not finish)"),
    ("no model tokens", "2.jsonl:1: a trajectory with no model tokens (thought, command, output) to learn"),
    ("token", "2.jsonl: line 2: tokens must be a list of token ids 0..279"),
    ("role", "2.jsonl: line 2: role 'question' is none of input, thought, command, observation, output"),
    ("results", '2.jsonl: line 1: not a mamba-agent trajectory (no "format": "mamba-agent-trajectory" header before it)'),
])
def test_a_bad_trajectory_file_is_one_line_naming_it(tmp_path, capsys, how, said):
    record(tmp_path / "d", steps=1)
    target = tmp_path / "d" / ("0.jsonl" if how == "unknown task" else "2.jsonl")  # 0.jsonl holds two
    target.write_text("".join(json.dumps(x) + "\n" for x in damage(lines_of(target), how)))
    assert main(["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("mamba-agent train: error: --data: ") and said in err, err
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_missing_empty_truncated_and_misweighted_data(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    record(tmp_path / "d", steps=1)
    cut = tmp_path / "d" / "3.jsonl"
    cut.write_text(cut.read_text()[:-30])  # a crash mid-line
    for argv, said in [
        (["--data", str(tmp_path / "nowhere")], "--data: " + str(tmp_path / "nowhere") + ": no such file or folder"),
        (["--data", str(tmp_path / "empty")], "a folder with no .jsonl files under it"),
        (["--data", str(tmp_path / "d")], "3.jsonl:1: the trajectory has no end line (its run did not finish)"),
        (["--data-weight", "0.5"], "--data-weight: give the trajectory files too (--data PATH)"),
        (["--data", str(tmp_path / "empty"), "--data-weight", "2"], "--data-weight: the share of each batch read from --data, at most 1, got 2"),
    ]:
        assert main(["train", *argv, "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and said in err, err


def test_a_file_may_hold_several_trajectories_and_one_is_read_at_its_offset(tmp_path):
    trajs = record(tmp_path / "d", steps=1)
    found = list(read_trajectories(tmp_path / "d" / "0.jsonl"))
    assert [t.tokens for _, _, _, t, _ in found] == [trajs[0].tokens, trajs[1].tokens]
    offset, line = found[1][:2]
    assert line > 2 and next(read_trajectories(tmp_path / "d" / "0.jsonl", offset, line))[3].roles == trajs[1].roles
    with pytest.raises(DataError, match="a trajectory of task 'addition', and this run trains 'hanoi'"):
        TrajectoryFiles([str(tmp_path / "d")], task="hanoi")
