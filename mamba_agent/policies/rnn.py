"""LSTM and GRU baselines (the paper's other fixed-state models; theirs: 4 layers, hidden 1536).

embedding -> stacked torch.nn.LSTM / nn.GRU -> linear head. The state is each layer's h (and the
LSTM's c): its size never depends on the history. forward and prefill run the cuDNN / oneDNN
sequence kernels, starting from the state's tensors and writing the final ones back in place;
step calls the fused one-step cell ops on the same weights, which is faster at batch 1 on one CPU
thread (LSTM about 2,200 -> 6,500 tokens/s, GRU 5,000 -> 6,000 at the defaults) than the module on a
length-1 sequence. Shapes use B for batch, L for time.
"""

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import PositiveInt
from torch import Tensor, nn

from mamba_agent.policies.base import Policy, PolicyConfig


class _RNNConfig(PolicyConfig):
    d_model: PositiveInt = 128
    """Embedding size (the first layer's input width)."""
    n_layer: PositiveInt = 2
    """Number of stacked recurrent layers."""


class LSTMConfig(_RNNConfig):
    """Sizes of the LSTM baseline; the defaults give 472,600 parameters at vocab_size 280."""

    kind: Literal["lstm"] = "lstm"
    """Policy kind."""
    hidden: PositiveInt = 160
    """Width of h and c in every layer."""


class GRUConfig(_RNNConfig):
    """Sizes of the GRU baseline; the defaults give 497,688 parameters at vocab_size 280."""

    kind: Literal["gru"] = "gru"
    """Policy kind."""
    hidden: PositiveInt = 192
    """Width of h in every layer."""


@dataclass
class RNNState:
    """Per-layer recurrent state; its size does not depend on the history."""

    h: Tensor
    """(n_layer, B, hidden): each layer's hidden state."""
    c: Tensor | None = None
    """(n_layer, B, hidden): each layer's LSTM cell state; None for a GRU."""


class RNNPolicy(Policy):
    """Embedding, a stacked LSTM or GRU (by `config.kind`), and a linear head."""

    config: LSTMConfig | GRUConfig
    static_state = True

    def __init__(self, config: LSTMConfig | GRUConfig):
        super().__init__(config)
        rnn = nn.LSTM if config.kind == "lstm" else nn.GRU
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.rnn = rnn(config.d_model, config.hidden, config.n_layer, batch_first=True)
        self.head = nn.Linear(config.hidden, config.vocab_size)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> RNNState:
        c, weight = self.config, self.head.weight
        device = weight.device if device is None else device
        shape = (c.n_layer, batch_size, c.hidden)
        h = torch.zeros(shape, device=device, dtype=weight.dtype)
        return RNNState(h, torch.zeros_like(h) if c.kind == "lstm" else None)

    def forward(self, tokens: Tensor, state: RNNState | None = None) -> Tensor:
        x = self.embed(tokens)  # (B, L, d_model)
        if state is None:
            y, _ = self.rnn(x)  # (B, L, hidden); zero initial state
        elif state.c is None:
            y, h = self.rnn(x, state.h)
            state.h.copy_(h.detach())  # the state keeps values, not autograd history
        else:
            y, (h, c) = self.rnn(x, (state.h, state.c))
            state.h.copy_(h.detach())
            state.c.copy_(c.detach())
        return self.head(y).float()  # (B, L, vocab_size)

    @torch.no_grad()
    def step(self, token: Tensor, state: RNNState) -> Tensor:
        x = self.embed(token)  # (B, d_model)
        for i, weights in enumerate(self._cell_weights):
            if state.c is None:
                x = torch.gru_cell(x, state.h[i], *weights)  # (B, hidden)
            else:
                x, c = torch.lstm_cell(x, (state.h[i], state.c[i]), *weights)  # (B, hidden) each
                state.c[i].copy_(c)
            state.h[i].copy_(x)
        return self.head(x).float()  # (B, vocab_size)

    @property
    def _cell_weights(self) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Per layer (w_ih, w_hh, b_ih, b_hh): the module's own parameters, in the cell ops' order."""
        names = ("weight_ih_l{}", "weight_hh_l{}", "bias_ih_l{}", "bias_hh_l{}")
        return [tuple(getattr(self.rnn, n.format(i)) for n in names) for i in range(self.config.n_layer)]

    def state_nbytes(self, state: RNNState) -> int:
        return state.h.nbytes + (0 if state.c is None else state.c.nbytes)

    def reset_row(self, state: RNNState, row: int) -> None:
        state.h[:, row].zero_()
        if state.c is not None:
            state.c[:, row].zero_()
