"""Task families: each makes problems, their tools, an exact oracle trajectory and a checker.

A task never runs a policy and a checker never sees one: the runtime joins them. Each built-in
family lives in its own module and registers below by name; a task from elsewhere (your module,
your installed package) is found by `get_task` through mamba_agent.plugins, and is written the
same way: a subclass of `Task` (its docstring says what to keep true; docs/extending.md has a
worked example).
"""

import importlib
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass

from pydantic import BaseModel

from mamba_agent import plugins
from mamba_agent.episode import Episode
from mamba_agent.tools import Tool
from mamba_agent.trajectory import Trajectory
from mamba_agent.vocab import BOS, EDGE, END, EOS, ERR, OBS_END, SPECIAL, VOCAB_SIZE, decode

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


class Task(ABC):
    """A task family. Subclass it, set the four class attributes, define the abstract methods.

    What every task keeps true (the tests of each built-in one check it; yours should too):
      - One vocabulary: a trajectory is token ids of mamba_agent/vocab.py, the 256 bytes and the
        named special tokens; a task adds none (new ids would change every checkpoint's meaning).
        Questions, thoughts and answers are bytes; tools answer the existing command tokens.
      - Roles come from the episode, not the task: `solve` drives `episode.act` token by token,
        exactly as a policy does, and every observation comes from a tool (`tools`), never from
        the task; the oracle is replayed through the same real tools, and reaches the reference.
      - Locality: every model token is a function of the last k tokens, for a small k that does
        not grow with the size (`mamba-agent locality --task NAME` measures it); a model can then
        learn it from small sizes and run it at any size.
      - The verdict is `check`'s alone: exact on the answer (or on the state the episode left,
        through its tools), never by running a policy.
      - `version` is bumped whenever the oracle trajectory changes (tokens, tools, the training
        distribution): checkpoints record it and refuse another.
    """

    name: str
    """How the task is named in task files, checkpoints and results; a plugin is known by the
    name it was found under (its entry point, or its `module:Name`), whatever its class says."""
    Input: type[BaseModel]
    """Schema of a task file's `input:` section (pydantic; extra fields forbidden)."""
    train_max_size: int
    """The largest size in the training distribution (marked in reports)."""
    max_size: int
    """The largest size random problems (task files' `size:`, eval's --sizes) may have."""
    version: int
    """Of the oracle trajectory: bumped whenever it changes (CHANGELOG.md); checkpoints record it."""

    @abstractmethod
    def problem(self, input: dict) -> Problem:
        """A problem from a task file's `input:` (raises pydantic.ValidationError)."""

    @abstractmethod
    def random_problem(self, rng: random.Random, size: int) -> Problem:
        """A random problem of the given size, 1..max_size (evaluation); only `rng` is random."""

    def size_error(self, size: int) -> str | None:
        """Why `size` is no size of this task (None: it is one)."""
        if not 1 <= size <= self.max_size:
            return f"{self.name} takes sizes 1..{self.max_size:,}, got {size:,}"
        return None

    @abstractmethod
    def training_problem(self, rng: random.Random) -> Problem:
        """A problem from the training distribution (sizes up to train_max_size); only `rng` is
        random, so a training step's data depends on its seed alone."""

    def edge_cases(self, size: int) -> list[Problem]:
        """Problems every evaluation at `size` starts with (carry chains, zero digits), before
        the random ones; none by default."""
        return []

    @abstractmethod
    def tools(self, problem: Problem) -> list[Tool]:
        """Fresh tools for one episode (nothing is shared between episodes)."""

    @abstractmethod
    def max_tokens(self, problem: Problem) -> int:
        """Default token limit: comfortably above the oracle's length."""

    @abstractmethod
    def check(self, problem: Problem, answer: str, tools: list[Tool] = ()) -> bool:
        """Is `answer` right? `tools`: the episode's tools, for checkers that judge the state the
        episode left behind (the code task's files); the others ignore them."""

    @abstractmethod
    def solve(self, episode: Episode, problem: Problem) -> None:
        """The oracle: drive `episode` (through `act`, like a policy) to the reference answer."""

    def oracle_tokens(self, problem: Problem):
        """The oracle's model tokens (list or int array): what an evaluation compares a policy's
        with. A task may make them faster than running the oracle (tests/test_oracles.py checks
        they are the oracle's)."""
        return self.oracle(problem).model_tokens()

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
    """The task called `name`: a built-in one, `module:Name`, or an installed plugin's entry point
    (group `mamba_agent.tasks`; see mamba_agent.plugins).

    Raises:
        ValueError: no task of that name (the message lists the valid ones).
        plugins.PluginError (a ValueError): a plugin that does not import or lacks the interface.
    """
    if name in TASKS:
        module, cls = TASKS[name].split(":")
        return getattr(importlib.import_module(module), cls)()
    cls = plugins.load("task", name, sorted(TASKS))
    plugins.check_class("task", name, cls, Task)
    checked = cls in _CHECKED
    if not checked:
        _check_attributes(cls, name)
    task = cls()
    task.name = name
    if not checked:
        _check_tools(task, name)
        _CHECKED.add(cls)
    return task


