import random
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from mamba_agent.locality import conflicts, smallest_local_k
from mamba_agent.taskfile import load_taskfile
from mamba_agent.tasks import get_task
from mamba_agent.tasks.multiplication import times_small
from mamba_agent.vocab import decode

sys.set_int_max_str_digits(0)
task = get_task("multiplication")
EXAMPLES = Path(__file__).parent.parent / "tasks" / "examples"


def true_product(a: str, b: str) -> int:
    return int(a) * int(b)


@pytest.mark.parametrize("variant", ["multiplication-1", "multiplication-2"])
def test_oracle_every_size_1_to_300(variant):
    t, rng = get_task(variant), random.Random(len(variant))
    for n in range(1, 301):
        p = t.random_problem(rng, n)
        assert len(p.input["a"]) == n and len(p.input["b"]) == t.b_digits[0]
        answer = t.oracle(p).output_text()  # raises if the tool-driven run misses
        assert answer == p.reference and int(answer) == true_product(p.input["a"], p.input["b"])


@pytest.mark.parametrize("n", [500, 1000, 2000])
@pytest.mark.parametrize("b_digits", [1, 2])
def test_oracle_large_sizes(n, b_digits):
    rng = random.Random(n + b_digits)
    a = str(rng.randint(1, 9)) + "".join(rng.choice("0123456789") for _ in range(n - 1))
    b = str(rng.randint(10 ** (b_digits - 1), 10**b_digits - 1))
    answer = task.oracle(task.problem({"a": a, "b": b})).output_text()
    assert int(answer) == true_product(a, b)


@pytest.mark.parametrize(
    "a,b,answer",
    [
        ("9" * 300, "9", "8" + "9" * 299 + "1"),  # carry 8 through every column
        ("9" * 300, "99", "98" + "9" * 298 + "01"),  # carry 98, two extra columns
        ("9", "99", "891"),
        ("0", "0", "0"),
        ("123", "0", "000"),  # b = 0: len(a) zeros
        ("0", "99", "0"),
        ("000", "57", "000"),
        ("4821", "1", "4821"),
        ("4821", "10", "48210"),
        ("4821", "01", "4821"),  # a 2-digit multiplier with a leading zero: n x 2 trajectory
        ("007", "5", "035"),  # leading zeros of a keep the width len(a)
        ("0099", "99", "9801"),
        ("5", "2", "10"),
    ],
)
def test_oracle_edge_cases(a, b, answer):
    p = task.problem({"a": a, "b": b})
    assert p.reference == answer == times_small(a, b)
    assert task.oracle(p).output_text() == answer and int(answer) == true_product(a, b)
    assert task.check(p, answer.lstrip("0") or "0")  # the checker compares values


def test_reference_is_schoolbook_at_10000_digits():
    rng = random.Random(4)
    for n in (1, 2, 999, 10_000):
        a = "".join(rng.choice("0123456789") for _ in range(n))
        for b in ("0", "7", "10", "99", str(rng.randint(10, 99))):
            assert int(times_small(a, b)) == true_product(a, b)
            assert len(times_small(a, b)) == max(n, len(str(true_product(a, b))))


def test_checker():
    p = task.problem({"a": "007", "b": "5"})
    assert task.check(p, "035") and task.check(p, "35") and task.check(p, "0035")
    assert not task.check(p, "36") and not task.check(p, "3 5") and not task.check(p, "") and not task.check(p, "٣٥")


def test_variants_fix_the_multiplier_and_share_the_trajectory():
    rng = random.Random(5)
    assert {len(task.random_problem(rng, 8).input["b"]) for _ in range(100)} == {1, 2}
    for name, digits in (("multiplication-1", 1), ("multiplication-2", 2)):
        t = get_task(name)
        problems = [t.training_problem(rng) for _ in range(300)]
        assert {len(p.input["b"]) for p in problems} == {digits}
        assert {p.size for p in problems} == set(range(1, t.train_max_size + 1))
        p = t.random_problem(rng, 30)
        # A policy trained on the mixed family meets the same trajectory in either variant.
        assert t.oracle(p).tokens == task.oracle(task.problem(p.input)).tokens


