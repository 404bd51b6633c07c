"""What every sandbox backend shares: limits, the run loop, output caps and the result.

A sandbox runs one command at a time in a scratch workspace (a host directory) and returns an
`ExecResult`. A backend only says how to launch a command (`Sandbox._launch`) and how to kill and
reap it (`Launched`); everything below is written once, here.

Covered here, for every backend:
- the command: a `str` runs as `bash -c COMMAND` (what an agent tool passes); a `list` is an argv
  run as is. A program that is missing or not executable gives exit code 127 or 126, as in a
  shell, and any other failure to start it (an argument over the kernel's 128 KiB, E2BIG) a
  failed result with the reason on stderr, never an exception;
- the wall timeout: at `limits.wall_s` the backend kills the command (the whole process tree, for
  the isolating backends) and `timed_out` is set;
- output caps: stdout and stderr are read until EOF; past `limits.output_bytes` per stream the
  bytes are still read but dropped, so the child never blocks on a full pipe, and
  `stdout_truncated` / `stderr_truncated` are set. Output is decoded as UTF-8 (bad bytes replaced);
- nothing waits forever: after the kill, reading and reaping stop after `KILL_GRACE_S`, so a
  process that keeps the pipe open cannot hang the caller;
- the workspace is used as it is: make it with `Workspace` (workspace.py), which gives it the
  owner the sandboxed user needs once, at creation, and caps its size and files;
- cleanup: `close()`, the context manager, and an atexit hook for sandboxes still open.

Not covered here: isolation itself (each backend's docstring says what it isolates); stdin
(always empty); a truncation marker in the text (the flags say it; the tool that shows the output
adds its own); running two commands at once in one instance.
"""

from __future__ import annotations

import atexit
import os
import selectors
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

SANDBOX_UID = 65534
"""The unprivileged user (nobody) the isolating backends run commands as when the host is root."""
ETC_PASSWD = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/tmp:/bin/bash\n"
ETC_GROUP = "root:x:0:\nnogroup:x:65534:\n"
"""/etc/passwd and /etc/group inside the isolating backends (the host's are not shown)."""
KILL_GRACE_S = 2.0
"""How long to keep reading and reaping after a kill before giving up on the child."""
OPEN_FILES = 1024
"""Open file descriptors per process."""


class SandboxUnavailable(RuntimeError):
    """The backend cannot run here; the message says what is missing and how to fix it."""


class SandboxLimits(BaseModel):
    """Limits on one command. Network access is always off in the isolating backends."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    wall_s: float = Field(30.0, gt=0)
    """Wall-clock seconds per command; then the whole process tree is killed and `timed_out` set."""
    cpu_s: int = Field(30, ge=1)
    """CPU seconds per process (RLIMIT_CPU); a process past it is killed (SIGKILL or SIGXCPU)."""
    memory_mb: int = Field(512, ge=32)
    """Memory in MiB for the whole command (a cgroup: OOM kill), or per process where no cgroup is
    available (bubblewrap without a writable cgroup v1: RLIMIT_AS, address space, MemoryError).
    /tmp is a tmpfs of this size, and what it holds counts as memory."""
    processes: int = Field(64, ge=2)
    """Processes and threads the command may have at once (pids cgroup and RLIMIT_NPROC)."""
    file_size_mb: int = Field(16, ge=1)
    """Largest file the command may write, in MiB (RLIMIT_FSIZE)."""
    output_bytes: int = Field(100_000, ge=0)
    """Bytes kept per stream (stdout, stderr); the rest is read and dropped."""


class ExecResult(BaseModel):
    """What one command did. `exit_code` follows the shell: 128+N when ended by signal N."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    backend: str
    """The backend's name, e.g. "bubblewrap" or "local-unsafe"."""
    isolated: bool
    """False for the local backend, which runs commands on the host with no isolation."""
    exit_code: int
    """Exit status; 128+N when ended by signal N (137 = SIGKILL, 152 = SIGXCPU); -1 when the
    child could not be reaped after the kill."""
    stdout: str
    """Standard output, at most `output_bytes` bytes of it, decoded as UTF-8."""
    stderr: str
    """Standard error, capped and decoded like stdout."""
    stdout_truncated: bool = False
    """More stdout was written than `output_bytes`; the rest was dropped."""
    stderr_truncated: bool = False
    """More stderr was written than `output_bytes`; the rest was dropped."""
    timed_out: bool = False
    """The wall timeout fired and the command was killed."""
    killed: bool = False
    """Ended by a signal: the wall timeout, an OOM kill, a CPU limit (exit code above 128; a
    command that itself exits with such a code reads the same)."""
    duration_s: float = 0.0
    """Wall-clock seconds from launch to the end of the command."""


