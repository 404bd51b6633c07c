"""Logical graph: evaluate a random Boolean circuit written as Python, with the search-memory tool.

The input is a program of one assignment per line (valid Python, ending with a newline):
    k417 = True                       # an input (3 in random problems)
    b902 = not k417                   # an internal node: one operand...
    x071 = b902 or not k417           # ...or two, `and`/`or`, each optionally negated
Operands are earlier variables; the last line's variable is the output; `size` is the number of
internal nodes. Names are a lowercase letter and 3 digits (26,000 names), distinct and drawn at
random at every size, so a 10-node training program and a 1,000-node test program look alike
(names v0..v999 would show a model 1-digit names in training and 3-digit ones only in testing).
Fixed width keeps every search pattern below unambiguous (`b902 =` finds b902's definition and
nothing else), and 4 characters rather than `v` + 4 digits saves a tenth of the trajectory.
In random problems (n >= 2) every variable but the output is an operand of a later node, so the
output depends on all n nodes (with operands drawn uniformly, a 1,000-node output depends on
~40 of them, and a "1,000-node" test would be a 40-node one).

The oracle is a depth-first search from the output; the DFS stack and the computed values live
in the search memory as thoughts. With current node v:
  1. `[FIND]v =[END]` answers v's definition line.
  2. An input: write `v := 1` (or 0) and a newline; go to 4.
  3. For each operand a in order, `[FIND]a :=[END]` answers `a := 1` (or 0) if a is computed,
     else nothing: then write `a < v` and a newline (a is computed on behalf of v) and make a
     the current node (step 1). When every operand is known, write `v := value` and a newline.
  4. `[FIND]v <[END]` answers `v < p`: p is current again (step 1: its definition is found
     again and its operands checked again, one more now known). Nothing: v is the output, so
     `[ANS]`, the output `1` or `0`, `[EOS]`.
A value, once written, is found by every later check, so each node is descended into at most
once and each `v <` line is unique. Every decision reads the latest definition line and what
came after it, so the trajectory is local at any size.

Locality (mamba_agent.locality over training problems, n uniform in 1..10, plus sizes 50, 200
and 1,000; tests/test_logical_graph.py keeps both numbers):
  - k = 70 when the training names come from a small pool (16 or 24): contexts then repeat
    across problems, so the check sees how far back a decision really looks. This is the true
    figure and a bound at any size: writing `v := value` after the second operand's check
    copies v's name from the definition line; its last character is 24 + 2 (the rest of the
    longest line, `a001 = not b002 and not c003`, then newline and [/OBS]) + 2 * 20 (two
    checks) + 3 (the name so far) + 1 tokens back.
  - k = 30 to 35 with random names (150 to 300 training problems; 29 with 20): long contexts
    hardly ever repeat, so fewer conflicts are seen. A lower bound that creeps up with more
    data, not the real reach.

Length (tokens per internal node on top of the input, which is about 21 tokens a line): 182 at
n = 10 (2,080 tokens in all), 154 at n = 1,000 (about 175,000 in all, ~6,000 finds).

The answer is `1` (True) or `0` (False); the checker wants exactly the reference.
"""

import random
import re

from pydantic import BaseModel, ConfigDict, field_validator

from mamba_agent.episode import Episode
from mamba_agent.tasks import Problem, Task
from mamba_agent.tools.search import SearchMemory
from mamba_agent.vocab import ANS, BOS, END, EOS, FIND, OBS_END, decode, encode

N_INPUTS = 3
NAME = r"[a-z]\d{3}"
_OPERAND = rf"(not )?({NAME})"
INPUT_LINE = re.compile(rf"({NAME}) = (True|False)")
NODE_LINE = re.compile(rf"({NAME}) = {_OPERAND}(?: (and|or) {_OPERAND})?")


def parse_line(line: str) -> tuple[str, object]:
    """(name, definition) of one line: definition is True/False for an input, else (op,
    [(negated, operand), ...]) with op 'and', 'or' or None (one operand). Raises ValueError."""
    if m := INPUT_LINE.fullmatch(line):
        return m[1], m[2] == "True"
    if m := NODE_LINE.fullmatch(line):
        return m[1], (m[4], [(bool(m[2]), m[3])] + ([(bool(m[5]), m[6])] if m[4] else []))
    raise ValueError(
        "expected `x123 = True`, `x123 = False` or `x123 = [not ]y456 [and|or [not ]z789]`"
        " (names: a lowercase letter and 3 digits; single spaces)"
    )


def parse_program(program: str) -> list[tuple[str, object]]:
    """[(name, definition)] of every line (see parse_line); a final newline is allowed.
    Raises ValueError naming the first line that is wrong and what is wrong with it."""
    defined: dict[str, int] = {}
    out = []
    for i, line in enumerate(program.removesuffix("\n").split("\n"), 1):
        where = f"line {i} ({line[:60]!r})"
        try:
            name, definition = parse_line(line)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if name in defined:
            raise ValueError(f"{where}: {name} is already defined on line {defined[name]}")
        for _, a in () if isinstance(definition, bool) else definition[1]:
            if a not in defined:
                raise ValueError(f"{where}: {a} is not defined on an earlier line")
        defined[name] = i
        out.append((name, definition))
    return out


