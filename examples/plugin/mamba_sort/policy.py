"""The `window` policy: an MLP that sees only the last k tokens.

embedding of each of the last k tokens (k x d_embed, concatenated) -> Linear -> ReLU -> Linear
-> logits. Before the first token the window holds [PAD]. The state is the last k - 1 tokens of
each row: a fixed size, whatever the history. By construction it can learn exactly the k-local
trajectories (the neural counterpart of the lookup policy), and those at any length.
Shapes: B batch, L time, k window, D = d_embed.
"""

import torch
from pydantic import PositiveInt
from torch import Tensor, nn

from mamba_agent.policies import Policy, PolicyConfig
from mamba_agent.vocab import PAD


class WindowConfig(PolicyConfig):
    k: PositiveInt = 4
    """Tokens the policy sees: the current one and the k - 1 before it."""
    d_embed: PositiveInt = 16
    """Embedding width of each token."""
    d_hidden: PositiveInt = 128
    """Width of the hidden layer."""


class WindowPolicy(Policy):
    Config = WindowConfig
    config: WindowConfig

    def __init__(self, config: WindowConfig):
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_embed)
        self.mlp = nn.Sequential(nn.Linear(c.k * c.d_embed, c.d_hidden), nn.ReLU(), nn.Linear(c.d_hidden, c.vocab_size))

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        device = self.embed.weight.device if device is None else device
        return torch.full((batch_size, self.config.k - 1), PAD, dtype=torch.long, device=device)  # (B, k-1)

    def forward(self, tokens: Tensor, state: Tensor | None = None) -> Tensor:
        B, L = tokens.shape
        history = self.init_state(B, tokens.device) if state is None else state
        padded = torch.cat([history, tokens], 1)  # (B, k-1+L)
        windows = padded.unfold(1, self.config.k, 1)  # (B, L, k): the last k tokens at each position
        logits = self.mlp(self.embed(windows).flatten(2))  # (B, L, k*D) -> (B, L, vocab)
        if state is not None:
            state.copy_(padded[:, padded.shape[1] - state.shape[1]:])
        return logits.float()

    @torch.no_grad()
    def step(self, token: Tensor, state: Tensor) -> Tensor:
        return self.forward(token[:, None], state)[:, 0]  # (B,) -> (B, vocab)

    def state_nbytes(self, state: Tensor) -> int:
        return state.nbytes

    def reset_row(self, state: Tensor, row: int) -> None:
        state[row] = PAD
