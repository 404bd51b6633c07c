"""The docker backend: one fresh container per command, through docker-py and a real engine.

The engine is the one DOCKER_HOST names (or docker's default socket); `sandboxes/setup_ci.sh`
starts one and writes the DOCKER_HOST line. The image (`IMAGE`) is built offline by
`build_image()` from sandboxes/Dockerfile and a root file system copied from the host.

Covered (each has a test in tests/test_sandbox.py or tests/test_workspace.py):
- no network: `network_mode="none"` (a loopback of its own; the host's loopback, unix sockets
  and every other address unreachable);
- files: the image's root is read-only and holds only Python, a shell and coreutils basics; /tmp
  is a private tmpfs (capped at `memory_mb`), /dev/shm the container's own; the workspace is
  bind-mounted read-write at its own host path and is the working directory; nothing else of the
  host is visible;
- system calls: the seccomp profile of seccomp.py instead of docker's default (which, in docker
  20.10, lets io_uring and ptrace through): no new namespaces, keyrings, io_uring, mounts, bpf,
  perf_event_open, ptrace, ...;
- user: uid/gid 65534 when the host runs as root (else the host user's uid, so that the
  workspace stays writable), all capabilities dropped, no-new-privileges;
- processes: `pids_limit`, and a pid namespace per container; at the wall timeout the container
  is killed through the API, which kills every process in it, detached ones included;
  containers are named `mamba-agent-*`, labelled with their owner process, removed after each
  command, by `close()`/exit if a run was interrupted, and, if the owner was SIGKILLed, by the
  next process that opens a docker sandbox;
- memory: the container's cgroup (`mem_limit` = `memswap_limit`): an OOM kill (exit code 137);
- CPU (ulimit cpu), file size (ulimit fsize), open files, no core dumps;
- nothing passes between commands but the workspace: every command gets a fresh container;
- environment: only PATH, HOME=/tmp, LANG and TERM; nothing from the host process;
- output: attached before start and read with the shared caps; the engine keeps no log copy.

Not covered: the kernel is shared (a kernel or engine exploit escapes); whoever can reach the
engine's socket is root on the host; the seccomp profile is a deny list (docker's default is an
allow list, stricter for system calls neither names); if the host process is SIGKILLed mid-run,
the container lives until its command ends or the next process removes it; about 0.4 s of
start-up per command on overlay2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from io import BytesIO
from pathlib import Path

from mamba_agent.sandboxes.base import (
    ETC_GROUP, ETC_PASSWD, OPEN_FILES, Launched, Sandbox, SandboxLimits, SandboxUnavailable,
    owner_alive, owner_tag,
)
from mamba_agent.sandboxes.seccomp import docker_profile

try:  # a declared dependency, but the other backends must work without it
    import docker
    import requests
    from docker.types import LogConfig, Ulimit
except ImportError:
    docker = None

IMAGE = "mamba-agent-sandbox:1"
"""The sandbox image's tag; bump the version when the Dockerfile or the root file system changes."""
NAME_PREFIX = "mamba-agent-"
LABEL, OWNER_LABEL = "mamba-agent", "mamba-agent.owner"
"""Every container carries {LABEL: "sandbox", OWNER_LABEL: owner_tag()} (see remove_stale)."""
_SETUP_HINT = ("Start one with `bash sandboxes/setup_ci.sh` (as root) and export the DOCKER_HOST "
               "line it prints, or point DOCKER_HOST at a running engine.")


