"""Multiplication of an n-digit number by a 1- or 2-digit number with the pointer-memory tool.

The tape starts as `a*b=`. One pass over a computes the product column by column, least
significant first (the paper writes partial products and sums them; one pass is shorter and
keeps every decision within the last 12 tokens). The oracle (`solve`):
  1. Setup. P1 walks right over a to `*`, P2, P3 and P4 riding along, and steps back onto a's
     last digit; P2 reads b: n x 1 leaves P2 on b, n x 2 leaves P2 on b0 and P3 on b1.
  2. Columns: `[P1.read] x`, the multiplier (`[P3.read] b1 [P2.read] b0`, or `[P2.read] b0`), the
     thoughts, `[P1.left]`. n x 1 writes `c d`, the carry and digit of x*b0 + carry (a table of
     900 cases). n x 2 splits x*b + carry (a two-digit carry `c1 c0`) into steps of at most 1,000
     cases, `e1 e0 s1 s0 c1 c0 d`: e = x*b1 + c1, s = x*b0 + c0, the new carry e + s1, the digit
     s0; one step of ~99,000 cases is learnt only approximately (CHANGELOG.md, 2026-11-28). Once
     a is used up P1 reads `[EDGE]` (x = 0, P1 stays); an `[EDGE]` read with carry 0: `[ANS]`.
  3. Output. The output pointer (P3 for n x 1, P4 for n x 2: the command says which column width
     applies) walks right a column at a time to the tape's end, then back, outputting each
     column's digit, most significant first, until it reads `=`; then `[EOS]`.
The trajectory depends on the problem alone (multiplication-1 and -2 only fix b's length).

Locality (`mamba-agent locality`, training sizes plus the 9...9 x 9 and 9...9 x 99 carry chains;
tests/test_multiplication.py keeps it): n x 1 is 8-local, n x 2 and the mixed family 12-local: the
previous carry must be in view when the step using it is written (s1 s0 needs c0 from 11 tokens
back). Each phase moves its own pointers. 23 tokens per digit of a for n x 1, 40 for n x 2.
The answer is the product zero-padded to len(a) digits, wider only for a final carry (`007*5`
gives `035`); the checker compares values. Training draws b over every string the task accepts
(`05` is a 2-digit multiplier) and a's digits uniformly, leading zeros included.
"""

import random

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from mamba_agent.episode import Episode
from mamba_agent.tasks import Problem, Task, digit_string, same_number
from mamba_agent.tools.pointer import PointerMemory
from mamba_agent.vocab import ANS, BOS, EDGE, EOS, encode, pointer_command

STAR, EQUALS = ord("*"), ord("=")
ZERO = ord("0")
READ = {p: pointer_command(p, "read") for p in (1, 2, 3, 4)}
LEFT = {p: pointer_command(p, "left") for p in (1, 2, 3, 4)}
RIGHT = {p: pointer_command(p, "right") for p in (1, 2, 3, 4)}


class MultiplicationInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    a: str
    """First operand: a quoted string of decimal digits, any length, e.g. "81349"."""
    b: str
    """Second operand: a quoted string of 1 or 2 digits, e.g. "47" (multiplication-1 and
    multiplication-2 take exactly 1 and exactly 2)."""

    @field_validator("a", "b", mode="before")
    @classmethod
    def _digits(cls, v):
        return digit_string(v)

    @field_validator("b")
    @classmethod
    def _multiplier_length(cls, v: str, info: ValidationInfo):
        # The task passes its allowed lengths as validation context (variants allow one).
        allowed = (info.context or {}).get("b_digits", (1, 2))
        if len(v) not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"the multiplier must have {want} digit{'s' if allowed != (1,) else ''} for this task, got {len(v)}")
        return v


def times_small(a: str, b: str) -> str:
    """a * b by schoolbook multiplication for a multiplier of 1 or 2 digits (no int(a): any
    length), keeping len(a) digits plus those of the final carry."""
    m = int(b)
    out, carry = [], 0
    for x in reversed(a):
        carry, d = divmod((ord(x) - ZERO) * m + carry, 10)
        out.append(chr(ZERO + d))
    while carry:
        carry, d = divmod(carry, 10)
        out.append(chr(ZERO + d))
    return "".join(reversed(out))


