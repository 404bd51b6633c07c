"""The policy interface that the runtime and the trainer program against.

A policy reads token ids and scores the next token. It runs in two modes:
- `forward(tokens)`: the whole sequence at once from an empty state (training);
- `init_state` + `forward(tokens, state)` (prefill) + `step(token, state)` (decode): the runtime's
  loop, in which the state is updated in place.
The runtime does not call these directly but through a stepper (mamba_agent/steppers.py): one
batch of rows, its state, and the calls the loop makes. The reference stepper is these methods;
faster ones (weights prepared once, buffers allocated once, kernels) must give the same ids.

The state is an inference object: it stores values without autograd history, so prefill and
step are meant to run under `torch.no_grad()` (step enforces it itself).
"""

from abc import ABC, abstractmethod
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn


class PolicyConfig(BaseModel):
    """What builds a policy; `model_dump()` is stored as JSON next to the checkpoint weights."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    kind: str
    """Which policy to build: a key of `mamba_agent.policies.POLICY_CONFIGS`."""
    vocab_size: int
    """Number of token ids; logits have this last dimension."""


class Policy(nn.Module, ABC):
    """A next-token model with a state that the runtime carries between calls."""

    config: PolicyConfig
    static_state = False
    """The state is a fixed set of tensors that `step` updates in place (not a growing cache):
    a CUDA graph may capture a step."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config

    @abstractmethod
    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> Any:
        """A fresh (empty-history) state for `batch_size` rows, on `device` (default: the weights')."""

    @abstractmethod
    def forward(self, tokens: Tensor, state: Any = None) -> Tensor:
        """tokens (B, L) -> logits (B, L, vocab_size) float32.

        Without a state, run from an empty history (training). With a state, prefill: continue
        from it and update it in place to the state after the L tokens.
        """

    @abstractmethod
    def step(self, token: Tensor, state: Any) -> Tensor:
        """token (B,) -> logits (B, vocab_size) float32; updates the state in place."""

    @abstractmethod
    def state_nbytes(self, state: Any) -> int:
        """Bytes allocated for the state (for a cache that grows: its capacity, not its fill)."""

    def reset_row(self, state: Any, row: int) -> None:
        """Empty row `row`'s history in place, for a new episode in that row. Policies whose
        state is one slot per row support it; the rest (a KV cache shared by every row's
        positions) raise, and the runtime then refills a batch only when all of it is done."""
        raise NotImplementedError(f"{type(self).__name__} cannot reset one row of its state")

    def num_parameters(self) -> int:
        """Number of distinct parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())
