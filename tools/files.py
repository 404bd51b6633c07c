"""File tools on a workspace directory: view a window of numbered lines, replace a range of lines.

    [VIEW]path[END]              lines 1.. of `path`, a window of `window` lines (default 40)
    [VIEW]path:START[END]        the window from line START (scrolling = viewing from elsewhere)
    [EDIT]path:START-END
    new text[END]                lines START..END (1-based, inclusive) become the new text

A view answers a header line `[path lines A-B of T]`, then one `N: text` line per line of the
window (SWE-agent style). An edit answers `[edited path: lines START-END -> A-B of T]` and the new
lines, numbered. The new text is everything after the first newline of the argument (one trailing
newline only ends its last line: "a" and "a\\n" are one line, "\\n" one empty line). Empty text
deletes the range; more lines than the range inserts; END = START-1 inserts before START without
replacing anything (START = T+1 appends).

Every observation, errors included, is closed by [/OBS]. A command that cannot be carried out
(no such file, a directory, a path outside the workspace, an absolute path, a bad range, a
malformed argument, bytes that are not UTF-8) answers one line starting `error:`, never raises.
Paths are relative to the workspace; `..` and symlinks leading outside it are refused.
Files are read and written as UTF-8 text with `\\n` line ends.
"""

from pathlib import Path

from mamba_agent.tools import Tool
from mamba_agent.vocab import EDIT, OBS_END, VIEW, encode


class ToolError(Exception):
    """A command that cannot be carried out; its message becomes an `error:` observation."""


class _WorkspaceFiles(Tool):
    """Path handling shared by the view and edit tools."""

    def __init__(self, workspace: str | Path):
        self.workspace = Path(workspace).resolve()
        if not self.workspace.is_dir():
            raise ValueError(f"workspace must be an existing directory: {workspace}")

    def command(self, token: int, argument: list[int] | None = None) -> list[int]:
        try:
            text = bytes(argument or []).decode("utf-8")
            answer = self._run(text)
        except UnicodeDecodeError:
            answer = "error: the argument is not valid UTF-8"
        except ToolError as e:
            answer = f"error: {e}"
        return encode(answer) + [OBS_END]

    def _run(self, argument: str) -> str:
        raise NotImplementedError

    def _resolve(self, name: str) -> Path:
        """The workspace file `name` names; ToolError unless it is a regular file inside."""
        if not name:
            raise ToolError("no path given")
        if "\x00" in name or "\n" in name:
            raise ToolError(f"bad path {name[:80]!r}")
        rel = Path(name)
        if rel.is_absolute():
            raise ToolError(f"absolute path {name!r}: give a path relative to the workspace")
        if ".." in rel.parts:
            raise ToolError(f"path {name!r} leaves the workspace")
        path = (self.workspace / rel).resolve()  # follows symlinks: a link out is caught below
        if not path.is_relative_to(self.workspace):
            raise ToolError(f"path {name!r} leaves the workspace")
        if not path.exists():
            raise ToolError(f"no such file: {name}")
        if not path.is_file():
            raise ToolError(f"not a regular file: {name}")
        return path


def _read_lines(path: Path, name: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ToolError(f"{name} is not UTF-8 text") from None
    return text.split("\n")[:-1] if text.endswith("\n") else (text.split("\n") if text else [])


def _number(lines: list[str], first: int) -> list[str]:
    return [f"{first + i}: {line}" for i, line in enumerate(lines)]


def _int(text: str, what: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ToolError(f"{what} must be a line number, got {text[:40]!r}")
    return int(text)


class FileView(_WorkspaceFiles):
    """`[VIEW]path[END]` or `[VIEW]path:START[END]`: `window` numbered lines from START."""

    argument_commands = frozenset({VIEW})

    def __init__(self, workspace: str | Path, window: int = 40):
        super().__init__(workspace)
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.window = window

    def _run(self, argument: str) -> str:
        name, start = argument, 1
        head, sep, tail = argument.rpartition(":")
        if sep and tail.isascii() and tail.isdigit():
            name, start = head, int(tail)
        path = self._resolve(name)
        lines = _read_lines(path, name)
        if start < 1 or start > max(len(lines), 1):
            raise ToolError(f"start line {start} is outside {name} (1-{max(len(lines), 1)})")
        shown = lines[start - 1 : start - 1 + self.window]
        last = start + len(shown) - 1 if shown else 0
        return "\n".join([f"[{name} lines {start if shown else 0}-{last} of {len(lines)}]", *_number(shown, start)])


class FileEdit(_WorkspaceFiles):
    """`[EDIT]path:START-END\\nnew text[END]`: replace lines START..END with the new text."""

    argument_commands = frozenset({EDIT})

    def _run(self, argument: str) -> str:
        header, newline, text = argument.partition("\n")
        name, sep, span = header.rpartition(":")
        if not sep or "-" not in span:
            raise ToolError("expected path:START-END, a newline, then the new text")
        a, _, b = span.partition("-")
        start, end = _int(a, "START"), _int(b, "END")
        path = self._resolve(name)
        lines = _read_lines(path, name)
        if not (1 <= start <= len(lines) + 1 and start - 1 <= end <= len(lines)):
            raise ToolError(
                f"bad range {start}-{end} for {name} ({len(lines)} lines): need 1 <= START <= END <= "
                f"{len(lines)}, or END = START-1 to insert before START"
            )
        new = _new_lines(text)
        lines[start - 1 : end] = new
        try:
            path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        except OSError as e:
            raise ToolError(f"cannot write {name}: {e.strerror}") from None
        last = start + len(new) - 1
        head = f"[edited {name}: lines {start}-{end} -> {start}-{last} of {len(lines)}]"
        return "\n".join([head, *_number(new, start)])


def _new_lines(text: str) -> list[str]:
    """Lines of the new text: "" is none (delete), "\\n" one empty line, "a\\nb" and "a\\nb\\n" two."""
    if text.endswith("\n"):
        text = text[:-1]
        return text.split("\n")
    return text.split("\n") if text else []
