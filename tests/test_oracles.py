"""What every pointer and search task promises, checked the same way for each."""

import random

import pytest

from mamba_agent.episode import DIVERGED
from mamba_agent.runtime import run_episodes
from mamba_agent.tasks import TASKS, get_task
from mamba_agent.trajectory import COMMAND, OBSERVATION, OUTPUT
from mamba_agent.vocab import pointer_command
from tests.scripted import ScriptedPolicy, replay_oracles

SIZES = {"addition": (1, 7, 64, 300), "multiplication-1": (1, 7, 64, 300), "multiplication-2": (1, 7, 64, 300),
         "hanoi": (1, 3, 6, 9),
         "logical_graph": (1, 7, 10, 40), "addition-calculator": (1, 7, 64, 300)}


@pytest.mark.parametrize("name", SIZES)
def test_replay_through_runtime_reproduces_observations_and_answer(name):
    """Model tokens replayed by a scripted policy, batched, through fresh tools: the same
    trajectory, observations included, and the reference answer."""
    task, rng = get_task(name), random.Random(1)
    problems = [task.random_problem(rng, n) for n in SIZES[name]]
    for p, (o, ep) in zip(problems, replay_oracles(task, problems)):
        assert OBSERVATION in ep.trajectory.roles and OUTPUT in ep.trajectory.roles
        assert len(o) < task.max_tokens(p) / 1.5  # the default limit leaves room


@pytest.mark.parametrize("name", SIZES)
def test_divergence_is_detected(name):
    task, rng = get_task(name), random.Random(2)
    p, q = task.random_problem(rng, 6), task.random_problem(rng, 6)
    ep = task.episode(p, keep=True, expected=task.oracle(p).model_tokens())
    run_episodes(ScriptedPolicy([task.oracle(q)]), [ep])
    assert ep.exit == DIVERGED


@pytest.mark.parametrize("name", sorted(TASKS))
def test_oracle_tokens_are_the_oracles(name):
    """What evaluations compare with, however a task makes it, is its oracle's model tokens."""
    task, rng = get_task(name), random.Random(3)
    for p in [task.random_problem(rng, n) for n in (1, 2, 5)] + task.edge_cases(5)[:2]:
        assert list(task.oracle_tokens(p)) == task.oracle(p).model_tokens()


def test_a_diverging_token_is_recorded_but_not_carried_out():
    task = get_task("addition")
    p = task.problem({"a": "12", "b": "34"})
    expected = task.oracle(p).model_tokens()
    ep = task.episode(p, keep=True, expected=expected)
    wrong = next(t for t in (pointer_command(2, "read"), pointer_command(3, "read")) if t != expected[0])
    assert ep.act(wrong) == [] and ep.exit == DIVERGED  # a read, yet no observation
    assert ep.trajectory.tokens[-1] == wrong and ep.trajectory.roles[-1] == COMMAND


def test_a_diverging_byte_inside_a_command_is_recorded_as_command():
    task = get_task("logical_graph")
    p = task.random_problem(random.Random(0), 3)
    expected = task.oracle(p).model_tokens()
    ep = task.episode(p, keep=True, expected=expected)
    assert ep.act(expected[0]) == []  # [FIND]: the pattern follows
    wrong = next(t for t in b"xyz" if t != expected[1])
    assert ep.act(wrong) == [] and ep.exit == DIVERGED
    assert ep.trajectory.tokens[-1] == wrong and ep.trajectory.roles[-1] == COMMAND