class Multiplication(Task):
    """n x 1 and n x 2 mixed: random and training problems draw b's length from `b_digits`."""

    name = "multiplication"
    version = 1
    Input = MultiplicationInput
    b_digits: tuple[int, ...] = (1, 2)
    # Training draws a with 1..train_max_size digits, as in the paper (which found 20 more
    # stable). Locality makes 10 enough in principle: every context of 9...9 x 99 at 1,000 digits
    # already occurs at 10 digits.
    train_max_size = 10
    max_size = 10_000_000  # digits of a

    def problem(self, input: dict) -> Problem:
        x = MultiplicationInput.model_validate(input, context={"b_digits": self.b_digits})
        return Problem(
            task=self.name,
            input=x.model_dump(),
            size=len(x.a),
            prompt=[BOS] + encode(f"{x.a}*{x.b}="),
            reference=times_small(x.a, x.b),
        )

    def random_problem(self, rng: random.Random, size: int) -> Problem:
        """a: `size` digits, the first nonzero; b: every string the task accepts alike (00..99)."""
        return self.problem({"a": _number(rng, size), "b": _digits(rng, rng.choice(self.b_digits))})

    def training_problem(self, rng: random.Random) -> Problem:
        """a: 1..train_max_size digits, each uniform (leading zeros too, as users write them); b as above."""
        a = _digits(rng, rng.randint(1, self.train_max_size))
        return self.problem({"a": a, "b": _digits(rng, rng.choice(self.b_digits))})

    def edge_cases(self, size: int) -> list[Problem]:
        """a = 9...9 times the largest b (the longest carry chain), and a random a times the
        multipliers with a zero digit: 0, 1, 9, 10 (n x 2: 00, 01, 09, 10)."""
        a = _number(random.Random(f"edge-{size}"), size)
        cases = [("9" * size, "9" * width) for width in self.b_digits]
        cases += [(a, b.rjust(width, "0")) for width in self.b_digits for b in ("0", "1", "9", "10") if len(b) <= width]
        return [self.problem({"a": x, "b": y}) for x, y in cases]

    def tools(self, problem: Problem) -> list:
        return [PointerMemory(problem.prompt[1:], n_pointers=4)]

    def max_tokens(self, problem: Problem) -> int:
        # The oracle takes at most 40 tokens per digit of a plus under 100; double it.
        return 2 * (40 * problem.size + 100)

    def check(self, problem: Problem, answer: str, tools=()) -> bool:
        return same_number(answer, problem.reference)

    def solve(self, episode: Episode, problem: Problem) -> None:
        act = episode.act

        def read(p: int) -> int:
            return act(READ[p])[0]

        while read(1) != STAR:  # 1. setup: P1 finds `*`, the others ride along
            for p in (1, 2, 3, 4):
                act(RIGHT[p])
        act(LEFT[1])
        act(RIGHT[2])
        read(2)
        act(RIGHT[2])
        two = read(2) != EQUALS
        act(RIGHT[3] if two else LEFT[2])
        out, width = (4, 7) if two else (3, 2)

        carry = 0
        while True:  # 2. columns, least significant first
            x = read(1)
            if x == EDGE and carry == 0:
                act(ANS)
                break
            b1 = read(3) - ZERO if two else 0
            b0 = read(2) - ZERO
            digit = x - ZERO if x != EDGE else 0
            if two:  # e = x*b1 + c1, s = x*b0 + c0, new carry e + s // 10, digit s % 10
                e, s = digit * b1 + carry // 10, digit * b0 + carry % 10
                carry, d = e + s // 10, s % 10
                for t in (e // 10, e % 10, s // 10, s % 10, carry // 10, carry % 10, d):
                    act(ZERO + t)
            else:
                carry, d = divmod(digit * b0 + carry, 10)
                act(ZERO + carry)
                act(ZERO + d)
            if x != EDGE:
                act(LEFT[1])

        while True:  # 3. walk right a column at a time to the end of the tape...
            for _ in range(width):
                act(RIGHT[out])
            if read(out) == EDGE:
                break
        act(LEFT[out])
        act(LEFT[out])
        while True:  # ...and back, outputting each column's digit
            t = read(out)
            if t == EQUALS:
                act(EOS)
                break
            act(t)
            for _ in range(width):
                act(LEFT[out])


class MultiplicationBy1(Multiplication):
    """n x 1 only: b has exactly one digit (evaluation sweeps n x 1 and n x 2 separately)."""

    name = "multiplication-1"
    b_digits = (1,)


class MultiplicationBy2(Multiplication):
    """n x 2 only: b has exactly two digits."""

    name = "multiplication-2"
    b_digits = (2,)


def _digits(rng: random.Random, n: int) -> str:
    """n uniform random digits (leading zeros included)."""
    return "".join(rng.choice("0123456789") for _ in range(n))


def _number(rng: random.Random, n: int) -> str:
    """n random digits, the first nonzero unless n == 1."""
    first = str(rng.randint(1, 9) if n > 1 else rng.randint(0, 9))
    return first + "".join(rng.choice("0123456789") for _ in range(n - 1))
