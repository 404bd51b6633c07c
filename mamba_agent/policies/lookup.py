"""The lookup-table policy (docs/locality.md): predict the model token that followed this
k-token context in the training trajectories.

It is fitted by counting, not trained (`fit_lookup`). On a k-local task it generalises exactly
to any size, as long as training covered every context; on an unseen context it predicts [ERR],
which the episode records as a malformed command, so the run fails loudly instead of guessing.

Contexts are those of `mamba_agent.locality.contexts`: the k tokens before the predicted one,
left-padded with [PAD]. The state is the last k tokens of each row, starting as all [PAD], so
`forward(tokens)` from no state equals stepping from `init_state`. The table lives in two buffers
(`contexts` (M, k), `next_token` (M,)) sized by `config.table_size`, so a checkpoint stores it
like any weights; a dict built from them on first use (and again after they are written, e.g. by
`load_state_dict`) does the O(1) lookups. There are no parameters: `num_parameters()` is 0.
"""

from collections import Counter
from typing import Literal

import torch
from pydantic import NonNegativeInt, PositiveInt, model_validator
from torch import Tensor

from mamba_agent.locality import contexts
from mamba_agent.policies.base import Policy, PolicyConfig
from mamba_agent.trajectory import Trajectory
from mamba_agent.vocab import ERR, PAD

_NEVER = -1e9  # logit of every token but the predicted one: finite, so losses stay finite


class LookupConfig(PolicyConfig):
    """A lookup table from k-token contexts to the next model token."""

    kind: Literal["lookup"] = "lookup"
    """Policy kind."""
    k: PositiveInt
    """Context length: the table maps the last k tokens to the next model token."""
    table_size: NonNegativeInt = 0
    """Number of contexts in the table (set by `fit_lookup`; sizes the buffers a checkpoint
    loads into)."""
    backoff: bool = False
    """On an unseen context, predict from its longest suffix that training saw (the token most
    contexts with that suffix predict), as an n-gram model backs off, instead of [ERR]. It lets
    the table ignore tokens that never matter, such as the operand digits before the first
    command; on a task that is not local it guesses instead of failing loudly."""

    @model_validator(mode="after")
    def _check_vocab(self) -> "LookupConfig":
        if self.vocab_size <= max(ERR, PAD):
            raise ValueError(f"vocab_size {self.vocab_size} must include [PAD] ({PAD}) and [ERR] ({ERR})")
        return self


class LookupPolicy(Policy):
    """Next token = the table's entry for the last k tokens, [ERR] where there is none."""

    config: LookupConfig

    def __init__(self, config: LookupConfig):
        super().__init__(config)
        M, k = config.table_size, config.k
        self.register_buffer("contexts", torch.full((M, k), PAD, dtype=torch.long))  # (M, k)
        self.register_buffer("next_token", torch.full((M,), ERR, dtype=torch.long))  # (M,)
        self.register_buffer("conflicts", torch.zeros((), dtype=torch.long))  # () set by fit_lookup
        self._table: dict[tuple[int, ...], int] = {}
        self._suffixes: list[dict[tuple[int, ...], int]] = []  # [j]: j-token suffix -> token
        self._table_key = None

    @property
    def n_conflicts(self) -> int:
        """Training contexts that were followed by two or more different tokens (0: k-local)."""
        return int(self.conflicts)

    def _lookup(self) -> dict[tuple[int, ...], int]:
        """context tuple -> next token, rebuilt only when a buffer was written or moved."""
        key = tuple((b._version, b.data_ptr()) for b in (self.contexts, self.next_token))
        if key != self._table_key:
            self._table = dict(zip(map(tuple, self.contexts.tolist()), self.next_token.tolist()))
            self._suffixes = [{}] + [_majority(self._table, j) for j in range(1, self.config.k)] if self.config.backoff else []
            self._table_key = key
        return self._table

    def _predict(self, window: tuple[int, ...]) -> int:
        token = self._table.get(window)
        if token is None:
            for j in range(len(self._suffixes) - 1, 0, -1):  # longest seen suffix first
                token = self._suffixes[j].get(window[-j:])
                if token is not None:
                    return token
            return ERR
        return token

    def _logits(self, windows: Tensor) -> Tensor:
        """windows (..., k) long -> logits (..., vocab_size) float32: 0 at the prediction."""
        self._lookup()
        predicted = [self._predict(w) for w in map(tuple, windows.reshape(-1, self.config.k).tolist())]
        predicted = torch.tensor(predicted, device=windows.device).view(windows.shape[:-1])  # (...)
        logits = torch.full((*windows.shape[:-1], self.config.vocab_size), _NEVER, device=windows.device)
        return logits.scatter_(-1, predicted[..., None], 0.0)  # (..., vocab_size)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        """(B, k) long: the last k tokens of each row, all [PAD] before any."""
        device = self.contexts.device if device is None else device
        return torch.full((batch_size, self.config.k), PAD, dtype=torch.long, device=device)

    def forward(self, tokens: Tensor, state: Tensor | None = None) -> Tensor:
        B, L = tokens.shape
        history = self.init_state(B, tokens.device) if state is None else state  # (B, k)
        seq = torch.cat([history, tokens], dim=1)  # (B, k + L)
        windows = seq.unfold(1, self.config.k, 1)[:, 1:]  # (B, L, k): the k tokens up to each new one
        if state is not None:
            state.copy_(seq[:, L:])
        return self._logits(windows)  # (B, L, vocab_size)

    @torch.no_grad()
    def step(self, token: Tensor, state: Tensor) -> Tensor:
        return self.forward(token[:, None], state)[:, 0]  # (B, vocab_size)

    def state_nbytes(self, state: Tensor) -> int:
        return state.nbytes

    def reset_row(self, state: Tensor, row: int) -> None:
        state[row] = PAD


def _majority(table: dict[tuple[int, ...], int], j: int) -> dict[tuple[int, ...], int]:
    """j-token suffix -> the next token that most table contexts ending in it predict."""
    votes = Counter((context[-j:], token) for context, token in table.items())
    best: dict[tuple[int, ...], int] = {}
    for (suffix, token), _ in sorted(votes.items(), key=lambda item: (-item[1], item[0][1])):
        best.setdefault(suffix, token)
    return best


def fit_lookup(trajectories: list[Trajectory], k: int, vocab_size: int, backoff: bool = False) -> LookupPolicy:
    """The table of (context -> next model token) over `trajectories`, counted as
    `mamba_agent.locality.contexts` does. A context followed by several tokens keeps the most
    frequent (ties: the smallest id) and counts as one conflict (`policy.n_conflicts`)."""
    counts = Counter(pair for trajectory in trajectories for pair in contexts(trajectory, k))  # (context, token) -> n
    table: dict[tuple[int, ...], int] = {}
    for context, token in sorted(counts, key=lambda pair: (-counts[pair], pair[1])):  # most frequent first
        table.setdefault(context, token)
    n_tokens = Counter(context for context, _ in counts)  # distinct next tokens per context
    keys = sorted(table)  # a deterministic table for the same data
    policy = LookupPolicy(LookupConfig(vocab_size=vocab_size, k=k, table_size=len(keys), backoff=backoff))
    if keys:
        policy.contexts.copy_(torch.tensor(keys, dtype=torch.long))
        policy.next_token.copy_(torch.tensor([table[c] for c in keys]))
    policy.conflicts.fill_(sum(n > 1 for n in n_tokens.values()))
    return policy.eval()
