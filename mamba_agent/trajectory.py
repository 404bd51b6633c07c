"""Trajectories: every token with its role. The same format is a training example and a log.

Roles (the paper's three kinds of model tokens, plus what the model is given):
  input        the question (the model never learns to predict it)
  thought      model tokens before [ANS] (and [ANS] itself); appended to memory tools
  command      model tokens addressed to a tool or the runtime ([P1.read], [FIND] ... [END], [EOS])
  observation  a tool's answer, forced into the model (never learned)
  output       model tokens after [ANS]; the answer the checker scores

On disk (JSONL, `FORMAT` version `VERSION`): a header line, then one line per maximal run of
tokens with the same role, streamed as the episode runs, then an `end` line:
  {"format": "mamba-agent-trajectory", "version": 1, "vocab_version": 1, "task": ..., ...}
  {"role": "command", "tokens": [262], "text": "[P1.read]"}
  {"end": {"exit": "finished", "answer": "...", "correct": true, "tokens": 1234, "seconds": 0.8}}
A crash loses at most the last unflushed second; a file without an `end` line is a crash. An
episode evaluated against its oracle (exact match) also records, in its `end` line, `diverged_at`:
the index of its first model token (thought, command, output; counted from 0) that differs from
the oracle's, null if none did; and where one did, `oracle_token`: the oracle's token there, as
text (null where the oracle had already ended). Readers ignore keys they do not know, so version
1 files with and without them read alike.
An episode the runtime could not finish ends with exit "error" or "interrupted", `correct` null
and an "error" field (the exception). A process killed outright loses at most the last
unflushed second; a file without an `end` line is such a kill.
A file may hold several trajectories one after another (`read_trajectories`).
"""

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mamba_agent.vocab import VOCAB_SIZE, VOCAB_VERSION, decode

INPUT, THOUGHT, COMMAND, OBSERVATION, OUTPUT = range(5)
ROLE_NAMES = ("input", "thought", "command", "observation", "output")
LEARNED_ROLES = (THOUGHT, COMMAND, OUTPUT)  # the loss is masked on everything else

FORMAT, VERSION = "mamba-agent-trajectory", 1


@dataclass
class Trajectory:
    """Tokens and their roles, in memory (training data, oracle runs, tests)."""

    tokens: list[int] = field(default_factory=list)
    roles: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    def model_tokens(self) -> list[int]:
        """The tokens a policy must produce, in order (what exact match compares)."""
        return [t for t, r in zip(self.tokens, self.roles) if r in LEARNED_ROLES]

    def output_text(self) -> str:
        return decode([t for t, r in zip(self.tokens, self.roles) if r == OUTPUT], specials=False)


