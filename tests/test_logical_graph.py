import random
import re
from collections import defaultdict

import pytest
from pydantic import ValidationError

from mamba_agent.locality import conflicts, contexts, smallest_local_k
from mamba_agent.taskfile import load_taskfile
from mamba_agent.tasks import get_task
from mamba_agent.tasks.logical_graph import parse_program, random_program
from mamba_agent.vocab import decode

task = get_task("logical_graph")


def python_value(program: str) -> str:
    """The output's value as Python itself computes it: exec in a fresh namespace."""
    namespace: dict = {}
    exec(program, {"__builtins__": {}}, namespace)
    out = program.rstrip("\n").rsplit("\n", 1)[-1].split(" = ")[0]
    assert isinstance(namespace[out], bool)
    return str(int(namespace[out]))


def solved(p) -> str:
    trajectory = task.oracle(p)  # raises unless the tool-driven run finishes with the reference
    assert len(trajectory) <= task.max_tokens(p)
    return trajectory.output_text()


@pytest.mark.slow
def test_oracle_every_size_1_to_200_and_500_1000():
    rng = random.Random(0)
    for n in [*range(1, 201), *range(1, 201), 500, 500, 1000, 1000]:
        p = task.random_problem(rng, n)
        assert p.size == n
        assert solved(p) == p.reference == python_value(p.input["program"])


def test_training_distribution():
    rng = random.Random(1)
    sizes = set()
    for _ in range(300):
        p = task.training_problem(rng)
        sizes.add(p.size)
        assert solved(p) == python_value(p.input["program"])
    assert sizes == set(range(1, 11))


@pytest.mark.parametrize("n", [1, 2, 10, 300])
def test_random_programs_keep_their_promises(n):
    """Distinct names of a letter and 3 digits, 3 inputs first, and (from 2 nodes on) every
    variable but the output used by a later line: the output depends on all of them."""
    rng = random.Random(n)
    for _ in range(20):
        nodes = parse_program(random_program(rng, n))
        names = [name for name, _ in nodes]
        assert len(set(names)) == n + 3 and all(re.fullmatch(r"[a-z]\d{3}", x) for x in names)
        assert all(isinstance(d, bool) for _, d in nodes[:3]) and not any(isinstance(d, bool) for _, d in nodes[3:])
        used = {a for _, d in nodes[3:] for _, a in d[1]}
        assert set(names[:-1]) - used == set() or n == 1


def test_answers_are_balanced():
    rng = random.Random(2)
    answers = [task.random_problem(rng, n).reference for n in (3, 30, 300) for _ in range(100)]
    assert 0.4 < answers.count("1") / len(answers) < 0.6


@pytest.mark.parametrize(
    "program,value",
    [
        ("a001 = True\n", "1"),  # the output is an input
        ("a001 = False\nb002 = not a001", "1"),
        ("a001 = True\nb002 = a001 and not a001", "0"),  # one operand twice
        ("a001 = True\nb002 = not a001\nc003 = a001 or a001\nd004 = b002 or not c003", "0"),
        ("a001 = False\nb002 = True\nc003 = a001 or b002\nz999 = not b002\ny000 = z999 or c003", "1"),  # an unused node
    ],
)
def test_explicit_programs(program, value):
    p = task.problem({"program": program})
    assert p.reference == value == python_value(program) == solved(p)


def test_example_task_file():
    tf, p = load_taskfile("tasks/examples/logical-graph.yaml")
    assert p.size == 1000 and p.task == "logical_graph"
    trajectory = task.oracle(p)
    assert trajectory.output_text() == p.reference == python_value(p.input["program"])
    assert len(trajectory) < 250_000  # about 229,000 (module docstring)


def test_trajectory_reads_as_documented():
    p = task.problem({"program": "a001 = True\nb002 = False\nc003 = True\nd004 = not b002 and a001\n"})
    text = decode(task.oracle(p).tokens)
    assert text == (
        "[BOS]a001 = True\nb002 = False\nc003 = True\nd004 = not b002 and a001\n"
        "[FIND]d004 =[END]d004 = not b002 and a001\n[/OBS]d004\n"  # no mark: literal 1
        "[FIND]-b002[END][/OBS]b002 < d004\n"  # not computed: descend
        "[FIND]b002 =[END]b002 = False\n[/OBS]+b002 0\n-b002 1\n"  # an input: both literals
        "[FIND]b002 <[END]b002 < d004\n[/OBS]"  # back to d004
        "[FIND]d004 =[END]d004 = not b002 and a001\n[/OBS]d004\n"
        "[FIND]-b002[END]-b002 1\n[/OBS]d004 =1\n"  # literal 1 is 1: the mark
        "[FIND]d004 =[END]d004 = not b002 and a001\nd004 =1\n[/OBS]d004 ?\n"  # 1 and ..: not decided
        "[FIND]+a001[END][/OBS]a001 < d004\n"
        "[FIND]a001 =[END]a001 = True\n[/OBS]+a001 1\n-a001 0\n"
        "[FIND]a001 <[END]a001 < d004\n[/OBS]"
        "[FIND]d004 =[END]d004 = not b002 and a001\nd004 =1\n[/OBS]d004 ?\n"
        "[FIND]+a001[END]+a001 1\n[/OBS]+d004 1\n-d004 0\n"  # d004 is literal 2's value
        "[FIND]d004 <[END][/OBS][ANS]1[EOS]"
    )


