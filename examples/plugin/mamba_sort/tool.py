"""SortedTape: the bytes the model writes before [ANS], kept in sorted order, read through a pointer.

Until [ANS] the tape is empty (a read answers [EDGE]); when [ANS] is written it becomes the bytes
written so far, sorted by value, and stays so (what the model writes after [ANS] is its answer,
not the tape's). The tool answers one pointer's commands, `[Pk.read] [Pk.left] [Pk.right]`, with
the pointer memory's rules: the pointer starts on the first cell, a read answers the cell under
it or [EDGE] one past either end, and a move stops there.
"""

from mamba_agent.tools import Tool
from mamba_agent.vocab import ANS, EDGE, pointer_command


class SortedTape(Tool):
    def __init__(self, pointer: int):
        self.read, self.left, self.right = (pointer_command(pointer, op) for op in ("read", "left", "right"))
        self.commands = frozenset({self.read, self.left, self.right})
        self.written: list[int] = []
        self.tape: list[int] | None = None  # set at [ANS]
        self.position = 0

    def write(self, token: int) -> None:
        if self.tape is not None:
            return
        if token == ANS:
            self.tape = sorted(self.written)
        elif token < 256:
            self.written.append(token)

    def command(self, token: int, argument: list[int] | None = None) -> list[int]:
        tape, p = self.tape or [], self.position
        if token == self.read:
            return [tape[p]] if 0 <= p < len(tape) else [EDGE]
        self.position = min(max(p + (1 if token == self.right else -1), -1), len(tape))
        return []
