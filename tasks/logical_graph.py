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
its mark and nothing else, `+b902` only its value), and 4 characters rather than `v` + 4 digits saves a tenth of the trajectory.
In random problems (n >= 2) every variable but the output is an operand of a later node, so the
output depends on all n nodes (with operands drawn uniformly, a 1,000-node output depends on
~40 of them, and a "1,000-node" test would be a 40-node one).

The oracle is a depth-first search from the output; the DFS stack, the marks and the computed
values live in the search memory as thoughts. Each operand is a literal, `+a` (a) or `-a` (not
a), and a computed node v writes both of its literals' values: `+v 1` and `-v 0` (or `+v 0`,
`-v 1`), so checking a literal is one find whose answer ends with the literal's own value. With
current node v:
  1. `[FIND]v =[END]` answers v's definition line, then v's mark `v =x` if step 3 wrote one.
     An input: its value is the line's; go to 5.
  2. No mark (literal 1 not known yet): write `v` and a newline (v's name again, a few tokens
     back from here on), then `[FIND]+a[END]` (or `-a`) for literal 1: `+a 1` (or 0), or nothing
     if a is not computed: then write `a < v` and a newline (a is computed on behalf of v) and
     make a the current node (step 1).
  3. Literal 1 known, x: write the mark `v =x` and a newline and go to 1 (the definition again,
     now followed by the mark).
  4. Marked: one operand: v's value is x. Two: write `v 0` or `v 1` when x decides v
     (`0 and ..`, `1 or ..`), else `v ?`, and a newline; then find literal 2 as in step 2
     (descending into it the same way if it is not computed). v's value is the decided x, else
     literal 2's value (both operands are always evaluated: the search is the whole DFS).
  5. Write `+v x` and `-v y` (x = v's value, y = not x), each with a newline; then
     `[FIND]v <[END]` answers `v < p`: p is current again (step 1: its definition and mark tell
     where it was). Nothing: v is the output, so `[ANS]`, the output `1` or `0`, `[EOS]`.
A value, once written, is found by every later check, so each node is descended into at most
once and each `v <` line and each mark is unique (`v =` answers at most two lines).

Why this shape: a name is only ever copied from the latest observation or the latest thought,
never across a check. The old trajectory (one `v := value` line per node, definition found
again after each descent) copied v's name from its definition line after two operand checks,
70 tokens back, and a 1,500-step Mamba did not learn it (2/20 at 3 nodes). Here the longest
copy is that of a name from the start of the line just read: the output's name from the last
program line (the first command), and v's name written right after its definition (step 2);
a 28-character line (`a001 = not b002 and not c003`), its newline and `[FIND]` or `[/OBS]`
make that 30 tokens. Everything else reads at most ~25 tokens back: literal 1 from the
definition behind `v` and a newline, literal 2 and the operator from the definition behind the
mark, v's name from the `v` line, the mark or the `v ?` line, a value from the end of the last
answer.

Locality (mamba_agent.locality over training problems, n uniform in 1..10, plus sizes 50, 200
and 1,000; tests/test_logical_graph.py keeps both numbers):
  - k = 30 when the training names come from a small pool (16): contexts then repeat across
    problems, so the check sees how far back a decision really looks (the copies above). The
    true figure and a bound at any size (the old trajectory: 70).
  - k = 23 with random names (150 training problems; 22 with 20): long contexts hardly ever
    repeat, so fewer conflicts are seen; a lower bound, not the real reach (the old: 35).
Not much lower is possible with this input: the output's name is the first 4 of up to 28
characters of the last line and appears nowhere else, so whatever first writes it reads
29 tokens back; any node's name read after its definition line is as far. Making it shorter
would take never writing the output's name (it could be found through its last operand).

The lookup table (counting, k = 30, back-off) gets 0% even at 10 nodes: it cannot copy names
it has not seen in the same context (eval/results/2026-11-28-logical-graph-lookup-cpu/). The
shipped Mamba (builtin:logical_graph-mamba), trained on 1..10 nodes, is exact on 99 of 100
problems of 1,000 nodes (eval/README.md).

Length (tokens per internal node on top of the input, which is about 21 tokens a line): about
235 at n = 10 (~2,600 tokens in all), 210 at n = 200 and n = 1,000 (about 229,000 in all).

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
