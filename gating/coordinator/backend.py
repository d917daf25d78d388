"""The coordinator's node side: READY, HEARTBEAT, RESULT, PARTIAL and ERROR in from the
backend, TASKs out, and fail-over when a node is lost or reconnects.

:class:`NodeSide` is the other half of :class:`gating.coordinator.loop.Coordinator` (the
client side is :mod:`gating.coordinator.clients`). Nodes are peers to check, not to trust:
a READY outside the fleet's placement is refused, an answer counts only from the connection
its TASK went to, and a RESULT that breaks :func:`edge_moe.wire.check_result` is that
expert's error and a strike against its node.

A task its query no longer needs (the client's CANCEL, or the query answered at its
deadline without it) is closed in the in-flight table and its node gets CANCEL
(:meth:`NodeSide._cancel_tasks`), so the work stops; the node's late RESULT for it is
attributed to cancelled work (:meth:`NodeSide._on_cancelled_answer`): counted in ``stats``
and the metrics, and logged, never billed to an answer.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

import zmq

from edge_moe.errors import ProtocolError
from edge_moe.wire import (
    Cancel,
    Error,
    ErrorCode,
    Heartbeat,
    Partial,
    Ready,
    Result,
    Task,
    check_result,
    decode,
    encode,
)
from gating.coordinator import admission
from gating.coordinator.inflight import CancelledTask, Closed, Pending, TaskRecord, Why
from gating.coordinator.state import CoordinatorState

logger = logging.getLogger(__name__)

MAX_PARTIAL_CHARS = 65536  # a longer PARTIAL from a node is dropped, not forwarded
MAX_REFUSALS_REMEMBERED = 1024  # identities whose refused READY was logged (one warning each)


class NodeSide(CoordinatorState):
    """The backend handlers of :class:`~gating.coordinator.loop.Coordinator` (a mixin: the
    attributes below are the coordinator's)."""

    backend: zmq.Socket
    _refused: set[bytes]

    if TYPE_CHECKING:
        def _finish(self, p: Pending) -> None: ...

    def _dispatch(self, p: Pending, expert: str) -> None:
        """Send ``p``'s TASK for ``expert`` to its live node."""
        node = self.registry.node_of(expert)
        assert node is not None  # the plan is over live experts
        q = p.query
        now = time.monotonic()
        predicted = self.load.service_ms(expert, node.name, self.router.profile_ms(q, expert),
                                         admission.gen_tokens(q))
        rec = self.inflight.dispatch(p, expert, node.name, node.identity, predicted, now)
        timeout = (p.flush_at - now) * 1e3
        stream = q.stream and q.options is None and len(p.weights) == 1
        task = Task(rec.id, expert, q.prompt, timeout, q.options, q.mode, q.max_new_tokens, stream,
                    sampling=q.sampling)
        self.backend.send_multipart([node.identity, *encode(task)])

    def _cancel_tasks(self, recs: list[TaskRecord]) -> None:
        """Send CANCEL to the node connection of each task just closed :attr:`Closed.CANCELLED`
        (:meth:`InFlight.finish` / :meth:`InFlight.cancel` closed them): the work stops."""
        for rec in recs:
            self.stats["cancels_sent"] += 1
            self.backend.send_multipart([rec.identity, *encode(Cancel(rec.id))])

    def _to_node(self, identity: bytes, msg: Error) -> None:
        self.backend.send_multipart([identity, *encode(msg)])

    def _on_backend(self, frames: list[bytes]) -> None:
        identity, body = frames[0], frames[1:]
        now = time.monotonic()
        try:
            msg = decode(body)
        except ProtocolError as exc:
            self.stats["malformed_backend"] += 1
            self._to_node(identity, Error("", ErrorCode.PROTOCOL, str(exc)))
            return
        if isinstance(msg, Ready):
            self._on_ready(identity, msg, now)
            return
        known = self.registry.beat(identity, now)
        if isinstance(msg, Heartbeat | Result | Error) and known is None:
            # a RESULT or ERROR from a stranger resolves nothing: no TASK went to it
            self.stats["not_ready"] += 1
            self._to_node(identity, Error(getattr(msg, "id", ""), ErrorCode.NOT_READY,
                                          "unknown node: send READY first"))
            return
        assert known is not None
        if isinstance(msg, Heartbeat):
            self.load.heartbeat(known.name, msg, now)
            return
        self.load.seen(known.name, now)
        if isinstance(msg, Result | Error):
            self._on_answer(identity, known.name, msg, now)
        elif isinstance(msg, Partial):
            self._on_partial(identity, msg)
        else:
            self.stats["malformed_backend"] += 1
            self._to_node(identity, Error("", ErrorCode.PROTOCOL, "the backend accepts READY, HEARTBEAT, "
                                          f"RESULT, PARTIAL or ERROR, got {type(msg).__name__.upper()}"))

    def _on_ready(self, identity: bytes, msg: Ready, now: float) -> None:
        """Admit a READY (:meth:`Registry.refusal` says whether), or refuse it with ERROR. A
        node that comes back on a new connection hands the old one's open tasks to fail-over,
        after it is registered, so the same expert can take them again."""
        why = self.registry.refusal(identity, msg, now)
        if why is not None:
            self.stats["refused_ready"] += 1
            if identity not in self._refused:  # one warning per connection, not one per beat
                if len(self._refused) >= MAX_REFUSALS_REMEMBERED:
                    self._refused.clear()
                self._refused.add(identity)
                logger.warning("refused READY from %r: %s", identity, why)
            self._to_node(identity, Error("", ErrorCode.REFUSED, why))
            return
        self._refused.discard(identity)
        old = self.registry.entry(msg.node)
        self.registry.ready(identity, msg, now)
        if old is not None and old.identity != identity:  # its tasks cannot come back on the new one
            self._fail_over(msg.node, f"node {msg.node} reconnected; the old connection's task "
                            "cannot be answered", old.identity)
        self.load.seen(msg.node, now)

    def _on_answer(self, identity: bytes, node: str, msg: Result | Error, now: float) -> None:
        """A RESULT or ERROR from the live node ``node`` (at ``identity``) for a TASK."""
        found = self.inflight.task(msg.id)
        if found is None:
            if isinstance(msg, Error) and msg.id == "":
                logger.warning("node error: %s: %s", msg.code, msg.message)
            cancelled = self.inflight.take_cancelled(msg.id, identity)
            if cancelled is not None and isinstance(msg, Result):
                self._on_cancelled_answer(cancelled, msg)
            return  # a late answer to a finished query
        rec, p = found
        if rec.identity != identity:
            self.stats["misrouted"] += 1
            logger.warning("dropped a %s for task %s from node %s (%r): that task went to node %s",
                           type(msg).__name__.upper(), msg.id, node, identity, rec.node)
            return
        expert = rec.expert
        p.rtt_ms[expert] = (now - rec.sent_at) * 1e3  # this task: its own dispatch to its answer
        problem = check_result(msg, expert, p.query.options) if isinstance(msg, Result) else None
        if isinstance(msg, Result) and problem is None:
            p.results[expert] = msg
            p.status[expert] = "ok"
            profile_j = self.router.profile_energy_j(p.query, expert)
            self.inflight.close_task(rec, Closed.ANSWERED, now, expert=expert, compute_ms=msg.compute_ms,
                                     n_tokens=None if p.query.options is not None else msg.n_tokens,
                                     energy_ratio=msg.energy_j / profile_j if profile_j > 0 else None)
        else:
            self.inflight.close_task(rec, Closed.ANSWERED, now)
            p.status[expert] = "error"
            if isinstance(msg, Result):
                self.stats["bad_results"] += 1
                p.errors[expert] = f"bad RESULT: {problem}"
                logger.warning("bad RESULT from node %s for %s: %s", node, expert, problem)
                if self.registry.strike(node, now):
                    self.stats["quarantines"] += 1
            else:
                p.errors[expert] = f"{msg.code}: {msg.message}"
        if not p.open:
            self._finish(p)

    def _on_cancelled_answer(self, c: CancelledTask, msg: Result) -> None:
        """The late RESULT of a cancelled task (finish_reason "cancelled", or a normal one that
        raced the CANCEL): what it spent is cancelled work, in ``stats`` and the metrics."""
        rec = c.record
        if msg.expert != rec.expert or msg.n_tokens < 0 or not all(
                math.isfinite(v) and v >= 0 for v in (msg.compute_ms, msg.energy_j)):
            self.stats["bad_results"] += 1
            logger.warning("bad RESULT from node %s for cancelled task %s: expert=%r n_tokens=%r "
                           "compute_ms=%r energy_j=%r", rec.node, rec.id, msg.expert, msg.n_tokens,
                           msg.compute_ms, msg.energy_j)
            return
        self.stats["cancelled_tokens"] += msg.n_tokens
        self.stats["cancelled_energy_j"] += msg.energy_j
        self.stats["cancelled_compute_ms"] += msg.compute_ms
        if self.metrics is not None:
            self.metrics.cancelled(c.why, msg.n_tokens, msg.energy_j)
        logger.info("cancelled query %s: task %s on node %s, %d tokens, %.4g J (%s; %.1f ms of compute, "
                    "finish_reason %s)", rec.key[1], rec.id, rec.node, msg.n_tokens, msg.energy_j,
                    "the client's CANCEL" if c.why is Why.CLIENT else "answered without it",
                    msg.compute_ms, msg.finish_reason)

    def _on_partial(self, identity: bytes, msg: Partial) -> None:
        """A piece of a streamed generation: forwarded to the client as the QUERY's PARTIAL
        when the query asked for a stream and this is its only answering expert; dropped
        otherwise (a late piece, another node's task, an over-long piece)."""
        found = self.inflight.task(msg.id)
        if found is None:
            return
        rec, p = found
        if (rec.identity != identity or not p.query.stream or len(p.weights) != 1
                or rec.expert != msg.expert or len(msg.text) > MAX_PARTIAL_CHARS):
            return
        self.frontend.send_multipart([*p.envelope, *encode(Partial(p.query.id, msg.expert, msg.text,
                                                                   msg.index))])

    def _fail_over(self, node: str, why: str, identity: bytes | None = None) -> None:
        """``node`` left the live set, or reconnected (its old connection ``identity``): each
        open task sent there goes to :func:`admission.choose_standby`'s pick (the same
        expert when the node is back, else a standby of the plan), else counts as ``lost``
        and its query is aggregated without it when nothing else is open."""
        self.load.forget(node)
        now = time.monotonic()
        lost: list[tuple[TaskRecord, Pending]] = list(self.inflight.on_node(node, identity))
        for rec, _ in lost:
            self.inflight.close_task(rec, Closed.LOST, now)
        back = identity is not None and self.registry.entry(node) is not None
        if back:  # its new connection was just heard from: its queue starts empty, not suspect
            self.load.seen(node, now)

        def node_of(expert: str) -> str | None:
            entry = self.registry.node_of(expert)
            return None if entry is None or (entry.name == node and not back) else entry.name

        for rec, p in lost:
            if self.inflight.pending.get(p.key) is not p:
                continue  # answered meanwhile (its other tasks here were resolved first)
            e = rec.expert
            pick = admission.choose_standby(p, e, self.router, self.load, node_of, now, retry=back)
            if pick is None:
                p.status[e], p.errors[e] = "lost", why
            else:
                stand_in, weight = pick
                self.stats["redispatched"] += 1
                if stand_in == e:
                    logger.info("%s; re-dispatched to %s on its new connection", why, e)
                else:
                    p.status[e], p.errors[e] = "lost", f"{why}; re-dispatched to {stand_in}"
                    p.weights[stand_in] = weight
                self._dispatch(p, stand_in)
            if not p.open and p.key in self.inflight.pending:
                self._finish(p)
