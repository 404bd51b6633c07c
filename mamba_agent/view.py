"""`mamba-agent view`: a trajectory as one self-contained HTML page, for a person to read.

The page (`view.html`, inline CSS and JS, nothing fetched) shows the prompt, thoughts, commands,
observations and output in their own colours, special tokens as chips, the answer, verdict and
exit, long runs of one role folded, a search, and for an exact-match evaluation the token that
left the oracle. The tokens travel packed, 16 bits each (token id | role << 9, little-endian),
zlib-compressed and base64-encoded; the page unpacks them with the browser's
DecompressionStream, lays them out in rows of one height and builds only the rows on screen, so
a 500,000-token trajectory opens about as fast as a short one (eval/README.md has the timing).
"""

import base64
import json
import zlib
from importlib.resources import files
from pathlib import Path

import numpy as np

from mamba_agent.trajectory import ROLE_NAMES, Trajectory, read_trajectory
from mamba_agent.vocab import SPECIAL_NAMES


def render(header: dict, trajectory: Trajectory, end: dict | None) -> str:
    """The page for one trajectory, as HTML text."""
    packed = np.asarray(trajectory.tokens, dtype="<u2") | (np.asarray(trajectory.roles, dtype="<u2") << 9)
    data = {
        "header": header,
        "end": end,
        "roles": ROLE_NAMES,
        "specials": SPECIAL_NAMES,
        "tokens": base64.b64encode(zlib.compress(packed.tobytes(), 6)).decode("ascii"),
    }
    # Inside <script>, "</script>" or "<!--" in the data would end it: escape every "<".
    text = json.dumps(data).replace("<", "\\u003c")
    return files("mamba_agent").joinpath("view.html").read_text(encoding="utf-8").replace("__DATA__", text, 1)


def write_view(trajectory: str | Path, out: str | Path) -> Path:
    """Read `trajectory` and write its page to `out`.

    Raises:
        TrajectoryError: `trajectory` is not a readable trajectory.
        OSError: `out` cannot be written.
    """
    header, traj, end = read_trajectory(trajectory)
    out = Path(out)
    out.write_text(render(header, traj, end), encoding="utf-8")
    return out