class Launched:
    """A started command: the output file descriptors, and how to kill, reap and release it.

    Backends subclass it; `PopenLaunched` serves the ones that start a host process.
    """

    fds: dict[int, str]
    """Readable file descriptors; value "stdout"/"stderr", or "mux" for a stream `demux` splits."""

    def demux(self, fd: int, data: bytes) -> list[tuple[str, bytes]]:
        """Split bytes read from `fd` into (stream, bytes) pieces."""
        return [(self.fds[fd], data)]

    def kill(self) -> None:
        """Kill the command and everything it started (as far as the backend can)."""
        raise NotImplementedError

    def wait(self, timeout: float) -> int | None:
        """Exit code (128+N for signal N) once the command has ended, or None after `timeout`."""
        raise NotImplementedError

    def close(self) -> None:
        """Release file descriptors and anything else the launch holds."""
        raise NotImplementedError


class PopenLaunched(Launched):
    """A host process started in its own session; `kill` signals that whole process group."""

    def __init__(self, argv: list[str], cwd: str, env: dict[str, str], pass_fds=()):
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True, close_fds=True, pass_fds=pass_fds,
        )
        self.fds = {self.proc.stdout.fileno(): "stdout", self.proc.stderr.fileno(): "stderr"}

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # already gone

    def wait(self, timeout: float) -> int | None:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return 128 - code if code < 0 else code

    def close(self) -> None:
        self.proc.stdout.close()
        self.proc.stderr.close()


