"""The bubblewrap backend: real isolation on the host, no engine, about 10 ms per command.

Launch chain (as root): `[sh: join cgroup] prlimit ... -- bwrap <namespaces, mounts, seccomp>
-- setpriv <drop to nobody> -- CMD`. As an ordinary user there is no setpriv and bwrap adds a
user namespace (`--unshare-all`).

Covered (each has a test in tests/test_sandbox.py):
- no network: a new network namespace holds only a down loopback; the host's loopback
  listeners, abstract unix sockets and every other address are unreachable;
- files: a fresh root holding only what a program needs, read-only: /usr (with /bin, /lib, ...
  as on the host), the dynamic loader's and Python's files from /etc, the running interpreter's
  prefix, and an /etc/passwd and /etc/group naming only root and nobody; /tmp and /dev/shm are
  private tmpfs (each capped at `memory_mb`), /dev holds only null, zero, full, random, urandom
  and tty, /proc is the sandbox's own; the workspace is bound read-write at its own host path and
  is the working directory. Nothing else of the host (/home, /root, /var, /run, /sys, other
  workspaces, sockets) exists inside;
- system calls: the seccomp filter of seccomp.py (no new namespaces, keyrings, io_uring, mounts,
  bpf, perf_event_open, ptrace, ...);
- user: as root, commands run as uid/gid 65534 with no capabilities and no-new-privs, so they
  cannot write what nobody cannot write;
- processes: a new pid namespace and `--die-with-parent`: at the wall timeout every process
  started by the command dies, setsid/nohup included; a pids cgroup per sandbox bounds fork bombs
  (RLIMIT_NPROC where there is no cgroup);
- memory: a cgroup v1 memory limit on the whole command when the host has one (root, writable
  /sys/fs/cgroup/{memory,pids}): an OOM kill; otherwise RLIMIT_AS per process (MemoryError);
- CPU (RLIMIT_CPU), file size (RLIMIT_FSIZE), open files, no core dumps;
- nothing passes between commands but the workspace: /tmp, /dev/shm, SysV IPC and message
  queues, the keyrings (unreachable) and every process are the command's own;
- environment: only PATH, HOME=/tmp, LANG and TERM; nothing from the host process.

Not covered: the kernel is shared (a kernel exploit escapes); /usr and the interpreter's prefix
are readable; on cgroup v2 hosts there is no cgroup (RLIMIT_AS is per process, so the command
can hold up to `processes` x `memory_mb`, and RLIMIT_NPROC counts every process of uid 65534 on
the host, so concurrent sandboxes share it); CPU time is per process and there is no CPU share;
the seccomp filter is a deny list (a system call added to the kernel later is allowed).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
import uuid
import warnings
from pathlib import Path

from mamba_agent.sandboxes.base import (
    ETC_GROUP, ETC_PASSWD, OPEN_FILES, SANDBOX_UID, Launched, PopenLaunched, Sandbox,
    SandboxLimits, SandboxUnavailable, host_python_dirs, owner_alive, owner_tag,
)
from mamba_agent.sandboxes.seccomp import SeccompUnavailable, bpf_program

_SYSTEM_PATH = ["/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin"]
_TOP_DIRS = ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]  # links into /usr, or dirs
_ETC = ["/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives",
        "/etc/localtime", "/etc/nsswitch.conf"]
_CGROUP_V1 = Path("/sys/fs/cgroup")
_CGROUP_NAME = re.compile(r"mamba-agent-(\d+\.\d+)-[0-9a-f]+$")
_JOIN_CGROUP = 'echo $$ >"$1" && echo $$ >"$2" && shift 2 && exec "$@"'


def _system_binds() -> list[str]:
    """bwrap arguments for the read-only system part of the root (the same for every command)."""
    args = ["--ro-bind", "/usr", "/usr", "--perms", "0755", "--dir", "/etc"]  # bwrap's own: 0700
    for top in _TOP_DIRS:
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for path in _ETC + sorted(str(p) for p in Path("/etc").glob("python3*")):
        args += ["--ro-bind-try", path, path]
    return args


def _bind_with_parents(how: str, path: str, made: set[str]) -> list[str]:
    """bwrap arguments binding `path` at itself, its missing parents made first with mode 0755
    (so that nobody can reach it). Paths already visible (under /usr) need nothing."""
    if any(path == m or path.startswith(m + "/") for m in ("/usr", *_TOP_DIRS)):
        return []
    args, parent = [], "/"
    for part in Path(path).parts[1:-1]:
        parent = os.path.join(parent, part)
        if parent not in made:
            args += ["--perms", "0755", "--dir", parent]
            made.add(parent)
    made.add(path)
    return args + [how, path, path]


def _memfd(data: bytes) -> int:
    """A file descriptor reading `data` from its start (bwrap reads --seccomp and data from fds)."""
    fd = os.memfd_create("mamba-agent-bwrap")
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _find_tools(names: list[str]) -> dict[str, str]:
    """Absolute paths of the launch chain's programs (a later PATH change does not matter)."""
    tools = {}
    for name in names:
        tools[name] = shutil.which(name)
        if tools[name] is None:
            package = "bubblewrap" if name == "bwrap" else "util-linux"
            raise SandboxUnavailable(
                f"bubblewrap sandbox: `{name}` is not on PATH. Install it: "
                f"`apt-get install {package}` (Debian/Ubuntu), or run `bash sandboxes/setup_ci.sh` "
                "as root.")
    return tools


