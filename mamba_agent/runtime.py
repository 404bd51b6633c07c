"""The agent loop: a policy decodes several episodes in lockstep, tools in the loop.

Every row consumes exactly one token per step: a forced token (its prompt, then each tool
observation) if it has one queued, else the token sampled from its last logits, which goes to
`Episode.act` and may queue an observation. When every live row has forced tokens queued, the
shortest run of them is prefilled in one call into the current state. The loop holds the policy
state and the queues, never the token history: episodes stream their trajectories to disk.
"""

import itertools
import time
from collections import deque
from collections.abc import Callable

import torch

from mamba_agent.episode import Episode
from mamba_agent.vocab import PAD


class Sampler:
    """Greedy (temperature 0) or temperature sampling with its own seeded generator."""

    def __init__(self, temperature: float = 0.0, seed: int = 0):
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.temperature = temperature
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, logits: torch.Tensor) -> list[int]:  # logits (B, V) -> B token ids
        if self.temperature == 0:
            return logits.argmax(-1).tolist()
        probs = torch.softmax(logits.float().cpu() / self.temperature, dim=-1)  # (B, V)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1).tolist()


@torch.inference_mode()
def run_episodes(
    policy,
    episodes: list[Episode],
    sampler: Sampler | None = None,
    on_progress: Callable[[list[Episode]], None] | None = None,
    progress_seconds: float = 0.1,
):
    """Decode until every episode is done; `on_progress(episodes)` is called every
    `progress_seconds` and once at the end. Returns the final policy state (for measurements)."""
    sampler = sampler or Sampler()
    device = next(itertools.chain(policy.parameters(), policy.buffers())).device  # lookup tables have no parameters
    state = policy.init_state(len(episodes), device=device)
    queues = [deque(ep.prompt) for ep in episodes]
    sampled: list[int] = []
    last_progress = time.monotonic()
    while True:
        live = [r for r, ep in enumerate(episodes) if not ep.done]
        if not live:
            break
        chunk = min(len(queues[r]) for r in live)
        if chunk > 1:  # every live row has forced tokens: prefill them together
            rows = [[queues[r].popleft() for _ in range(chunk)] if r in live else [PAD] * chunk for r in range(len(episodes))]
            logits = policy(torch.tensor(rows, device=device), state)[:, -1]  # (B, V)
        else:
            inputs = []
            for r, ep in enumerate(episodes):
                if ep.done:
                    inputs.append(PAD)
                elif queues[r]:
                    inputs.append(queues[r].popleft())
                else:
                    token = sampled[r]
                    queues[r].extend(ep.act(token))
                    inputs.append(token)
            logits = policy.step(torch.tensor(inputs, device=device), state)  # (B, V)
        sampled = sampler(logits)
        if on_progress is not None and time.monotonic() - last_progress > progress_seconds:
            on_progress(episodes)
            last_progress = time.monotonic()
    if on_progress is not None:
        on_progress(episodes)
    return state
