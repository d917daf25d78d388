"""What each node's queue will cost a new TASK: the coordinator's load bookkeeping.

Load-aware planning (docs/design.md §2.7) plans against each expert's *predicted completion
time*: the wait before its node can start a new TASK, plus the expert's own profile. The
selector stays pure; the wait enters as a cost added to the latency profile
(:meth:`gating.coordinator.routing.Router.decide`). This module predicts the wait. Time is passed in as
``now`` (seconds, monotonic) so tests step it by hand.

The model of a node: it serves its TASKs one at a time, in arrival order (``nodes/server.py``).

- **Service time of a task** (:meth:`LoadTracker.service_ms`): for an option-scoring task
  the moving average of that expert's ``compute_ms`` in sane RESULTs seen by the
  coordinator; before any, the node's own figure from its HEARTBEAT (``service_ms``); before
  that, the caller's fallback (the profile). For a generation task, the same per generated
  token (``token_ms``, whose average over a task's tokens carries its prefill) ×
  ``max_new_tokens`` (an upper bound: generation may stop early), else the fallback.
- **Backlog of a node** (:meth:`LoadTracker.wait_ms`): the TASKs this coordinator sent it and
  has not heard back about, each with the service time predicted at dispatch plus the node's
  per-task overhead. When an answer arrives the node has just finished a task, so the backlog
  restarts at ``now + Σ (predicted ms + overhead of the tasks still out)``; between answers it
  drains with time (never below 0).
- **Per-task overhead of a node** (what a task costs beyond its ``compute_ms``: decoding,
  queue hand-off, encoding, the wire): while a node stays busy, the gap between two of its
  answers is the service time of the second task, so ``gap − compute_ms`` is a sample; its
  moving average, floored at 0, is the overhead (0 before any sample). Samples may be
  negative: a node that batches answers a batch's TASKs together, the first after a gap of
  the whole batch and the rest after none, each with its share of the batch as
  ``compute_ms``; over the batch the samples sum to the batch's true overhead.
- **Tasks from elsewhere.** A node's HEARTBEAT says how many TASKs it holds (``queued``). When
  that is more than this coordinator has out on it (another coordinator, or tasks from before
  a reconnect), the extra count × the node's mean service time is added to the wait, until
  the next HEARTBEAT replaces it.
- **A silent node** (nothing heard for more than ``suspect_s``, though not yet out of the live
  set) gets an infinite wait: plans avoid it before its liveness window ends.

Figures from a HEARTBEAT are a peer's hints: a non-finite or negative one is ignored, and
``queued`` is capped at :data:`MAX_REPORTED_QUEUE`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from edge_moe.wire import Heartbeat

EWMA_ALPHA = 0.2  # weight of the newest compute_ms in a service-time average
MAX_REPORTED_QUEUE = 100_000  # a HEARTBEAT's queued is clipped here (a lying peer)


def _ewma(old: float | None, x: float) -> float:
    return x if old is None else (1 - EWMA_ALPHA) * old + EWMA_ALPHA * x


def _hint(x: object) -> float | None:
    """A peer's number, or None when it is not a finite non-negative float."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    v = float(x)
    return v if math.isfinite(v) and v >= 0 else None


@dataclass
class _Node:
    free_at: float = 0.0  # when it is predicted to have finished every task we sent it
    out: dict[str, float] = field(default_factory=dict)  # task id -> predicted service ms
    reported: int = 0  # its HEARTBEAT's queued
    batch: float = 0.0  # its HEARTBEAT's mean tasks per batch (dynamic batching)
    foreign: int = 0  # tasks it holds beyond ours, as of its last HEARTBEAT
    service_ms: dict[str, float] = field(default_factory=dict)  # from its HEARTBEAT
    token_ms: dict[str, float] = field(default_factory=dict)
    last_seen: float = 0.0
    last_answer: float | None = None  # when its previous answer arrived, if it was busy then
    overhead_avg: float | None = None  # moving average of (gap between busy answers − compute_ms)

    @property
    def overhead_ms(self) -> float:
        return max(0.0, self.overhead_avg or 0.0)


