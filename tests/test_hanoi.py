import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from mamba_agent.locality import conflicts, smallest_local_k
from mamba_agent.taskfile import TaskFileError, load_taskfile
from mamba_agent.tasks import get_task
from mamba_agent.tasks.hanoi import format_moves, hanoi_moves
from mamba_agent.trajectory import COMMAND, INPUT, OBSERVATION, OUTPUT, THOUGHT
from mamba_agent.vocab import decode

task = get_task("hanoi")
EXAMPLE = Path(__file__).parent.parent / "tasks" / "examples" / "hanoi.yaml"


def iterative_moves(disks: list[int]) -> list[tuple[int, str, str]]:
    """The textbook iterative algorithm on explicit rods, independent of the task module: the
    smallest disk steps along its cycle every other move, in between the one legal other move."""
    rods = {"A": list(disks), "B": [], "C": []}
    cycle = "ACB" if len(disks) % 2 else "ABC"
    small, moves = "A", []
    for k in range(2 ** len(disks) - 1):
        if k % 2 == 0:
            dst = cycle[(cycle.index(small) + 1) % 3]
            src, small = small, dst
        else:
            x, y = [r for r in "ABC" if r != small]
            src, dst = (x, y) if rods[x] and (not rods[y] or rods[x][-1] < rods[y][-1]) else (y, x)
        rods[dst].append(rods[src].pop())
        moves.append((rods[dst][-1], src, dst))
    assert rods["C"] == list(disks)
    return moves


def test_oracle_every_size_1_to_10():
    rng = random.Random(0)
    for n in range(1, 11):
        for _ in range(3 if n < 10 else 1):
            p = task.random_problem(rng, n)
            disks = p.input["disks"]
            assert p.size == n == len(set(disks)) and disks == sorted(disks, reverse=True) and 1 <= min(disks) <= max(disks) <= 100
            answer = task.oracle(p).output_text()  # raises if the tool-driven run misses
            assert answer == p.reference == format_moves(iterative_moves(disks))
            assert answer.count("$") == 2**n - 1 and task.check(p, answer)


def test_oracle_12_disks():
    rng = random.Random(12)
    for _ in range(2):
        p = task.random_problem(rng, 12)
        trajectory = task.oracle(p)
        assert trajectory.output_text() == p.reference and task.check(p, p.reference)
        assert 520_000 < len(trajectory) < 580_000 and len(trajectory) < task.max_tokens(p) / 2


@pytest.mark.parametrize(
    "disks",
    [[100], [1], [2, 1], [100, 1], [100, 99, 98, 97, 96, 95, 94, 93, 92], [9, 8, 7, 6, 5, 4, 3, 2, 1], [100, 10, 9, 1]],
)
def test_oracle_edge_cases(disks):
    p = task.problem({"disks": disks})
    trajectory = task.oracle(p)
    assert trajectory.output_text() == p.reference == format_moves(hanoi_moves(disks)) == format_moves(iterative_moves(disks))
    assert len(trajectory) < task.max_tokens(p) / 2


