"""The coordinator's in-flight state: every query between admission and its answer, and every
TASK out, in one table keyed by id.

A query is first :class:`Waiting` (its prompt is with the embedding worker), then
:class:`Pending` (its TASKs are out). A task id lives in exactly one place,
:attr:`InFlight.tasks` (a :class:`TaskRecord`: the query it serves, the expert, the node and
the connection it went to), and the load tracker hears of it through this table only
(:meth:`InFlight.dispatch` → ``dispatched``; :meth:`InFlight.close_task` → ``answered`` or
``cancelled``). Every way a task ends (answered, the node lost or reconnected, the query
finished first, the client's CANCEL) goes through :meth:`InFlight.close_task`, and every way
a query ends through :meth:`InFlight.finish` (answered) or :meth:`InFlight.cancel` (the
client's CANCEL), so nothing is left behind in one map but not another.

A task closed :attr:`Closed.CANCELLED` is one its node may still be working on: the caller
sends that node CANCEL, and the table remembers the task (:attr:`InFlight.cancelled`, the
newest :data:`MAX_CANCELLED_REMEMBERED`; when the bound is hit the oldest is forgotten, and
its late RESULT is then ignored like any unknown id) so that the node's late RESULT
(finish_reason "cancelled", or a normal one that raced the CANCEL) is attributed once,
through :meth:`InFlight.take_cancelled`: the tokens and joules spent on work nobody used.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from edge_moe.wire import Query, Result
from gating.coordinator.load import LoadTracker
from gating.coordinator.plans import RoutePlan

QueryKey = tuple[bytes, str]  # (client identity, query id): ids are the client's, unique per client
MAX_CANCELLED_REMEMBERED = 4096  # cancelled task ids kept for their late RESULT (oldest forgotten)


class Closed(StrEnum):
    """How a task left the table."""

    ANSWERED = "answered"  # a RESULT or ERROR came back from its connection
    CANCELLED = "cancelled"  # its query was answered without it, or cancelled: CANCEL goes to its node
    LOST = "lost"  # its node left the live set or reconnected: the answer cannot come back


class Why(StrEnum):
    """Why a task was cancelled (the ``reason`` label of the cancelled-work metrics)."""

    CLIENT = "client"  # the client sent CANCEL for its query
    FINISHED = "finished"  # its query was answered without it (the deadline came first)


@dataclass(frozen=True)
class TaskRecord:
    """One TASK out: which query it serves, and where it went."""

    id: str
    key: QueryKey
    expert: str
    node: str  # node name
    identity: bytes  # the node's connection the TASK went to: only it may answer
    sent_at: float


@dataclass(frozen=True)
class CancelledTask:
    """A task closed :attr:`Closed.CANCELLED`, remembered until its node's late RESULT."""

    record: TaskRecord
    why: Why
    at: float  # when it was cancelled (monotonic s)


@dataclass
class Waiting:
    """A query whose prompt is with the embedding worker (no TASK out yet)."""

    envelope: list[bytes]
    query: Query
    started: float
    flush_at: float  # answer ERROR deadline if it is still waiting then


@dataclass
class Pending:
    """A query whose TASKs are out: its plan, the weights of the experts asked, and what
    each answered. Per expert, ``status`` says how it ended (ok / late / lost / error);
    an expert without a status is still open."""

    envelope: list[bytes]
    query: Query
    plan: RoutePlan
    weights: dict[str, float]  # chosen expert → gate weight (sums to 1 over the first choice)
    started: float
    flush_at: float
    dispatched: float
    deadline_ms: float
    stage_ms: dict[str, float]
    logits: Any = None  # (N,) the prompt's gate logits (fail-over picks a standby by them)
    predicted_ms: dict[str, float] = field(default_factory=dict)  # expert → predicted completion
    nodes: dict[str, str] = field(default_factory=dict)  # expert → the node that serves it (last)
    results: dict[str, Result] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)  # expert → ok/late/lost/error
    errors: dict[str, str] = field(default_factory=dict)
    rtt_ms: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> QueryKey:
        return (self.envelope[0], self.query.id)

    @property
    def open(self) -> list[str]:
        return [e for e in self.weights if e not in self.status]