class TrajectoryWriter:
    """Streams a trajectory to JSONL one role-run per line; holds only the current run."""

    def __init__(self, path: str | Path, header: dict, flush_seconds: float = 1.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w")
        self._role, self._run = None, []
        self._flush_seconds, self._last_flush = flush_seconds, time.monotonic()
        self._write({"format": FORMAT, "version": VERSION, "vocab_version": VOCAB_VERSION, **header})

    def add(self, token: int, role: int) -> None:
        if role != self._role:
            self._emit_run()
            self._role = role
        self._run.append(token)

    def add_run(self, tokens: list[int], role: int) -> None:
        if tokens:
            if role != self._role:
                self._emit_run()
                self._role = role
            self._run.extend(tokens)

    def close(self, end: dict) -> None:
        self._emit_run()
        self._write({"end": end})
        self._file.close()

    def position(self) -> dict:
        """Where the trajectory stands, flushed to disk (an episode checkpoint keeps it):
        `reopen` continues the same file from here."""
        self._file.flush()
        return {"path": str(self.path), "offset": self._file.tell(), "role": self._role, "run": list(self._run)}

    @classmethod
    def reopen(cls, position: dict, flush_seconds: float = 1.0) -> "TrajectoryWriter":
        """Continue a trajectory at a saved `position`; what the file holds past it (the end
        line of the run that was interrupted) is cut off. Raises OSError, or ValueError when
        the file is shorter than the position (it is not the file that was saved)."""
        writer = cls.__new__(cls)
        writer.path = Path(position["path"])
        writer._file = open(writer.path, "r+")
        if writer._file.seek(0, 2) < position["offset"]:
            writer._file.close()
            raise ValueError(f"{writer.path} is shorter than the checkpoint's position in it: not the trajectory it saved")
        writer._file.truncate(position["offset"])
        writer._file.seek(position["offset"])
        writer._role, writer._run = position["role"], list(position["run"])
        writer._flush_seconds, writer._last_flush = flush_seconds, time.monotonic()
        return writer

    def _emit_run(self) -> None:
        if self._run:
            self._write({"role": ROLE_NAMES[self._role], "tokens": self._run, "text": decode(self._run)})
            self._run = []
            if time.monotonic() - self._last_flush > self._flush_seconds:
                self._file.flush()
                self._last_flush = time.monotonic()

    def _write(self, obj: dict) -> None:
        self._file.write(json.dumps(obj) + "\n")


class TrajectoryError(ValueError):
    """A file that is not a readable trajectory; the message names the file (and line) and the fix."""


_decode = json.JSONDecoder().decode  # of a str: twice as fast as json.loads of bytes


def read_trajectory(path: str | Path) -> tuple[dict, Trajectory, dict | None]:
    """(header, trajectory, end) of the first trajectory in a JSONL file; `end` is None if the run
    never finished (a last line cut off mid-write, by a crash, is dropped like an unflushed one).
    Raises TrajectoryError naming the file, the line and the fix."""
    trajectories = read_trajectories(path)
    for _, _, header, traj, end in trajectories:
        next(trajectories, None)  # what follows must be well-formed too (another trajectory, or nothing)
        return header, traj, end
    raise TrajectoryError(f"{path}: empty file; give a trajectory JSONL file (what solve writes)")


def read_trajectories(path: str | Path, offset: int = 0, line: int = 1) -> Iterator[tuple[int, int, dict, Trajectory, dict | None]]:
    """Each trajectory in a JSONL file from byte `offset` (line number `line`) on, as (offset, line
    number of its header, header, trajectory, end): a file may hold several, one after another
    (`cat` of the runtime's files). `end` is None for one that never finished. Raises
    TrajectoryError naming the file and line of anything that is not this format."""
    header, ended = None, False

    def bad(number: int, why: str) -> TrajectoryError:
        return TrajectoryError(f"{path}: line {number}: {why}")

    try:
        f = open(path, "rb")
    except OSError as e:
        raise TrajectoryError(f"{path}: {e.strerror}; give a trajectory JSONL file (what solve writes)") from None
    with f:
        f.seek(offset)
        for number, text in enumerate(f, start=line):
            here, offset = offset, offset + len(text)
            if not text.strip():
                continue
            try:
                obj = _decode(text.decode())
            except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
                if header is not None and not text.endswith(b"\n"):
                    break  # the last line, cut off mid-write: the run did not finish
                why = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else "not JSON"
                raise bad(number, f"{why}; give a trajectory JSONL file (what solve writes)") from None
            if not isinstance(obj, dict):
                raise bad(number, "not a JSON object")
            if "format" in obj:
                if obj["format"] != FORMAT:
                    raise TrajectoryError(f"{path}: line {number}: format {obj['format']!r}, not a mamba-agent "
                                          "trajectory; give the JSONL file solve writes")
                if obj.get("version") != VERSION or obj.get("vocab_version") != VOCAB_VERSION:
                    raise TrajectoryError(f"{path}: trajectory version {obj.get('version')} (vocabulary "
                                          f"{obj.get('vocab_version')}); this mamba-agent reads version {VERSION} "
                                          f"(vocabulary {VOCAB_VERSION})")
                if header is not None:  # the next trajectory begins: this one never finished
                    yield start, start_line, header, traj, None
                header, start, start_line, traj = obj, here, number, Trajectory()
            elif header is None and number > line and ended:
                raise bad(number, "a line after the end line")
            elif header is None:
                raise TrajectoryError(f"{path}: line {number}: not a mamba-agent trajectory (no "
                                      f'"format": "{FORMAT}" header before it); give the JSONL file solve writes')
            elif "end" in obj:
                if not isinstance(obj["end"], dict):
                    raise bad(number, "the end line's value is not an object")
                yield start, start_line, header, traj, obj["end"]
                header, ended = None, True
            else:
                role, tokens = obj.get("role"), obj.get("tokens")
                if role not in ROLE_NAMES:
                    raise bad(number, f"role {role!r} is none of {', '.join(ROLE_NAMES)}")
                if not isinstance(tokens, list) or not all(type(t) is int and 0 <= t < VOCAB_SIZE for t in tokens):
                    raise bad(number, f"tokens must be a list of token ids 0..{VOCAB_SIZE - 1}")
                traj.tokens += tokens
                traj.roles += [ROLE_NAMES.index(role)] * len(tokens)
    if header is not None:
        yield start, start_line, header, traj, None
