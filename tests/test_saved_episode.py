"""Episode checkpoints: an episode stopped at random points, saved and resumed in fresh objects
gives exactly the tokens, answer and trajectory file of one that ran through, for every policy
with a fixed-size state, greedy and sampled; `solve` saves on SIGINT, SIGTERM and its time limit,
and `mamba-agent resume` finishes the job as an uninterrupted solve would."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mamba_agent.checkpoint import load_checkpoint
from mamba_agent.cli import main
from mamba_agent.episode import Limits
from mamba_agent.policies import build_policy
from mamba_agent.runtime import Sampler, run_episodes
from mamba_agent.saved_episode import EpisodeRun, load, restore
from mamba_agent.steppers import Stepper
from mamba_agent.tasks import get_task
from mamba_agent.trajectory import TrajectoryWriter, read_trajectory
from mamba_agent.vocab import VOCAB_SIZE

CUDA = torch.cuda.is_available()


def small(kind: str):
    torch.manual_seed(0)
    sizes = {"mamba": {"d_model": 32, "n_layer": 2}, "mamba2": {"d_model": 32, "n_layer": 2}, "lstm": {"hidden": 32, "n_layer": 2}, "gru": {"hidden": 32, "n_layer": 2}}
    return build_policy({"kind": kind, "vocab_size": VOCAB_SIZE, **sizes[kind]}).eval(), {"checkpoint_sha256": "test"}


def lines(path: Path) -> list[dict]:
    """The trajectory file's lines, the end line's clock left out."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        row.get("end", {}).pop("seconds", None)
    return rows


def run_through(policy, task, problem, path, temperature, device="cpu"):
    ep = task.episode(problem, writer=TrajectoryWriter(path, {"task": task.name}), max_tokens=3000)
    run_episodes(policy, [ep], Sampler(temperature, seed=5), device=device)
    ep.close(task.check(problem, ep.answer, ep.tools))
    return ep


def run_in_pieces(policy, meta, task, problem, path, temperature, stops, tmp, device="cpu", resume_policy=None):
    """Stop after each of `stops` progress calls (every step), save, rebuild everything, go on."""
    ep = task.episode(problem, writer=TrajectoryWriter(path, {"task": task.name}), max_tokens=3000)
    sampler, saved, calls = Sampler(temperature, seed=5), None, [0]
    for k in stops + [None]:
        run = EpisodeRun(task, problem, "test", meta, ep, sampler, Limits(), 3000)

        def progress(loop, k=k, run=run):
            calls[0] += 1
            if k is not None and calls[0] >= k and not run.episode.done:
                run.save(tmp, loop)
                return True
            return False

        run_episodes(policy, [ep], sampler, on_progress=progress, progress_seconds=-1, resume=saved, device=device)
        if ep.done:
            break
        ep.writer._file.close()  # the process that stopped lets go of everything
        record = load(tmp)
        policy = resume_policy or policy
        ep = task.episode(problem, max_tokens=3000)
        sampler = Sampler(record["temperature"])
        saved, _ = restore(record, task, ep)
        device = "cpu" if resume_policy is not None else device
    ep.close(task.check(problem, ep.answer, ep.tools))
    return ep


