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
A crash loses at most the last unflushed second; a file without an `end` line is a crash. A file
may hold several trajectories one after another (`read_trajectories`).
"""

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mamba_agent.vocab import VOCAB_VERSION, decode

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

    def close(self, end: dict) -> None:
        self._emit_run()
        self._write({"end": end})
        self._file.close()

    def _emit_run(self) -> None:
        if self._run:
            self._write({"role": ROLE_NAMES[self._role], "tokens": self._run, "text": decode(self._run)})
            self._run = []
            if time.monotonic() - self._last_flush > self._flush_seconds:
                self._file.flush()
                self._last_flush = time.monotonic()

    def _write(self, obj: dict) -> None:
        self._file.write(json.dumps(obj) + "\n")


_decode = json.JSONDecoder().decode  # of a str: twice as fast as json.loads of bytes


def read_trajectory(path: str | Path) -> tuple[dict, Trajectory, dict | None]:
    """(header, trajectory, end) of the first trajectory in a JSONL file; `end` is None if the run
    never finished. Raises ValueError naming the file (and line) when it is not one."""
    for _, _, header, traj, end in read_trajectories(path):
        return header, traj, end
    raise ValueError(f"{path}: empty trajectory file")


def read_trajectories(path: str | Path, offset: int = 0, line: int = 1) -> Iterator[tuple[int, int, dict, Trajectory, dict | None]]:
    """Each trajectory in a JSONL file from byte `offset` (line number `line`) on, as (offset, line
    number of its header, header, trajectory, end): a file may hold several, one after another
    (`cat` of the runtime's files). `end` is None for one that never finished. Raises ValueError
    naming the file and line of anything that is not this format."""
    header = None
    with open(path, "rb") as f:
        f.seek(offset)
        for number, text in enumerate(f, start=line):
            here, offset = offset, offset + len(text)
            if not text.strip():
                continue
            try:
                obj = _decode(text.decode())
            except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
                raise ValueError(f"{path}:{number}: not a JSON line (a damaged or truncated file?)") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{number}: not a trajectory line (a JSON object)")
            if "format" in obj:
                if obj["format"] != FORMAT:
                    raise ValueError(f"{path}:{number}: format {obj['format']!r}, not a mamba-agent trajectory")
                if header is not None:  # the next trajectory begins: this one never finished
                    yield start, start_line, header, traj, None
                header, start, start_line, traj = obj, here, number, Trajectory()
            elif header is None:
                raise ValueError(f"{path}:{number}: not a mamba-agent trajectory (no {FORMAT!r} header line before it)")
            elif "end" in obj:
                yield start, start_line, header, traj, obj["end"]
                header = None
            else:
                role, tokens = obj.get("role"), obj.get("tokens")
                if role not in ROLE_NAMES or not isinstance(tokens, list):
                    raise ValueError(f"{path}:{number}: expected a role ({', '.join(ROLE_NAMES)}) and its tokens")
                traj.tokens += tokens
                traj.roles += [ROLE_NAMES.index(role)] * len(tokens)
    if header is not None:
        yield start, start_line, header, traj, None
