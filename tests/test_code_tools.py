"""File view/edit and run tools, driven through Episode.act with the real token protocol."""

import os

import pytest

from mamba_agent.episode import Episode
from mamba_agent.sandboxes import SandboxLimits, SandboxUnavailable
from mamba_agent.sandboxes.workspace import Workspace, write_file
from mamba_agent.tools.files import FileEdit, FileView
from mamba_agent.tools.run import Run
from mamba_agent.trajectory import COMMAND, OBSERVATION
from mamba_agent.vocab import BOS, EDIT, END, OBS_END, RUN, VIEW, decode, encode


def episode(tools) -> Episode:
    return Episode([BOS], tools, max_tokens=10**7, keep=True)


def command(ep: Episode, token: int, argument: str | bytes) -> str:
    """`token argument [END]` through act; the observation text. Checks the [/OBS] close."""
    assert ep.act(token) == []
    for t in argument if isinstance(argument, bytes) else encode(argument):
        assert ep.act(t) == []
    obs = ep.act(END)
    assert obs[-1] == OBS_END and OBS_END not in obs[:-1]
    return decode(obs[:-1])


@pytest.fixture
def ws():
    """A workspace as the code task makes one (owned by the sandbox user, capped as root)."""
    with Workspace({"long.txt": "".join(f"line {i}\n" for i in range(1, 101)),
                    "a.py": "one\ntwo\nthree\n"}) as workspace:
        (workspace.path / "sub").mkdir()
        os.chown(workspace.path / "sub", workspace.owner, workspace.owner)
        workspace.write("sub/b.txt", "x\n")
        yield workspace.path


def write(ws, name: str, text: str) -> None:
    """A new file, owned as a Workspace makes its files (writable inside the sandbox)."""
    write_file(ws, name, text.encode(), owner=os.stat(ws).st_uid)


@pytest.fixture
def files(ws):
    return episode([FileView(ws), FileEdit(ws)])


def test_view_window_and_scrolling(files):
    first = command(files, VIEW, "long.txt").split("\n")
    assert first[0] == "[long.txt lines 1-40 of 100]"
    assert first[1:] == [f"{i}: line {i}" for i in range(1, 41)]
    assert command(files, VIEW, "long.txt:41").split("\n")[0] == "[long.txt lines 41-80 of 100]"
    last = command(files, VIEW, "long.txt:81").split("\n")
    assert last[0] == "[long.txt lines 81-100 of 100]" and last[-1] == "100: line 100"
    assert command(files, VIEW, "sub/b.txt") == "[sub/b.txt lines 1-1 of 1]\n1: x"
    # the whole exchange is recorded with roles: command tokens, then observation tokens
    roles = files.trajectory.roles
    assert roles[1] == COMMAND and OBSERVATION in roles


def test_view_small_window(ws):
    ep = episode([FileView(ws, window=2)])
    assert command(ep, VIEW, "a.py:2") == "[a.py lines 2-3 of 3]\n2: two\n3: three"


def test_edit_replace_insert_delete(ws, files):
    assert command(files, EDIT, "a.py:2-2\nTWO") == "[edited a.py: lines 2-2 -> 2-2 of 3]\n2: TWO"
    assert (ws / "a.py").read_text() == "one\nTWO\nthree\n"
    assert command(files, EDIT, "a.py:2-2\nb1\nb2\nb3\n").startswith("[edited a.py: lines 2-2 -> 2-4 of 5]")
    assert (ws / "a.py").read_text() == "one\nb1\nb2\nb3\nthree\n"
    assert command(files, EDIT, "a.py:2-4\n") == "[edited a.py: lines 2-4 -> 2-1 of 2]"  # delete
    assert (ws / "a.py").read_text() == "one\nthree\n"
    command(files, EDIT, "a.py:2-1\nbetween")  # END = START-1: insert before line 2
    command(files, EDIT, "a.py:4-3\nlast")  # START = T+1: append
    command(files, EDIT, "a.py:1-0\n\n")  # one empty line at the top
    assert (ws / "a.py").read_text() == "\none\nbetween\nthree\nlast\n"
    assert command(files, VIEW, "a.py:3") == "[a.py lines 3-5 of 5]\n3: between\n4: three\n5: last"


