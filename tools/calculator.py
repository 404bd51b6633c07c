"""Calculator: one call adds two decimal numbers of any length.

    [RUN]add(12,34)[END]  ->  46[/OBS]

The argument is `add(x,y)` with x and y non-empty strings of ASCII digits, nothing else (no
spaces, signs or other functions). The observation is the sum without leading zeros (`0` for
zero), then `[/OBS]`. Anything else (another function, a missing operand, a special token inside
the argument) answers `[ERR][/OBS]`: a malformed call is an observation, never an exception.

The sum is column addition on the digit strings, so 1,000-digit operands cost O(n) and never
meet Python's int/str conversion limit (4,300 digits by default).
"""

import re

from mamba_agent.tools import Tool
from mamba_agent.vocab import ERR, OBS_END, RUN, encode

_CALL = re.compile(r"add\(([0-9]+),([0-9]+)\)")


def add_digits(x: str, y: str) -> str:
    """x + y for digit strings of any length, without leading zeros."""
    n = max(len(x), len(y))
    out, carry = [], 0
    for a, b in zip(reversed(x.rjust(n, "0")), reversed(y.rjust(n, "0"))):
        carry, s = divmod(int(a) + int(b) + carry, 10)
        out.append(str(s))
    if carry:
        out.append("1")
    return "".join(reversed(out)).lstrip("0") or "0"


class Calculator(Tool):
    argument_commands = frozenset({RUN})

    def command(self, token: int, argument: list[int] | None = None) -> list[int]:
        argument = argument or []
        if any(t >= 128 for t in argument):  # special tokens or non-ASCII bytes: not a call
            return [ERR, OBS_END]
        call = _CALL.fullmatch(bytes(argument).decode("ascii"))
        if call is None:
            return [ERR, OBS_END]
        return encode(add_digits(call[1], call[2])) + [OBS_END]
