"""Logical graph: evaluate a random Boolean circuit written as Python, with the search-memory tool.

The input is one assignment per line, ending with a newline: inputs `k417 = True`, internal nodes
`b902 = not k417` or `x071 = b902 or not k417` (one or two earlier operands, each optionally
negated); the last line's variable is the output and `size` the number of internal nodes. The
answer is `1` (True) or `0` (False); the checker wants exactly the reference. Names are a
lowercase letter and 3 digits, drawn at random at every size, so a 10-node training program and
a 1,000-node test program look alike (v0..v999 would show 3-digit names only in testing), and
fixed width keeps every search pattern unambiguous (`b902 =` finds b902's definition and mark and
nothing else, `+b902` only its value). Random programs use every variable, so the output depends
on all n nodes (with operands drawn uniformly it would depend on ~40 of 1,000).

The oracle (`solve`) is a depth-first evaluation from the output whose stack and values are
thoughts in the search memory, found again with `[FIND]`: `a < v` (a is computed for v), a mark
`v =x` (v's first operand is x), and both literals of a computed node, `+v 1` and `-v 0`, so
checking an operand is one find whose answer ends with its value.

Why this shape: a name is only ever copied from the latest observation or the latest thought,
never across a check. The longest copy is a name from the start of the line just read (the
output's name from the last program line; v's name right after its definition): a 28-character
line, its newline and `[FIND]` or `[/OBS]`, so the trajectory is 30-local at any size
(`mamba-agent locality`, with names from a small pool so that contexts repeat;
tests/test_logical_graph.py keeps it). Not much less is possible with this input: the output's
name appears only at the start of the last line. The first design was 70-local and a small Mamba
did not learn it (CHANGELOG.md); lengths and results are in eval/README.md.
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
    version = 2
    Input = LogicalGraphInput
    train_max_size = 10  # training draws n uniformly from 1..10, as the paper; tests go to 1,000
    max_size = 26_000 - N_INPUTS  # distinct 4-character names a000..z999

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
        # A bound, not an estimate: per node at most 4 definition finds (8 + 29 + 8 each), its
        # name, mark and `v ?` lines (17), 4 literal checks (16 each), 2 descents (12), its
        # values (16) and the return find (21): under 340.
        return len(problem.prompt) + 400 * (problem.input["program"].count("\n") + 1) + 10

    def check(self, problem: Problem, answer: str, tools=()) -> bool:
        return answer == problem.reference

    def solve(self, episode: Episode, problem: Problem) -> None:
        """Depth-first from the output, with current node v:
        1. `[FIND]v =[END]`: v's definition, then v's mark `v =x` if step 3 wrote one. An input's
           value is on its line: go to 5.
        2. No mark: write `v` (its name close again), then find literal 1 (`+a` or `-a`): its value,
           or nothing if a is not computed: then write `a < v` and make a current (step 1).
        3. Literal 1 known, x: write the mark `v =x` and go to 1 (the definition, now marked).
        4. Marked, two operands: write `v 0` or `v 1` where x decides v (`0 and ..`, `1 or ..`),
           else `v ?`; find literal 2 as in step 2. v's value: the deciding x, else literal 2's.
        5. Write `+v x` and `-v y` (y = not x); `[FIND]v <[END]` answers `v < p`: p is current
           again. No answer: v is the output: `[ANS]`, its value, `[EOS]`.
        A value once written is found by every later check, so each node is descended into once
        and each `v <` line and each mark is unique (`v =` answers at most two lines)."""
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

        def literal(negated: bool, a: str) -> str:
            return ("-" if negated else "+") + a

        v = parse_program(problem.input["program"])[-1][0]  # the output: the last line
        while True:
            lines = find(f"{v} =")  # the definition, then the mark `v =x` if literal 1 was known
            _, definition = parse_line(lines[0])
            if isinstance(definition, bool):  # an input
                value = definition
            else:
                op, operands = definition
                if len(lines) == 1:  # phase 1: check literal 1
                    write(f"{v}\n")  # v's name, close again
                    found = find(literal(*operands[0]))
                    if not found:
                        write(f"{operands[0][1]} < {v}\n")
                        v = operands[0][1]
                        continue
                    x = found[0][-1]
                    write(f"{v} ={x}\n")  # the mark: literal 1 is known and is x
                    continue  # find the definition again, now with the mark
                x = lines[1][-1] == "1"  # phase 2: literal 1 is x
                if len(operands) == 1:
                    value = x
                else:  # v's value: x if x decides it (0 and .., 1 or ..), else literal 2's
                    decides = x == (op == "or")
                    write(f"{v} {int(x) if decides else '?'}\n")
                    found = find(literal(*operands[1]))
                    if not found:
                        write(f"{operands[1][1]} < {v}\n")
                        v = operands[1][1]
                        continue
                    value = x if decides else found[0][-1] == "1"
            write(f"+{v} {int(value)}\n-{v} {int(not value)}\n")
            parent = find(f"{v} <")
            if not parent:  # v is the output
                act(ANS)
                write(str(int(value)))
                act(EOS)
                return
            (marker,) = parent
            v = marker.split(" < ")[1]
