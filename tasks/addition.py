"""Multi-digit addition with the pointer-memory tool (three pointers, a local trajectory).

The tape starts as `a+b=`. The oracle:
  1. P1 walks right to `+` and steps back onto the last digit of a; P2 does the same up to `=`
     for b.
  2. Column loop, least significant digit first: `[P1.read] d1 [P2.read] d2`, then the thoughts
     `s c` (sum digit, carry), then each pointer that read a digit steps left. An exhausted
     operand reads `[EDGE]` (P1) or `+` (P2) and counts as 0; its pointer stays. When both are
     exhausted and the carry is 0: `[ANS]`.
  3. P3, a pointer used for nothing else, walks right from the start to `[ANS]`, then walks
     left over the thoughts `c s c s ...`, outputting each sum digit (most significant first),
     and ends with `[EOS]` when it reads `=`.
Why three pointers: with two (P2 walking on from `+` over `=`), P2 reading `=` means "step left"
in phase 1 and "keep walking" in phase 3, and only a token ~2n back tells them apart; the
trajectory is then not local and a small model fails beyond ~20 digits (docs/locality.md).
With P3 every decision depends on the last 7 tokens at any size (tests/test_addition.py).

The answer keeps the width of column addition: max(len a, len b) digits, one more on a final
carry (`007+5` gives `012`). The checker compares values, so `12` is accepted too.
"""

import random

from pydantic import BaseModel, ConfigDict, field_validator

from mamba_agent.episode import Episode
from mamba_agent.tasks import Problem, Task, digit_string, same_number
from mamba_agent.tools.pointer import PointerMemory
from mamba_agent.vocab import ANS, BOS, EDGE, EOS, encode, pointer_command

PLUS, EQUALS = ord("+"), ord("=")
ZERO = ord("0")
READ = {p: pointer_command(p, "read") for p in (1, 2, 3)}
LEFT = {p: pointer_command(p, "left") for p in (1, 2, 3)}
RIGHT = {p: pointer_command(p, "right") for p in (1, 2, 3)}


class AdditionInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    a: str
    """First operand: a quoted string of decimal digits, e.g. "8134"."""
    b: str
    """Second operand, like `a`."""

    @field_validator("a", "b", mode="before")
    @classmethod
    def _digits(cls, v):
        return digit_string(v)


def column_sum(a: str, b: str) -> str:
    """a + b by column addition, keeping max(len a, len b) digits (no int(): any length)."""
    n = max(len(a), len(b))
    a, b = a.rjust(n, "0"), b.rjust(n, "0")
    out, carry = [], 0
    for x, y in zip(reversed(a), reversed(b)):
        carry, s = divmod(int(x) + int(y) + carry, 10)
        out.append(str(s))
    if carry:
        out.append("1")
    return "".join(reversed(out))


class Addition(Task):
    name = "addition"
    version = 1
    Input = AdditionInput
    train_max_size = 5  # the paper trains on 1..5-digit operands
    max_size = 10_000_000  # digits; a run of that size is ~380M tokens

    def problem(self, input: dict) -> Problem:
        x = AdditionInput.model_validate(input)
        return Problem(
            task=self.name,
            input=x.model_dump(),
            size=max(len(x.a), len(x.b)),
            prompt=[BOS] + encode(f"{x.a}+{x.b}="),
            reference=column_sum(x.a, x.b),
        )

    def random_problem(self, rng: random.Random, size: int) -> Problem:
        return self.problem({"a": _number(rng, size), "b": _number(rng, size)})

    def training_problem(self, rng: random.Random) -> Problem:
        n, m = rng.randint(1, self.train_max_size), rng.randint(1, self.train_max_size)
        return self.problem({"a": _number(rng, n), "b": _number(rng, m)})

    def tools(self, problem: Problem) -> list:
        return [PointerMemory(problem.prompt[1:], n_pointers=3)]

    def max_tokens(self, problem: Problem) -> int:
        # The oracle takes about 13 tokens per digit of a+b plus 9 per column; double it.
        la, lb = len(problem.input["a"]), len(problem.input["b"])
        return 2 * (13 * (la + lb) + 9 * problem.size) + 100

    def check(self, problem: Problem, answer: str, tools=()) -> bool:
        return same_number(answer, problem.reference)

    def solve(self, episode: Episode, problem: Problem) -> None:
        act = episode.act

        def read(p: int) -> int:
            return act(READ[p])[0]

        for p, stop in ((1, PLUS), (2, EQUALS)):  # walk to the last digit of each operand
            while read(p) != stop:
                act(RIGHT[p])
            act(LEFT[p])
        carry = 0
        while True:
            d1, d2 = read(1), read(2)
            digit1, digit2 = d1 not in (EDGE, PLUS), d2 != PLUS
            if not (digit1 or digit2 or carry):
                act(ANS)
                break
            carry, s = divmod((d1 - ZERO if digit1 else 0) + (d2 - ZERO if digit2 else 0) + carry, 10)
            act(ZERO + s)
            act(ZERO + carry)
            if digit1:
                act(LEFT[1])
            if digit2:
                act(LEFT[2])
        while read(3) != ANS:
            act(RIGHT[3])
        while True:  # cells left of [ANS]: carry, sum, carry, sum, ..., then `=`
            act(LEFT[3])
            if read(3) == EQUALS:
                act(EOS)
                break
            act(LEFT[3])
            act(read(3))


def _number(rng: random.Random, n: int) -> str:
    """n random digits, the first nonzero unless n == 1."""
    first = str(rng.randint(1, 9) if n > 1 else rng.randint(0, 9))
    return first + "".join(rng.choice("0123456789") for _ in range(n - 1))
