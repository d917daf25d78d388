"""Progress reports from long library calls: the library reports, the apex draws.

A function that runs long (training the gate, a budget sweep, scoring an expert) takes
``progress: ProgressCallback | None = None`` and calls it as it goes. It imports no drawing
library and prints nothing. The apex passes a callback that draws
(:func:`edge_moe.jobs.progress_bar.progress_bar`, rich bars on stderr); a test passes a
recorder; None reports nothing (a ``False`` from an older caller reads the same).

The call is ``progress(task, completed, total)``:

- ``task``: the bar's label (``"training gate"``, ``"sweep"``); one bar per distinct label.
- ``completed``: units done so far in that task, a count and not a step (a resumed job
  starts above 0; repeating a count is harmless).
- ``total``: units in all, or None when unknown. The last call may lower it (early
  stopping ends a task before its planned total): a task is done when
  ``completed == total``.

Calls may come from worker threads; a drawing callback must tolerate that.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ProgressCallback", "no_progress", "reporter"]

ProgressCallback = Callable[[str, int, int | None], None]
"""``progress(task, completed, total)``: see the module docstring."""


def no_progress(task: str, completed: int, total: int | None) -> None:
    """The default callback: report nothing."""


def reporter(progress: ProgressCallback | None) -> ProgressCallback:
    """The callback to call: ``progress``, or :func:`no_progress` when it is None (or False)."""
    return progress or no_progress
