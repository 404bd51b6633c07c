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
import sys

import numpy as np
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
    """a + b by column addition, keeping max(len a, len b) digits; any length (Python's int()
    reads at most sys.get_int_max_str_digits() digits, 4,300 by default)."""
    n = max(len(a), len(b))
    if n < (sys.get_int_max_str_digits() or n + 1):  # 0: no limit
        return str(int(a) + int(b)).zfill(n)
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

    def oracle_tokens(self, problem: Problem) -> np.ndarray:
        """`solve`'s model tokens without running it (25,000 at 1,000 digits in 0.1 ms, not 40):
        the walks, a column [P1.read] [P2.read] s c and the steps left, [ANS], P3's walk and
        the output. tests/test_addition.py checks them against the oracle."""
        a, b = (np.frombuffer(problem.input[k].encode()[::-1], np.uint8) - ZERO for k in "ab")  # lowest first
        la, lb, n = len(a), len(b), problem.size
        x, y = np.pad(a, (0, n - la)).astype(np.int64), np.pad(b, (0, n - lb)).astype(np.int64)
        s = np.frombuffer(problem.reference.encode()[::-1], np.uint8).astype(np.int64) - ZERO  # the sum's digits
        cols = len(s)  # n, or n + 1 with a final carry
        carry = np.zeros(cols, np.int64)  # out of each column: what the next column's sum shows
        carry[: n - 1] = (s[1:n] - x[1:] - y[1:]) % 10
        carry[n - 1] = cols > n
        column = np.full((cols, 6), -1, np.int64)  # [P1.read] [P2.read] s c, then the steps left
        column[:, 0], column[:, 1], column[:, 2], column[:, 3] = READ[1], READ[2], ZERO + s, ZERO + carry
        column[:la, 4], column[:lb, 5] = LEFT[1], LEFT[2]
        ans_at = la + lb + 2 + 2 * cols  # where P3 finds [ANS]: after a+b= and the thoughts
        out = np.empty((cols, 5), np.int64)  # per column, highest first: over c to s, read it, output it
        out[:] = [LEFT[3], READ[3], LEFT[3], READ[3], 0]
        out[:, 4] = ZERO + s[::-1]
        return np.concatenate([
            np.tile([READ[1], RIGHT[1]], la), [READ[1], LEFT[1]],
            np.tile([READ[2], RIGHT[2]], la + 1 + lb), [READ[2], LEFT[2]],
            column[column >= 0], [READ[1], READ[2], ANS],
            np.tile([READ[3], RIGHT[3]], ans_at), [READ[3]], out.ravel(), [LEFT[3], READ[3], EOS],
        ]).astype(np.int16)

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
    """n random digits, the first nonzero unless n == 1: what `rng.randint(1, 9)` (or (0, 9))
    and then `rng.choice("0123456789")` n - 1 times draw, read from the generator's words in bulk
    (0.05 ms for 1,000 digits, not 1.5). Each draw takes a 32-bit word's top 4 bits and draws again
    at or above its bound (CPython's _randbelow); `getrandbits(32 k)` is k words, the first lowest."""
    saved, k = rng.getstate(), 2 * n + 64
    while True:
        words = np.frombuffer(rng.getrandbits(32 * k).to_bytes(4 * k, "little"), np.uint32)
        nibbles = (words >> 28).astype(np.int64)
        first = np.flatnonzero(nibbles < (9 if n > 1 else 10))[:1]
        rest = first[0] + 1 + np.flatnonzero(nibbles[first[0] + 1 :] < 10)[: n - 1] if len(first) else []
        if len(first) and len(rest) == n - 1:
            break
        rng.setstate(saved)
        k *= 2
    used = int(rest[-1] if n > 1 else first[0]) + 1
    rng.setstate(saved)
    rng.getrandbits(32 * used)  # the words the draws used, and no more
    digits = np.r_[nibbles[first] + (n > 1), nibbles[rest]]
    return (digits + ZERO).astype(np.uint8).tobytes().decode()
