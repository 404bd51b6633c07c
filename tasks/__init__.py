"""Task families: each makes problems, their tools, an exact oracle trajectory and a checker.

A task never runs a policy and a checker never sees one: the runtime joins them. Each family
lives in its own module and registers below by name.
"""

import importlib
import random
from dataclasses import dataclass

from pydantic import BaseModel

from mamba_agent.episode import Episode
from mamba_agent.tools import Tool
from mamba_agent.trajectory import Trajectory

TASKS = {
    "addition": "mamba_agent.tasks.addition:Addition",
    "addition-nocot": "mamba_agent.tasks.addition_ablations:AdditionNoCoT",
    "addition-cot-notool": "mamba_agent.tasks.addition_ablations:AdditionCoTNoTool",
    "addition-calculator": "mamba_agent.tasks.addition_ablations:AdditionCalculator",
    "multiplication": "mamba_agent.tasks.multiplication:Multiplication",
    "multiplication-1": "mamba_agent.tasks.multiplication:MultiplicationBy1",
    "multiplication-2": "mamba_agent.tasks.multiplication:MultiplicationBy2",
    "logical_graph": "mamba_agent.tasks.logical_graph:LogicalGraph",
    "code_debug": "mamba_agent.tasks.code_debug:CodeDebug",
    "hanoi": "mamba_agent.tasks.hanoi:Hanoi",
}


@dataclass
class Problem:
    task: str
    input: dict  # as in a task file's `input:` section
    size: int  # the size the length-generalisation sweep varies (digits, disks, nodes, ...)
    prompt: list[int]  # [BOS] then the input tokens
    reference: str  # the reference answer


class Task:
    name: str
    Input: type[BaseModel]  # schema of a task file's `input:` section
    train_max_size: int  # the largest size in the training distribution (marked in reports)
    max_size: int  # the largest size random problems (task files' `size:`, eval's --sizes) may have
    version: int  # of the oracle trajectory: bumped whenever it changes (CHANGELOG.md); checkpoints record it

    def problem(self, input: dict) -> Problem:
        """A problem from a task file's `input:` (raises pydantic.ValidationError)."""
        raise NotImplementedError

    def random_problem(self, rng: random.Random, size: int) -> Problem:
        """A random problem of the given size, 1..max_size (evaluation)."""
        raise NotImplementedError

    def size_error(self, size: int) -> str | None:
        """Why `size` is no size of this task (None: it is one)."""
        if not 1 <= size <= self.max_size:
            return f"{self.name} takes sizes 1..{self.max_size:,}, got {size:,}"
        return None

    def training_problem(self, rng: random.Random) -> Problem:
        """A problem from the training distribution."""
        raise NotImplementedError

    def edge_cases(self, size: int) -> list[Problem]:
        """Problems every evaluation at `size` starts with (carry chains, zero digits), before
        the random ones; none by default."""
        return []

    def tools(self, problem: Problem) -> list[Tool]:
        raise NotImplementedError

    def max_tokens(self, problem: Problem) -> int:
        """Default token limit: comfortably above the oracle's length."""
        raise NotImplementedError

    def check(self, problem: Problem, answer: str, tools: list[Tool] = ()) -> bool:
        """Is `answer` right? `tools`: the episode's tools, for checkers that judge the state the
        episode left behind (the code task's files); the others ignore them."""
        raise NotImplementedError

    def solve(self, episode: Episode, problem: Problem) -> None:
        """The oracle: drive `episode` (through `act`, like a policy) to the reference answer."""
        raise NotImplementedError

    def episode(self, problem: Problem, **kwargs) -> Episode:
        kwargs.setdefault("max_tokens", self.max_tokens(problem))
        return Episode(problem.prompt, self.tools(problem), **kwargs)

    def oracle(self, problem: Problem) -> Trajectory:
        """The exact oracle trajectory, produced through the real tools."""
        episode = self.episode(problem, keep=True)
        self.solve(episode, problem)
        if episode.exit != "finished" or not self.check(problem, episode.answer, episode.tools):
            raise AssertionError(f"{self.name} oracle failed on {problem.input!r}: {episode.exit}")
        return episode.trajectory


def digit_string(v) -> str:
    """Task-file validator for an operand: a quoted, non-empty string of digits 0-9."""
    if not isinstance(v, str):
        raise ValueError('give the operand as a quoted string of digits, e.g. "8134" (YAML reads bare 0012 as a number)')
    if not v or not v.isascii() or not v.isdigit():
        raise ValueError(f"must be a non-empty string of digits 0-9, got {v[:40]!r}")
    return v


def same_number(answer: str, reference: str) -> bool:
    """Checker for digit answers: `answer` is digits with the reference's value (leading zeros
    aside), compared as strings, so any length works."""
    return answer.isascii() and answer.isdigit() and answer.lstrip("0") == reference.lstrip("0")


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)()