class _CgroupV1:
    """One memory and one pids cgroup (v1) for one sandbox; `create` returns None where unusable."""

    def __init__(self, dirs: list[Path]):
        self.dirs = dirs

    swept = False  # has this process removed the cgroups that dead runs left?

    @classmethod
    def create(cls, limits: SandboxLimits) -> _CgroupV1 | None:
        name = f"mamba-agent-{owner_tag()}-{uuid.uuid4().hex[:12]}"
        mem, pids = _CGROUP_V1 / "memory" / name, _CGROUP_V1 / "pids" / name
        if os.geteuid() != 0 or not (mem.parent.is_dir() and pids.parent.is_dir()):
            return None
        if not cls.swept:
            cls.swept = True
            cls.remove_stale()
        group = cls([])
        try:
            for d in (mem, pids):
                d.mkdir()
                group.dirs.append(d)
            (mem / "memory.limit_in_bytes").write_text(str(limits.memory_mb << 20))
            if (mem / "memory.memsw.limit_in_bytes").exists():  # no swapping past the limit
                (mem / "memory.memsw.limit_in_bytes").write_text(str(limits.memory_mb << 20))
            (pids / "pids.max").write_text(str(limits.processes))
        except OSError:
            group.remove()
            return None
        return group

    @classmethod
    def remove_stale(cls) -> None:
        """Kill what is left in the cgroups of processes that died, and remove those cgroups."""
        for controller in ("memory", "pids"):
            for d in (_CGROUP_V1 / controller).glob("mamba-agent-*"):
                match = _CGROUP_NAME.match(d.name)
                if not match or owner_alive(match.group(1)):
                    continue
                try:
                    for pid in (d / "cgroup.procs").read_text().split():
                        os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
                cls([d]).remove()

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def remove(self) -> None:
        """rmdir each cgroup; teardown of exited processes is asynchronous, hence the retries."""
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
            else:
                warnings.warn(f"bubblewrap sandbox: could not remove cgroup {d} (still busy)")
        self.dirs = []


