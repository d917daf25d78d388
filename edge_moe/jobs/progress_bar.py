"""The one progress style (APEX): rich bars on stderr, drawn from a
:data:`~edge_moe.progress.ProgressCallback`.

Library code reports through the callback and draws nothing; the CLI commands, the jobs
and the benchmarks open :func:`progress_bar` around a library call and pass the callback
it yields. Every bar has the same columns: label, bar, done/total, elapsed, remaining.
Nothing is drawn when stderr is not a terminal (a log file, CI, a test's captured stream).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from edge_moe.progress import ProgressCallback

__all__ = ["progress_bar"]


@contextmanager
def progress_bar(enabled: bool = True, console: Console | None = None) -> Iterator[ProgressCallback | None]:
    """A callback that draws one rich bar per task label while the block runs, or None
    (report nothing) when disabled or when the console is not a terminal.

    Args:
        enabled: False yields None (a ``--no-progress`` flag).
        console: where to draw; stderr by default.
    """
    console = console or Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield None
        return
    bar = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                   console=console, transient=False)
    tasks: dict[str, TaskID] = {}
    lock = threading.Lock()  # reports may come from worker threads

    def report(task: str, completed: int, total: int | None) -> None:
        with lock:
            if task not in tasks:
                tasks[task] = bar.add_task(task, total=total, completed=completed)
            else:
                bar.update(tasks[task], completed=completed, total=total)

    with bar:
        yield report
