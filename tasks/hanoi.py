"""Tower of Hanoi with the pointer-memory tool: the iterative algorithm, the whole state rewritten
after every move (four pointers, a 5-local trajectory).

The input is the tower on rod A, bottom to top, distinct sizes largest first: `(57)(41)(9)(2)`
(random problems draw sizes from 1..100; size = the number of disks). The answer is the optimal
2^n - 1 moves to rod C in the paper's notation, `(size)FROMTO$` each: `(2)AB$(9)AC$(2)BC$...`.

The state is one cell per disk, smallest first: the input is in size order, so the model never
compares two sizes (they are labels it copies to the output). A header gives the smallest disk's
cycle (`>` A->B->C for n even, `<` A->C->B for n odd), then each cell is `A B C` (in the run on
the smallest disk's rod S, up to the disk that moved), `u`..`z` (the disk that just moved: AB AC
BA BC CA CB) or `a b c` (after it). Moves alternate between the smallest disk and the one other
legal move, the first disk off S, so the next state is a left-to-right copy of the last: P1 reads
the last state cell by cell while the model writes the next one after it (`_copy_states`).
`_setup` writes the state after move 1; after `[ANS]` (every disk on C) P2 rereads each state and
P3 and P4 fetch the movers' sizes from the input for the move list (`_output`).

Why 5-local: a cell is decided by the cell read and the cell written 3 tokens before; 5 tells P1's
last written mark from its reading of a mark, and a digit P4 reads for the output from one it
passes on its walk back; every phase is told apart by the pointer it moves. `mamba-agent locality`
finds 5 at any size (tests/test_hanoi.py keeps it). About 7n + 45 tokens a move (4 a cell for the
copy, 3 for P2, ~45 for the size) plus ~17 an input cell for the setup; the decoded trajectory of
`(7)(2)` (states `>ua`, `>Bv`, `>xc`, `>CC`) is in tests/test_hanoi.py.
"""

import random
import re

from pydantic import BaseModel, ConfigDict, field_validator

from mamba_agent.episode import Episode
from mamba_agent.tasks import Problem, Task
from mamba_agent.tools.pointer import PointerMemory
from mamba_agent.vocab import ANS, BOS, EOS, encode, pointer_command

MAX_SIZE = 100  # disk sizes are 1..MAX_SIZE
MAX_DISKS = 20  # 2^20 - 1 moves, ~200M tokens: far beyond any run (the reference is a string)
READ = {p: pointer_command(p, "read") for p in (1, 2, 3, 4)}
LEFT = {p: pointer_command(p, "left") for p in (1, 2, 3, 4)}
RIGHT = {p: pointer_command(p, "right") for p in (1, 2, 3, 4)}
LPAREN, RPAREN, DOLLAR = ord("("), ord(")"), ord("$")
BACK, FWD = ord("-"), ord("+")  # per input cell: that disk's cycle (A->C->B, A->B->C)
HEADER = {BACK: ord("<"), FWD: ord(">")}  # state header: the smallest disk's cycle
NEXT = {ord("<"): {"A": "C", "C": "B", "B": "A"}, ord(">"): {"A": "B", "B": "C", "C": "A"}}
RUN = {r: ord(r) for r in "ABC"}  # on the smallest disk's rod, up to the mover
REST = {r: ord(r.lower()) for r in "ABC"}  # after the mover
MOVES = [("A", "B"), ("A", "C"), ("B", "A"), ("B", "C"), ("C", "A"), ("C", "B")]
MOVER = {m: ord(code) for m, code in zip(MOVES, "uvwxyz")}
ROD = {**{t: r for r, t in RUN.items()}, **{t: r for r, t in REST.items()}, **{t: m[1] for m, t in MOVER.items()}}
MOVE_OF = {t: m for m, t in MOVER.items()}
RUN_CELLS = frozenset(RUN.values())
THIRD = {(a, b): ({"A", "B", "C"} - {a, b}).pop() for a in "ABC" for b in "ABC" if a != b}
ANSWER = re.compile(r"(?:\([1-9][0-9]{0,2}\)[ABC][ABC]\$)*")


class HanoiInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    disks: list
    """The tower on rod A, bottom to top: distinct integer sizes 1..100, largest first, e.g.
    [7, 5, 2] (at most 20 disks). The goal is every disk on rod C."""

    @field_validator("disks")
    @classmethod
    def _tower(cls, v: list) -> list:
        if not v:
            raise ValueError("give at least one disk, e.g. [7, 5, 2]")
        if len(v) > MAX_DISKS:
            raise ValueError(f"at most {MAX_DISKS} disks (2^n - 1 moves), got {len(v)}")
        for d in v:
            if type(d) is not int or not 1 <= d <= MAX_SIZE:
                raise ValueError(f"disk sizes must be integers 1..{MAX_SIZE}, got {d!r}")
        if len(set(v)) != len(v):
            dup = next(d for d in v if v.count(d) > 1)
            raise ValueError(f"disk sizes must be distinct, {dup} appears {v.count(dup)} times")
        if any(a < b for a, b in zip(v, v[1:])):
            raise ValueError(f"list the tower bottom to top, largest first, e.g. {sorted(v, reverse=True)[:8]}")
        return v


def hanoi_moves(disks: list[int]) -> list[tuple[int, str, str]]:
    """The 2^n - 1 moves (size, from, to) taking the tower from A to C, by the recursion (the
    oracle's iterative algorithm must agree with it)."""
    moves = []

    def go(k: int, src: str, dst: str, via: str) -> None:  # move disks[k:] from src to dst
        if k == len(disks):
            return
        go(k + 1, src, via, dst)
        moves.append((disks[k], src, dst))
        go(k + 1, via, dst, src)

    go(0, "A", "C", "B")
    return moves


def format_moves(moves) -> str:
    return "".join(f"({s}){a}{b}$" for s, a, b in moves)


class Hanoi(Task):
    name = "hanoi"
    version = 1
    Input = HanoiInput
    train_max_size = 8  # the paper trains on up to 8 disks and tests to 12
    max_size = MAX_DISKS

    def problem(self, input: dict) -> Problem:
        x = HanoiInput.model_validate(input)
        return Problem(
            task=self.name,
            input=x.model_dump(),
            size=len(x.disks),
            prompt=[BOS] + encode("".join(f"({d})" for d in x.disks)),
            reference=format_moves(hanoi_moves(x.disks)),
        )

    def random_problem(self, rng: random.Random, size: int) -> Problem:
        if not 1 <= size <= MAX_DISKS:  # let the schema say why (sample() would just fail)
            return self.problem({"disks": list(range(size, 0, -1))})
        return self.problem({"disks": sorted(rng.sample(range(1, MAX_SIZE + 1), size), reverse=True)})

    def training_problem(self, rng: random.Random) -> Problem:
        return self.random_problem(rng, rng.randint(1, self.train_max_size))

    def tools(self, problem: Problem) -> list:
        return [PointerMemory(problem.prompt[1:], n_pointers=4)]

    def max_tokens(self, problem: Problem) -> int:
        # The oracle takes about 7n + 45 tokens a move plus 17 per input cell; over twice that.
        n, cells = problem.size, len(problem.prompt) - 1
        return 2 * ((2**n - 1) * (7 * n + 80) + 50 * cells + 100)

    def check(self, problem: Problem, answer: str, tools=()) -> bool:
        """A legal move sequence (the size written is the top disk of a nonempty rod, never put
        on a smaller one) that ends with every disk on C. Anything malformed is False."""
        if not isinstance(answer, str) or not answer.isascii() or not ANSWER.fullmatch(answer):
            return False
        rods = {"A": list(problem.input["disks"]), "B": [], "C": []}
        for size, src, dst in re.findall(r"\((\d+)\)([ABC])([ABC])\$", answer):
            if src == dst or not rods[src] or rods[src][-1] != int(size):
                return False
            if rods[dst] and rods[dst][-1] < int(size):
                return False
            rods[dst].append(rods[src].pop())
        return not rods["A"] and not rods["B"]

    def solve(self, episode: Episode, problem: Problem) -> None:
        act = episode.act

        def read(p: int) -> int:
            return act(READ[p])[0]

        header, last = _setup(act, read)
        _copy_states(act, read, header, last)
        _output(act, read)


def _setup(act, read) -> tuple[int, int]:
    """The marks, the header and the state after move 1; P1 ends having read that header.
    P1 walks the input writing each cell's disk cycle, `-` or `+` (the largest disk moves
    A->C->B; the cycle flips at each `(`), reads the first mark (the input's end, always `-`) and
    writes the header of the last mark; then it walks the marks writing the state after move 1:
    the smallest disk's mover, then an `a` at each flip. The input itself is the initial state.
    Returns the header and the last cell written."""
    mark, c = BACK, read(1)  # pass 1: each input cell's disk cycle, flipping at `(`
    while True:
        act(mark)
        act(RIGHT[1])
        c = read(1)
        if c == BACK:  # the first mark: the input's end
            break
        if c == LPAREN:
            mark = FWD if mark == BACK else BACK
    header = HEADER[mark]  # the last disk's cycle is the smallest disk's
    act(header)
    last = MOVER[("A", NEXT[header]["A"])]  # pass 2: move 1, then an `a` at each flip
    act(last)
    prev = BACK
    while True:
        act(RIGHT[1])
        c = read(1)
        if c in NEXT:
            return header, last
        if c != prev:
            last = REST["A"]
            act(last)
        prev = c


