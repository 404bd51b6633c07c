"""GPU tests of the runtime: the shipped models through every row form and step on CUDA (kernels
compiled, steps in CUDA graphs) end each episode as the CPU's Python path does; watched episodes
write the same trajectory. Skipped without CUDA."""

import random

import pytest
import torch

from mamba_agent.checkpoint import load_checkpoint
from mamba_agent.runtime import run_episodes
from mamba_agent.steppers import step_error
from mamba_agent.tasks import get_task
from mamba_agent.trajectory import TrajectoryWriter, read_trajectory

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

CASES = {  # task, checkpoint, sizes (the last few longer than training's)
    "addition": ("addition", "builtin:addition-mamba", [1, 7, 30, 120, 3]),
    "multiplication-2": ("multiplication-2", "builtin:multiplication-2-mamba", [2, 10, 40]),
    "hanoi": ("hanoi", "builtin:hanoi-mamba", [2, 5, 9]),
    "logical_graph": ("logical_graph", "builtin:logical_graph-mamba", [3, 10, 60]),
}


def outcomes(name: str, device: str, tmp_path, **how) -> list[tuple]:
    task_name, checkpoint, sizes = CASES[name]
    task = get_task(task_name)
    policy, _ = load_checkpoint(checkpoint, device=device)
    rng = random.Random(3)
    problems = [task.random_problem(rng, n) for n in sizes]
    label = "-".join(f"{k}_{v}" for k, v in how.items()) or "cpu"
    episodes = [task.episode(p, expected=task.oracle_tokens(p), stop_at_divergence=False,
                             writer=TrajectoryWriter(tmp_path / f"{label}-{i}.jsonl", {}) if i == 1 else None)
                for i, p in enumerate(problems)]
    run_episodes(policy, episodes, batch_size=len(problems) - 1, device=device, **how)  # a row is refilled
    for p, ep in zip(problems, episodes):
        ep.close(task.check(p, ep.answer))
    _, trajectory, end = read_trajectory(tmp_path / f"{label}-1.jsonl")
    return [(ep.exit, ep.exact, ep.n_tokens, ep.diverged_at, ep.answer) for ep in episodes] + [
        (trajectory.tokens, trajectory.roles, {**end, "seconds": 0})]


CPU = {}  # name -> the CPU's outcomes, computed once


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("how", [dict(rows="tensor", step="split"), dict(rows="tensor", step="fused"),
                                 dict(rows="python", step="fused"), dict(rows="python", step="split")],
                         ids=["tensor-split", "tensor-fused", "python-fused", "python-split"])
def test_every_path_ends_as_the_cpu(name, how, tmp_path):
    policy, _ = load_checkpoint(CASES[name][1], device="cuda")
    if why := step_error(how["step"], policy, "cuda"):
        pytest.skip(why)
    if name not in CPU:
        CPU[name] = outcomes(name, "cpu", tmp_path, rows="python", step="numpy")
    assert outcomes(name, "cuda", tmp_path, **how) == CPU[name]


def test_the_gpu_picks_tensor_rows_and_the_split_step():
    from mamba_agent.runtime import plan

    task = get_task("addition")
    policy, _ = load_checkpoint("builtin:addition-mamba", device="cuda")
    episode = task.episode(task.random_problem(random.Random(0), 5))
    assert plan(policy, episode, "cuda", 0.0) == ("tensor", "split")
    assert plan(policy, episode, "cuda", 0.5)[0] == "python"  # sampling: the tools in Python
