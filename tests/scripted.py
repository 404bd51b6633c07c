"""A deterministic fake policy: replays recorded trajectories token by token (no model), the
replay check the task tests share, and oracle trajectories recorded to a file as `solve` does."""

import torch

from mamba_agent.trajectory import Trajectory
from mamba_agent.vocab import VOCAB_SIZE


class ScriptedPolicy(torch.nn.Module):
    """Row r predicts the next token of `scripts[r]` after however many tokens it was fed."""

    def __init__(self, scripts: list[Trajectory]):
        super().__init__()
        self.scripts = [s.tokens + [s.tokens[-1]] for s in scripts]
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the runtime a device

    def init_state(self, batch_size: int, device=None) -> list[int]:
        assert batch_size == len(self.scripts)
        return [0] * batch_size

    def _logits(self, state: list[int]) -> torch.Tensor:
        logits = torch.full((len(state), VOCAB_SIZE), -1e9)
        for r, pos in enumerate(state):
            logits[r, self.scripts[r][min(pos, len(self.scripts[r]) - 1)]] = 0.0
        return logits

    def step(self, token: torch.Tensor, state: list[int]) -> torch.Tensor:
        for r in range(len(state)):
            state[r] += 1
        return self._logits(state)

    def forward(self, tokens: torch.Tensor, state: list[int]) -> torch.Tensor:
        for r in range(len(state)):
            state[r] += tokens.shape[1]
        return self._logits(state).unsqueeze(1)


def replay_oracles(task, problems) -> list:
    """Each problem's oracle model tokens replayed through the runtime, batched, on fresh tools:
    asserts every episode finishes with the oracle's trajectory (roles too) and the reference
    answer, which the checker accepts. Returns (oracle, episode) pairs for further checks."""
    from mamba_agent.episode import FINISHED
    from mamba_agent.runtime import run_episodes

    oracles = [task.oracle(p) for p in problems]
    episodes = [task.episode(p, keep=True, expected=o.model_tokens()) for p, o in zip(problems, oracles)]
    run_episodes(ScriptedPolicy(oracles), episodes)
    for p, o, ep in zip(problems, oracles, episodes):
        assert ep.exit == FINISHED
        assert ep.trajectory.tokens == o.tokens and ep.trajectory.roles == o.roles
        assert task.check(p, ep.answer, ep.tools) and ep.answer == p.reference
    return list(zip(oracles, episodes))


def record(task, problem, path, wrong_at=None, **episode) -> dict:
    """Drive the oracle through an episode that streams to `path` (as solve does) and close it;
    the end line. `wrong_at`: the model token there becomes a '7' (with `expected=`, the oracle's
    model tokens, the episode then diverges there). `episode`: more Episode arguments."""
    from mamba_agent.trajectory import TrajectoryWriter
    from mamba_agent.vocab import encode

    ep = task.episode(problem, writer=TrajectoryWriter(path, {"task": task.name, "input": problem.input}), **episode)
    if wrong_at is None:
        task.solve(ep, problem)
    else:
        for k, token in enumerate(task.oracle(problem).model_tokens()):
            ep.act(encode("7")[0] if k == wrong_at else token)
            if ep.done:
                break
    return ep.close(task.check(problem, ep.answer, ep.tools))
