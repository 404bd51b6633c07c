"""The addition ablations (tasks/addition_ablations.py): oracles, roles, bad commands, locality."""

import random
import sys
from pathlib import Path

import pytest

from mamba_agent.episode import FINISHED, FORMAT_ERRORS
from mamba_agent.locality import conflicts
from mamba_agent.taskfile import load_taskfile
from mamba_agent.tasks import get_task
from mamba_agent.tools.calculator import Calculator, add_digits
from mamba_agent.train import make_batch
from mamba_agent.trajectory import COMMAND, INPUT, OBSERVATION, OUTPUT, THOUGHT
from mamba_agent.vocab import ANS, EDGE, END, EOS, ERR, FIND, OBS_END, RUN, encode, pointer_command
from tests.scripted import replay_oracles

sys.set_int_max_str_digits(0)
VARIANTS = ["addition-nocot", "addition-cot-notool", "addition-calculator"]
EXAMPLES = Path(__file__).parent.parent / "tasks" / "examples"


def run(task, problem, tokens):
    """Act `tokens` on a fresh episode of `problem`; return the episode and the observations."""
    ep = task.episode(problem, keep=True)
    observations = [ep.act(t) for t in tokens]
    return ep, observations


@pytest.mark.parametrize("name", VARIANTS)
def test_oracle_gives_the_sum_at_1_to_30_200_and_1000_digits(name):
    task, rng = get_task(name), random.Random(len(name))
    sizes = [*range(1, 31), 200, 200, 1000, 1000]
    for n in sizes:
        p = task.random_problem(rng, n)
        assert len(p.input["a"]) == len(p.input["b"]) == n
        o = task.oracle(p)  # raises if the run through the tools misses
        answer = o.output_text()
        assert answer == p.reference and int(answer) == int(p.input["a"]) + int(p.input["b"])
        assert len(o) < task.max_tokens(p) / 1.5


@pytest.mark.parametrize("name", VARIANTS)
def test_replay_through_runtime_on_fresh_tools(name):
    """Model tokens replayed by a scripted policy, batched: the same trajectory and answer."""
    task, rng = get_task(name), random.Random(7)
    problems = [task.random_problem(rng, n) for n in (1, 5, 9, 64)] + [task.problem({"a": "9" * 40, "b": "1"})]
    replay_oracles(task, problems)


@pytest.mark.parametrize("name", VARIANTS)
def test_training_distribution_and_loss_mask(name):
    """Operands of 1..5 digits, as `addition`; the loss covers exactly the model tokens (for
    cot-notool: every token after the prompt, the would-be observations included)."""
    task, rng = get_task(name), random.Random(0)
    problems = [task.training_problem(rng) for _ in range(500)]
    assert {len(p.input["a"]) for p in problems} == {len(p.input["b"]) for p in problems} == {1, 2, 3, 4, 5}
    _, targets, mask = make_batch(task, random.Random(1), 8)
    rng = random.Random(1)  # the same draws as the batch
    trajs = [task.oracle(task.training_problem(rng)) for _ in range(8)]
    for row, t in zip(range(8), trajs):
        learned = targets[row][mask[row]].tolist()
        assert learned == t.model_tokens()
        if name == "addition-cot-notool":
            assert learned == t.tokens[t.roles.count(INPUT):]


@pytest.mark.parametrize(
    "a,b", [("0", "0"), ("0", "5"), ("5", "5"), ("9" * 300, "1"), ("1", "9" * 300), ("007", "5"), ("12", "34")]
)
@pytest.mark.parametrize("name", VARIANTS)
def test_oracle_edge_cases(name, a, b):
    task = get_task(name)
    p = task.problem({"a": a, "b": b})
    answer = task.oracle(p).output_text()
    assert answer == p.reference and int(answer) == int(a) + int(b)


@pytest.mark.parametrize("name", VARIANTS)
def test_checker_compares_values(name):
    task = get_task(name)
    p = task.problem({"a": "12", "b": "34"})
    assert task.check(p, "46") and task.check(p, "046")
    assert not task.check(p, "47") and not task.check(p, "") and not task.check(p, "4 6")


