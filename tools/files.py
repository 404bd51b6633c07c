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
(no such file, a directory, a FIFO, a symbolic link, a path outside the workspace, an absolute
path, a file over `MAX_FILE_BYTES`, a bad range, a malformed argument, bytes that are not UTF-8,
a full workspace) answers one line starting `error:`, never raises. Paths are relative to the
workspace and are opened through `sandboxes.workspace.open_file`: no `..`, and no symbolic link
is followed, at any component. A view also stops at `max_bytes` of lines (a line longer than
that alone is cut, `[line cut at N bytes]`), so a huge line never becomes a huge observation.
Files are read and written as UTF-8 text with `\\n` line ends.
"""

from pathlib import Path

from mamba_agent.sandboxes.workspace import WorkspaceError, read_file, write_file
from mamba_agent.tools import SPECIAL_IN_ARGUMENT, Tool, argument_bytes
from mamba_agent.vocab import EDIT, OBS_END, VIEW, encode

MAX_FILE_BYTES = 1 << 20
"""Largest file the tools read (an edit reads the whole file first)."""
VIEW_BYTES = 8_000
"""Default `max_bytes` of a view's lines."""


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
            raw = argument_bytes(argument)
            answer = SPECIAL_IN_ARGUMENT if raw is None else self._run(raw.decode("utf-8"))
        except UnicodeDecodeError:
            answer = "error: the argument is not valid UTF-8"
        except (ToolError, WorkspaceError) as e:
            answer = f"error: {e}"
        except OSError as e:  # anything the workspace helpers did not foresee: still an answer
            answer = f"error: {e.strerror or e}"
        return encode(answer) + [OBS_END]

    def _run(self, argument: str) -> str:
        raise NotImplementedError

    def _read_lines(self, name: str) -> list[str]:
        try:
            text = read_file(self.workspace, name, MAX_FILE_BYTES).decode("utf-8")
        except UnicodeDecodeError:
            raise ToolError(f"{name[:80]} is not UTF-8 text") from None
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

    def __init__(self, workspace: str | Path, window: int = 40, max_bytes: int = VIEW_BYTES):
        super().__init__(workspace)
        if window < 1 or max_bytes < 1:
            raise ValueError(f"window and max_bytes must be at least 1, got {window}, {max_bytes}")
        self.window, self.max_bytes = window, max_bytes

    def _run(self, argument: str) -> str:
        name, start = argument, 1
        head, sep, tail = argument.rpartition(":")
        if sep and tail.isascii() and tail.isdigit():
            name, start = head, int(tail)
        lines = self._read_lines(name)
        if start < 1 or start > max(len(lines), 1):
            raise ToolError(f"start line {start} is outside {name} (1-{max(len(lines), 1)})")
        shown, size = [], 0
        for line in lines[start - 1 : start - 1 + self.window]:
            size += len(line.encode()) + 1
            if size > self.max_bytes:
                if not shown:  # one line over the cap alone: its start, marked
                    cut = line.encode()[: self.max_bytes].decode("utf-8", errors="ignore")
                    shown.append(f"{cut}[line cut at {self.max_bytes} bytes]")
                break
            shown.append(line)
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
        lines = self._read_lines(name)
        if not (1 <= start <= len(lines) + 1 and start - 1 <= end <= len(lines)):
            raise ToolError(
                f"bad range {start}-{end} for {name} ({len(lines)} lines): need 1 <= START <= END <= "
                f"{len(lines)}, or END = START-1 to insert before START"
            )
        new = _new_lines(text)
        lines[start - 1 : end] = new
        write_file(self.workspace, name, "".join(line + "\n" for line in lines).encode())
        last = start + len(new) - 1
        head = f"[edited {name}: lines {start}-{end} -> {start}-{last} of {len(lines)}]"
        return "\n".join([head, *_number(new, start)])


def _new_lines(text: str) -> list[str]:
    """Lines of the new text: "" is none (delete), "\\n" one empty line, "a\\nb" and "a\\nb\\n" two."""
    if text.endswith("\n"):
        text = text[:-1]
        return text.split("\n")
    return text.split("\n") if text else []
