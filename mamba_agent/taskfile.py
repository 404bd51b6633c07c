"""Task files: the YAML a user hands to `mamba-agent solve`.

    task: addition            # a task family
    input: {a: "8134", b: "5520"}   # the problem itself (the family's own fields)...
    # size: 1000              # ...or a random problem of this size (with `seed`)
    policy: {checkpoint: builtin:addition-mamba, device: cpu, temperature: 0}
    limits: {max_tokens: 100000, max_seconds: 600}
    trajectory: runs/addition.jsonl

Everything but `task` and one of `input`/`size` has a default. Errors name the field.
"""

import random
import re
import time
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mamba_agent.episode import Limits
from mamba_agent.tasks import Problem, get_task

TASKFILE_VERSION = 1


class TaskFileError(Exception):
    """A task file that cannot be used; the message names the file, the field and the fix."""


def device_name(device: str) -> str:
    """`device` if it names a device policies run on (cpu, cuda, cuda:N); else ValueError."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"{device!r} is not a device here: use cpu, or cuda (cuda:N) on a machine with an NVIDIA GPU")
    return device


class PolicySettings(BaseModel, use_attribute_docstrings=True):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = None
    """A checkpoint folder, or builtin:<name>; default: the checkpoint shipped for the task."""
    device: str = "cpu"
    """Where the policy runs: cpu, cuda or cuda:N."""
    temperature: float = Field(0.0, ge=0)
    """0 decodes greedily; above 0 samples."""
    seed: int = Field(0, ge=0)
    """Seed of the sampler (temperature > 0)."""

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return device_name(v)


class TaskFile(BaseModel, use_attribute_docstrings=True):
    model_config = ConfigDict(extra="forbid")

    version: int = TASKFILE_VERSION
    """Task-file format version."""
    task: str
    """Task family: a built-in one, an installed plugin's name, or module:Name (mamba_agent.plugins)."""
    input: dict | None = None
    """The problem, in the family's own fields (addition: a, b)."""
    size: int | None = None
    """Instead of `input`: a random problem of this size."""
    seed: int = Field(0, ge=0)
    """Seed of the random problem (with `size`)."""
    policy: PolicySettings = PolicySettings()
    """Which policy solves it and how it decodes."""
    limits: Limits = Limits()
    """Token, time and format-error limits of the episode."""
    trajectory: str | None = None
    """Where the trajectory JSONL streams; default trajectories/<file>-<time>.jsonl."""

    @model_validator(mode="after")
    def _check(self) -> "TaskFile":
        try:
            task = get_task(self.task)
        except ValueError as e:  # an unknown name, or a plugin that does not load
            raise ValueError(f"task: {e}") from None
        if (self.input is None) == (self.size is None):
            raise ValueError("give exactly one of `input:` (the problem) or `size:` (a random problem)")
        if self.size is not None and (why := task.size_error(self.size)):
            raise ValueError(f"size: {why}")
        if self.version != TASKFILE_VERSION:
            raise ValueError(f"version: this mamba-agent reads task files of version {TASKFILE_VERSION}")
        return self


def first_error(e: ValidationError, prefix: str = "") -> str:
    """`field.path: message` of a validation error's first problem, on one line."""
    err = e.errors()[0]
    loc = ".".join(str(x) for x in (prefix, *err["loc"]) if x != "")
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def load_taskfile(path: str | Path) -> tuple[TaskFile, Problem]:
    """Parse and validate a task file and build its problem. Raises TaskFileError."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise TaskFileError(f"{path}: no such task file") from None
    except IsADirectoryError:
        raise TaskFileError(f"{path} is a folder: give a task file, e.g. tasks/examples/addition.yaml") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TaskFileError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e.__class__.__name__})") from None
    except yaml.YAMLError as e:
        raise TaskFileError(f"{path}: not valid YAML ({e.__class__.__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise TaskFileError(f"{path}: expected a mapping with at least `task:` and `input:`")
    try:
        tf = TaskFile.model_validate(data)
    except ValidationError as e:
        raise TaskFileError(f"{path}: {first_error(e)}") from None
    task = get_task(tf.task)
    try:
        if tf.input is not None:
            problem = task.problem(tf.input)
        else:
            problem = task.random_problem(random.Random(tf.seed), tf.size)
    except ValidationError as e:
        raise TaskFileError(f"{path}: {first_error(e, 'input')}") from None
    if tf.trajectory is None:
        tf.trajectory = f"trajectories/{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    return tf, problem
