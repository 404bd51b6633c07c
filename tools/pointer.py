"""Pointer memory: a token tape that starts as the input, read through any number of pointers.

Commands are single tokens `[Pk.read]`, `[Pk.left]`, `[Pk.right]`. A read is answered by exactly
one observation token, the token under the pointer, or `[EDGE]` outside the tape. Moves answer
nothing. Every pointer starts on the first input token. A pointer stops one cell past either end
(position -1 or len(tape)), so the edge is a wall, not a drift. Thought and output tokens are
appended to the tape, so pointers can read what the model wrote.
"""

import torch

from mamba_agent.tools import Tool
from mamba_agent.vocab import EDGE, N_POINTERS, pointer_command


class PointerMemory(Tool):
    def __init__(self, tape: list[int], n_pointers: int):
        if not 1 <= n_pointers <= N_POINTERS:
            raise ValueError(f"n_pointers must be 1..{N_POINTERS}, got {n_pointers}")
        self.tape = list(tape)
        self.positions = [0] * n_pointers
        # token id -> (pointer index, move): move 0 means read
        self._ops = {
            pointer_command(p + 1, op): (p, move)
            for p in range(n_pointers)
            for op, move in (("read", 0), ("left", -1), ("right", 1))
        }
        self.commands = frozenset(self._ops)

    def write(self, token: int) -> None:
        self.tape.append(token)

    def state_dict(self) -> dict:
        return {"tape": torch.tensor(self.tape, dtype=torch.int16), "positions": list(self.positions)}

    def load_state_dict(self, state: dict) -> None:
        self.tape, self.positions = state["tape"].tolist(), list(state["positions"])

    def command(self, token: int, argument: list[int] | None = None) -> list[int]:
        p, move = self._ops[token]
        pos = self.positions[p]
        if move == 0:
            return [self.tape[pos]] if 0 <= pos < len(self.tape) else [EDGE]
        self.positions[p] = min(max(pos + move, -1), len(self.tape))
        return []
