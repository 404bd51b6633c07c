"""The sandboxes keep their promises: basic behaviour on every backend, hostile probes on the
isolating ones (docker, bubblewrap).

An unavailable isolating backend FAILS these tests, so CI cannot pass without really running
them. A developer without docker can set MAMBA_AGENT_SANDBOX_OPTIONAL=1 to skip that backend's
tests instead (the skip reason says what is missing). CI prepares the machine with
`bash sandboxes/setup_ci.sh` and exports the DOCKER_HOST line it prints.

The probes only ever target loopback and files, sockets and processes the test made; the
module checks at its end that it left no workspace, mount, cgroup or container behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from mamba_agent.sandboxes import SandboxLimits, SandboxUnavailable, get_sandbox
from mamba_agent.sandboxes.base import KILL_GRACE_S, SANDBOX_UID, owner_tag
from mamba_agent.sandboxes.docker import NAME_PREFIX, OWNER_LABEL, DockerSandbox
from mamba_agent.sandboxes.workspace import Workspace, write_file

pytestmark = pytest.mark.usefixtures("nothing_left_behind")
ISOLATING = ["docker", "bubblewrap"]
ALL = ISOLATING + ["local-unsafe"]
OPTIONAL = os.environ.get("MAMBA_AGENT_SANDBOX_OPTIONAL") == "1"
MARGIN_S = 3.0  # start-up, kill and reaping on top of a wall timeout, on a busy 2-core machine


def open_sandbox(name, workspace, **limits):
    """The backend, or fail saying why not (skip instead if MAMBA_AGENT_SANDBOX_OPTIONAL=1)."""
    try:
        if name == "local-unsafe":
            with pytest.warns(RuntimeWarning, match="NO isolation"):
                return get_sandbox(name, workspace, SandboxLimits(**limits))
        return get_sandbox(name, workspace, SandboxLimits(**limits))
    except SandboxUnavailable as e:
        if OPTIONAL:
            pytest.skip(f"{name} unavailable (MAMBA_AGENT_SANDBOX_OPTIONAL=1): {e}")
        pytest.fail(f"{name} unavailable (set MAMBA_AGENT_SANDBOX_OPTIONAL=1 to skip): {e}")


def python(code: str) -> list[str]:
    """argv running `code` with the sandbox's python3."""
    return ["python3", "-c", textwrap.dedent(code)]


@pytest.fixture
def workspace():
    """A fresh Workspace (as root: a capped tmpfs owned by the sandbox user); its path."""
    with Workspace() as ws:
        yield ws.path


def _opener(name, workspace):
    opened = []

    def open_(**limits):
        opened.append(open_sandbox(name, workspace, **limits))
        return opened[-1]

    return opened, open_


@pytest.fixture(params=ALL)
def any_sandbox(request, workspace):
    """Opens the parametrised backend (all three) with the given limits; closes it afterwards."""
    opened, open_ = _opener(request.param, workspace)
    yield open_
    for sandbox in opened:
        sandbox.close()


@pytest.fixture(params=ISOLATING)
def isolating(request, workspace):
    """Like any_sandbox, for the isolating backends only."""
    opened, open_ = _opener(request.param, workspace)
    yield open_
    for sandbox in opened:
        sandbox.close()


def containers_named(prefix: str) -> list:
    """Containers whose name (or id) starts with `prefix`."""
    import docker
    client = docker.from_env()
    try:
        return [c for c in client.containers.list(all=True)
                if c.name.startswith(prefix) or c.id.startswith(prefix)]
    finally:
        client.close()


# --- basic behaviour: every backend ------------------------------------------------------------
def test_exit_code_and_separate_streams(any_sandbox):
    sandbox = any_sandbox()
    result = sandbox.run("echo out; echo err >&2; exit 3")
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not (result.timed_out or result.killed or result.stdout_truncated)
    assert result.backend == sandbox.name and result.isolated == (sandbox.name != "local-unsafe")