# --- the trajectories have the roles the ablations mean --------------------------------------


def test_nocot_is_the_prompt_then_the_answer():
    task = get_task("addition-nocot")
    o = task.oracle(task.problem({"a": "12", "b": "34"}))
    assert o.tokens[o.roles.count(INPUT):] == [ANS, *encode("46"), EOS]
    assert o.roles[o.roles.count(INPUT):] == [THOUGHT, OUTPUT, OUTPUT, COMMAND]
    assert task.tools(task.problem({"a": "1", "b": "2"})) == []


def test_cot_notool_is_addition_with_every_observation_learned():
    """The same tokens as `addition`; its observations become thoughts, so nothing is forced
    after the prompt and the loss covers every token the tool used to answer."""
    addition, notool = get_task("addition"), get_task("addition-cot-notool")
    rng = random.Random(5)
    for n in (1, 2, 5, 17):
        p_add = addition.random_problem(rng, n)
        p = notool.problem(p_add.input)
        want, got = addition.oracle(p_add), notool.oracle(p)
        assert got.tokens == want.tokens
        assert got.roles == [THOUGHT if r == OBSERVATION else r for r in want.roles]
        assert OBSERVATION not in got.roles
        assert len(got.model_tokens()) == len(got) - got.roles.count(INPUT)
        assert got.output_text() == p.reference
    thoughts = [t for t, r in zip(got.tokens, got.roles) if r == THOUGHT]
    assert EDGE in thoughts and thoughts.count(ANS) == 2  # the guessed [EDGE] and P3's guessed [ANS]


def test_cot_notool_pointer_commands_answer_nothing():
    task = get_task("addition-cot-notool")
    p = task.problem({"a": "12", "b": "34"})
    right, read, left = pointer_command(1, "right"), pointer_command(1, "read"), pointer_command(3, "left")
    ep, obs = run(task, p, [right, read, ord("7"), left])
    assert obs == [[], [], [], []]
    assert ep.trajectory.roles[-4:] == [COMMAND, COMMAND, THOUGHT, COMMAND]


def test_calculator_makes_exactly_one_call():
    task = get_task("addition-calculator")
    for a, b in (("12", "34"), ("9" * 50, "1"), ("0", "0")):
        p = task.problem({"a": a, "b": b})
        o = task.oracle(p)
        commands = [t for t, r in zip(o.tokens, o.roles) if r == COMMAND]
        assert commands == [RUN, *encode(f"add({a},{b})"), END, EOS]
        assert [t for t, r in zip(o.tokens, o.roles) if r == OBSERVATION] == encode(p.reference) + [OBS_END]
        assert o.output_text() == p.reference == str(int(a) + int(b))


def test_calculator_tool():
    calc = Calculator()
    assert calc.command(RUN, encode("add(12,34)")) == encode("46") + [OBS_END]
    assert calc.command(RUN, encode("add(007,5)")) == encode("12") + [OBS_END]
    assert calc.command(RUN, encode("add(0,000)")) == encode("0") + [OBS_END]
    a, b = "9" * 5000, "7" * 4999  # beyond Python's default int/str limit
    assert add_digits(a, b) == str(int(a) + int(b))
    for bad in ("add(1,)", "add(,2)", "add(1,2", "mul(1,2)", "add(1, 2)", "add(-1,2)", "add(1,2)x", "", "add(١,2)"):
        assert calc.command(RUN, encode(bad)) == [ERR, OBS_END], bad
    assert calc.command(RUN, [*encode("add(1,"), EDGE, *encode("2)")]) == [ERR, OBS_END]


# --- malformed commands are observations, never crashes --------------------------------------


