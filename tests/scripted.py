"""A deterministic fake policy: replays recorded trajectories token by token (no model), and the
replay check the task tests share."""

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
