"""THE node's error policy: which ERROR answers a TASK for which fault.

:func:`error_for` is one function that every path of :mod:`nodes.execution` calls, so a
fault gets the same ``ErrorCode`` whether its TASK ran alone or in a batch.

=========================================================  =================  =========
fault                                                      where              code
=========================================================  =================  =========
the TASK waited past its ``timeout_ms`` before it ran      queue, or a join   DEADLINE
the runner refused it: a :class:`RunnerError` raised, or   any call, or the   RUNNER
an ``Outcome.error`` of a batch (empty prompt, too long)   request's outcome
its ``sampling`` breaks the rules, or asks a runner that   before any call    RUNNER
does not sample to draw, stop or give log-probs
any other :class:`EdgeMoEError` the runner raised          any runner call    RUNNER
any other exception (a runner bug), whole batch included   any runner call    INTERNAL
output the node cannot read (log-probs not numbers, a      building RESULT    INTERNAL
generation without text)
=========================================================  =================  =========

A fault in a call that serves a whole batch (``score_batch``, a decode step) is each of its
TASKs' fault. Refusals before the queue (unknown expert, a full queue, a bad frame) are the
loop's (:mod:`nodes.loop`). Every ERROR message names the expert and the node.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from edge_moe.errors import EdgeMoEError, RunnerError
from edge_moe.wire import Error, ErrorCode, Task

logger = logging.getLogger(__name__)

__all__ = ["Late", "error_for", "late"]


@dataclass(frozen=True)
class Late:
    """The fault of a TASK that waited ``waited_ms`` on the node, past its deadline."""

    waited_ms: float


def error_for(task: Task, node: str, fault: BaseException | Late) -> Error:
    """THE error policy: the ERROR that answers ``task`` for ``fault`` (table in the
    module docstring). Logs a runner bug with its traceback."""
    where = f"{task.expert} on {node}"
    if isinstance(fault, Late):
        return Error(task.id, ErrorCode.DEADLINE,
                     f"task waited {fault.waited_ms:.1f} ms on node {node}, past its "
                     f"{task.timeout_ms:.1f} ms deadline; not computed")
    if isinstance(fault, RunnerError):
        return Error(task.id, ErrorCode.RUNNER, f"{where}: {fault}")
    if isinstance(fault, EdgeMoEError):
        return Error(task.id, ErrorCode.RUNNER, f"{where}: {type(fault).__name__}: {fault}")
    logger.error("expert %s failed on task %s", where, task.id, exc_info=fault)
    return Error(task.id, ErrorCode.INTERNAL, f"{where}: {type(fault).__name__}: {fault}")


def late(task: Task, received: float, node: str) -> Error | None:
    """ERROR ``deadline`` when ``task`` (read at ``received``, ``time.monotonic()``) has
    waited past its ``timeout_ms``; None while it may still run."""
    waited_ms = (time.monotonic() - received) * 1e3
    return error_for(task, node, Late(waited_ms)) if waited_ms > task.timeout_ms else None