def test_trajectory_shape_123_times_45():
    out = decode(task.oracle(task.problem({"a": "123", "b": "45"})).tokens)
    # 3*45: e = 3*4 + 0 = 12, s = 3*5 + 0 = 15, carry 12 + 1 = 13, digit 5
    assert "[P1.read]3[P3.read]4[P2.read]51215135[P1.left]" in out
    # 2*45 + 13: e = 2*4 + 1 = 09, s = 2*5 + 3 = 13, carry 9 + 1 = 10, digit 3
    assert "[P1.read]2[P3.read]4[P2.read]50913103[P1.left]" in out
    assert "[P1.read][EDGE][P3.read]4[P2.read]50005005[P1.read][EDGE][ANS]" in out  # carry 5 -> digit 5
    assert out.endswith("[P4.read]55" + "[P4.left]" * 7 + "[P4.read]=[EOS]")






@pytest.mark.slow
@pytest.mark.parametrize("name,k", [("multiplication-1", 8), ("multiplication-2", 12), ("multiplication", 12)])
def test_trajectory_is_local(name, k):
    """Every model token is a function of the last k tokens, at every size (docs/locality.md)."""
    t, rng = get_task(name), random.Random(3)
    train = [t.oracle(t.training_problem(rng)) for _ in range(1000)]
    long = [t.oracle(t.random_problem(rng, n)) for n in (20, 57, 200)]
    for digits in t.b_digits:  # longest carry chains, and the zero cases
        long += [t.oracle(t.problem({"a": "9" * 300, "b": "9" * digits})), t.oracle(t.problem({"a": "0" * 50, "b": "0" * digits}))]
    assert smallest_local_k(train + long, k_max=k) == k
    assert conflicts(train + long, k - 1) > 0


@pytest.mark.parametrize(
    "name,bad,field",
    [
        ("multiplication", {"a": "12x", "b": "3"}, "a"),
        ("multiplication", {"a": "", "b": "3"}, "a"),
        ("multiplication", {"a": 12, "b": "3"}, "a"),
        ("multiplication", {"a": "1", "b": ""}, "b"),
        ("multiplication", {"a": "1", "b": "123"}, "b"),
        ("multiplication", {"a": "1", "b": "-1"}, "b"),
        ("multiplication", {"a": "1", "b": "2", "c": "3"}, "c"),
        ("multiplication-1", {"a": "1", "b": "12"}, "b"),
        ("multiplication-2", {"a": "1", "b": "1"}, "b"),
    ],
)
def test_bad_input_names_the_field(name, bad, field):
    with pytest.raises(ValidationError) as e:
        get_task(name).problem(bad)
    assert e.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize("example,size,b_digits", [("multiplication-2.yaml", 1000, 2), ("multiplication-1.yaml", 1000, 1)])
def test_example_task_files(example, size, b_digits):
    tf, p = load_taskfile(EXAMPLES / example)
    assert p.size == size and len(p.input["b"]) == b_digits
    assert int(task.oracle(p).output_text()) == true_product(p.input["a"], p.input["b"])


@pytest.mark.parametrize("name,width", [("multiplication-1", 1), ("multiplication-2", 2)])
def test_training_and_evaluation_cover_every_multiplier_the_task_accepts(name, width):
    """b = 00..09 and a with leading zeros are in the training data (users write `07`); every
    evaluation starts with the carry chain and the zero-digit multipliers."""
    task, rng = get_task(name), random.Random(0)
    drawn = [task.training_problem(rng).input for _ in range(3000)]
    assert {d["b"] for d in drawn} == {str(v).rjust(width, "0") for v in range(10 ** width)}
    assert sum(d["a"][0] == "0" and len(d["a"]) > 1 for d in drawn) > 100
    edges = [(p.input["a"], p.input["b"]) for p in task.edge_cases(50)]
    assert ("9" * 50, "9" * width) in edges and {b for _, b in edges} >= {"0" * width, "1".rjust(width, "0")}
    assert all(len(a) == 50 and times_small(a, b) == str(int(a) * int(b)).rjust(50, "0") for a, b in edges)
