"""Workspaces: the one host directory a sandbox may write, and the host's safe way to read it.

    with Workspace({"main.py": "print(1)\\n"}) as ws:      # a fresh directory, capped
        get_sandbox("bubblewrap", ws.path).run("python3 main.py")
        read_file(ws.path, "out.txt", max_bytes=1 << 20)  # never follows what the code planted

As root, a workspace is a tmpfs of its own (`size_mb`, `inodes` files and directories, nosuid,
nodev) mounted on an empty directory, its root owned by the sandbox user with mode 0700: the
ownership is right from the start (no walk before a run), a full workspace answers ENOSPC, and
`close()` detaches the mount (bounded, whatever the code left in it) and removes the empty
directory. Elsewhere (not root, or mounting is refused, e.g. in a container without
CAP_SYS_ADMIN) it is a plain directory with mode 0700 and NO size or inode limit (`capped` says
which); `close()` then runs `rm -rf` with a timeout. Names carry the owner's pid and start time:
a workspace whose process has died is removed by the next process that makes one.

Host reads and writes of what sandboxed code may have touched go through `open_file`: the path
is walked one component at a time from the workspace's root, never following a symbolic link,
never `..`; the file is opened non-blocking and must be a regular file (not a FIFO, a device or a
directory); `read_file` stops at a byte cap. Every refusal is a `WorkspaceError` whose message
can be shown to the model as it is.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import stat
import subprocess
import tempfile
import warnings
import weakref
from pathlib import Path

from mamba_agent.sandboxes.base import SANDBOX_UID, owner_alive, owner_tag

WORKSPACE_MB = 64
"""Default size of a workspace, in MiB (as root: a tmpfs of this size)."""
WORKSPACE_INODES = 16_384
"""Default number of files and directories a workspace may hold (as root)."""
PREFIX = "mamba-agent-ws-"
_NAME = re.compile(re.escape(PREFIX) + r"(\d+\.\d+)-\w+$")
_MS_NOSUID, _MS_NODEV, _MNT_DETACH = 2, 4, 2
_libc = ctypes.CDLL(None, use_errno=True)


class WorkspaceError(Exception):
    """A workspace file that cannot be read or written safely; the message says which and why."""


def _show(name: str) -> str:
    return name if len(name) <= 80 else name[:77] + "..."


def _parts(name: str) -> list[str]:
    if not name:
        raise WorkspaceError("no path given")
    if "\x00" in name or "\n" in name:
        raise WorkspaceError(f"bad path {_show(name)!r}")
    if name.startswith("/"):
        raise WorkspaceError(f"absolute path {_show(name)!r}: give a path relative to the workspace")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise WorkspaceError(f"path {_show(name)!r} leaves the workspace")
    if not parts:
        raise WorkspaceError(f"not a regular file: {_show(name)}")
    return parts


def _why(name: str, e: OSError) -> str:
    shown = _show(name)
    return {
        errno.ENOENT: f"no such file: {shown}",
        errno.ENOTDIR: f"no such file: {shown} (a part of the path is not a directory)",
        errno.ELOOP: f"{shown} is or passes through a symbolic link (links are not followed)",
        errno.EISDIR: f"not a regular file: {shown}",
        errno.ENXIO: f"not a regular file: {shown}",
        errno.ENAMETOOLONG: f"name too long: {shown}",
        errno.EACCES: f"permission denied: {shown}",
        errno.EPERM: f"permission denied: {shown}",
    }.get(e.errno, f"cannot open {shown}: {e.strerror}")


def open_file(root: str | os.PathLike, name: str, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """A file descriptor for the regular file `name` under `root`, opened with `flags` without
    following any symbolic link or leaving `root`; the caller closes it.

    Raises:
        WorkspaceError: the name is malformed, leads outside, is a link, is missing, or is not a
            regular file.
    """
    parts = _parts(name)
    try:
        dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise WorkspaceError(f"the workspace cannot be opened: {e.strerror}") from None
    try:
        for part in parts[:-1]:
            fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = fd
        fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                     mode, dir_fd=dir_fd)
    except OSError as e:
        raise WorkspaceError(_why(name, e)) from None
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise WorkspaceError(f"not a regular file: {_show(name)}")
    return fd


def read_file(root: str | os.PathLike, name: str, max_bytes: int) -> bytes:
    """The bytes of `name` under `root` (see `open_file`); WorkspaceError past `max_bytes`."""
    fd = open_file(root, name)
    try:
        if os.fstat(fd).st_size > max_bytes:
            raise WorkspaceError(f"{_show(name)} is larger than {max_bytes:,} bytes")
        chunks, size = [], 0
        while size <= max_bytes and (chunk := os.read(fd, max_bytes + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise WorkspaceError(f"cannot read {_show(name)}: {e.strerror}") from None
    finally:
        os.close(fd)
    if size > max_bytes:  # it grew after the fstat
        raise WorkspaceError(f"{_show(name)} is larger than {max_bytes:,} bytes")
    return b"".join(chunks)


def write_file(root: str | os.PathLike, name: str, data: bytes, owner: int | None = None) -> None:
    """Make `name` under `root` hold `data` (created if missing, then owned by `owner` if given)."""
    fd = open_file(root, name, os.O_WRONLY | os.O_CREAT)
    try:
        if owner is not None:
            os.fchown(fd, owner, owner)
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        raise WorkspaceError(f"cannot write {_show(name)}: {e.strerror}") from None
    finally:
        os.close(fd)


class Workspace:
    """A fresh directory for one episode's files; see the module docstring.

    Removed by `close()`, the context manager, or when the object is dropped: keep it while its
    path is in use (`Workspace(files).path` alone is removed at once).
    """

    def __init__(self, files: dict[str, str] | None = None, size_mb: int = WORKSPACE_MB,
                 inodes: int = WORKSPACE_INODES, parent: str | os.PathLike | None = None):
        remove_stale(parent)
        as_root = os.geteuid() == 0
        self.owner = SANDBOX_UID if as_root else os.getuid()
        """The uid that owns the workspace and the files `write` makes (the sandbox's user)."""
        self.path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{owner_tag()}-", dir=parent))
        self.capped = as_root and _mount_tmpfs(self.path, size_mb, inodes, self.owner)
        if as_root and not self.capped:
            os.chown(self.path, self.owner, self.owner)  # mkdtemp made it 0700
        self._chown_to = self.owner if as_root else None  # files of an ordinary user are theirs
        self._finalizer = weakref.finalize(self, _remove, str(self.path), self.capped)
        for name, text in (files or {}).items():
            self.write(name, text)

    def write(self, name: str, text: str) -> None:
        """Create or replace the file `name`, owned by the user sandboxed commands run as."""
        write_file(self.path, name, text.encode(), owner=self._chown_to)

    def close(self) -> None:
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Workspace({str(self.path)!r}, capped={self.capped})"


def _mount_tmpfs(path: Path, size_mb: int, inodes: int, owner: int) -> bool:
    options = f"size={size_mb}m,nr_inodes={inodes},mode=0700,uid={owner},gid={owner}"
    return _libc.mount(b"tmpfs", os.fsencode(path), b"tmpfs", _MS_NOSUID | _MS_NODEV,
                       options.encode()) == 0


def _mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def _remove(path: str, mounted: bool) -> None:
    """Detach the workspace's tmpfs (or rm -rf a plain one), then remove its directory."""
    if mounted:
        if _libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
            warnings.warn(f"workspace {path}: umount failed: {os.strerror(ctypes.get_errno())}")
            return
    else:  # a plain directory: the sandboxed user may have left unwritable ones in it
        for argv in (["chmod", "-R", "u+rwX", path], ["rm", "-rf", "--one-file-system", path]):
            try:
                subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
            except (OSError, subprocess.TimeoutExpired) as e:
                warnings.warn(f"workspace {path}: {argv[0]} failed ({e}); it is left behind")
                return
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        warnings.warn(f"workspace {path}: not removed ({e.strerror})")


_swept: set[str] = set()


def remove_stale(parent: str | os.PathLike | None = None) -> None:
    """Remove the workspaces under `parent` (default: the temp dir) whose process has died; once
    per directory and process."""
    where = os.path.realpath(parent or tempfile.gettempdir())
    if where in _swept:
        return
    _swept.add(where)
    try:
        names = [e.name for e in os.scandir(where) if e.name.startswith(PREFIX)]
    except OSError:
        return
    for name in names:
        match = _NAME.match(name)
        if match and not owner_alive(match.group(1)):
            path = os.path.join(where, name)
            _remove(path, _mounted(path))
