"""Run a shell command in a sandbox whose workspace is the task's workspace.

    [RUN]python3 main.py[END]  ->  exit 1
                                   <stdout><stderr>[/OBS]

The observation is `exit N` on its own line, then stdout, then stderr, each capped at
`max_output_bytes` (a line `[stdout truncated at N bytes]` marks the cut), then
`[timed out after S s]` if the wall limit killed the command; then [/OBS]. The workspace's host
path is written as a relative path (`/tmp/mamba-agent-x1/foo.py` -> `foo.py`), so observations
do not depend on where the workspace lies and a replay on a fresh workspace sees the same tokens.
Commands run with PYTHONDONTWRITEBYTECODE=1: no __pycache__ in the workspace, so an edit is never
shadowed by stale bytecode (a .pyc is keyed on the source's mtime in whole seconds and its size).

A failing, killed or timed-out command is an observation, and so is a backend that fails with
an OSError mid-command (`error: the sandbox failed: ...`). Only infrastructure failures raise:
the sandbox backend cannot run here (SandboxUnavailable, from the constructor), or fails in a
way that is not an OSError (the runtime then closes the episode with exit `error`).

`Run(workspace, sandbox=S)` sends the commands to S instead of a backend it builds: anything with
`limits` and `run(argv) -> ExecResult`. The code task's oracle passes its `SimulatedSandbox`,
which computes what its own, trusted code prints; the observation is formatted here either way.
"""

import threading
import weakref
from pathlib import Path

from mamba_agent.sandboxes import SandboxLimits, get_sandbox
from mamba_agent.tools import SPECIAL_IN_ARGUMENT, Tool, argument_bytes
from mamba_agent.vocab import OBS_END, RUN, encode

DEFAULT_LIMITS = SandboxLimits(wall_s=10.0, cpu_s=10, memory_mb=512, output_bytes=8_000)


class Run(Tool):
    """`[RUN]command[END]`: `bash -c command` in a `backend` sandbox on `workspace`.

    Raises:
        SandboxUnavailable: from the constructor, when the backend cannot run on this machine.
        ValueError: from the constructor, for an unknown backend or a workspace that is no directory.
    """

    argument_commands = frozenset({RUN})
    blocking = True

    def __init__(self, workspace: str | Path, backend: str = "bubblewrap", limits: SandboxLimits = DEFAULT_LIMITS,
                 sandbox=None):
        """`sandbox`: run commands there instead of in a new `backend` sandbox (`backend` and
        `limits` are then unused); the caller keeps it, and closes it if it needs closing."""
        self.workspace = Path(workspace).resolve()
        self._finalizer = None
        if sandbox is not None:
            self.sandbox = sandbox
            return
        self.sandbox = get_sandbox(backend, self.workspace, limits)
        # A dropped tool frees its sandbox, in the background (see close_in_background).
        self._finalizer = weakref.finalize(self, close_in_background, self.sandbox)

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()

    def command(self, token: int, argument: list[int] | None = None) -> list[int]:
        raw = argument_bytes(argument)
        if raw is None:
            return encode(SPECIAL_IN_ARGUMENT) + [OBS_END]
        command = raw.decode("utf-8", errors="replace")
        if not command.strip():
            return encode("error: empty command") + [OBS_END]
        try:
            r = self.sandbox.run(["env", "PYTHONDONTWRITEBYTECODE=1", "bash", "-c", command])
        except (OSError, RecursionError) as e:  # the backend failed mid-command (an engine's
            return encode(f"error: the sandbox failed: {e}"[:500]) + [OBS_END]  # socket, ...)
        parts = [f"exit {r.exit_code}\n", r.stdout]
        if r.stdout_truncated:
            parts.append(f"\n[stdout truncated at {self.sandbox.limits.output_bytes} bytes]\n")
        parts.append(r.stderr)
        if r.stderr_truncated:
            parts.append(f"\n[stderr truncated at {self.sandbox.limits.output_bytes} bytes]\n")
        if r.timed_out:
            parts.append(f"[timed out after {self.sandbox.limits.wall_s:g} s]\n")
        text = "".join(parts).replace(f"{self.workspace}/", "")
        return encode(text) + [OBS_END]


def close_in_background(sandbox) -> threading.Thread:
    """Close `sandbox` on a thread: removing a bubblewrap sandbox's cgroups waits for the kernel's
    asynchronous teardown (about 1.4 s here), which would otherwise stall every episode's end.
    The thread is not a daemon, so the interpreter waits for it before exiting."""
    thread = threading.Thread(target=sandbox.close, name="sandbox-close")
    thread.start()
    return thread