class LoadTracker:
    """Per node: the tasks out on it, its predicted backlog, its experts' service times.

    Args:
        suspect_s: a node silent for longer than this gets an infinite wait (the
            coordinator uses 1.5 × ``heartbeat_s``); ``inf`` never suspects.
    """

    def __init__(self, suspect_s: float = math.inf) -> None:
        self.suspect_s = suspect_s
        self._nodes: dict[str, _Node] = {}
        self._score_ms: dict[str, float] = {}  # expert -> EWMA of RESULT compute_ms (scoring)
        self._token_ms: dict[str, float] = {}  # expert -> EWMA of ms per generated token
        self._energy: dict[str, float] = {}  # expert -> EWMA of RESULT J / profile J (prior 1)

    def _node(self, name: str) -> _Node:
        n = self._nodes.get(name)
        if n is None:
            n = self._nodes[name] = _Node()
        return n

    # ---------------------------------------------------------------- events

    def seen(self, node: str, now: float) -> None:
        """Any message from ``node`` (a sign of life)."""
        n = self._node(node)
        n.last_seen = max(n.last_seen, now)

    def heartbeat(self, node: str, hb: Heartbeat, now: float) -> None:
        """A node's HEARTBEAT: its queue depth and service times (hints)."""
        n = self._node(node)
        n.last_seen = max(n.last_seen, now)
        q = _hint(hb.queued)
        n.reported = int(min(q, MAX_REPORTED_QUEUE)) if q is not None else 0
        n.foreign = max(0, n.reported - len(n.out))
        b = _hint(hb.batch)
        n.batch = min(b, float(MAX_REPORTED_QUEUE)) if b is not None else 0.0
        n.service_ms = {e: v for e, x in dict(hb.service_ms).items() if (v := _hint(x)) is not None}
        n.token_ms = {e: v for e, x in dict(hb.token_ms).items() if (v := _hint(x)) is not None}

    def dispatched(self, node: str, task_id: str, predicted_ms: float, now: float) -> None:
        """A TASK went to ``node``, predicted to take ``predicted_ms`` once it starts."""
        n = self._node(node)
        n.out[task_id] = predicted_ms
        n.free_at = max(n.free_at, now) + (predicted_ms + n.overhead_ms) / 1e3

    def answered(self, node: str, task_id: str, now: float, expert: str | None = None,
                 compute_ms: float | None = None, n_tokens: int | None = None,
                 energy_ratio: float | None = None) -> None:
        """``node`` answered ``task_id`` (RESULT or ERROR); a sane RESULT's ``compute_ms``
        (and, for generation, ``n_tokens``) updates ``expert``'s service time, and its
        ``energy_ratio`` (RESULT J ÷ the profile's J for that task) its energy factor."""
        n = self._nodes.get(node)
        if n is None or n.out.pop(task_id, None) is None:
            return
        sane = compute_ms is not None and math.isfinite(compute_ms) and compute_ms >= 0
        if sane and n.last_answer is not None:  # busy since the previous answer: the gap is this task's
            gap_ms = (now - n.last_answer) * 1e3
            n.overhead_avg = _ewma(n.overhead_avg, gap_ms - float(compute_ms))  # type: ignore[arg-type]
        n.last_answer = now if n.out else None
        n.free_at = now + (sum(n.out.values()) + len(n.out) * n.overhead_ms) / 1e3
        if expert is not None and compute_ms is not None and sane:
            if n_tokens is None:
                self._score_ms[expert] = _ewma(self._score_ms.get(expert), compute_ms)
            else:
                self._token_ms[expert] = _ewma(self._token_ms.get(expert), compute_ms / max(1, n_tokens))
            if energy_ratio is not None and math.isfinite(energy_ratio) and energy_ratio >= 0:
                # the prior is the profile (factor 1): one cold or noisy answer moves it by alpha
                self._energy[expert] = _ewma(self._energy.get(expert, 1.0), energy_ratio)

    def cancelled(self, node: str, task_id: str, now: float) -> None:
        """A task that will not be answered (its query finished without it): its predicted
        time stays in the backlog (the node may still run it) but it no longer counts as
        out, so the next answer does not wait for it."""
        n = self._nodes.get(node)
        if n is not None:
            n.out.pop(task_id, None)
            n.last_answer = None  # the next gap may include a task nobody waits for

    def forget(self, node: str) -> None:
        """``node`` left the live set (or reconnected): drop its backlog."""
        self._nodes.pop(node, None)

    # ---------------------------------------------------------------- predictions

    def service_ms(self, expert: str, node: str, fallback_ms: float,
                   max_new_tokens: int | None = None) -> float:
        """Predicted compute ms of one task of ``expert`` (generation when ``max_new_tokens``
        is given); ``fallback_ms`` (the profile) when nothing was measured yet."""
        hb = self._nodes.get(node)
        if max_new_tokens is None:
            v = self._score_ms.get(expert)
            if v is None and hb is not None:
                v = hb.service_ms.get(expert)
            return fallback_ms if v is None else v
        tok = self._token_ms.get(expert)
        if tok is None and hb is not None:
            tok = hb.token_ms.get(expert)
        return fallback_ms if tok is None else tok * max_new_tokens

    def energy_factor(self, expert: str) -> float:
        """The moving average of ``expert``'s RESULT joules over its profile's, starting from
        1 (the profile) so that a single answer moves it by :data:`EWMA_ALPHA` of its excess."""
        return self._energy.get(expert, 1.0)

    def node_wait_ms(self, node: str, now: float) -> float:
        """Predicted ms before ``node`` can start a new task (inf when it is suspect)."""
        n = self._nodes.get(node)
        if n is None:
            return 0.0
        if now - n.last_seen > self.suspect_s:
            return math.inf
        wait = max(0.0, n.free_at - now) * 1e3
        if n.foreign:
            per = n.service_ms.values()
            wait += n.foreign * (sum(per) / len(per) if per else 0.0)
        return wait

    def wait_ms(self, experts: Iterable[str], node_of: Mapping[str, str], now: float) -> dict[str, float]:
        """expert -> predicted wait on its node (see :meth:`node_wait_ms`)."""
        memo: dict[str, float] = {}
        out = {}
        for e in experts:
            node = node_of[e]
            if node not in memo:
                memo[node] = self.node_wait_ms(node, now)
            out[e] = memo[node]
        return out

    def overhead_ms(self, node: str) -> float:
        """The node's measured per-task overhead beyond compute_ms (0 before a sample)."""
        n = self._nodes.get(node)
        return n.overhead_ms if n is not None else 0.0

    def outstanding(self, node: str) -> int:
        """TASKs this coordinator has out on ``node``."""
        n = self._nodes.get(node)
        return len(n.out) if n is not None else 0

    def reported_batch(self, node: str) -> float:
        """The node's own mean tasks per batch from its last HEARTBEAT (0: none yet)."""
        n = self._nodes.get(node)
        return n.batch if n is not None else 0.0

    def reported_queue(self, node: str) -> int:
        """The node's own ``queued`` from its last HEARTBEAT."""
        n = self._nodes.get(node)
        return n.reported if n is not None else 0