def test_a_decided_node_still_evaluates_its_second_operand():
    """`0 and ..` is 0 whatever the second operand is, but the DFS still computes it (every node
    the output depends on is visited, as the module docstring says), and `v 0` says the value."""
    p = task.problem({"program": "a001 = False\nb002 = True\nc003 = a001 and not b002\n"})
    text = decode(task.oracle(p).tokens)
    assert "c003 0\n[FIND]-b002[END][/OBS]b002 < c003\n" in text
    assert "+b002 1\n-b002 0\n" in text and text.endswith("+c003 0\n-c003 1\n[FIND]c003 <[END][/OBS][ANS]0[EOS]")


def test_checker_wants_exactly_the_value():
    p = task.problem({"program": "a001 = True\nb002 = not a001"})
    assert task.check(p, "0")
    assert not any(task.check(p, a) for a in ("1", "False", "00", " 0", ""))


@pytest.mark.slow
def test_trajectory_is_local():
    """Every model token is a function of the last 30 tokens at any size (module docstring).

    With training names from a pool of 16, contexts repeat across problems and the check sees
    the real reach, 30 (the output's name from the last program line, a node's name right
    after its definition line); with random names long contexts hardly ever repeat and it
    sees only 23. (Two conflict counts are smallest_local_k without the smaller k's:
    conflicts only fall as k grows.)"""
    rng = random.Random(3)
    long = [task.oracle(task.random_problem(rng, n)) for n in (50, 200, 1000)]
    small_pool = [task.oracle(task.problem({"program": random_program(rng, rng.randint(1, 10), pool=16)})) for _ in range(200)]
    assert conflicts(small_pool + long, 30) == 0
    assert conflicts(small_pool + long, 29) > 0
    train = [task.oracle(task.training_problem(rng)) for _ in range(150)]
    assert conflicts(train + long, 23) == 0
    assert conflicts(train + long, 22) > 0
    assert smallest_local_k(train[:20], k_max=40) == 22  # fewer problems, fewer repeats, smaller k


def test_what_sets_k_is_a_name_copied_from_the_line_just_read():
    """The conflicts at k = 29 are all the first character of a name copied from the start of
    a 28-character line: the output's (after the prompt and `[FIND]`) or the current node's
    (after its definition and `[/OBS]`)."""
    rng = random.Random(4)
    seen = defaultdict(set)
    for _ in range(200):
        t = task.oracle(task.problem({"program": random_program(rng, rng.randint(1, 10), pool=16)}))
        for context, token in contexts(t, 29):
            seen[context].add(token)
    clashes = [decode(list(c)) for c, tokens in seen.items() if len(tokens) > 1]
    assert clashes
    assert all(re.fullmatch(r" = not [a-z]\d{3} and not [a-z]\d{3}\n(\[/OBS\]|\[FIND\])[a-z]\d{2}", c) for c in clashes), clashes


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"program": "a001 = True\nb002 = a001 nand a001"}, "line 2 ('b002 = a001 nand a001'): expected"),
        ({"program": "a001 = True\nb002 = c003"}, "line 2 ('b002 = c003'): c003 is not defined on an earlier line"),
        ({"program": "a001 = b002\nb002 = True"}, "line 1 ('a001 = b002'): b002 is not defined"),
        ({"program": "a001 = not a001"}, "a001 is not defined on an earlier line"),
        ({"program": "a001 = True\na001 = False"}, "line 2 ('a001 = False'): a001 is already defined on line 1"),
        ({"program": "v10 = True"}, "a lowercase letter and 3 digits"),
        ({"program": "a001 =  True"}, "single spaces"),
        ({"program": ""}, "line 1 (''): expected"),
        ({"program": "a001 = True\n\nb002 = a001"}, "line 2 (''): expected"),
        ({"program": 12}, "valid string"),
        ({"program": "a001 = True", "size": 3}, "Extra inputs"),
    ],
)
def test_bad_input_names_the_field_and_the_line(bad, message):
    with pytest.raises(ValidationError) as e:
        task.problem(bad)
    err = e.value.errors()[0]
    assert err["loc"][0] in ("program", "size") and message in err["msg"], err