def test_trajectory_two_disks_reads_as_documented():
    t = task.oracle(task.problem({"disks": [7, 2]}))
    r, read = "[P1.right]", "[P1.read]"
    setup = (
        f"[BOS](7)(2)[P1.read](-{r}{read}7-{r}{read})-{r}{read}(+{r}{read}2+{r}{read})+"  # marks
        f"{r}{read}->u"  # the input's end; header `>`; move 1: (2) A->B
        f"{r}{read}-{r}{read}-{r}{read}+a{r}{read}+{r}{read}+"  # an `a` at the flip
    )
    states = (
        f"{r}{read}>>{r}{read}uB{r}{read}av"  # (2) is on B: move (7) A->C
        f"{r}{read}>>{r}{read}Bx{r}{read}vc"  # (2) B->C
        f"{r}{read}>>{r}{read}xC{r}{read}cC{r}{read}>[ANS]"  # nothing off C: done
    )
    p2 = "".join(f"[P2.right][P2.read]{c}" for c in "7)(2)---+++>")
    output = (
        "[P3.right][P4.right][P3.right][P4.right][P3.read])[P3.right][P4.right][P3.read]("
        "[P3.right][P4.right][P3.right][P4.right][P3.read])[P3.right][P4.right][P3.read]-"  # to the end
        "[P3.left][P3.left][P3.read]2[P3.left][P3.read]([P2.read](" + p2 +  # P3 on (2), P2 reads all
        "[P2.right][P2.read]u([P3.right][P3.read]22[P3.right][P3.read]))"  # smallest moved: P3's (2)
        "[P3.left][P3.left][P3.read]([P2.read]uAB$"  # P3 back on its `(`; the rods
        "[P2.right][P2.read]a[P2.right][P2.read]>"
        "[P2.right][P2.read]B[P4.left][P4.left][P4.read]2[P4.left][P4.read]([P2.read]B"  # P4 over (2)
        "[P2.right][P2.read]v[P4.left][P4.left][P4.read]7[P4.left][P4.read]([P2.read]v"  # ...onto (7)
        "([P4.right][P4.read]77[P4.right][P4.read]))"
        "[P4.right][P4.read]([P4.right][P4.right][P4.read])[P4.right][P4.read]-[P2.read]vAC$"  # P4 back
        "[P2.right][P2.read]>[P2.right][P2.read]x([P3.right][P3.read]22[P3.right][P3.read]))"
        "[P3.left][P3.left][P3.read]([P2.read]xBC$[P2.right][P2.read]c[P2.right][P2.read]>"
        "[P2.right][P2.read]C[P4.left][P4.left][P4.read]2[P4.left][P4.read]([P2.read]C"  # final state
        "[P2.right][P2.read]C[P4.left][P4.left][P4.read]7[P4.left][P4.read]([P2.read]C"
        "[P2.right][P2.read][ANS][EOS]"
    )
    assert decode(t.tokens) == setup + states + output
    assert t.output_text() == "(2)AB$(7)AC$(2)BC$"
    thoughts = decode([tok for tok, role in zip(t.tokens, t.roles) if role == THOUGHT])
    assert thoughts == "---+++>ua>Bv>xc>CC[ANS]"  # marks, header, the states after moves 1, 2, 3, and the final check
    assert set(t.roles) == {INPUT, THOUGHT, COMMAND, OBSERVATION, OUTPUT}


@pytest.mark.slow
def test_trajectory_is_local():
    """Every model token is a function of the last 5 tokens, at every size (docs/locality.md)."""
    rng = random.Random(3)
    train = [task.oracle(task.training_problem(rng)) for _ in range(300)]
    long = [task.oracle(task.random_problem(rng, n)) for n in (9, 10)]
    long += [task.oracle(task.problem({"disks": d})) for d in ([100, 99, 98, 97, 96, 95, 94, 93, 92, 91], list(range(10, 0, -1)))]
    assert smallest_local_k(train + long, k_max=5) == 5
    assert conflicts(train + long, 4) > 0


def test_training_distribution():
    rng = random.Random(5)
    problems = [task.training_problem(rng) for _ in range(400)]
    assert {p.size for p in problems} == set(range(1, task.train_max_size + 1)) and task.train_max_size == 8
    sizes = {d for p in problems for d in p.input["disks"]}
    assert min(sizes) == 1 and max(sizes) == 100 and len(sizes) > 90
    assert all(p.input["disks"] == sorted(set(p.input["disks"]), reverse=True) for p in problems)


