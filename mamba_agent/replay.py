"""`mamba-agent replay`: check a recorded trajectory against fresh tools.

The recorded model tokens (thought, command, output) go, in order, through `Episode.act` of a
fresh episode of the task the header names, on the problem its `input` rebuilds, with that
task's real tools (the code task's commands run in its sandbox, bubblewrap, as under `solve`).
Every token the fresh episode records (the prompt, each token's role, every observation) must
equal the recorded one, and then the exit, the answer and the checker's verdict the `end` line.

The file does not record the limits the run had, so the replay has none but the recorded
length: of an exit decided outside the tokens (time_limit, format_errors, an interruption) it
checks only that the replay did not finish or diverge there. An episode evaluated against its oracle (its end line has
`diverged_at`) is replayed against the oracle again, so it must leave it at the same token, and
end there if it ended there (`diverged`).
"""

import math
from pathlib import Path

from mamba_agent.episode import DIVERGED, FINISHED, FORMAT_ERRORS, TOKEN_LIMIT, Limits
from mamba_agent.sandboxes import SandboxUnavailable
from mamba_agent.tasks import get_task
from mamba_agent.trajectory import (COMMAND, LEARNED_ROLES, OBSERVATION, ROLE_NAMES, Trajectory, TrajectoryError,
                                    read_trajectory)
from mamba_agent.vocab import decode

def replay(path: str | Path) -> tuple[bool, str]:
    """(True, a summary) when everything matches, else (False, the first difference, one line).

    Raises:
        TrajectoryError: the file is not a trajectory, names an unknown task or an input the task
            rejects, its task's sandbox cannot run here, or it is truncated (no `end` line; raised
            after what is there replayed identically).
    """
    header, rec, end = read_trajectory(path)
    task, problem = _rebuild(path, header)
    n = len(rec)
    evaluated = end is not None and ("diverged_at" in end or end.get("exit") == DIVERGED)
    expected = task.oracle(problem).model_tokens() if evaluated else None
    limits = Limits(max_seconds=math.inf, max_format_errors=n + 1)
    try:
        ep = task.episode(problem, keep=True, max_tokens=max(n, 1), limits=limits, expected=expected,
                          stop_at_divergence=end is not None and end.get("exit") == DIVERGED)
    except SandboxUnavailable as e:
        raise TrajectoryError(f"{path}: replaying {task.name} needs its sandbox, which cannot run here: {e}") from None

    got = ep.trajectory
    i = 0
    while True:
        if (d := _first_difference(rec, got, i, min(len(got), n))) is not None:
            return False, f"{path}: token {d:,}: recorded {_show(rec, d)}, the replay gives {_show(got, d)}{_after(rec, d)}"
        i = len(got)
        if i > n and end is not None:
            return False, f"{path}: token {n:,}: the recording ends, the replay gives {_show(got, n)}{_after(got, n)}"
        if i >= n or ep.done:
            break
        if rec.roles[i] not in LEARNED_ROLES:
            return False, (f"{path}: token {i:,}: recorded {_show(rec, i)}{_after(rec, i)}, "
                           "the replay gives no more observation (the model's turn)")
        ep.act(rec.tokens[i])
    if i < n:
        return False, f"{path}: token {i:,}: the replay ended ({ep.exit}), the recording goes on with {_show(rec, i)}"
    if end is None:
        raise TrajectoryError(f"{path}: truncated (no end line: the run did not finish); its {n:,} tokens "
                              "replay identically, but there is no exit or verdict to check")

    exit = end.get("exit")
    if exit in (FINISHED, DIVERGED, TOKEN_LIMIT) and ep.exit != exit:
        return False, f"{path}: exit: recorded {exit}, the replay ends {ep.exit or 'unfinished'}"
    if exit not in (FINISHED, DIVERGED, TOKEN_LIMIT) and ep.exit in (FINISHED, DIVERGED):
        return False, f"{path}: exit: recorded {exit}, the replay ends {ep.exit}"
    if exit == FORMAT_ERRORS and ep.format_errors == 0:
        return False, f"{path}: exit: recorded format_errors, but the replay's last command was well formed"
    for key, value in (("tokens", n), ("answer", ep.answer), ("diverged_at", ep.diverged_at)):
        if end.get(key, value) != value:
            return False, f"{path}: end line: {key} is {_short(end[key])}, the trajectory's is {_short(value)}"
    verdict = task.check(problem, ep.answer, ep.tools)
    if end.get("correct") is not None and end["correct"] != verdict:
        return False, (f"{path}: verdict: recorded correct={str(end['correct']).lower()}, the checker says "
                       f"correct={str(verdict).lower()} (answer {_short(ep.answer)})")
    checked = "verdict" if end.get("correct") is not None else f"verdict (not recorded; the checker says {verdict})"
    n_obs = rec.roles.count(OBSERVATION)
    return True, (f"{path}: {n:,} tokens replayed through fresh {task.name} tools: all {n_obs:,} observation "
                  f"tokens, the exit ({exit}), the answer and the {checked} match")


def _rebuild(path, header: dict):
    """The task and problem the header names."""
    try:
        task = get_task(header.get("task"))
    except ValueError as e:
        raise TrajectoryError(f"{path}: header: {e}") from None
    if not isinstance(header.get("input"), dict):
        raise TrajectoryError(f"{path}: header has no `input` object; replay needs the task's input, as solve records it")
    try:
        return task, task.problem(header["input"])
    except ValueError as e:  # pydantic's ValidationError is one
        why = e.errors()[0]["msg"] if hasattr(e, "errors") else str(e).splitlines()[0]
        raise TrajectoryError(f"{path}: header input: {why}") from None


def _first_difference(a: Trajectory, b: Trajectory, start: int, stop: int) -> int | None:
    if a.tokens[start:stop] == b.tokens[start:stop] and a.roles[start:stop] == b.roles[start:stop]:
        return None
    return next(i for i in range(start, stop) if (a.tokens[i], a.roles[i]) != (b.tokens[i], b.roles[i]))


def _show(traj: Trajectory, i: int, most: int = 40) -> str:
    """Role and text of the run of one role that starts at token i (its first `most` tokens)."""
    role, j = traj.roles[i], i
    while j < len(traj) and j - i < most and traj.roles[j] == role:
        j += 1
    more = "…" if j < len(traj) and traj.roles[j] == role else ""
    return f"{ROLE_NAMES[role]} {decode(traj.tokens[i:j])!r}{more}"


def _after(traj: Trajectory, i: int, most: int = 40) -> str:
    """' (after command ...)' for token i inside an observation: the commands that asked for it."""
    j = i
    while j > 0 and traj.roles[j - 1] == OBSERVATION:
        j -= 1
    if traj.roles[i] != OBSERVATION or j == 0 or traj.roles[j - 1] != COMMAND:
        return ""
    k = j
    while k > 0 and traj.roles[k - 1] == COMMAND:
        k -= 1
    more = "…" if j - k > most else ""
    return f" (after command {decode(traj.tokens[k : min(j, k + most)])!r}{more})"


def _short(value, most: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= most else text[: most - 1] + "…"
