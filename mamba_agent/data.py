"""Training data from trajectory files: the JSONL the runtime writes (mamba_agent/trajectory.py).

`train --data PATH` (repeatable) names files or folders (every *.jsonl under a folder). All of
them are indexed once, in sorted path order, as (file, byte offset) per trajectory, and every
trajectory is checked first (format and vocabulary versions, one task and its trajectory
version, token ids, something to learn), so a bad file stops the run before it starts, in one
line naming the file and line. Training then reads the trajectories as a stream: position p
is trajectory order_e[p mod N] of epoch e = p div N, where order_e is a shuffle of all N seeded
by (seed, e). Position p's trajectory depends on the seed alone, so a resumed run, or one with
data workers, reads what an uninterrupted one reads; only the current batch is in memory.

The loss is the generated data's: on the roles a model learns (LEARNED_ROLES), whatever produced
the file (an oracle, a policy through `solve`, another program using TrajectoryWriter). A file
records its outcome but is not filtered by it: a wrong answer in the files is learnt like a
right one.
"""

import hashlib
import json
import random
from pathlib import Path

from mamba_agent.tasks import get_task
from mamba_agent.trajectory import LEARNED_ROLES, VERSION, Trajectory, read_trajectories
from mamba_agent.vocab import VOCAB_SIZE, VOCAB_VERSION


class DataError(ValueError):
    """Trajectory files that cannot be trained on: the message names the file and what is wrong."""


def jsonl_files(sources: list[str]) -> list[Path]:
    """The files that `sources` (files, or folders searched recursively for *.jsonl) name, sorted, once each."""
    files = set()
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = list(path.rglob("*.jsonl"))
            if not found:
                raise DataError(f"{source}: a folder with no .jsonl files under it")
            files.update(found)
        elif path.is_file():
            files.add(path)
        else:
            raise DataError(f"{source}: no such file or folder")
    return sorted(files)


class TrajectoryFiles:
    """An index of every trajectory in the files `sources` name, all of task `task` (None: the
    task the first one names). Raises DataError."""

    def __init__(self, sources: list[str], task: str | None = None):
        self.paths = [str(p) for p in jsonl_files(sources)]
        self.task, self._version = task, None  # the task's name, and its trajectory version once known
        self.entries: list[tuple[int, int, int]] = []  # (path index, byte offset, line) per trajectory
        for i, path in enumerate(self.paths):
            try:
                for offset, line, header, traj, end in read_trajectories(path):
                    self._check(f"{path}:{line}", header, traj, end)
                    self.entries.append((i, offset, line))
            except OSError as e:
                raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
            except DataError:
                raise
            except ValueError as e:  # not this format
                raise DataError(str(e)) from None
        if not self.entries:
            raise DataError(f"{', '.join(sources)}: no trajectories in these files")
        sizes = [(p, Path(p).stat().st_size) for p in self.paths]
        # changes when the files do (added, removed, grown): a resumed run checks it
        self.fingerprint = hashlib.sha256(json.dumps([sizes, self.entries]).encode()).hexdigest()
        self._epoch: tuple[int, int, list[int]] | None = None  # (seed, epoch, order) last used

    def __len__(self) -> int:
        return len(self.entries)

    def read(self, i: int) -> Trajectory:
        """Trajectory `i` of the index, read from its file."""
        path, offset, line = self.entries[i]
        for _, _, _, traj, _ in read_trajectories(self.paths[path], offset, line):
            return traj
        raise DataError(f"{self.paths[path]}:{line}: the trajectory is gone (the file changed during the run)")

    def at(self, position: int, seed: int) -> Trajectory:
        """Trajectory `position` of the stream of `seed` (every trajectory once an epoch, shuffled)."""
        epoch, i = divmod(position, len(self))
        if self._epoch is None or self._epoch[:2] != (seed, epoch):
            order = list(range(len(self)))
            random.Random(f"{seed}-data-{epoch}").shuffle(order)
            self._epoch = (seed, epoch, order)
        return self.read(self._epoch[2][i])

    def _check(self, where: str, header: dict, traj: Trajectory, end: dict | None) -> None:
        if header.get("version") != VERSION:
            raise DataError(f"{where}: trajectory format version {header.get('version')}, this mamba-agent reads version {VERSION}")
        if header.get("vocab_version") != VOCAB_VERSION:
            raise DataError(f"{where}: vocabulary version {header.get('vocab_version')}, this mamba-agent speaks {VOCAB_VERSION}")
        name = header.get("task")
        if self.task is None:
            self.task = name
        if name != self.task:
            raise DataError(f"{where}: a trajectory of task {name!r}, and this run trains {self.task!r}: give one task's files")
        if self._version is None:
            try:
                self._version = get_task(name).version
            except ValueError as e:
                raise DataError(f"{where}: its task is not known here ({e})") from None
        if header.get("task_version", self._version) != self._version:
            raise DataError(f"{where}: recorded on version {header['task_version']} of the {name} trajectory, "
                            f"this {name} is version {self._version}")
        if end is None:
            raise DataError(f"{where}: the trajectory has no end line (its run did not finish); leave the file out")
        bad = [t for t in traj.tokens if type(t) is not int or not 0 <= t < VOCAB_SIZE][:1]
        if bad:
            raise DataError(f"{where}: token {bad[0]!r} is not in the vocabulary (ids 0..{VOCAB_SIZE - 1})")
        if not any(r in LEARNED_ROLES for r in traj.roles[1:]):  # the first token is never a target
            raise DataError(f"{where}: a trajectory with no model tokens (thought, command, output) to learn")
