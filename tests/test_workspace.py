"""Host-side reads of what sandboxed code wrote: the file tools and the code checker, on files
planted from inside each isolating backend, and the workspace's own limits and cleanup.

Every plant is something the model's code can do in a `[RUN]`; every answer must be an `error:`
observation or a rejected check, never an exception, a hang, or bytes from outside.
"""

from __future__ import annotations

import os
import threading

import pytest

from mamba_agent.sandboxes.workspace import (
    PREFIX, Workspace, WorkspaceError, owner_tag, read_file, remove_stale,
)
from mamba_agent.tasks.code_debug import ANSWER, CodeDebug
from mamba_agent.tools.files import MAX_FILE_BYTES, VIEW_BYTES
from mamba_agent.vocab import EDIT, OBS_END, VIEW, decode, encode
from tests.test_sandbox import ISOLATING, open_sandbox

pytestmark = pytest.mark.usefixtures("nothing_left_behind")
HANG_S = 5.0  # a host read that takes this long is a hang


def within(seconds: float, call):
    """call(), failing the test (not hanging it) if it has not returned after `seconds`."""
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("value", call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{call} hung"
    return out["value"]


def ask(tool, token: int, argument: str) -> str:
    obs = within(HANG_S, lambda: tool.command(token, encode(argument)))
    assert obs[-1] == OBS_END
    return decode(obs[:-1])


@pytest.fixture(params=ISOLATING)
def episode(request):
    """A code_debug problem's tools on the backend; plant(cmd) runs cmd in its workspace."""
    open_sandbox(request.param, "/tmp").close()  # fail (or skip) here if the backend is missing
    task = CodeDebug(backend=request.param)
    problem = task.problem({"size": 4, "seed": 0})
    tools = task.tools(problem)
    view, edit, run = tools

    def plant(command: str) -> None:
        result = run.sandbox.run(["bash", "-c", command])
        assert result.exit_code == 0, result

    yield task, problem, tools, plant
    run.close()


SECRET = "mamba-agent-secret-4f1c"
PLANTS = {  # name -> (command run inside the sandbox, the file the host then reads)
    "symlink loop": ("ln -sf loop main.py && ln -s main.py loop", "main.py"),
    "FIFO named main.py": ("rm main.py && python3 -c 'import os; os.mkfifo(\"main.py\")'",
                           "main.py"),
    "main.py -> /dev/zero": ("ln -sf /dev/zero main.py", "main.py"),
    "link to a root-only file": ("ln -sf {outside} main.py", "main.py"),
    "directory link out": ("ln -s / up && cp main.py keep.py", "up/etc/passwd"),
    "link inside a directory link": ("mkdir -p d && ln -s /etc d/e", "d/e/passwd"),
    "main.py a directory": ("rm main.py && mkdir main.py", "main.py"),
    "4 MB on one line": ("head -c 4000000 /dev/zero | tr '\\0' x > main.py", "main.py"),
}


@pytest.mark.parametrize("plant_name", list(PLANTS))
def test_planted_files_are_refused_by_view_edit_and_check(episode, plant_name, tmp_path):
    task, problem, (view, edit, run), plant = episode
    outside = tmp_path / "root-only.txt"
    outside.write_text(SECRET)
    outside.chmod(0o600)
    command, target = PLANTS[plant_name]
    plant(command.format(outside=outside))
    seen = ask(view, VIEW, target)
    assert seen.startswith("error: "), seen
    edited = ask(edit, EDIT, f"{target}:1-1\nprint('x')")
    assert edited.startswith("error: "), edited
    assert SECRET not in seen + edited and "root:" not in seen + edited
    if target == "main.py":
        assert within(HANG_S, lambda: task.check(problem, ANSWER, (view, edit, run))) is False
    assert outside.read_text() == SECRET  # nothing written through a link


def test_a_300_character_name_is_an_error(episode):
    _, _, (view, edit, _), plant = episode
    for tool, token, argument in [(view, VIEW, "x" * 300), (edit, EDIT, "x" * 300 + ":1-1\ny")]:
        answer = ask(tool, token, argument)
        assert answer.startswith("error: name too long"), answer


def test_a_long_line_is_cut_in_bytes(episode):
    _, _, (view, _, _), plant = episode
    plant("(head -c 100000 /dev/zero | tr '\\0' x; echo; echo short) > wide.py")
    seen = ask(view, VIEW, "wide.py")
    assert len(seen.encode()) < VIEW_BYTES + 100
    assert seen.startswith("[wide.py lines 1-1 of 2]") and seen.endswith(f"[line cut at {VIEW_BYTES} bytes]")
    assert ask(view, VIEW, "wide.py:2") == "[wide.py lines 2-2 of 2]\n2: short"


def test_a_deep_tree_is_read_without_recursion(episode):
    _, _, (view, _, run), plant = episode
    plant("python3 -c \"import os\nfor _ in range(1100): os.mkdir('d'); os.chdir('d')\n"
          "open('bottom.txt', 'w').write('deep\\n')\"")
    seen = ask(view, VIEW, "d/" * 1100 + "bottom.txt")
    assert seen.endswith("1: deep") or seen.startswith("error: "), seen
    assert run.sandbox.run(["true"]).exit_code == 0


def test_a_full_workspace_makes_an_edit_an_error(episode):
    _, _, (view, edit, _), plant = episode
    if not Workspace().capped:
        pytest.skip("not root: workspaces are plain directories (no cap)")
    plant("for i in $(seq 40); do head -c 2M /dev/zero > fill$i 2>/dev/null || break; done; true")
    answer = ask(edit, EDIT, "main.py:1-1\n" + "# x\n" * 100_000)
    assert answer.startswith("error: cannot write main.py"), answer


# --- the workspace itself -------------------------------------------------------------------------
def test_workspace_is_owned_once_capped_and_removed():
    with Workspace({"a.py": "x\n"}) as ws:
        owner = ws.owner
        assert {os.stat(ws.path).st_uid, os.stat(ws.path / "a.py").st_uid} == {owner}
        assert os.stat(ws.path).st_mode & 0o777 == 0o700
        assert ws.capped == (os.geteuid() == 0)
        assert ws.path.name.startswith(f"{PREFIX}{owner_tag()}-")
    assert not ws.path.exists()
    if ws.capped:
        assert str(ws.path) not in open("/proc/self/mountinfo").read()


def test_read_file_caps_bytes():
    with Workspace({"big.txt": "x" * 1000}) as ws:
        assert read_file(ws.path, "big.txt", 1000) == b"x" * 1000
        with pytest.raises(WorkspaceError, match="larger than 999 bytes"):
            read_file(ws.path, "big.txt", 999)
    assert MAX_FILE_BYTES < 4_000_000


def test_stale_workspaces_of_dead_processes_are_removed(tmp_path):
    """A workspace named for a process that is gone is removed; a live one's stays."""
    dead = tmp_path / f"{PREFIX}999999999.1-abc"  # no such pid
    alive = tmp_path / f"{PREFIX}{owner_tag()}-def"
    for d in (dead, alive):
        d.mkdir()
        (d / "f").write_text("x")
    remove_stale(tmp_path)
    assert not dead.exists() and alive.exists()
