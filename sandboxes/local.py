"""The local backend: runs commands on the host, as the host user. IT DOES NOT ISOLATE ANYTHING.

Registered only as "local-unsafe", never chosen by default or as a fallback; constructing it
warns, and every result says `isolated=False`, `backend="local-unsafe"`. Use it for trusted
commands on a machine without bubblewrap or docker.

Covered (the shared base, see base.py): wall timeout (kills the command's process group), output
caps, exit code, separate stderr, the working directory is the workspace, and the command gets a
minimal environment (PATH with the running interpreter first, HOME=workspace; no host variables).

Not covered: everything else. The command can read and write anything the host user can (files,
other processes' environments through /proc), reach the network, exhaust memory, processes and
disk, and leave processes behind: a child that leaves the process group (setsid) survives the wall
timeout, and one that keeps the output open makes `run` wait until the wall timeout.
`SandboxLimits` other than `wall_s` and `output_bytes` are not applied.
"""

from __future__ import annotations

import os
import warnings

from mamba_agent.sandboxes.base import (
    Launched, PopenLaunched, Sandbox, SandboxLimits, host_python_dirs,
)

_SYSTEM_PATH = ["/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin"]


class LocalSandbox(Sandbox):
    """Runs commands directly on the host. Not a sandbox: see the module docstring."""

    name = "local-unsafe"
    isolated = False
    drops_to_sandbox_uid = False

    def __init__(self, workspace: str | os.PathLike, limits: SandboxLimits | None = None):
        super().__init__(workspace, limits)
        warnings.warn(
            "sandbox 'local-unsafe' runs commands on the host with NO isolation "
            "(files, network, processes, secrets are all reachable)",
            RuntimeWarning, stacklevel=2,
        )

    def _launch(self, argv: list[str]) -> Launched:
        path = [os.path.join(d, "bin") for d in host_python_dirs()] + _SYSTEM_PATH
        return PopenLaunched(argv, str(self.workspace), self.env(str(self.workspace), path))
