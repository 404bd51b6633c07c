"""Search memory: lines of text, searched like grep (`find x` answers every line containing x).

The memory starts as the task's input tokens, split into lines at the newline byte (10). Every
thought and output token the model writes is appended (`write`), so thoughts can be found later;
commands and observations are not. `[FIND] pattern [END]` answers, in memory order:
  - each line that contains the pattern (a contiguous run of tokens) as a substring, followed by
    a newline, then `[/OBS]`; a line is answered once however often it matches;
  - just `[/OBS]` when no line matches;
  - `[ERR] [/OBS]` for an empty pattern (grep would answer the whole memory: never useful, and
    unbounded in the problem size).
The current, unfinished line (tokens written since the last newline) is searched too and, when it
matches, answered like any other line, newline added (grep shows a last line that has no newline).
A pattern that holds a newline never matches: no line contains one.

Matching is exact on token ids, special tokens included (the episode appends `[ANS]` to memory
like any thought): each token id is held as one character (chr(id)), so a lookup is one
C-speed `str.find` pass over the whole memory. O(n) finds over O(n) lines stay cheap: the oracle
of a 1,000-node logical graph makes ~6,000 finds over up to ~3,000 lines in 0.2 s in all.
"""

import torch

from mamba_agent.tools import Tool
from mamba_agent.vocab import ERR, FIND, OBS_END

NEWLINE = 10
_NL = chr(NEWLINE)


class SearchMemory(Tool):
    argument_commands = frozenset({FIND})

    def __init__(self, text: list[int]):
        self._text = "".join(map(chr, text))  # the whole memory, one character per token id
        self._pending: list[str] = []  # written since the last find (joined lazily, once per find)

    def write(self, token: int) -> None:
        self._pending.append(chr(token))

    def state_dict(self) -> dict:
        self._flush()
        return {"text": torch.tensor([ord(c) for c in self._text], dtype=torch.int16)}

    def load_state_dict(self, state: dict) -> None:
        self._text, self._pending = "".join(map(chr, state["text"].tolist())), []

    @property
    def lines(self) -> list[list[int]]:
        """The memory as lines of token ids (the unfinished last line included if not empty)."""
        self._flush()
        lines = self._text.split(_NL)
        if lines[-1] == "":
            lines.pop()
        return [[ord(c) for c in line] for line in lines]

    def command(self, token: int, argument: list[int] | None = None) -> list[int]:
        pattern = "".join(map(chr, argument or ()))
        if not pattern:
            return [ERR, OBS_END]
        self._flush()
        text, out, start = self._text, [], 0
        if _NL not in pattern:
            while (i := text.find(pattern, start)) >= 0:
                line_start = text.rfind(_NL, 0, i) + 1
                line_end = text.find(_NL, i)
                if line_end < 0:
                    line_end = len(text)  # the unfinished last line
                out.extend(map(ord, text[line_start:line_end]))
                out.append(NEWLINE)
                start = line_end + 1  # on to the next line: each line is answered once
        out.append(OBS_END)
        return out

    def _flush(self) -> None:
        if self._pending:
            self._text += "".join(self._pending)
            self._pending.clear()