_CHECKED: set[type] = set()  # plugin task classes that passed the checks below
# Command tokens a tool may answer: the runtime keeps the others ([EOS] ends the episode, [END]
# closes an argument, [EDGE] [ERR] [/OBS] are answers, [PAD] [BOS] [ANS] structure the sequence).
TOOL_TOKENS = frozenset(SPECIAL.values()) - {SPECIAL["[PAD]"], BOS, EOS, SPECIAL["[ANS]"], EDGE, ERR, END, OBS_END}


def _check_attributes(cls: type, name: str) -> None:
    def whole(attribute: str, least: int) -> int:
        value = getattr(cls, attribute, None)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise plugins.PluginError(f"task plugin {name!r}: {cls.__name__}.{attribute} must be a whole number >= {least}, got {value!r}")
        return value

    whole("version", 1)
    whole("max_size", whole("train_max_size", 1))
    schema = getattr(cls, "Input", None)
    if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
        raise plugins.PluginError(f"task plugin {name!r}: {cls.__name__}.Input must be a pydantic BaseModel subclass (the task file's input: schema), got {schema!r}")


def _check_tools(task: Task, name: str) -> None:
    """What one training problem and its tools say about the interface (run once per class)."""
    where = f"task plugin {name!r}: {type(task).__name__}"
    problem = task.training_problem(random.Random(0))
    if not isinstance(problem, Problem):
        raise plugins.PluginError(f"{where}.training_problem must return a mamba_agent.tasks.Problem, got {type(problem).__name__}")
    prompt = problem.prompt
    if not prompt or prompt[0] != BOS or not all(isinstance(t, int) and 0 <= t < VOCAB_SIZE for t in prompt):
        raise plugins.PluginError(f"{where}: a problem's prompt must be [BOS] then token ids 0..{VOCAB_SIZE - 1} (mamba_agent.vocab)")
    claimed: dict[int, str] = {}
    for tool in task.tools(problem):
        if not isinstance(tool, Tool):
            raise plugins.PluginError(f"{where}.tools must return mamba_agent.tools.Tool instances, got {type(tool).__name__}")
        for token in (*tool.commands, *tool.argument_commands):
            if token not in TOOL_TOKENS:
                raise plugins.PluginError(f"{where}: tool {type(tool).__name__} answers {token!r}, not a command token "
                                          f"(pointer commands, [FIND] [VIEW] [EDIT] [RUN]: mamba_agent.vocab)")
            if token in claimed:
                raise plugins.PluginError(f"{where}: tools {claimed[token]} and {type(tool).__name__} both answer {decode([token])}")
            claimed[token] = type(tool).__name__
