"""Episode checkpoints: a running `solve` saved to a folder, and resumed from it anywhere.

A policy with a fixed-size state (Mamba, LSTM, GRU, the lookup table) can stop an episode at any
step and go on later, on another machine or device: the folder holds that state, every tool's
state, the sampler's RNG, the runtime's queued tokens and the trajectory file's position, with
the problem and the weights' SHA-256. A KV-cache agent would have to save its whole cache (or
re-read its history) instead. `mamba-agent resume DIR` goes on from there and, at the end,
prints and writes what an uninterrupted `solve` would have: the same tokens, answer and one
trajectory file (its `seconds` count every run's time).

    DIR/episode.pt   torch.save of plain values and tensors (read back with weights_only=True)
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mamba_agent.episode import Episode, Limits
from mamba_agent.runtime import SavedLoop, Sampler
from mamba_agent.tasks import Problem, Task
from mamba_agent.trajectory import TrajectoryWriter

FORMAT, VERSION = "mamba-agent-episode", 2  # 2: the repeat rule's call history
FILE = "episode.pt"


class EpisodeCheckpointError(Exception):
    """A folder that holds no usable episode checkpoint; the message names it and the fix."""


@dataclass
class EpisodeRun:
    """One solve: what it runs and with which settings, as a checkpoint records them."""

    task: Task
    problem: Problem
    checkpoint: str  # as the user named it: a folder or builtin:<name>
    meta: dict  # the checkpoint's config.json, with checkpoint_sha256
    episode: Episode
    sampler: Sampler
    limits: Limits
    max_tokens: int

    def save(self, directory: str | Path, loop) -> Path:
        """Write DIR/episode.pt atomically (a crash mid-save keeps the previous one); `loop`: the
        runtime's rows, between a step and the next sync (`run_episodes`' on_progress gets them)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        saved = loop.save()
        record = {
            "format": FORMAT, "version": VERSION, "saved": time.strftime("%Y-%m-%d %H:%M:%S"),
            "task": self.task.name, "task_version": self.task.version, "input": self.problem.input,
            "checkpoint": self.checkpoint, "checkpoint_sha256": self.meta["checkpoint_sha256"],
            "temperature": self.sampler.temperature, "limits": self.limits.model_dump(), "max_tokens": self.max_tokens,
            "episode": self.episode.state_dict(), "trajectory": self.episode.writer.position(),
            "loop": {"queues": saved.queues, "sampled": saved.sampled, "decoder_state": saved.stepper_state,
                     "sampler_rng": saved.sampler_rng},
        }
        torch.save(record, directory / (FILE + ".tmp"))
        os.replace(directory / (FILE + ".tmp"), directory / FILE)
        return directory / FILE


def load(directory: str | Path) -> dict:
    """The record `EpisodeRun.save` wrote. Raises EpisodeCheckpointError."""
    path = Path(directory) / FILE
    if not path.is_file():
        raise EpisodeCheckpointError(f"{directory}: no {FILE} here; give the --episode-dir a solve saved to")
    try:
        record = torch.load(path, weights_only=True)
    except Exception as e:  # a damaged or foreign file: torch raises many kinds
        raise EpisodeCheckpointError(f"{path}: not a readable episode checkpoint ({e.__class__.__name__})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("version") not in (1, VERSION):
        raise EpisodeCheckpointError(f"{path}: not an episode checkpoint of version {VERSION}")
    if record["version"] == 1:  # saved before the repeat rule: its history starts empty on resume
        record["episode"].setdefault("calls", [])
    return record


def restore(record: dict, task: Task, episode: Episode) -> tuple[SavedLoop, TrajectoryWriter]:
    """Bring a fresh `episode` of the saved problem to the saved point and reopen its trajectory;
    the loop to resume (`run_episodes(resume=...)`). Raises EpisodeCheckpointError."""
    if record["task_version"] != task.version:
        raise EpisodeCheckpointError(f"saved on version {record['task_version']} of the {task.name} trajectory, "
                                     f"this mamba-agent's is {task.version}")
    try:
        episode.load_state_dict(record["episode"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise EpisodeCheckpointError(f"the saved episode does not fit this task's episode ({e.__class__.__name__}: {e})") from None
    try:
        episode.writer = TrajectoryWriter.reopen(record["trajectory"])
    except (OSError, ValueError) as e:
        raise EpisodeCheckpointError(f"trajectory {record['trajectory']['path']}: {e}") from None
    loop = record["loop"]
    return SavedLoop(loop["queues"], loop["sampled"], loop["decoder_state"], loop["sampler_rng"]), episode.writer
