"""Sandboxes: run a command in a scratch workspace under limits, and get an `ExecResult`.

    from mamba_agent.sandboxes import SandboxLimits, Workspace, get_sandbox

    with Workspace({"main.py": "print(1)"}) as ws, \
            get_sandbox("bubblewrap", ws.path, SandboxLimits(wall_s=10)) as sandbox:
        result = sandbox.run("python3 main.py > out.txt")   # str: bash -c; list: argv
        result.exit_code, result.stdout, result.timed_out

Backends, chosen by name only (there is no default and no fallback):
- "docker": a fresh container per command (needs an engine and the image, see setup_ci.sh);
- "bubblewrap": namespaces on the host, about 10 ms per command (needs `bwrap`);
- "local-unsafe": runs on the host with no isolation at all; warns.
Each backend's module docstring lists what it covers and what it does not. The workspace is
read-write at its own host path, and is the working directory; /tmp is private to each command.
Make workspaces with `Workspace` (workspace.py: owned by the sandbox user, capped in size and
files, removed whatever is left in them), and read what sandboxed code wrote with
`workspace.read_file` (no link followed, regular files only, a byte cap).
"""

from __future__ import annotations

import os

from mamba_agent.sandboxes.base import ExecResult, Sandbox, SandboxLimits, SandboxUnavailable
from mamba_agent.sandboxes.bubblewrap import BubblewrapSandbox
from mamba_agent.sandboxes.docker import DockerSandbox
from mamba_agent.sandboxes.local import LocalSandbox
from mamba_agent.sandboxes.workspace import Workspace

BACKENDS: dict[str, type[Sandbox]] = {
    "docker": DockerSandbox,
    "bubblewrap": BubblewrapSandbox,
    "local-unsafe": LocalSandbox,
}

__all__ = ["BACKENDS", "ExecResult", "Sandbox", "SandboxLimits", "SandboxUnavailable", "Workspace",
           "get_sandbox"]


def get_sandbox(name: str, workspace: str | os.PathLike, limits: SandboxLimits | None = None,
                **options) -> Sandbox:
    """The sandbox backend called `name`, for `workspace` (an existing host directory).

    `options` go to the backend's constructor (e.g. `image=` for docker).

    Raises:
        ValueError: unknown `name` (the message lists the valid ones), or a bad workspace.
        SandboxUnavailable: the backend cannot run on this machine (the message says how to fix it).
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown sandbox {name!r}; valid names: {', '.join(BACKENDS)}")
    return BACKENDS[name](workspace, limits, **options)