def test_calculator_bad_calls_are_observations():
    task = get_task("addition-calculator")
    p = task.problem({"a": "12", "b": "34"})
    ep, obs = run(
        task, p,
        [RUN, *encode("add(12,x)"), END, RUN, END, END, pointer_command(1, "read"), FIND, EDGE,
         RUN, *encode("add(12,34)"), END, ANS, *encode("46"), EOS],
    )
    flat = [t for o in obs for t in o]
    assert flat == [ERR, OBS_END, ERR, OBS_END, ERR, ERR, ERR, ERR, *encode("46"), OBS_END]
    assert ep.exit == FINISHED and task.check(p, ep.answer) and ep.answer == "46"


@pytest.mark.parametrize("name", ["addition-nocot", "addition-cot-notool"])
def test_commands_the_task_lacks_answer_err(name):
    task = get_task(name)
    p = task.problem({"a": "12", "b": "34"})
    bad = [pointer_command(4, "read"), FIND, RUN, END, EDGE]
    if name == "addition-nocot":
        bad.append(pointer_command(1, "read"))
    ep, obs = run(task, p, [*bad, ANS, *encode("46"), EOS])
    assert obs[: len(bad)] == [[ERR]] * len(bad)
    assert ep.exit == FINISHED and ep.answer == "46" and task.check(p, ep.answer)


@pytest.mark.parametrize("name", VARIANTS)
def test_too_many_bad_commands_end_the_episode(name):
    task = get_task(name)
    ep, _ = run(task, task.random_problem(random.Random(0), 20), [EDGE] * 19 + [ord("1")] + [EDGE] * 20)
    assert ep.exit == FORMAT_ERRORS and ep.n_model_tokens == 40  # 20 in a row; a thought resets the count


def test_cot_notool_a_guess_may_be_any_token():
    """The token after a read is the model's guess, whatever it is; it neither ends the episode
    nor counts as output or as the [ANS] separator."""
    task = get_task("addition-cot-notool")
    p = task.problem({"a": "12", "b": "34"})
    read = pointer_command(2, "read")
    ep, obs = run(task, p, [read, EOS, read, ANS, read, EDGE, ANS, read, ord("9"), ANS])
    assert ep.exit is None and ep.output == [] and ep.after_ans
    assert obs[-1] == [ERR]  # a second [ANS] that is no guess is malformed, as in `addition`
    C, T = COMMAND, THOUGHT
    assert ep.trajectory.roles[-11:] == [C, T, C, T, C, T, T, C, T, C, OBSERVATION]


# --- locality: why these ablations are not expected to generalise -----------------------------


def k_of(task, pair) -> int:
    """Smallest k with no conflict between the two problems' oracle trajectories."""
    trajs = [task.oracle(task.problem({"a": a, "b": b})) for a, b in pair]
    return next(k for k in range(1, 2000) if conflicts(trajs, k) == 0)


@pytest.mark.parametrize("n", [5, 20])
def test_ablations_are_not_local(n):
    """Pairs of problems that differ in one digit of a: the window that tells them apart grows
    with n (addition itself stays at 7)."""
    low = [("9" + "2" * (n - 1), "5" + "3" * (n - 1)), ("9" + "2" * (n - 2) + "3", "5" + "3" * (n - 1))]
    high = [("1" + "2" * (n - 1), "3" * n), ("2" * n, "3" * n)]
    assert k_of(get_task("addition-nocot"), low) == 2 * n + 4  # the last sum digit, behind b and n sum digits
    assert k_of(get_task("addition-calculator"), high) == 2 * n + 7  # copying a's first digit into the call
    assert k_of(get_task("addition-cot-notool"), high) > 10 * n  # guessing a's first digit in the last column
    assert max(k_of(get_task("addition"), pair) for pair in (low, high)) <= 7


# --- task files ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANTS)
def test_example_task_file_validates_and_solves_with_the_oracle(name):
    tf, p = load_taskfile(EXAMPLES / f"{name}.yaml")
    assert tf.task == name and p.task == name and p.size == 20
    task = get_task(name)
    assert task.oracle(p).output_text() == p.reference == str(int(p.input["a"]) + int(p.input["b"]))