class BubblewrapSandbox(Sandbox):
    """Runs commands under bubblewrap; see the module docstring for what it covers.

    Raises:
        SandboxUnavailable: bwrap, prlimit, (as root) setpriv, pyseccomp or libseccomp missing,
            or bwrap cannot create
            namespaces here (e.g. Ubuntu 23.10+ blocks unprivileged user namespaces).
    """

    name = "bubblewrap"

    def __init__(self, workspace: str | os.PathLike, limits: SandboxLimits | None = None):
        super().__init__(workspace, limits)
        self.as_root, self.cgroup = os.geteuid() == 0, None
        self.system_binds = _system_binds()
        try:
            self.tools = _find_tools(["bwrap", "prlimit"] + (["setpriv"] if self.as_root else []))
            try:
                bpf_program()
            except SeccompUnavailable as e:
                raise SandboxUnavailable(f"bubblewrap sandbox: no seccomp filter: {e}") from e
            self.cgroup = _CgroupV1.create(self.limits)
            self._check()
        except SandboxUnavailable:
            self.close()
            raise

    def _check(self) -> None:
        """Start one trivial sandbox, so that a host that cannot run bwrap fails here, clearly."""
        probe = self.run(["true"])
        if probe.exit_code == 0:
            return
        said = probe.stderr.strip()
        if "uid map" in said or "namespace" in said or "Operation not permitted" in said:
            raise SandboxUnavailable(
                "bubblewrap sandbox: this host does not let bwrap create namespaces. On Ubuntu "
                "23.10+ unprivileged user namespaces are blocked: `sudo sysctl -w "
                "kernel.apparmor_restrict_unprivileged_userns=0`, or add an AppArmor profile for "
                "bwrap; inside a container, run it with --privileged or use the docker backend. "
                f"bwrap said: {said}")
        raise SandboxUnavailable(
            f"bubblewrap sandbox: a trivial command failed ({probe.exit_code}): {said}")

    def _launch(self, argv: list[str]) -> Launched:
        lim, ws = self.limits, str(self.workspace)
        env = self.env("/tmp", [os.path.join(d, "bin") for d in host_python_dirs()] + _SYSTEM_PATH)
        prlimit = [self.tools["prlimit"], f"--cpu={lim.cpu_s}", f"--fsize={lim.file_size_mb << 20}",
                   f"--nofile={OPEN_FILES}", "--core=0"]
        if self.cgroup is None:  # no cgroup: limits per process, and forks per uid on the host
            prlimit += [f"--as={lim.memory_mb << 20}", f"--nproc={lim.processes}"]
        bwrap = [self.tools["bwrap"], "--die-with-parent", "--new-session"]
        if self.as_root:
            bwrap += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                      "--unshare-cgroup-try"]
        else:
            bwrap += ["--unshare-all"]  # adds a user namespace, which an ordinary user needs
        bwrap += self.system_binds + ["--dev", "/dev", "--proc", "/proc"]
        for private in ("/tmp", "/dev/shm"):
            bwrap += ["--size", str(lim.memory_mb << 20), "--perms", "1777", "--tmpfs", private]
        made = {"/tmp", "/dev", "/proc", "/etc"}
        for prefix in host_python_dirs():
            bwrap += _bind_with_parents("--ro-bind", prefix, made)
        bwrap += _bind_with_parents("--bind", ws, made) + ["--chdir", ws, "--clearenv"]
        for key, value in env.items():
            bwrap += ["--setenv", key, value]
        uid = SANDBOX_UID if self.as_root else os.getuid()
        passwd = ETC_PASSWD if self.as_root else f"{ETC_PASSWD}user:x:{uid}:{os.getgid()}::/tmp:/bin/sh\n"
        fds = [_memfd(bpf_program()), _memfd(passwd.encode()), _memfd(ETC_GROUP.encode())]
        bwrap += ["--seccomp", str(fds[0]), "--perms", "0644", "--ro-bind-data", str(fds[1]),
                  "/etc/passwd", "--perms", "0644", "--ro-bind-data", str(fds[2]), "/etc/group", "--"]
        if self.as_root:  # drop to nobody: no capabilities, and root's files out of reach
            bwrap += [self.tools["setpriv"], f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}",
                      "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
                      "--"]
        cmd = prlimit + ["--"] + bwrap + argv
        if self.cgroup is not None:
            cmd = ["/bin/sh", "-c", _JOIN_CGROUP, "sh", *self.cgroup.procs_files] + cmd
        try:
            return PopenLaunched(cmd, ws, env, pass_fds=fds)
        finally:
            for fd in fds:
                os.close(fd)

    def _release(self) -> None:
        if self.cgroup is not None:
            self.cgroup.remove()