@pytest.mark.parametrize(
    "token,argument,message",
    [
        (VIEW, "nope.py", "no such file"),
        (VIEW, "sub", "not a regular file"),
        (VIEW, "../outside.txt", "leaves the workspace"),
        (VIEW, "sub/../../outside.txt", "leaves the workspace"),
        (VIEW, "/etc/passwd", "absolute path"),
        (VIEW, "link.txt", "symbolic link"),
        (VIEW, "", "no path"),
        (VIEW, "a.py:9", "outside a.py"),
        (VIEW, "a.py:0", "outside a.py"),
        (VIEW, b"\xff\xfe", "not valid UTF-8"),
        (EDIT, "a.py\nx", "expected path:START-END"),
        (EDIT, "a.py:2\nx", "expected path:START-END"),
        (EDIT, "a.py:x-2\nx", "START must be a line number"),
        (EDIT, "a.py:2-y\nx", "END must be a line number"),
        (EDIT, "a.py:3-1\nx", "bad range"),
        (EDIT, "a.py:0-1\nx", "bad range"),
        (EDIT, "a.py:2-9\nx", "bad range"),
        (EDIT, "a.py:5-4\nx", "bad range"),
        (EDIT, "../outside.txt:1-1\nx", "leaves the workspace"),
        (EDIT, "/etc/hostname:1-1\nx", "absolute path"),
        (EDIT, "link.txt:1-1\nx", "symbolic link"),
        (EDIT, "nope.py:1-1\nx", "no such file"),
    ],
)
def test_errors_are_observations(ws, files, token, argument, message, tmp_path):
    (tmp_path / "outside.txt").write_text("secret\n")
    os.symlink(tmp_path / "outside.txt", ws / "link.txt")
    before = {p: p.read_bytes() for p in ws.rglob("*") if p.is_file()}
    obs = command(files, token, argument)
    assert obs.startswith("error: ") and message in obs, obs
    assert "secret" not in obs
    assert (tmp_path / "outside.txt").read_text() == "secret\n"
    assert {p: p.read_bytes() for p in ws.rglob("*") if p.is_file()} == before  # nothing written
    assert files.format_errors == 0 and not files.done  # a failed command is not a format error


def test_run_exit_code_and_output(ws):
    ep = episode([Run(ws)])
    assert command(ep, RUN, "echo hi; echo oops >&2; exit 3") == "exit 3\nhi\noops\n"
    assert command(ep, RUN, "python3 -c 'print(6 * 7)'") == "exit 0\n42\n"
    # the workspace's host path reads as relative paths in the output (tracebacks)
    write(ws, "boom.py", "raise ValueError('x')\n")
    obs = command(ep, RUN, "python3 boom.py")
    assert obs.startswith("exit 1\n") and 'File "boom.py", line 1' in obs and str(ws) not in obs
    assert command(ep, RUN, "   ") == "error: empty command"


def test_run_sees_edits_at_once(ws):
    """No stale bytecode: an edit of the same size within the same second is what runs next."""
    write(ws, "m.py", "import n\n")
    write(ws, "n.py", "print(1)\n")
    ep = episode([FileEdit(ws), Run(ws)])
    assert command(ep, RUN, "python3 m.py") == "exit 0\n1\n"
    command(ep, EDIT, "n.py:1-1\nprint(2)")
    assert command(ep, RUN, "python3 m.py") == "exit 0\n2\n"
    assert not (ws / "__pycache__").exists()


def test_run_caps_output_and_marks_timeouts(ws):
    ep = episode([Run(ws, limits=SandboxLimits(wall_s=1.0, output_bytes=100))])
    obs = command(ep, RUN, "head -c 5000 /dev/zero | tr '\\0' x")
    assert obs == "exit 0\n" + "x" * 100 + "\n[stdout truncated at 100 bytes]\n"
    obs = command(ep, RUN, "echo started; sleep 30")
    assert obs.startswith("exit 137\nstarted\n") and obs.endswith("[timed out after 1 s]\n")


def test_run_a_command_too_long_for_the_kernel_is_an_observation(ws):
    obs = command(episode([Run(ws)]), RUN, "echo " + "x" * 140_000)
    assert obs.startswith("exit 126\n") and "Argument list too long" in obs, obs[:200]


def test_run_sandbox_is_the_workspace(ws):
    ep = episode([Run(ws)])
    assert command(ep, RUN, "cat a.py; touch made.txt") == "exit 0\none\ntwo\nthree\n"
    assert (ws / "made.txt").exists()
    assert command(ep, RUN, "touch /etc/x 2>/dev/null; echo $?") == "exit 0\n1\n"


def test_run_unavailable_backend_raises_at_construction(ws, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{ws}/no-such.sock")
    with pytest.raises(SandboxUnavailable):
        Run(ws, backend="docker")
    with pytest.raises(ValueError, match="valid names"):
        Run(ws, backend="chroot")