SWAP_BC = str.maketrans("BC", "CB")
BAD_ANSWERS = {  # (reference, disks) -> an answer the checker must reject; disks [47, 30, 12, 5]
    "larger on smaller": lambda ref, d: ref.replace("(12)AC$", "(12)AB$", 1),  # 12 onto 5 on B
    "ends on B": lambda ref, d: ref.translate(SWAP_BC),  # legal, but the tower ends on B
    "one move short": lambda ref, d: ref[: ref.rindex("(")],
    "truncated mid-move": lambda ref, d: ref[:-1],
    "truncated in the size": lambda ref, d: ref[:-4],
    "empty": lambda ref, d: "",
    "from an empty rod": lambda ref, d: "(5)BA$" + ref,
    "from == to": lambda ref, d: ref + "(5)CC$",
    "not the top disk": lambda ref, d: "(47)AB$" + ref,
    "wrong size written": lambda ref, d: ref.replace("(5)", "(6)", 1),
    "a space": lambda ref, d: ref.replace("$", "$ ", 1),
    "lowercase rods": lambda ref, d: ref.replace("AB", "ab", 1),
    "no $": lambda ref, d: ref.replace("$", "", 1),
    "leading zero": lambda ref, d: ref.replace("(5)", "(05)", 1),
    "no parentheses": lambda ref, d: ref.replace("(5)", "5", 1),
    "special token text": lambda ref, d: ref + "[EOS]",
    "non-ASCII rod": lambda ref, d: ref.replace("A", "\uff21", 1),
    "dangling (": lambda ref, d: ref + "(",
    "huge number": lambda ref, d: "(" + "9" * 5000 + ")AC$",
}


@pytest.mark.parametrize("name", BAD_ANSWERS)
def test_checker_rejects(name):
    d = [47, 30, 12, 5]
    p = task.problem({"disks": d})
    bad = BAD_ANSWERS[name](p.reference, d)
    assert bad != p.reference and task.check(p, bad) is False


def test_checker_accepts_any_legal_solution():
    p = task.problem({"disks": [47, 30, 12, 5]})
    assert task.check(p, p.reference)
    assert task.check(p, p.reference + "(5)CA$(5)AC$")  # not optimal, still legal, ends on C
    assert not task.check(p, p.reference + "(5)CA$")  # ends with a disk on A
    q = task.problem({"disks": [100]})
    assert task.check(q, "(100)AC$") and task.check(q, "(100)AB$(100)BC$") and not task.check(q, "(100)AB$")


def test_example_task_file():
    tf, p = load_taskfile(EXAMPLE)
    assert p.size == 6 and p.task == "hanoi" and tf.policy.checkpoint is None
    assert task.oracle(p).output_text() == p.reference and task.check(p, p.reference)


@pytest.mark.parametrize(
    "disks,message",
    [
        ([7, 5, 5, 2], "distinct"),
        ([101, 5], "1..100"),
        ([7, 0], "1..100"),
        ([7, -3], "1..100"),
        ([], "at least one disk"),
        (["7", 5], "integers"),
        ([7.0, 5], "integers"),
        ([True], "integers"),
        ([2, 5, 7], "largest first"),
        (list(range(21, 0, -1)), "at most 20"),
        ("(7)(5)(2)", "list"),
    ],
)
def test_bad_input_is_a_clear_error(disks, message, tmp_path):
    with pytest.raises(ValidationError) as e:
        task.problem({"disks": disks})
    assert e.value.errors()[0]["loc"][0] == "disks"
    path = tmp_path / "bad.yaml"
    path.write_text(f"task: hanoi\ninput:\n  disks: {disks!r}\n" if not isinstance(disks, str) else f"task: hanoi\ninput: {{disks: '{disks}'}}\n")
    with pytest.raises(TaskFileError) as e:
        load_taskfile(path)
    assert "input.disks" in str(e.value) and message in str(e.value)


def test_bad_input_fields():
    with pytest.raises(ValidationError) as e:
        task.problem({"disks": [3, 1], "rods": 4})
    assert e.value.errors()[0]["loc"][0] == "rods"
    with pytest.raises(ValidationError):
        task.problem({})


@pytest.mark.parametrize("size", [21, 101])
def test_random_size_beyond_the_limit_is_a_clear_error(size, tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(f"task: hanoi\nsize: {size}\n")
    with pytest.raises(TaskFileError, match=f"size: hanoi takes sizes 1..20, got {size}"):
        load_taskfile(path)