def test_list_command_is_argv_not_shell(any_sandbox):
    result = any_sandbox().run(["printf", "%s|", "a b", "$HOME;"])
    assert result.stdout == "a b|$HOME;|"


def test_missing_or_unexecutable_program_is_a_result(any_sandbox, workspace):
    (workspace / "not-executable").write_text("echo hi\n")
    sandbox = any_sandbox()
    assert sandbox.run(["no-such-program-mamba-agent"]).exit_code == 127
    assert sandbox.run([f"{workspace}/not-executable"]).exit_code == 126


def test_workspace_is_shared_with_host_and_is_cwd(any_sandbox, workspace):
    write_file(workspace, "in.txt", b"from host\n", owner=os.stat(workspace).st_uid)
    result = any_sandbox().run("cat in.txt; echo from sandbox > out.txt; echo more >> in.txt; pwd")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"from host\n{workspace}\n"
    assert (workspace / "out.txt").read_text() == "from sandbox\n"
    assert (workspace / "in.txt").read_text() == "from host\nmore\n"


def test_wall_timeout_sets_flag_and_kills(any_sandbox):
    result = any_sandbox(wall_s=1).run("sleep 30")
    assert result.timed_out and result.killed
    assert 1 <= result.duration_s < 1 + MARGIN_S


def test_20mb_of_output_is_capped_without_blocking(any_sandbox):
    cap = 100_000
    result = any_sandbox(output_bytes=cap, wall_s=20).run(python("""
        import sys
        sys.stdout.write("x" * 20_000_000); sys.stdout.flush()
        sys.stderr.write("y" * 20_000_000)
    """))
    assert result.exit_code == 0 and not result.timed_out  # the child was never blocked
    assert result.stdout_truncated and result.stderr_truncated
    assert result.stdout == "x" * cap and result.stderr == "y" * cap


def test_local_passes_no_host_variables(workspace, monkeypatch):
    monkeypatch.setenv("MAMBA_AGENT_TEST_SECRET", "hunter2")
    with open_sandbox("local-unsafe", workspace) as local:
        result = local.run("echo ${MAMBA_AGENT_TEST_SECRET:-absent} $HOME")
    assert result.stdout == f"absent {workspace}\n"


def test_local_output_held_open_by_a_detached_child_does_not_hang(workspace):
    with open_sandbox("local-unsafe", workspace, wall_s=1) as local:
        result = local.run("setsid sleep 30 & echo $!")  # sleep keeps our stdout open
    try:
        assert result.timed_out and result.duration_s < 1 + KILL_GRACE_S + MARGIN_S
    finally:
        os.kill(int(result.stdout), signal.SIGKILL)  # the local backend cannot: it isolates nothing


# --- choosing a backend ------------------------------------------------------------------------
def test_unknown_name_lists_valid_names(workspace):
    with pytest.raises(ValueError, match="docker, bubblewrap, local-unsafe"):
        get_sandbox("dokcer", workspace)


def test_local_backend_is_never_chosen_implicitly(workspace, monkeypatch):
    for name in ["local", None, "", "auto"]:
        with pytest.raises(ValueError, match="local-unsafe"):
            get_sandbox(name, workspace)
    # No fallback: a missing bwrap is an error, not a quiet switch to the local backend.
    monkeypatch.setenv("PATH", str(workspace))
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        get_sandbox("bubblewrap", workspace)
    with pytest.warns(RuntimeWarning, match="NO isolation"):
        local = get_sandbox("local-unsafe", workspace)
    assert local.run(["/bin/true"]).isolated is False
    local.close()


def test_bubblewrap_without_libseccomp_binding_says_how_to_install_it(workspace, monkeypatch):
    from mamba_agent.sandboxes import seccomp
    monkeypatch.setitem(sys.modules, "pyseccomp", None)  # import pyseccomp now fails
    seccomp.bpf_program.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match="pip install pyseccomp"):
            get_sandbox("bubblewrap", workspace)
    finally:
        monkeypatch.undo()
        seccomp.bpf_program.cache_clear()