@pytest.mark.parametrize("kind", ["shipped", "mamba", "mamba2", "lstm", "gru"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_interrupted_and_resumed_gives_the_uninterrupted_tokens(kind, temperature, tmp_path):
    if kind == "shipped":
        policy, meta = load_checkpoint("builtin:addition-mamba")
    else:
        policy, meta = small(kind)
    task = get_task("addition")
    problem = task.problem({"a": "98765432109", "b": "12345678"})
    whole = run_through(policy, task, problem, tmp_path / "whole.jsonl", temperature)
    rng = random.Random(f"{kind}-{temperature}")
    stops = sorted(rng.sample(range(1, max(3, min(whole.n_tokens - 30, 500))), 3))
    pieces = run_in_pieces(policy, meta, task, problem, tmp_path / "pieces.jsonl", temperature, stops, tmp_path / "ep")
    assert pieces.n_tokens == whole.n_tokens and pieces.answer == whole.answer
    assert lines(tmp_path / "pieces.jsonl") == lines(tmp_path / "whole.jsonl")
    if kind == "shipped" and temperature == 0:
        assert pieces.exit == "finished" and task.check(problem, pieces.answer)


def test_the_search_tool_and_an_open_argument_are_saved_too(tmp_path):
    """Logical graph: the search memory holds the thoughts; stops land inside [FIND] arguments."""
    policy, meta = load_checkpoint("builtin:logical_graph-mamba")
    task = get_task("logical_graph")
    problem = task.random_problem(random.Random(3), 12)
    whole = run_through(policy, task, problem, tmp_path / "whole.jsonl", 0.0)
    stops = list(range(40, whole.n_model_tokens, 97))[:6]
    run_in_pieces(policy, meta, task, problem, tmp_path / "pieces.jsonl", 0.0, stops, tmp_path / "ep")
    assert lines(tmp_path / "pieces.jsonl") == lines(tmp_path / "whole.jsonl") and whole.exit == "finished"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_saved_on_cuda_resumes_on_the_cpu(tmp_path):
    policy, meta = load_checkpoint("builtin:addition-mamba", device="cuda")
    task = get_task("addition")
    problem = task.problem({"a": "9" * 40, "b": "1"})
    whole = run_through(policy, task, problem, tmp_path / "whole.jsonl", 0.0, device="cuda")
    run_in_pieces(policy, meta, task, problem, tmp_path / "c.jsonl", 0.0, [50, 400], tmp_path / "c", device="cuda")
    assert lines(tmp_path / "c.jsonl") == lines(tmp_path / "whole.jsonl")
    cpu_policy, _ = load_checkpoint("builtin:addition-mamba")
    moved = run_in_pieces(policy, meta, task, problem, tmp_path / "m.jsonl", 0.0, [300], tmp_path / "m", device="cuda",
                          resume_policy=cpu_policy)
    assert moved.exit == "finished" and moved.answer == whole.answer


def test_a_kv_cache_is_not_saved(tmp_path):
    policy, _ = load_checkpoint("builtin:addition-transformer")
    with pytest.raises(NotImplementedError, match="fixed-size state"):
        Stepper(policy, 1).state_dict()


def solve_cmd(task_file, traj, *extra):
    return [sys.executable, "-m", "mamba_agent", "solve", str(task_file), "--trajectory", str(traj), "--json", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_solve_saves_on_a_signal_and_resume_finishes_as_one_solve(tmp_path, sig, code, capsys):
    task_file = tmp_path / "t.yaml"
    task_file.write_text("task: addition\nsize: 800\nseed: 4\n")
    assert main(["solve", str(task_file), "--trajectory", str(tmp_path / "whole.jsonl"), "--json"]) == 0
    whole = json.loads(capsys.readouterr().out)
    traj = tmp_path / "cut.jsonl"
    proc = subprocess.Popen(solve_cmd(task_file, traj), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (traj.exists() and traj.stat().st_size > 20_000):
        time.sleep(0.1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code and "Traceback" not in err and "saved: mamba-agent resume" in err, err
    assert read_trajectory(traj)[2]["exit"] == "interrupted"  # closed, with its reason
    assert main(["resume", str(tmp_path / "cut.episode"), "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    for key in ("answer", "correct", "tokens", "exit", "checkpoint_sha256"):
        assert resumed[key] == whole[key], key
    assert lines(traj) == lines(tmp_path / "whole.jsonl")
    assert not (tmp_path / "cut.episode" / "episode.pt").exists()  # finished: nothing to resume
    assert main(["resume", str(tmp_path / "cut.episode")]) == 2


@pytest.mark.slow
def test_the_time_limit_saves_and_resume_goes_on(tmp_path, capsys):
    task_file = tmp_path / "t.yaml"
    task_file.write_text("task: addition\nsize: 600\nseed: 1\nlimits: {max_seconds: 0.5}\n")
    assert main(["solve", str(task_file), "--trajectory", str(tmp_path / "t.jsonl"), "--json"]) == 1
    first = json.loads(capsys.readouterr().out)
    assert first["exit"] == "time_limit" and first["resume"] == f"mamba-agent resume {tmp_path / 't.episode'}"
    rc = None
    for _ in range(200):  # half a second a run until it is done
        rc = main(["resume", str(tmp_path / "t.episode"), "--json", "--max-seconds", "60"])
        result = json.loads(capsys.readouterr().out)
        if result["exit"] != "time_limit":
            break
    assert rc == 0 and result["exit"] == "finished" and result["correct"]


def test_an_older_or_damaged_record_resumes_or_gets_one_line(tmp_path, capsys):
    task_file = tmp_path / "t.yaml"
    task_file.write_text("task: addition\nsize: 300\nseed: 2\nlimits: {max_seconds: 0.2}\n")
    assert main(["solve", str(task_file), "--trajectory", str(tmp_path / "t.jsonl"), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["exit"] == "time_limit"
    path = tmp_path / "t.episode" / "episode.pt"
    record = torch.load(path, weights_only=True)
    damaged = {**record, "episode": {k: v for k, v in record["episode"].items() if k != "n_tokens"}}
    torch.save(damaged, path)
    assert main(["resume", str(tmp_path / "t.episode"), "--json"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert "does not fit" in error and "n_tokens" in error and "\n" not in error
    version_1 = {**record, "version": 1, "episode": {k: v for k, v in record["episode"].items() if k != "calls"}}
    torch.save(version_1, path)  # saved before the repeat rule joined the record
    assert main(["resume", str(tmp_path / "t.episode"), "--json", "--max-seconds", "120"]) == 0
    assert json.loads(capsys.readouterr().out)["correct"] is True