class _Capped:
    """Keeps the first `cap` bytes written to it and remembers whether more came."""

    def __init__(self, cap: int):
        self.cap, self.data, self.truncated = cap, bytearray(), False

    def add(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        if len(chunk) > room:
            self.truncated = True
        if room > 0:
            self.data += chunk[:room]

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


_open_sandboxes: weakref.WeakSet[Sandbox] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for sandbox in list(_open_sandboxes):
        sandbox.close()


class Sandbox:
    """Runs commands in `workspace` under `limits`. One command at a time per instance.

    Use as a context manager, or call `close()`; sandboxes still open at exit are closed then.

    Raises:
        SandboxUnavailable: from the constructor, when the backend cannot run here.
        ValueError: from the constructor, when `workspace` is not a directory or is "/".
    """

    name: ClassVar[str]
    isolated: ClassVar[bool] = True
    drops_to_sandbox_uid: ClassVar[bool] = True
    """Whether commands run as SANDBOX_UID when the host runs as root."""

    def __init__(self, workspace: str | os.PathLike, limits: SandboxLimits | None = None):
        self.workspace = Path(workspace).resolve()
        if not self.workspace.is_dir() or self.workspace == Path("/"):
            raise ValueError(f"workspace must be an existing directory other than /: {workspace}")
        self.limits = limits or SandboxLimits()
        self.closed = False
        _open_sandboxes.add(self)

    # --- what a backend provides ---------------------------------------------------------------
    def _launch(self, argv: list[str]) -> Launched:
        """Start `argv` under `self.limits` with the workspace as working directory."""
        raise NotImplementedError

    def _release(self) -> None:
        """Free what the backend holds (engine connection, cgroup); called once by close()."""

    # --- shared ----------------------------------------------------------------------------------
    @property
    def run_as_uid(self) -> int | None:
        """The uid commands run as, when it differs from the host user's (None otherwise)."""
        return SANDBOX_UID if self.drops_to_sandbox_uid and os.geteuid() == 0 else None

    def env(self, home: str, path_dirs: list[str]) -> dict[str, str]:
        """The whole environment a command sees: nothing is inherited from the host process."""
        return {"PATH": ":".join(path_dirs), "HOME": home, "LANG": "C.UTF-8", "TERM": "dumb"}

    def run(self, command: str | list[str]) -> ExecResult:
        """Run `command` (str: `bash -c` string; list: argv) and return what it did.

        A failed, killed or timed-out command is a result, not an exception.
        """
        if self.closed:
            raise RuntimeError(f"{self.name} sandbox is closed")
        argv = ["bash", "-c", command] if isinstance(command, str) else [str(a) for a in command]
        if not argv:
            raise ValueError("empty command")
        start = time.monotonic()
        try:
            launched = self._launch(argv)
        except OSError as e:  # program missing or not executable, E2BIG, ...: as a shell says it
            err = _Capped(self.limits.output_bytes)
            err.add(f"{e}\n".encode())
            code = 127 if isinstance(e, FileNotFoundError) else 126
            return self._result(code, _Capped(0), err, start, timed_out=False)
        try:
            return self._collect(launched, start)
        finally:
            launched.close()

    def _collect(self, launched: Launched, start: float) -> ExecResult:
        cap = self.limits.output_bytes
        out = {"stdout": _Capped(cap), "stderr": _Capped(cap)}
        deadline = start + self.limits.wall_s
        timed_out = False
        with selectors.DefaultSelector() as sel:
            for fd in launched.fds:
                sel.register(fd, selectors.EVENT_READ)
            while sel.get_map():
                now = time.monotonic()
                if now >= deadline:
                    if timed_out:
                        break  # something still holds the output open after the kill: stop reading
                    launched.kill()
                    timed_out, deadline = True, now + KILL_GRACE_S
                    continue
                for key, _ in sel.select(deadline - now):
                    data = os.read(key.fd, 1 << 16)
                    if not data:
                        sel.unregister(key.fd)
                    for stream, chunk in launched.demux(key.fd, data):
                        out[stream].add(chunk)
        # The output is closed; the command may still run (it closed its stdout, or it was killed).
        code = launched.wait(max(0.0, deadline - time.monotonic()))
        if code is None:
            if not timed_out:
                launched.kill()
                timed_out = True
            code = launched.wait(KILL_GRACE_S)
        return self._result(-1 if code is None else code, out["stdout"], out["stderr"], start,
                            timed_out=timed_out)

    def _result(self, code: int, stdout: _Capped, stderr: _Capped, start: float,
                timed_out: bool) -> ExecResult:
        return ExecResult(
            backend=self.name, isolated=self.isolated, exit_code=code,
            stdout=stdout.text(), stderr=stderr.text(),
            stdout_truncated=stdout.truncated, stderr_truncated=stderr.truncated,
            timed_out=timed_out, killed=timed_out or code > 128 or code == -1,
            duration_s=round(time.monotonic() - start, 3),
        )

    def close(self) -> None:
        """Release everything the sandbox holds; safe to call twice."""
        if not self.closed:
            self.closed = True
            _open_sandboxes.discard(self)
            self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(workspace={str(self.workspace)!r}, limits={self.limits!r})"


def _start_time(pid: int | str) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[19]  # field 22: start time in clock ticks
    except OSError:
        return None


def owner_tag() -> str:
    """`PID.STARTTIME` of this process: what names its workspaces, cgroups and containers, so that
    a later process can tell the leftovers of a dead one from those of a live one."""
    return f"{os.getpid()}.{_start_time(os.getpid())}"


def owner_alive(tag: str) -> bool:
    """Is the process `owner_tag()` returned `tag` in still running (pid not reused)?"""
    pid, _, start = tag.partition(".")
    return pid.isdigit() and _start_time(pid) == start


def host_python_dirs() -> list[str]:
    """Directories that hold the running interpreter (venv and base), for binding and PATH."""
    return sorted({os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)})