class InFlight:
    """Waiting and pending queries, and the open tasks, with the load tracker kept in step.

    Args:
        load: the tracker that predicts each node's queue from the tasks sent to it.
    """

    def __init__(self, load: LoadTracker) -> None:
        self.load = load
        self.waiting: dict[QueryKey, Waiting] = {}
        self.pending: dict[QueryKey, Pending] = {}
        self.tasks: dict[str, TaskRecord] = {}  # open tasks only
        self.cancelled: OrderedDict[str, CancelledTask] = OrderedDict()  # oldest first, bounded
        self._ids = itertools.count()

    def __len__(self) -> int:
        """Queries in flight (waiting to be embedded or with TASKs out)."""
        return len(self.waiting) + len(self.pending)

    def __contains__(self, key: QueryKey) -> bool:
        return key in self.waiting or key in self.pending

    # ---------------------------------------------------------------- queries

    def wait(self, key: QueryKey, w: Waiting) -> None:
        self.waiting[key] = w

    def take_waiting(self, key: QueryKey) -> Waiting | None:
        """The waiting query ``key`` leaves the table (scored, failed or expired)."""
        return self.waiting.pop(key, None)

    def open(self, p: Pending) -> None:
        self.pending[p.key] = p

    def next_flush(self) -> float:
        """The soonest moment a query must be answered (its deadline's flush), or inf."""
        return min([p.flush_at for p in self.pending.values()]
                   + [w.flush_at for w in self.waiting.values()], default=math.inf)

    def due_pending(self, now: float) -> list[QueryKey]:
        return [k for k, p in self.pending.items() if p.flush_at <= now]

    def due_waiting(self, now: float) -> list[Waiting]:
        """Waiting queries whose deadline passed, removed from the table."""
        return [self.waiting.pop(k) for k in [k for k, w in self.waiting.items() if w.flush_at <= now]]

    def finish(self, key: QueryKey, now: float) -> tuple[Pending, list[TaskRecord]]:
        """The query ``key`` is answered: it leaves the table, and its open tasks are
        cancelled (:attr:`Why.FINISHED`; the load tracker stops counting them).

        Returns:
            The query, and the tasks just cancelled: the caller sends each node CANCEL.
        """
        p = self.pending.pop(key)
        return p, self._cancel_tasks(key, Why.FINISHED, now)

    def cancel(self, key: QueryKey, now: float) -> tuple[Waiting | Pending | None, list[TaskRecord]]:
        """The client cancelled the query ``key``: it leaves the table, waiting or pending,
        and its open tasks are cancelled (:attr:`Why.CLIENT`).

        Returns:
            The query (None when it is not in flight: unknown, or already answered), and
            the tasks just cancelled: the caller sends each node CANCEL.
        """
        w = self.waiting.pop(key, None)
        if w is not None:  # no TASK out yet; the embedding worker's late score finds nothing
            return w, []
        p = self.pending.pop(key, None)
        if p is None:
            return None, []
        return p, self._cancel_tasks(key, Why.CLIENT, now)

    def _cancel_tasks(self, key: QueryKey, why: Why, now: float) -> list[TaskRecord]:
        recs = [r for r in self.tasks.values() if r.key == key]
        for rec in recs:
            self.close_task(rec, Closed.CANCELLED, now, why=why)
        return recs

    # ---------------------------------------------------------------- tasks

    def dispatch(self, p: Pending, expert: str, node: str, identity: bytes, predicted_ms: float,
                 now: float) -> TaskRecord:
        """Record a TASK for ``expert`` on ``node`` (at ``identity``) and tell the load
        tracker; the caller sends it."""
        rec = TaskRecord(f"t{next(self._ids)}", p.key, expert, node, identity, now)
        self.tasks[rec.id] = rec
        p.nodes[expert] = node
        self.load.dispatched(node, rec.id, predicted_ms, now)
        return rec

    def task(self, task_id: str) -> tuple[TaskRecord, Pending] | None:
        """The open task ``task_id`` and its query, or None (unknown, or already closed)."""
        rec = self.tasks.get(task_id)
        if rec is None:
            return None
        p = self.pending.get(rec.key)
        return None if p is None else (rec, p)

    def on_node(self, node: str, identity: bytes | None = None) -> Iterator[tuple[TaskRecord, Pending]]:
        """The open tasks sent to ``node`` (on connection ``identity`` when given), with
        their queries."""
        for rec in list(self.tasks.values()):
            if rec.node == node and (identity is None or rec.identity == identity):
                p = self.pending.get(rec.key)
                if p is not None:
                    yield rec, p

    def close_task(self, rec: TaskRecord, how: Closed, now: float, why: Why = Why.FINISHED,
                   **answer: Any) -> None:
        """The one way a task leaves the table. ``answer``: for :attr:`Closed.ANSWERED`, the
        measured figures :meth:`gating.coordinator.load.LoadTracker.answered` takes
        (expert, compute_ms, n_tokens, energy_ratio). ``why``: for :attr:`Closed.CANCELLED`,
        remembered with the task for its late RESULT (:meth:`take_cancelled`)."""
        if self.tasks.pop(rec.id, None) is None:
            return
        if how is Closed.ANSWERED:
            self.load.answered(rec.node, rec.id, now, **answer)
        elif how is Closed.CANCELLED:
            self.load.cancelled(rec.node, rec.id, now)
            self.cancelled[rec.id] = CancelledTask(rec, why, now)
            while len(self.cancelled) > MAX_CANCELLED_REMEMBERED:
                self.cancelled.popitem(last=False)
        # LOST: the tracker forgets the whole node (LoadTracker.forget), so nothing per task

    def take_cancelled(self, task_id: str, identity: bytes) -> CancelledTask | None:
        """The cancelled task ``task_id``, forgotten now, when its late answer came from the
        connection its TASK went to; None otherwise (unknown, forgotten, or another
        connection's word, which leaves it remembered)."""
        c = self.cancelled.get(task_id)
        if c is None or c.record.identity != identity:
            return None
        del self.cancelled[task_id]
        return c
