"""Which code and which weights made a result: every eval row, bench record and solve carries it.

- `commit()`: the git commit of the code that runs, `+dirty` when tracked files differ from it;
  `MAMBA_AGENT_COMMIT` from the environment where there is no git (the GPU machine gets a copy
  of the tree without its history); else "unknown".
- `file_sha256(path)`: the SHA-256 of a checkpoint's weights file.
"""

import functools
import hashlib
import os
import subprocess
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


@functools.cache
def commit() -> str:
    if given := os.environ.get("MAMBA_AGENT_COMMIT"):
        return given

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(PACKAGE), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    # Only our own repository: an installed package may sit inside someone else's (a venv in a project).
    if top is None or Path(top).resolve() / "mamba_agent" != PACKAGE:
        return "unknown"
    head = git("rev-parse", "--short=12", "HEAD")
    if head is None:
        return "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return head + ("+dirty" if dirty else "")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
