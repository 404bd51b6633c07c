"""The bubblewrap backend: real isolation on the host, no engine, about 10 ms per command.

Launch chain (as root):
`[sh: join cgroup] prlimit ... -- bwrap <namespaces and mounts> -- setpriv <drop to nobody> -- CMD`.
As an ordinary user there is no setpriv and bwrap adds a user namespace (`--unshare-all`).

Covered (each has a test in tests/test_sandbox.py):
- no network: a new network namespace holds only a down loopback; the host's loopback listeners
  and every other address are unreachable;
- files: `/` is read-only; /tmp (tmpfs, capped at `memory_mb`), /root, /home and /run are
  private and empty, except the running interpreter's prefix, bound back read-only; the workspace
  is bound read-write at its own host path and is the working directory;
- user: as root, commands run as uid/gid 65534 with no capabilities and no-new-privs, so they
  cannot write what nobody cannot write, nor read root's files;
- processes: a new pid namespace and `--die-with-parent`: at the wall timeout every process
  started by the command dies, setsid/nohup included; RLIMIT_NPROC (as root) and a pids cgroup
  bound fork bombs;
- memory: a cgroup v1 memory limit on the whole command when the host has one (root, writable
  /sys/fs/cgroup/{memory,pids}): an OOM kill; otherwise RLIMIT_AS per process (MemoryError);
- CPU (RLIMIT_CPU), file size (RLIMIT_FSIZE), no core dumps;
- environment: only PATH, HOME=/tmp, LANG and TERM; nothing from the host process.

Not covered: the kernel is shared (a kernel exploit escapes); /sys, /etc, /usr and the rest of the
host file system are readable (read-only) by the command, so do not keep secrets in
world-readable files; on cgroup v2 hosts there is no cgroup (RLIMIT_AS is per process, so the
command can hold up to `processes` x `memory_mb`); RLIMIT_NPROC counts every process of uid 65534
on the host, so concurrent sandboxes share it; CPU time is per process and there is no CPU share.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
import warnings
from pathlib import Path

from mamba_agent.sandboxes.base import (
    OPEN_FILES, SANDBOX_UID, Launched, PopenLaunched, Sandbox, SandboxLimits, SandboxUnavailable,
    host_python_dirs,
)

_MASKED = ["/tmp", "/root", "/home", "/run"]
_SYSTEM_PATH = ["/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin"]
_CGROUP_V1 = Path("/sys/fs/cgroup")
_JOIN_CGROUP = 'echo $$ >"$1" && echo $$ >"$2" && shift 2 && exec "$@"'


def _bind_under_mask(how: str, path: str) -> list[str]:
    """bwrap arguments binding `path` at itself. Where it lies under a masked directory, its
    parents are made first with mode 0755 (bwrap would make them 0700, so that nobody could not
    reach `path`). Paths elsewhere are already visible through `--ro-bind / /`; the read-only ones
    need no bind."""
    mask = next((m for m in _MASKED if path == m or path.startswith(m + "/")), None)
    if mask is None:
        return [] if how == "--ro-bind" else [how, path, path]
    args, parent = [], mask
    for part in Path(path).relative_to(mask).parts[:-1]:
        parent = os.path.join(parent, part)
        args += ["--perms", "0755", "--dir", parent]
    return args + [how, path, path]


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

    @classmethod
    def create(cls, limits: SandboxLimits) -> _CgroupV1 | None:
        name = f"mamba-agent-{uuid.uuid4().hex[:12]}"
        mem, pids = _CGROUP_V1 / "memory" / name, _CGROUP_V1 / "pids" / name
        if os.geteuid() != 0 or not (mem.parent.is_dir() and pids.parent.is_dir()):
            return None
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
        SandboxUnavailable: bwrap, prlimit or (as root) setpriv missing, or bwrap cannot create
            namespaces here (e.g. Ubuntu 23.10+ blocks unprivileged user namespaces).
    """

    name = "bubblewrap"

    def __init__(self, workspace: str | os.PathLike, limits: SandboxLimits | None = None):
        super().__init__(workspace, limits)
        self.as_root, self.cgroup = os.geteuid() == 0, None
        try:
            self.tools = _find_tools(["bwrap", "prlimit"] + (["setpriv"] if self.as_root else []))
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
                   f"--nofile={OPEN_FILES}", f"--nproc={lim.processes}", "--core=0"]
        if self.cgroup is None:  # no cgroup: the memory limit is per process, on address space
            prlimit.append(f"--as={lim.memory_mb << 20}")
        bwrap = [self.tools["bwrap"], "--die-with-parent", "--new-session"]
        if self.as_root:
            bwrap += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                      "--unshare-cgroup-try"]
        else:
            bwrap += ["--unshare-all"]  # adds a user namespace, which an ordinary user needs
        bwrap += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                  "--size", str(lim.memory_mb << 20), "--perms", "1777", "--tmpfs", "/tmp"]
        for masked in _MASKED[1:]:
            bwrap += ["--tmpfs", masked]
        for prefix in host_python_dirs():  # the interpreter may live under a masked dir (pyenv)
            bwrap += _bind_under_mask("--ro-bind", prefix)
        bwrap += _bind_under_mask("--bind", ws) + ["--chdir", ws, "--clearenv"]
        for key, value in env.items():
            bwrap += ["--setenv", key, value]
        bwrap.append("--")
        if self.as_root:  # RLIMIT_NPROC is ignored for uid 0: the uid drop is what bounds forks
            bwrap += [self.tools["setpriv"], f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}",
                      "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
                      "--"]
        cmd = prlimit + ["--"] + bwrap + argv
        if self.cgroup is not None:
            cmd = ["/bin/sh", "-c", _JOIN_CGROUP, "sh", *self.cgroup.procs_files] + cmd
        return PopenLaunched(cmd, ws, env)

    def _release(self) -> None:
        if self.cgroup is not None:
            self.cgroup.remove()