def test_docker_without_engine_says_how_to_start_one(workspace, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{workspace}/no-engine.sock")
    with pytest.raises(SandboxUnavailable, match="setup_ci.sh"):
        DockerSandbox(workspace)


def test_docker_without_image_says_how_to_build_it(workspace):
    try:
        DockerSandbox(workspace, image="mamba-agent-sandbox:no-such-tag").close()
    except SandboxUnavailable as e:
        if "is not built" in str(e):
            assert "build_image()" in str(e)
            return
        open_sandbox("docker", workspace)  # the engine itself is missing: fail or skip as usual
    pytest.fail("a missing image was not reported")


def test_docker_containers_are_named_and_removed(workspace):
    sandbox = open_sandbox("docker", workspace)
    sandbox.run("true")
    interrupted = sandbox._launch(["sleep", "30"])  # a run that never finished
    assert interrupted.container.name.startswith(NAME_PREFIX)
    assert interrupted.container.labels == {"mamba-agent": "sandbox", OWNER_LABEL: owner_tag()}
    sandbox.close()
    assert containers_named(interrupted.container.name) == []


def test_docker_containers_are_removed_at_exit(workspace):
    open_sandbox("docker", workspace).close()  # fail or skip here if there is no engine
    script = textwrap.dedent(f"""
        from mamba_agent.sandboxes.docker import DockerSandbox
        sandbox = DockerSandbox({str(workspace)!r})
        print(sandbox._launch(["sleep", "30"]).container.name)
    """)
    name = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()
    assert containers_named(name) == []


def test_bubblewrap_cgroup_is_removed_on_close(workspace):
    sandbox = open_sandbox("bubblewrap", workspace)
    dirs = list(sandbox.cgroup.dirs) if sandbox.cgroup else []
    sandbox.close()
    assert not any(d.exists() for d in dirs)


# --- hostile probes: docker and bubblewrap -----------------------------------------------------
def test_host_loopback_listener_unreachable(isolating):
    sandbox = isolating(wall_s=15)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        result = sandbox.run(python(f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=3)
                print("connected")
            except OSError as e:
                print("blocked", type(e).__name__)
        """))
        assert result.exit_code == 0, result.stderr
        assert result.stdout.startswith("blocked"), result.stdout
        with pytest.raises(BlockingIOError):
            server.accept()


def test_no_network_interface_or_route_but_loopback(isolating):
    # Shown without sending anything anywhere: no interface other than lo, no route off it.
    result = isolating().run(python("""
        import socket
        names = sorted(name for _, name in socket.if_nameindex())
        v4 = [line.split()[0] for line in open("/proc/net/route").read().splitlines()[1:]]
        v6 = [line.split()[-1] for line in open("/proc/net/ipv6_route").read().splitlines()]
        print(names, sorted(set(v4 + v6) - {"lo"}))
    """))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "['lo'] []\n"


def test_engine_socket_unreachable(isolating):
    sockets = [p for p in ["/var/run/docker.sock", "/run/docker.sock"] if os.path.exists(p)]
    if os.environ.get("DOCKER_HOST", "").startswith("unix://"):
        sockets.append(os.environ["DOCKER_HOST"][len("unix://"):])
    result = isolating().run(python(f"""
        import socket
        for path in {sockets!r}:
            try:
                socket.socket(socket.AF_UNIX).connect(path)
                print("connected", path)
            except OSError:
                pass
    """))
    assert result.exit_code == 0 and "connected" not in result.stdout, result


def in_pid_namespace(ns: str) -> list[int]:
    """Host pids of the processes in pid namespace `ns` (what /proc/self/ns/pid links to)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.readlink(f"/proc/{entry}/ns/pid") == ns:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def test_fork_bomb_is_bounded(isolating, workspace):
    """Counted in the bomb's own pid namespace, so another sandbox running meanwhile (here: one
    with 40 processes of the same uid) does not count, and neither starves the other."""
    limit, wall = 32, 4
    sandbox = isolating(processes=limit, wall_s=wall)
    peak, running, ns = [0], True, workspace / "ns.txt"

    def watch():  # host side: how many processes the sandbox's pid namespace holds at once
        while running and not (ns.exists() and ns.read_text().endswith("\n")):
            time.sleep(0.01)
        while running:
            peak[0] = max(peak[0], len(in_pid_namespace(ns.read_text().strip())))
            time.sleep(0.05)

    crowd = []

    def crowd_in():  # another sandbox of the same uid, 40 processes busy meanwhile
        with Workspace() as ws, get_sandbox(sandbox.name, ws.path, SandboxLimits(wall_s=10)) as other:
            crowd.append(other.run("for i in $(seq 40); do sleep 3 & done; n=0; "
                                   "for p in /proc/[0-9]*; do n=$((n+1)); done; echo $n; wait"))

    threads = [threading.Thread(target=watch, daemon=True), threading.Thread(target=crowd_in)]
    for thread in threads:
        thread.start()
    # The bomb runs in a background subshell. Meanwhile the shell waits and counts the processes
    # it sees with builtins only (it could not fork any more; fd 3 is a pipe nobody writes to),
    # then stays until the wall timeout kills everything.
    result = sandbox.run("python3 -S -c 'import os; print(os.readlink(\"/proc/self/ns/pid\"))' "
                         "> ns.txt; exec 3< <(exec sleep 60); "
                         "bomb() { bomb | bomb & }; (bomb) & "
                         "read -t 2 -u 3; n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; "
                         "echo seen=$n; read -t 60 -u 3")
    running = False
    for thread in threads:
        thread.join()
    assert crowd and int(crowd[0].stdout) > 40, crowd  # all 40 started: no starvation
    summary = result.model_copy(update={"stderr": result.stderr[-300:]})  # for failure messages
    assert result.timed_out and result.duration_s < wall + MARGIN_S, summary
    seen = [int(line[5:]) for line in result.stdout.splitlines() if line.startswith("seen=")]
    assert seen and seen[0] <= limit + 1, summary  # + bubblewrap's own init
    assert 0 < peak[0] <= limit + 1, f"{peak[0]} processes at once"
    deadline = time.monotonic() + 3
    while in_pid_namespace(ns.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert in_pid_namespace(ns.read_text().strip()) == []  # nothing of the bomb is left
    assert subprocess.run(["true"]).returncode == 0  # the host can still start processes


def test_memory_hog_cannot_pass_the_limit(isolating):
    limit = 128
    result = isolating(memory_mb=limit, wall_s=20).run(python("""
        chunks, total = [], 0
        while total < 1024:
            chunks.append(b"x" * (16 << 20))  # written, so resident, not just reserved
            total += 16
            print(total, flush=True)
    """))
    assert result.exit_code != 0 and not result.timed_out
    assert result.killed or "MemoryError" in result.stderr, result
    reached = max(map(int, result.stdout.split() or ["0"]))
    assert reached < limit


def test_cpu_spin_is_killed(isolating):
    result = isolating(cpu_s=1, wall_s=15).run(["python3", "-c", "while True: pass"])
    assert result.killed and not result.timed_out
    assert result.duration_s < 1 + MARGIN_S


def test_detached_grandchild_dies_at_wall_timeout(isolating, workspace):
    wall = 2
    command = ("setsid nohup sh -c 'echo started > started.txt; sleep 3; echo alive > late.txt' & "
               "sleep 60")
    result = isolating(wall_s=wall).run(command)
    assert result.timed_out
    assert result.duration_s < wall + MARGIN_S  # the grandchild's open stdout did not hold us
    assert (workspace / "started.txt").exists()  # the grandchild did start...
    time.sleep(max(0.0, 4.0 - result.duration_s))  # ...and would have written by now
    assert not (workspace / "late.txt").exists()


def test_writes_outside_workspace_are_refused(isolating, workspace, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    tag = f"mamba-agent-probe-{uuid.uuid4().hex[:8]}"
    refused = ["/etc", os.path.expanduser("~"), "/usr", str(outside)]
    targets = [f"{d}/{tag}" for d in refused] + [f"/tmp/{tag}"]
    result = isolating().run(
        "for f in " + " ".join(targets) + "; do "
        'if echo x 2>/dev/null > "$f"; then echo "wrote $f"; else echo "refused $f"; fi; done; '
        "echo x > inside.txt")
    assert result.exit_code == 0, result.stderr
    for directory in refused:
        assert f"refused {directory}/{tag}" in result.stdout
    for target in targets:  # /tmp may be writable inside, but it is the sandbox's own
        assert not os.path.exists(target)
    assert (workspace / "inside.txt").exists()


def test_file_size_is_capped(isolating, workspace):
    result = isolating(file_size_mb=1).run("head -c 5000000 /dev/zero > big")
    assert result.exit_code != 0
    assert (workspace / "big").stat().st_size <= 1 << 20


def test_runs_unprivileged_without_core_dumps(isolating):
    result = isolating().run("id -u; grep CapEff /proc/self/status; ulimit -c")
    uid = SANDBOX_UID if os.geteuid() == 0 else os.getuid()
    assert result.stdout.split() == [str(uid), "CapEff:", "0000000000000000", "0"]


def test_tmp_is_private_and_capped(isolating, tmp_path):
    (tmp_path / "host-secret.txt").write_text("host only")
    result = isolating(memory_mb=64, file_size_mb=256).run(
        f"cat {tmp_path}/host-secret.txt; ls -A /root; echo ---; "
        "head -c 100M /dev/zero > /tmp/big; stat -c %s /tmp/big")
    seen, _, tmp_size = result.stdout.partition("---\n")
    assert "host only" not in seen
    assert set(seen.split()) <= {".pyenv"}  # bubblewrap binds the interpreter's prefix
    # /tmp is memory: the write stops at the tmpfs size, or the memory cgroup kills the command.
    assert result.killed or int(tmp_size) <= 64 << 20


def test_parent_secret_is_invisible(isolating, monkeypatch):
    secret = f"hunter2-{uuid.uuid4().hex}"
    monkeypatch.setenv("MAMBA_AGENT_TEST_SECRET", secret)
    result = isolating().run(
        "env; echo ${MAMBA_AGENT_TEST_SECRET:-absent}; cat /proc/[0-9]*/environ 2>/dev/null; true")
    assert result.exit_code == 0
    assert "absent" in result.stdout and "PATH=" in result.stdout
    assert secret not in result.stdout + result.stderr


# --- hostile probes: the kernel's surface (seccomp), both isolating backends --------------------
SYSCALL_PROBE = """
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
r = libc.syscall({nr}, {args})
print(r, errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno()) if r == -1 else "ok")
"""
CLONE_NEWUSER, CLONE_NEWNS, SIGCHLD = 0x10000000, 0x00020000, 17
REFUSED_SYSCALLS = {  # x86-64 numbers; what each would start
    "unshare(CLONE_NEWUSER)": (272, f"{CLONE_NEWUSER}"),  # a user namespace: full capabilities
    "unshare(CLONE_NEWNS)": (272, f"{CLONE_NEWNS}"),
    "clone(CLONE_NEWUSER)": (56, f"{CLONE_NEWUSER | SIGCHLD}, 0, 0, 0, 0"),
    "setns": (308, "0, 0"),
    "mount tmpfs": (165, 'b"x", b"/tmp", b"tmpfs", 0, 0'),
    "umount2": (166, 'b"/proc", 2'),
    "fsopen": (430, 'b"tmpfs", 0'),
    "add_key": (248, 'b"user", b"mamba-agent-probe", b"secret", 6, ctypes.c_int(-2)'),
    "keyctl(get keyring)": (250, "0, ctypes.c_int(-4), 0"),  # KEYCTL_GET_KEYRING_ID of @u
    "request_key": (249, 'b"user", b"mamba-agent-probe", 0, 0'),
    "io_uring_setup": (425, "4, ctypes.create_string_buffer(120)"),
    "bpf": (321, "0, ctypes.create_string_buffer(128), 128"),
    "perf_event_open": (298, "ctypes.create_string_buffer(128), 0, -1, -1, 0"),
    "ptrace(TRACEME)": (101, "0, 0, 0, 0"),
    "process_vm_readv": (310, "1, 0, 0, 0, 0, 0"),
    "userfaultfd": (323, "0"),
    "pivot_root": (155, 'b"/tmp", b"/tmp"'),
    "chroot": (161, 'b"/tmp"'),
    "kexec_load": (246, "0, 0, 0, 0"),
}


@pytest.mark.parametrize("call", list(REFUSED_SYSCALLS))
def test_dangerous_system_calls_are_refused(isolating, call):
    nr, args = REFUSED_SYSCALLS[call]
    result = isolating().run(python(SYSCALL_PROBE.format(nr=nr, args=args)))
    assert result.exit_code == 0, result
    assert result.stdout in ("-1 EPERM\n", "-1 EACCES\n"), (call, result.stdout)


def test_clone3_is_enosys_and_threads_and_forks_still_work(isolating):
    # clone3's flags sit in memory a filter cannot read: ENOSYS sends libc back to clone.
    result = isolating().run(python(SYSCALL_PROBE.format(nr=435, args="0, 0") + """
import os, subprocess, threading
t = threading.Thread(target=print, args=("thread",)); t.start(); t.join()
pid = os.fork()
if pid == 0:
    os._exit(7)
print(subprocess.run(["true"]).returncode, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""))
    assert result.stdout == "-1 ENOSYS\nthread\n0 7\n", result


def test_foreign_abi_system_calls_kill(isolating):
    # x32 system call numbers (bit 30) bypass a filter that checks only x86-64 numbers.
    result = isolating().run(python(SYSCALL_PROBE.format(nr=0x40000000 | 272, args=CLONE_NEWUSER)))
    assert result.exit_code == 128 + signal.SIGSYS and result.stdout == "", result


def test_no_new_privileges_and_no_capabilities(isolating):
    result = isolating().run("grep -E '^(NoNewPrivs|CapBnd|CapPrm|CapAmb|Seccomp):' /proc/self/status")
    fields = dict(line.split(":\t") for line in result.stdout.splitlines())
    assert fields == {"NoNewPrivs": "1", "CapBnd": "0000000000000000", "CapPrm": "0000000000000000",
                      "CapAmb": "0000000000000000", "Seccomp": "2"}, result


def test_no_device_nodes_no_hard_links_out_no_kernel_knobs(isolating, workspace):
    result = isolating().run(
        "mknod dev c 1 3 2>/dev/null && echo mknod; ln /etc/passwd hard 2>/dev/null && echo link; "
        "echo 1 2>/dev/null > /proc/sys/kernel/sysrq && echo sysctl; "
        "hostname probe 2>/dev/null && echo hostname; echo done")
    assert result.stdout == "done\n", result
    assert sorted(os.listdir(workspace)) == []


# --- hostile probes: nothing passes between runs or sandboxes ------------------------------------
def test_keyrings_carry_nothing_between_episodes(isolating):
    """Run A stores a key in the user keyring of the shared uid; a fresh sandbox on another
    workspace looks for it (keyctl search of @u). Both are refused, so nothing crosses."""
    store = SYSCALL_PROBE.format(nr=248, args=REFUSED_SYSCALLS["add_key"][1])
    search = SYSCALL_PROBE.format(nr=250, args='10, ctypes.c_int(-4), b"user", b"mamba-agent-probe", 0')
    assert isolating().run(python(store)).stdout == "-1 EPERM\n"
    with Workspace() as other:
        with get_sandbox(isolating().name, other.path) as fresh:
            assert fresh.run(python(search)).stdout == "-1 EPERM\n"


def test_tmp_shm_and_ipc_are_fresh_for_every_run(isolating):
    sandbox = isolating()
    first = sandbox.run(python("""
        import ctypes, os
        open("/tmp/left", "w").write("x"); open("/dev/shm/left", "w").write("x")
        libc = ctypes.CDLL(None, use_errno=True)
        print(libc.shmget(0x6d616d62, 4096, 0o1666) >= 0)  # IPC_CREAT | 0666: a SysV segment
    """))
    assert first.stdout == "True\n", first
    second = sandbox.run(python("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        print("left" in os.listdir("/tmp"), os.listdir("/dev/shm"), libc.shmget(0x6d616d62, 0, 0))
    """))
    assert second.stdout == "False [] -1\n", second  # /tmp holds only the workspace's mount


@pytest.mark.parametrize("parent", [None, "/var/tmp"])  # /tmp, and a directory not masked
def test_other_workspaces_are_out_of_reach(isolating, parent):
    with Workspace({"secret.txt": "other episode\n"}, parent=parent) as other:
        result = isolating().run(f"cat {other.path}/secret.txt; ls {other.path.parent}; true")
    assert "other episode" not in result.stdout
    assert other.path.name not in result.stdout


def test_host_processes_are_invisible_and_unsignalled(isolating):
    # A host process running as the sandbox user (as another sandbox's would): not visible, and
    # a kill aimed at its host pid reaches nothing.
    uid = SANDBOX_UID if os.geteuid() == 0 else os.getuid()
    victim = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                               "sleep", "30"] if os.geteuid() == 0 else ["sleep", "30"])
    try:
        result = isolating().run(f"kill -9 {victim.pid} {os.getpid()} 2>/dev/null; "
                                 "ls /proc | grep -c '^[0-9]'")
        assert victim.poll() is None  # still alive
        assert int(result.stdout) < 10, result  # only the sandbox's own few processes
    finally:
        victim.kill()
        victim.wait()


def test_host_unix_sockets_are_unreachable(isolating, tmp_path):
    """A listening unix socket in a world-writable directory, and an abstract one."""
    public = tmp_path / "public"
    public.mkdir(mode=0o777)
    public.chmod(0o777)
    tmp_path.chmod(0o755)
    path, abstract = str(public / "s"), f"\0mamba-agent-probe-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX) as a, socket.socket(socket.AF_UNIX) as b:
        a.bind(path)
        os.chmod(path, 0o777)
        b.bind(abstract)
        for s in (a, b):
            s.listen()
            s.setblocking(False)
        result = isolating().run(python(f"""
            import socket
            for address in [{path!r}, {abstract!r}]:
                try:
                    socket.socket(socket.AF_UNIX).connect(address)
                    print("connected")
                except OSError as e:
                    print("blocked")
        """))
        assert result.stdout == "blocked\nblocked\n", result
        for s in (a, b):
            with pytest.raises(BlockingIOError):
                s.accept()


def test_host_files_outside_the_system_dirs_are_invisible(isolating, tmp_path):
    """A world-readable file of another project (here: ours, in /var/tmp) cannot be read;
    /home, /root, /var, /sys and the host's /etc/passwd do not exist inside."""
    secret = f"mamba-agent-probe-{uuid.uuid4().hex}"
    other = f"/var/tmp/{secret}.txt"
    with open(other, "w") as f:
        f.write(secret)
    os.chmod(other, 0o644)
    try:
        result = isolating().run(f"cat {other}; ls /home /var /sys/kernel 2>/dev/null; "
                                 "grep -c . /etc/passwd; true")
    finally:
        os.unlink(other)
    assert secret not in result.stdout
    assert result.stdout.split()[-1] == "2", result  # root and nobody only


# --- hostile probes: the workspace ---------------------------------------------------------------
def test_workspace_size_is_capped(isolating, workspace):
    if not Workspace().capped:
        pytest.skip("not root: workspaces are plain directories (no cap)")
    result = isolating(file_size_mb=4, wall_s=20).run(
        "for i in $(seq 64); do head -c 4M /dev/zero > f$i 2>/dev/null || break; done; du -sm .")
    assert int(result.stdout.split()[0]) <= 64, result  # WORKSPACE_MB


def test_workspace_inodes_are_capped(isolating, workspace):
    if not Workspace().capped:
        pytest.skip("not root: workspaces are plain directories (no cap)")
    result = isolating(wall_s=20).run(python("""
        import os
        n = 0
        try:
            while n < 100_000:
                open(f"f{n}", "w").close(); n += 1
        except OSError as e:
            print(n, e.strerror)
    """))
    made, _, why = result.stdout.partition(" ")
    assert int(made) < 16_384 and why == "No space left on device\n", result


def test_a_deep_tree_neither_crashes_the_next_run_nor_leaks(isolating):
    with Workspace() as ws:
        sandbox = get_sandbox(isolating().name, ws.path)
        try:
            made = sandbox.run(python("""
                import os
                for _ in range(1100):
                    os.mkdir("d"); os.chdir("d")
                open("bottom.txt", "w").write("deep")
                print("made")
            """))
            assert made.stdout == "made\n", made
            again = sandbox.run("echo again")
            assert again.stdout == "again\n"
        finally:
            sandbox.close()
    assert not ws.path.exists()


def test_a_huge_command_is_a_failed_result(isolating):
    result = isolating().run("echo " + "x" * 140_000)  # one argument over the kernel's 128 KiB
    assert result.exit_code != 0 and "too long" in result.stderr.lower(), result
    assert isolating().run("echo ok").stdout == "ok\n"


def test_leftovers_of_a_killed_run_are_removed_at_start(monkeypatch):
    """A process that made a workspace, a bubblewrap sandbox (cgroups) and a docker container is
    SIGKILLed; the next process to make each removes them, and nothing of a live process."""
    for name in ISOLATING:
        open_sandbox(name, "/tmp").close()  # fail (or skip) here if a backend is missing
    script = textwrap.dedent("""
        import os, signal, sys
        from mamba_agent.sandboxes import get_sandbox
        from mamba_agent.sandboxes.workspace import Workspace
        ws = Workspace()
        bwrap, docker = get_sandbox("bubblewrap", ws.path), get_sandbox("docker", ws.path)
        container = docker._launch(["sleep", "60"]).container
        print(ws.path, container.id, *(bwrap.cgroup.dirs if bwrap.cgroup else []), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    ws, container, *cgroups = killed.stdout.split()
    assert os.path.exists(ws)
    from mamba_agent.sandboxes import bubblewrap, workspace
    monkeypatch.setattr(workspace, "_swept", set())
    monkeypatch.setattr(bubblewrap._CgroupV1, "swept", False)
    monkeypatch.setattr(DockerSandbox, "swept", False)
    with Workspace() as live:  # this process's own: left alone by the sweep
        for name in ISOLATING:
            get_sandbox(name, live.path).close()
        assert live.path.exists()
    assert not os.path.exists(ws)
    assert ws not in open("/proc/self/mountinfo").read()
    assert not any(os.path.exists(d) for d in cgroups)
    assert containers_named(container) == []
