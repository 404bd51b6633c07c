import random
import sys

import pytest

from mamba_agent.locality import conflicts, smallest_local_k
from mamba_agent.tasks import get_task
from mamba_agent.tasks.addition import column_sum

sys.set_int_max_str_digits(0)
task = get_task("addition")


def true_sum(a: str, b: str) -> str:
    return str(int(a) + int(b))


def test_oracle_every_size_1_to_300_and_up_to_2000():
    rng = random.Random(0)
    for n in [*range(1, 301), 499, 500, 999, 1000, 1001, 1999, 2000]:
        p = task.random_problem(rng, n)
        answer = task.oracle(p).output_text()  # raises if the tool-driven run misses
        assert answer.lstrip("0") == true_sum(p.input["a"], p.input["b"]).lstrip("0")


@pytest.mark.parametrize(
    "a,b",
    [
        ("9" * 1000, "1"),  # carry chain through every column
        ("1", "9" * 1000),
        ("9" * 500, "9" * 500),
        ("1" + "0" * 999, "7"),  # 1,000 digits + 1 digit
        ("0", "0"),
        ("0", "5"),
        ("007", "5"),  # leading zeros keep the column width
        ("000", "000"),
        ("5", "5"),
    ],
)
def test_oracle_edge_cases(a, b):
    p = task.problem({"a": a, "b": b})
    answer = task.oracle(p).output_text()
    assert answer == column_sum(a, b) == p.reference
    assert int(answer) == int(a) + int(b)
    assert len(answer) == max(len(a), len(b)) + (int(answer[0]) > 0 and len(answer) > max(len(a), len(b)))
    assert task.oracle_tokens(p).tolist() == task.oracle(p).model_tokens()


def test_oracle_tokens_are_the_oracles():
    """The oracle's model tokens made without running it (eval's fast path) are the oracle's:
    random sizes, operands of different lengths, every edge case eval starts with."""
    rng = random.Random(1)
    problems = [task.random_problem(rng, n) for n in list(range(1, 30)) + [100, 1000]]
    problems += [task.problem({"a": task.random_problem(rng, n).input["a"], "b": "9" * m}) for n, m in ((3, 7), (8, 2))]
    problems += task.edge_cases(12) + task.edge_cases(1)
    for p in problems:
        assert task.oracle_tokens(p).tolist() == task.oracle(p).model_tokens(), p.input


def test_random_digits_are_those_of_randint_and_choice():
    """Addition's digits, drawn in bulk, are what randint and choice draw one by one, and leave
    the generator where those would (eval's problems and training's stream are unchanged)."""
    from mamba_agent.tasks.addition import _number

    for seed, n in enumerate([1, 1, 2, 3, 10, 64, 1000, 5000] * 3):
        fast, slow = random.Random(seed), random.Random(seed)
        first = str(slow.randint(1, 9) if n > 1 else slow.randint(0, 9))
        assert _number(fast, n) == first + "".join(slow.choice("0123456789") for _ in range(n - 1))
        assert fast.random() == slow.random()


def test_column_sum_past_the_int_digit_limit():
    sys.set_int_max_str_digits(4300)  # Python's default
    try:
        assert column_sum("9" * 5000, "1") == "1" + "0" * 5000
        assert column_sum("007", "5") == "012" and column_sum("99", "9") == "108"
    finally:
        sys.set_int_max_str_digits(0)


def test_trajectory_is_local():
    """Every model token is a function of the last 7 tokens, at every size (docs/locality.md)."""
    rng = random.Random(3)
    train = [task.oracle(task.training_problem(rng)) for _ in range(1000)]
    long = [task.oracle(task.random_problem(rng, n)) for n in (20, 57, 200)]
    long += [task.oracle(task.problem({"a": "9" * 300, "b": "1"})), task.oracle(task.problem({"a": "3", "b": "9" * 300}))]
    assert smallest_local_k(train + long) == 7
    assert conflicts(train + long, 6) > 0


@pytest.mark.parametrize(
    "bad,field",
    [({"a": "12x", "b": "3"}, "a"), ({"a": "1", "b": ""}, "b"), ({"a": 12, "b": "3"}, "a"), ({"a": "1", "b": "2", "c": "3"}, "c")],
)
def test_bad_input_names_the_field(bad, field):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as e:
        task.problem(bad)
    assert e.value.errors()[0]["loc"][0] == field