def evaluate(nodes: list[tuple[str, object]]) -> bool:
    """The output's value, line by line (the reference; tests check it against Python's exec)."""
    value: dict[str, bool] = {}
    for name, definition in nodes:
        value[name] = definition if isinstance(definition, bool) else _apply(definition, value)
    return value[nodes[-1][0]]


def _apply(definition, value) -> bool:
    op, operands = definition
    xs = [value[a] != negated for negated, a in operands]
    return xs[0] if op is None else (xs[0] and xs[1]) if op == "and" else (xs[0] or xs[1])


class LogicalGraphInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    program: str
    """The circuit as Python lines: inputs like `k417 = True`, nodes like `x071 = b902 or not
    k417` (one or two operands defined on earlier lines); names are a lowercase letter and 3
    digits, each defined once; the last line is the output. A final newline is dropped."""

    @field_validator("program")
    @classmethod
    def _valid(cls, v: str) -> str:
        parse_program(v)
        return v.removesuffix("\n")


def random_program(rng: random.Random, n: int, pool: int = 26_000) -> str:
    """n internal nodes over N_INPUTS inputs; every variable but the output is an operand of a
    later node (from n = 2: one node can use only two of the three inputs), so the output
    depends on all of them. Names are distinct, drawn from the first `pool` of a000..z999
    (tests use a small pool to make contexts repeat). Each node has two operands (probability
    2/3) or one: one drawn from the variables no node uses yet, the other from all earlier ones,
    in random order, each negated with probability 1/2, joined by `and` or `or`. Near the end
    both come from the unused ones where that is needed to use them all."""
    if not 1 <= n <= pool - N_INPUTS:
        raise ValueError(f"size must be 1..{pool - N_INPUTS}, got {n}")
    names = [f"{chr(97 + i // 1000)}{i % 1000:03d}" for i in rng.sample(range(pool), n + N_INPUTS)]
    lines = [f"{x} = {rng.choice(('True', 'False'))}" for x in names[:N_INPUTS]]
    unused = list(range(N_INPUTS))  # variables no node uses yet
    for j in range(N_INPUTS, n + N_INPUTS):
        left = n + N_INPUTS - j  # nodes still to write, this one included; each uses at most
        tight = len(unused) > left  # two unused variables and adds one (itself)
        first = unused.pop(rng.randrange(len(unused)))
        operands = [first]
        if tight or rng.random() < 2 / 3:
            if tight:
                second = rng.choice(unused)
            else:  # any earlier variable but `first`
                second = rng.randrange(j - 1)
                second += second >= first
            if second in unused:
                unused.remove(second)
            operands.insert(rng.randrange(2), second)
        unused.append(j)
        op = f" {rng.choice(('and', 'or'))} "
        terms = [("not " if rng.random() < 0.5 else "") + names[i] for i in operands]
        lines.append(f"{names[j]} = " + op.join(terms))
    return "\n".join(lines)


class LogicalGraph(Task):
    name = "logical_graph"
    Input = LogicalGraphInput
    train_max_size = 10  # training draws n uniformly from 1..10, as the paper; tests go to 1,000

    def problem(self, input: dict) -> Problem:
        x = LogicalGraphInput.model_validate(input)
        nodes = parse_program(x.program)
        return Problem(
            task=self.name,
            input=x.model_dump(),
            size=sum(not isinstance(d, bool) for _, d in nodes),
            prompt=[BOS] + encode(x.program + "\n"),
            reference=str(int(evaluate(nodes))),
        )

    def random_problem(self, rng: random.Random, size: int) -> Problem:
        return self.problem({"program": random_program(rng, size)})

    def training_problem(self, rng: random.Random) -> Problem:
        return self.random_problem(rng, rng.randint(1, self.train_max_size))

    def tools(self, problem: Problem) -> list:
        return [SearchMemory(problem.prompt[1:])]

    def max_tokens(self, problem: Problem) -> int:
        # A bound, not an estimate: per internal node at most 3 definition finds (38 tokens),
        # 6 operand checks (20), 2 descents (12), its value (10) and the return find (21).
        return len(problem.prompt) + 300 * (problem.input["program"].count("\n") + 1) + 10

    def check(self, problem: Problem, answer: str, tools=()) -> bool:
        return answer == problem.reference

    def solve(self, episode: Episode, problem: Problem) -> None:
        act = episode.act

        def find(pattern: str) -> list[str]:
            act(FIND)
            for t in encode(pattern):
                act(t)
            obs = act(END)
            assert obs[-1] == OBS_END, decode(obs)
            return decode(obs[:-1]).split("\n")[:-1]

        def write(text: str) -> None:
            for t in encode(text):
                act(t)

        v = parse_program(problem.input["program"])[-1][0]  # the output: the last line
        while True:
            (line,) = find(f"{v} =")
            _, definition = parse_line(line)
            if isinstance(definition, bool):
                value = definition
            else:
                values, missing = {}, None
                for _, a in definition[1]:
                    found = find(f"{a} :=")
                    if not found:
                        missing = a
                        break
                    (memo,) = found
                    values[a] = memo == f"{a} := 1"
                if missing:  # descend: compute it first, then come back to v
                    write(f"{missing} < {v}\n")
                    v = missing
                    continue
                value = _apply(definition, values)
            write(f"{v} := {int(value)}\n")
            parent = find(f"{v} <")
            if not parent:  # v is the output
                act(ANS)
                write(str(int(value)))
                act(EOS)
                return
            (marker,) = parent
            v = marker.split(" < ")[1]
