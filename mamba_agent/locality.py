"""Locality check (docs/locality.md): is every model token a function of the last k tokens?

For oracle trajectories over a range of sizes, map each k-token context (the model sees ids, not
roles) to the model tokens that follow it, and count contexts that map to more than one. A task
is k-local when that count is 0; the smallest such k is the one to report and keep.
"""

from collections import defaultdict

from mamba_agent.trajectory import LEARNED_ROLES, Trajectory
from mamba_agent.vocab import PAD


def contexts(trajectory: Trajectory, k: int):
    """(context, next model token) pairs; the context is left-padded with [PAD]."""
    tokens = [PAD] * k + trajectory.tokens
    for i, role in enumerate(trajectory.roles):
        if role in LEARNED_ROLES:
            yield tuple(tokens[i : i + k]), trajectory.tokens[i]


def conflicts(trajectories: list[Trajectory], k: int) -> int:
    """Number of k-token contexts followed by two or more different model tokens."""
    seen = defaultdict(set)
    for t in trajectories:
        for ctx, nxt in contexts(t, k):
            seen[ctx].add(nxt)
    return sum(len(v) > 1 for v in seen.values())


def smallest_local_k(trajectories: list[Trajectory], k_max: int = 64) -> int | None:
    """The smallest k with no conflicts, or None if there is none up to k_max."""
    for k in range(1, k_max + 1):
        if conflicts(trajectories, k) == 0:
            return k
    return None