def _client():
    """A docker-py client for DOCKER_HOST (or the default socket) that has answered a ping."""
    if docker is None:
        raise SandboxUnavailable("docker sandbox: docker-py is not installed: pip install docker")
    where = os.environ.get("DOCKER_HOST", "the default socket unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as e:  # docker-py raises DockerException, requests' errors or OSError here
        raise SandboxUnavailable(
            f"docker sandbox: no Docker engine answers at {where} ({e}). {_SETUP_HINT}") from e
    return client


def _has_image(client, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def remove_stale(client) -> None:
    """Remove the sandbox containers of processes that died (a SIGKILLed run leaves them)."""
    for container in client.containers.list(all=True, filters={"label": OWNER_LABEL}):
        if not owner_alive(container.labels.get(OWNER_LABEL, "")):
            _remove(container)


def _remove(container) -> None:
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass


class _ContainerLaunched(Launched):
    """A started container: its attached output socket, read as docker's multiplexed frames.

    `tracked` is the sandbox's set of live containers; `close` removes the container from it.
    """

    def __init__(self, container, sock, tracked: set):
        self.container, self.sock, self.tracked = container, sock, tracked
        self.fds = {sock.fileno(): "mux"}
        self.pending = bytearray()

    def demux(self, fd: int, data: bytes) -> list[tuple[str, bytes]]:
        # Each frame: 1 byte stream (1 stdout, 2 stderr), 3 zero bytes, 4 bytes big-endian size.
        self.pending += data
        pieces = []
        while len(self.pending) >= 8:
            size = int.from_bytes(self.pending[4:8], "big")
            if len(self.pending) < 8 + size:
                break
            stream = "stdout" if self.pending[0] == 1 else "stderr"
            pieces.append((stream, bytes(self.pending[8:8 + size])))
            del self.pending[:8 + size]
        return pieces

    def kill(self) -> None:
        try:
            self.container.kill()  # through the API (killing a CLI leaves the container running)
        except docker.errors.APIError:
            pass  # already stopped

    def wait(self, timeout: float) -> int | None:
        try:  # wait() raises a connection error on timeout, hence the catch
            return self.container.wait(timeout=max(timeout, 0.1))["StatusCode"]
        except requests.exceptions.RequestException:
            return None

    def close(self) -> None:
        raw = getattr(self.sock, "_sock", None)  # a SocketIO: closing it leaves the socket open
        self.sock.close()
        if raw is not None:
            raw.close()
        _remove(self.container)
        self.tracked.discard(self.container)


class DockerSandbox(Sandbox):
    """Runs each command in a fresh container of `image`; see the module docstring.

    Raises:
        SandboxUnavailable: docker-py missing, no engine answering, or the image not built.
        docker.errors.DockerException: from `run`, when the engine fails mid-command.
    """

    name = "docker"
    swept = False  # has this process removed the containers that dead runs left?

    def __init__(self, workspace: str | os.PathLike, limits: SandboxLimits | None = None,
                 image: str = IMAGE):
        super().__init__(workspace, limits)
        self.image, self.containers, self.client = image, set(), None
        try:
            self.client = _client()
            if not _has_image(self.client, image):
                raise SandboxUnavailable(
                    f"docker sandbox: image {image} is not built. Build it: `python -c 'from "
                    "mamba_agent.sandboxes.docker import build_image; build_image()'` "
                    "(setup_ci.sh does).")
            if not DockerSandbox.swept:
                DockerSandbox.swept = True
                remove_stale(self.client)
        except SandboxUnavailable:
            self.close()
            raise

    def _launch(self, argv: list[str]) -> Launched:
        lim, ws = self.limits, str(self.workspace)
        uid = self.run_as_uid if self.run_as_uid is not None else os.getuid()
        gid = self.run_as_uid if self.run_as_uid is not None else os.getgid()
        container = self.client.containers.create(
            self.image, argv, name=f"{NAME_PREFIX}{uuid.uuid4().hex[:12]}",
            labels={LABEL: "sandbox", OWNER_LABEL: owner_tag()}, user=f"{uid}:{gid}", working_dir=ws,
            environment=self.env("/tmp", ["/usr/local/bin", "/usr/bin", "/bin"]),
            network_mode="none", read_only=True, volumes={ws: {"bind": ws, "mode": "rw"}},
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={lim.memory_mb}m,mode=1777"},
            mem_limit=f"{lim.memory_mb}m", memswap_limit=f"{lim.memory_mb}m",
            pids_limit=lim.processes, cap_drop=["ALL"],
            security_opt=["no-new-privileges", f"seccomp={docker_profile()}"],
            ulimits=[Ulimit(name="cpu", soft=lim.cpu_s, hard=lim.cpu_s),
                     Ulimit(name="fsize", soft=lim.file_size_mb << 20, hard=lim.file_size_mb << 20),
                     Ulimit(name="nofile", soft=OPEN_FILES, hard=OPEN_FILES),
                     Ulimit(name="core", soft=0, hard=0)],
            log_config=LogConfig(type="none"),  # else the engine keeps every byte of output
        )
        self.containers.add(container)
        launched = _ContainerLaunched(container, self.client.api.attach_socket(
            container.id, params={"stdout": 1, "stderr": 1, "stream": 1}), self.containers)
        try:
            container.start()
        except BaseException as e:
            launched.close()
            said = str(getattr(e, "explanation", "")).lower()
            if 'exec: "' in said:  # runc could not execute argv[0]
                if "permission denied" in said:
                    raise PermissionError(f"{argv[0]}: permission denied") from e
                raise FileNotFoundError(f"{argv[0]}: command not found") from e
            raise
        return launched

    def _release(self) -> None:
        for container in list(self.containers):
            _remove(container)
        self.containers.clear()
        if self.client is not None:
            self.client.close()


# --- the image ---------------------------------------------------------------------------------
_BINARIES = ["bash", "dash", "sh", "python3", "cat", "ls", "echo", "env", "mkdir", "rm", "cp", "mv",
             "head", "tail", "wc", "touch", "true", "false", "id", "printf", "yes", "dd", "seq",
             "sort", "uniq", "sleep", "nohup", "timeout", "tee", "pwd", "chmod", "ln", "basename",
             "dirname", "date", "test", "stat", "tr", "cut", "du", "setsid", "grep", "sed", "kill"]
_STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "site-packages",
                "dist-packages", "__phello__"}


def _add_path(tar: tarfile.TarFile, path: str, seen: set[str]) -> None:
    """Add `path` under its real directory, following a symlink chain and adding each link."""
    path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    if path in seen:
        return
    seen.add(path)
    tar.add(path, recursive=False)
    if os.path.islink(path):
        _add_path(tar, os.path.join(os.path.dirname(path), os.readlink(path)), seen)


def _write_rootfs(dest: Path) -> None:
    """Write a tar of Debian's python3 with its stdlib, the `_BINARIES` and their libraries."""
    binaries = [p for p in (shutil.which(b, path="/usr/bin:/bin") for b in _BINARIES) if p]
    missing = {"bash", "python3"} - {os.path.basename(p) for p in binaries}
    if missing:
        raise RuntimeError(f"build_image: {missing} not in /usr/bin; apt-get install python3 bash")
    stdlib = Path("/usr/lib") / os.path.basename(os.path.realpath("/usr/bin/python3"))
    elf = [os.path.realpath(p) for p in binaries]
    elf += [str(p) for p in (stdlib / "lib-dynload").glob("*.so")]
    ldd = subprocess.run(["ldd", *elf], capture_output=True, text=True).stdout
    libs = {word for line in ldd.splitlines() for word in line.split() if word.startswith("/")}

    def skip(info: tarfile.TarInfo):
        parts = Path(info.name).parts
        dropped = set(parts) & _STDLIB_SKIP or any(p.startswith("config-") for p in parts)
        return None if dropped else info

    def text_file(tar, name, text, mode=0o644):
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), mode
        tar.addfile(info, BytesIO(data))

    with tarfile.open(dest, "w") as tar:
        for top in ("bin", "lib", "lib32", "lib64", "sbin"):  # merged /usr: keep the host's links
            if os.path.islink(f"/{top}"):
                info = tarfile.TarInfo(top)
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(f"/{top}")
                tar.addfile(info)
        for name, mode in [("tmp", 0o1777), ("proc", 0o755), ("dev", 0o755), ("sys", 0o755)]:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        text_file(tar, "etc/passwd", ETC_PASSWD)
        text_file(tar, "etc/group", ETC_GROUP)
        seen: set[str] = set()
        for path in sorted(set(binaries) | libs | {"/etc/ld.so.cache"}):
            if os.path.exists(path):
                _add_path(tar, path, seen)
        tar.add(stdlib, filter=skip)


def build_image(tag: str = IMAGE, force: bool = False) -> str:
    """Build the sandbox image offline, from a root fs copied from the host; return its tag.

    Skipped when `tag` exists, unless `force`. Takes a few seconds.

    Raises:
        SandboxUnavailable: no engine answers.
        docker.errors.BuildError: the build failed.
    """
    client = _client()
    try:
        if force or not _has_image(client, tag):
            with tempfile.TemporaryDirectory(prefix="mamba-agent-image-") as context:
                shutil.copy(Path(__file__).with_name("Dockerfile"), context)
                _write_rootfs(Path(context) / "rootfs.tar")
                client.images.build(path=context, tag=tag, rm=True, forcerm=True, pull=False,
                                    network_mode="none")
    finally:
        client.close()
    return tag