def _copy_states(act, read, header: int, last: int) -> None:
    """One state per move, each copied from the last, until the scan finds every disk on C.
    Every state has n + 1 cells, so P1 reaches the new header exactly when the new state is
    complete. With `last` the cell just written, the cell read gives:
      a header: `[ANS]` if `last` is in `A B C` (no disk off S: all are on C), else the header;
      the first cell: a mover (the smallest disk moved last), so the other move comes: the rod in
        `A B C`; otherwise the smallest disk moves: the mover (rod, the next rod of its cycle);
      after an `A B C` cell: the same rod continues the run, another rod is the mover (rod, the
        third rod);
      after a mover or an `a b c` cell: the rod in `a b c` (a mover's rod is its `to`)."""
    c = header  # P1 has just read the header of the state the model completed
    while True:
        if c in NEXT:
            if last in RUN_CELLS:
                act(ANS)
                return
            cell = c
        elif last in NEXT:  # the first cell: the smallest disk
            rod = ROD[c]
            cell = RUN[rod] if c in MOVE_OF else MOVER[(rod, NEXT[header][rod])]
        elif last in RUN_CELLS:
            s, rod = ROD[last], ROD[c]
            cell = RUN[s] if rod == s else MOVER[(rod, THIRD[s, rod])]
        else:
            cell = REST[ROD[c]]
        act(cell)
        last = cell
        act(RIGHT[1])
        c = read(1)


def _output(act, read) -> None:
    """P2 reads every cell; P3 (the smallest disk) and P4 (the others) give the sizes.
    P3 walks right to the input's end (P4 riding along and resting there) and back onto the
    smallest disk's `(`. A mover right after a header is the smallest disk's: output `(`, the
    digits P3 reads, `)`; P3 walks back; P2 reads the cell again: the two rods and `$`. Any other
    `A B C` cell or mover: P4 steps left over one disk, so that at the mover it stands on that
    disk's `(`; P2 reads again, and a mover outputs `(`, P4's digits, `)`, P4 walks back to the
    end, P2 reads again: the rods and `$`. `[ANS]` read by P2: `[EOS]`. Walks read every cell
    but one known to be a digit or `)` (after a `(` going right, first going left)."""

    def walk_right(p: int, skip: bool, rider: int | None = None) -> None:
        """Right to the input's end (the first mark), reading every cell but the one after a
        `(`, always a digit (`skip`: the pointer stands on a `(`)."""
        while True:
            act(RIGHT[p])
            if rider is not None:
                act(RIGHT[rider])
            if skip:
                skip = False
                continue
            c = read(p)
            if c == BACK:
                return
            skip = c == LPAREN

    def step_left(p: int) -> None:
        """Left onto the previous disk's `(`, from its `)` or the cell after it; the first cell
        passed is a digit or `)`, never `(`, so it is not read."""
        act(LEFT[p])
        while True:
            act(LEFT[p])
            if read(p) == LPAREN:
                return

    def output_move(p: int) -> None:
        """`(size)FROMTO$`: the size read by pointer p from the disk's `(`; p walks back to where
        it rests before the rods are written, so that P2's cell, read again, is in view."""
        act(LPAREN)
        while True:
            act(RIGHT[p])
            d = read(p)
            act(d)
            if d == RPAREN:
                break
        if p == 3:
            step_left(3)
        else:
            walk_right(4, skip=False)
        src, dst = MOVE_OF[read(2)]
        act(ord(src))
        act(ord(dst))
        act(DOLLAR)

    walk_right(3, skip=True, rider=4)  # P3 and P4 start on the first `(`
    step_left(3)
    read(2)  # as after every step of P3 (here P2's first cell, `(`): P2 then moves on
    x = None
    while True:
        first = x in NEXT  # the cell after a header is the smallest disk's
        act(RIGHT[2])
        x = read(2)
        if x == ANS:
            act(EOS)
            return
        if x in MOVE_OF and first:  # the smallest disk moved: P3 stands on it
            output_move(3)
        elif x in MOVE_OF or x in RUN_CELLS:  # P4 steps over one disk, in step with P2's cells
            step_left(4)
            if read(2) in MOVE_OF:
                output_move(4)
