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

import dataclasses
from abc import ABC, abstractmethod
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn


class PolicyConfig(BaseModel):
    """What builds a policy; `model_dump()` is stored as JSON next to the checkpoint weights."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    kind: str
    """Which policy to build: a built-in kind (`mamba_agent.policies.POLICY_CONFIGS`) or a plugin's
    name; a plugin's config keeps this field as it is (a str), and its value is the plugin's name."""
    vocab_size: int
    """Number of token ids; logits have this last dimension."""


class Policy(nn.Module, ABC):
    """A next-token model with a state that the runtime carries between calls.

    A plugin policy subclasses this, defines the four abstract methods and sets `Config` to its
    PolicyConfig subclass (the fields it is built from; `--set field=value` fills them). What it
    must keep true (tests/test_policies.py checks each built-in one):
      - It sees token ids only (never roles) and scores all `config.vocab_size` of them.
      - `forward(tokens)` from an empty state, prefill into a state, and `step` agree: the logits
        of a sequence fed in one call, in pieces, or token by token are the same (up to float
        rounding), since training runs the first and decoding the others.
      - Everything it learns is a parameter or buffer: a checkpoint is `state_dict()` in
        safetensors plus `config.model_dump()` as JSON, and `Config(**that)` rebuilds it.
      - A state of fixed size per row (`reset_row` empties one) lets the runtime start a new
        episode in any free row; a state that rows share must raise in `reset_row`.
    """

    config: PolicyConfig
    Config: type[PolicyConfig]
    """A plugin's config class (built-in kinds are listed in mamba_agent.policies instead)."""
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


def state_tensors(state: Any) -> dict[str, Tensor] | None:
    """A fixed-size state's tensors by name (a tensor, or a dataclass of tensors and None);
    None for a state that also holds other values (a KV cache's length: it grows)."""
    if isinstance(state, Tensor):
        return {"state": state}
    if not dataclasses.is_dataclass(state):
        return None
    values = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    if any(v is not None and not isinstance(v, Tensor) for v in values.values()):
        return None
    return {name: v for name, v in values.items() if v is not None}
