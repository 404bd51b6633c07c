"""Console helpers shared by the commands: one progress bar, stderr for anything transient."""

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Not a terminal (a log file, CI): no 80-column wrapping of status lines and results.
stderr = Console(stderr=True, width=None if sys.stderr.isatty() else 400)


class Bar:
    """A rich progress bar on stderr; `fields` are extra values shown after the count."""

    def __init__(self, label: str, total: int, completed: int = 0, **fields):
        columns = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
        columns += [TextColumn(f"{k} {{task.fields[{k}]:.4g}}") for k in fields]
        self.progress = Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), console=stderr)
        self.task = self.progress.add_task(label, total=total, completed=completed, **fields)
        self.progress.start()

    def update(self, completed: int, **fields) -> None:
        self.progress.update(self.task, completed=completed, **fields)

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)

    def close(self) -> None:
        self.progress.stop()
