"""The policy interface that the runtime and the trainer program against.

A policy reads token ids and scores the next token. It runs in two modes:
- `forward(tokens)`: the whole sequence at once from an empty state (training);
- `init_state` + `forward(tokens, state)` (prefill) + `step(token, state)` (decode): the runtime's
  loop, in which the state is updated in place.
The runtime does not call these directly but through a `Decoder` (`policy.decoder(batch_size)`):
one batch of rows, its state, and the three calls the loop makes. The default decoder is those
methods; a policy may return a faster one (weights prepared once, buffers allocated once, a CUDA
graph) that must give the same logits.

The state is an inference object: it stores values without autograd history, so prefill and
step are meant to run under `torch.no_grad()` (step enforces it itself).
"""

import dataclasses
import itertools
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

    def decoder(self, batch_size: int, device: torch.device | str | None = None) -> "Decoder":
        """The runtime's handle on `batch_size` rows decoding together (see `Decoder`)."""
        return Decoder(self, batch_size, device)

    def num_parameters(self) -> int:
        """Number of distinct parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())


class Decoder:
    """`batch_size` rows decoding in lockstep: their state and the calls the runtime makes.

    This default runs the policy's own `forward` and `step`. Logits returned by `step` and
    `prefill` may be a buffer that the next call overwrites: read them before calling again.
    """

    def __init__(self, policy: Policy, batch_size: int, device: torch.device | str | None = None):
        self.policy, self.batch_size = policy, batch_size
        self.state = policy.init_state(batch_size, device)
        self.device = torch.device(device) if device is not None else _device_of(policy)

    prefill_row_tokens = 8192
    """Row-tokens per forward call of a prefill: a long prompt goes through in chunks that
    continue each other's state exactly, so memory stays bounded (activations grow with the
    row-tokens of a call; 30 prompts of 20,000 tokens at once took 24 GB and were killed)."""

    def prefill(self, tokens: list[list[int]]) -> Tensor:
        """tokens: B rows of L ids -> the logits after the last one (B, vocab_size)."""
        batch = torch.tensor(tokens, device=self.device)
        chunk = max(1, self.prefill_row_tokens // batch.shape[0])
        for start in range(0, batch.shape[1], chunk):
            logits = self.policy(batch[:, start : start + chunk], self.state)
        return logits[:, -1]

    def step(self, tokens: list[int]) -> Tensor:
        """B ids -> logits (B, vocab_size)."""
        return self.policy.step(torch.tensor(tokens, device=self.device), self.state)

    def step_greedy(self, tokens: list[int]) -> list[int]:
        """B ids -> the B most likely next ids (greedy decoding's whole step)."""
        return self.step(tokens).argmax(-1).tolist()

    def reset_row(self, row: int) -> None:
        self.policy.reset_row(self.state, row)

    def state_dict(self) -> dict[str, Tensor]:
        """The rows' state as CPU tensors, in the policy's own layout (an episode checkpoint:
        the same whatever decoder or device made it). Only states of a fixed size are saved."""
        tensors = state_tensors(self.state)
        if tensors is None:
            raise NotImplementedError(f"{type(self.policy).__name__}'s state grows with the history: "
                                      "episode checkpoints need a policy with a fixed-size state")
        return {name: t.detach().to("cpu", copy=True) for name, t in tensors.items()}

    def load_state_dict(self, saved: dict[str, Tensor]) -> None:
        """Copy a `state_dict` into this decoder's state, in place (CUDA graphs and views of the
        state keep working)."""
        tensors = state_tensors(self.state)
        if tensors is None or tensors.keys() != saved.keys():
            raise ValueError(f"saved state holds {sorted(saved)}, this policy's holds {sorted(tensors or {})}")
        for name, t in tensors.items():
            if t.shape != saved[name].shape:
                raise ValueError(f"saved state {name} is {tuple(saved[name].shape)}, this policy's {tuple(t.shape)}")
            t.copy_(saved[name])


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


def _device_of(module: nn.Module) -> torch.device:
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)  # lookup tables have only buffers
    return tensor.device if tensor is not None else torch.device("cpu")


class CUDAGraphDecoder(Decoder):
    """`step` captured once in a CUDA graph and replayed: one launch per token instead of one per
    operation. At batch 1 a small model's step is all launch overhead (tens of kernels of a few
    microseconds each). Needs a state of fixed tensors updated in place (Mamba, LSTM, GRU);
    `prefill` and `reset_row` write into the same tensors, so the graph sees them. `step`: what
    the graph captures, `policy.step` unless the policy gives a faster equivalent."""

    def __init__(self, policy: Policy, batch_size: int, device: torch.device | str | None = None, step=None):
        super().__init__(policy, batch_size, device)
        self.step_fn = step or policy.step
        # The graph reads its input ids from pinned host memory and writes the greedy ids back
        # to it: a step is one replay and one synchronisation.
        self.host_tokens = torch.zeros(batch_size, dtype=torch.long).pin_memory()
        self.host_greedy = torch.zeros(batch_size, dtype=torch.long).pin_memory()
        self.tokens = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: Tensor | None = None

    def _capture(self) -> None:
        # Warm up on a side stream (Triton compiles, cuBLAS picks its kernels) with a scratch
        # state, then capture: nothing runs during capture, so the real state is untouched.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            scratch = self.policy.init_state(self.batch_size, self.device)
            for _ in range(3):
                self.step_fn(self.tokens, scratch).argmax(-1)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.tokens.copy_(self.host_tokens, non_blocking=True)
            self.logits = self.step_fn(self.tokens, self.state)
            self.host_greedy.copy_(self.logits.argmax(-1), non_blocking=True)

    def _replay(self, tokens: list[int]) -> None:
        if self.graph is None:
            self._capture()
        self.host_tokens.numpy()[:] = tokens
        self.graph.replay()

    def step(self, tokens: list[int]) -> Tensor:
        self._replay(tokens)
        return self.logits

    def step_greedy(self, tokens: list[int]) -> list[int]:
        self._replay(tokens)
        torch.cuda.current_stream(self.device).synchronize()
        return self.host_greedy.tolist()
