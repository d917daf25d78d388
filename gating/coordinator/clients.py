"""The coordinator's client side: QUERYs and CANCELs in from the frontend, REPLYs and ERRORs out.

:class:`ClientSide` is one half of :class:`gating.coordinator.loop.Coordinator` (the loop,
its sockets and clock are there; the node side is :mod:`gating.coordinator.backend`): it
checks a QUERY, answers at once what admission refuses, hands the prompt to the embedding
worker, plans the scored query and fans it out, and sends the aggregated answer.

A CANCEL (same connection as its QUERY, the QUERY's id) takes the query out of the
in-flight table (:meth:`InFlight.cancel`): waiting to be embedded, it is simply gone;
pending, each open task's node gets CANCEL. Either way the client is answered at once
with ERROR ``cancelled``. A CANCEL for an id not in flight (unknown, already answered) is
ignored and counted (``stats["cancel_unknown"]``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_moe.errors import EdgeMoEError, ProtocolError, SelectionError
from edge_moe.wire import (
    Cancel,
    Error,
    ErrorCode,
    Query,
    Reply,
    decode,
    echo_id,
    encode,
    prompt_size_problem,
)
from gating.coordinator import admission
from gating.coordinator.embedding import EmbedWorker, Scored
from gating.coordinator.inflight import Pending, TaskRecord, Waiting
from gating.coordinator.metrics import mode_of
from gating.coordinator.replies import aggregate, plan_info
from gating.coordinator.routing import Decision, Status
from gating.coordinator.state import CoordinatorState

logger = logging.getLogger(__name__)


class ClientSide(CoordinatorState):
    """The frontend handlers of :class:`~gating.coordinator.loop.Coordinator` (a mixin: the
    attributes below are the coordinator's)."""

    embedder: EmbedWorker
    on_reply: Any

    if TYPE_CHECKING:
        def _dispatch(self, p: Pending, expert: str) -> None: ...
        def _cancel_tasks(self, recs: list[TaskRecord]) -> None: ...

    def _reply(self, envelope: list[bytes], msg: Reply | Error) -> None:
        self.stats["replies" if isinstance(msg, Reply) else "errors"] += 1
        if self.metrics is not None:
            self.metrics.answered(msg, mode_of(msg))
        self.frontend.send_multipart([*envelope, *encode(msg)])
        if self.on_reply is not None:
            try:
                self.on_reply(msg)
            except Exception:  # an observer's bug must not stop the service
                logger.exception("the on_reply hook failed")

    def _on_frontend(self, frames: list[bytes]) -> None:
        envelope, body = split_envelope(frames)
        try:
            msg = decode(body)
        except ProtocolError as exc:
            self.stats["malformed_frontend"] += 1
            self._reply(envelope, Error("", ErrorCode.PROTOCOL, str(exc)))
            return
        if isinstance(msg, Cancel):
            self._on_cancel(envelope, msg)
            return
        if not isinstance(msg, Query):
            self.stats["malformed_frontend"] += 1
            self._reply(envelope, Error(echo_id(getattr(msg, "id", "")), ErrorCode.PROTOCOL,
                                        f"the frontend accepts QUERY or CANCEL, got {type(msg).__name__.upper()}"))
            return
        self.stats["queries"] += 1
        self._on_query(envelope, msg)

    def _on_cancel(self, envelope: list[bytes], msg: Cancel) -> None:
        """The client cancels its query ``msg.id``: out of the table, CANCEL to the nodes of
        its open tasks, ERROR ``cancelled`` to the client. Not in flight: ignored, counted."""
        q, recs = self.inflight.cancel((envelope[0], msg.id), time.monotonic())
        if q is None:
            self.stats["cancel_unknown"] += 1
            logger.debug("CANCEL for %r, which is not in flight: ignored", msg.id)
            return
        self._cancel_tasks(recs)
        self.stats["cancelled"] += 1
        if self.metrics is not None:
            self.metrics.cancelled_queries.inc()
        where = ", ".join(f"{r.id} on {r.node}" for r in recs) or "none sent yet"
        logger.info("cancel query %s: the client's CANCEL; open tasks %s", q.query.id, where)
        self._reply(q.envelope, Error(q.query.id, ErrorCode.CANCELLED,
                                      f"cancelled by the client ({len(recs)} open tasks stopped)"))

    def _on_query(self, envelope: list[bytes], q: Query) -> None:
        """Check a QUERY and hand its prompt to the embedding worker; never computes."""
        t0 = time.monotonic()
        too_big = prompt_size_problem(q.prompt, self.config.max_prompt_bytes, q.options)
        if too_big is not None:  # before anything reads the prompt: embedding it would stall the loop
            self.stats["oversized_prompts"] += 1
            self._reply(envelope, Error(echo_id(q.id), ErrorCode.BAD_REQUEST, too_big))
            return
        key = (envelope[0], q.id)
        if key in self.inflight:
            self._reply(envelope, Error(echo_id(q.id), ErrorCode.BAD_REQUEST,
                                        f"query id {q.id!r} is already in flight from this client"))
            return
        try:
            self.router.prepare(q)
        except EdgeMoEError as exc:
            self._reply(envelope, Error(echo_id(q.id), ErrorCode.BAD_REQUEST, bad_request(exc)))
            return
        if len(self.inflight) >= self.config.max_pending:
            soonest = min((p.flush_at for p in self.inflight.pending.values()), default=t0 + 0.1)
            self._overloaded(envelope, q, f"{len(self.inflight)} queries in flight, the limit "
                             f"(coordinator.max_pending = {self.config.max_pending})",
                             max(1.0, (soonest - t0) * 1e3))
            return
        d = self._decide(q, None, t0, 0.0)  # admission: the plan does not depend on the prompt
        if d.status != Status.OK:
            self._answer_decision(envelope, q, d, t0)
            return
        budget_ms = admission.deadline_ms(q, self.router.latency_budget_ms(q), self.default_deadline_ms)
        if q.expert is not None:
            # pinned: the plan is that expert alone, answering with weight 1 whatever the gate
            # says, so its prompt is not embedded (the embedding was a pinned stream's largest
            # share of the coordinator's time to first token: ~33 ms of MiniLM here)
            self.inflight.wait(key, Waiting(envelope, q, t0, t0 + budget_ms / 1e3))
            self._on_scored(Scored(key, np.zeros(len(self.router.experts), np.float32), None, 0.0, 0.0, 0))
            return
        if not self.embedder.submit(key, q.prompt):
            self._overloaded(envelope, q, f"{self.config.max_waiting} prompts are waiting to be "
                             "embedded, the limit (coordinator.max_waiting)", 50.0)
            return
        self.inflight.wait(key, Waiting(envelope, q, t0, t0 + budget_ms / 1e3))

    def _decide(self, q: Query, s: Scored | None, now: float, elapsed_ms: float) -> Decision:
        """The router's decision over the live experts (with their load when load-aware)."""
        live = self.registry.live_experts
        waits = scale = None
        if self.config.load_aware:
            node_of = {e: self.registry.node_of(e).name for e in live}  # type: ignore[union-attr]
            waits = admission.queue_waits(q, live, node_of, self.router, self.load, now, elapsed_ms,
                                          self.default_deadline_ms)
            scale = admission.energy_scales(live, self.router, self.load)
        if s is None:
            return self.router.decide(q, None, live, self.registry.node_names, waits, energy_scale=scale)
        return self.router.decide(q, s.logits, live, self.registry.node_names, waits,
                                  embed_ms=s.embed_ms, gate_ms=s.gate_ms, energy_scale=scale)

    def _answer_decision(self, envelope: list[bytes], q: Query, d: Decision, t0: float,
                         stage: dict[str, float] | None = None) -> None:
        """The answer to a decision that sends no TASK: ERROR no_experts / overloaded, or the
        infeasible REPLY."""
        if d.status == Status.NO_EXPERTS or d.plan is None:
            self._reply(envelope, Error(q.id, ErrorCode.NO_EXPERTS, d.message))
        elif d.status == Status.OVERLOADED:
            self.stats["overloaded"] += 1
            self._reply(envelope, Error(q.id, ErrorCode.OVERLOADED, d.message,
                                        None if d.retry_after_ms is None else round(d.retry_after_ms, 1)))
        else:
            stage = dict(stage if stage is not None else d.stage_ms)
            stage.update(fanout=0.0, aggregate=0.0, total=(time.monotonic() - t0) * 1e3)
            self._reply(envelope, Reply(q.id, (), stage, stage["total"], 0.0, "", plan_info(d.plan),
                                        reasons=(d.message,)))

    def _overloaded(self, envelope: list[bytes], q: Query, why: str, retry_ms: float | None) -> None:
        self.stats["overloaded"] += 1
        self._reply(envelope, Error(echo_id(q.id), ErrorCode.OVERLOADED, f"overloaded: {why}",
                                    None if retry_ms is None else round(retry_ms, 1)))

    def _on_scored(self, s: Scored) -> None:
        """The worker scored a prompt: plan over the live experts (with their queues), dispatch."""
        w = self.inflight.take_waiting(s.key)  # type: ignore[arg-type]
        if w is None:
            return  # answered meanwhile (its deadline passed while it waited)
        envelope, q, t0 = w.envelope, w.query, w.started
        if s.error is not None:
            if isinstance(s.error, EdgeMoEError):
                self._reply(envelope, Error(q.id, ErrorCode.BAD_REQUEST, bad_request(s.error)))
            else:
                logger.error("scoring a prompt failed: %r", s.error)
                self._reply(envelope, Error(q.id, ErrorCode.INTERNAL,
                                            f"scoring the prompt failed: {type(s.error).__name__}"))
            return
        assert s.logits is not None
        now = time.monotonic()
        elapsed_ms = (now - t0) * 1e3
        d = self._decide(q, s, now, elapsed_ms)
        stage = dict(d.stage_ms)
        stage["queue"] = max(0.0, elapsed_ms - s.embed_ms - s.gate_ms)
        if d.status != Status.OK or d.plan is None:  # the queues grew (or nodes left) meanwhile
            self._answer_decision(envelope, q, d, t0, stage)
            return
        budget_ms = admission.deadline_ms(q, d.plan.latency_budget_ms, self.default_deadline_ms)
        margin_ms = admission.flush_margin_ms(budget_ms)
        p = Pending(envelope, q, d.plan, dict(d.weights), t0, t0 + (budget_ms - margin_ms) / 1e3,
                    time.monotonic(), budget_ms, stage, logits=s.logits,
                    predicted_ms=dict(d.predicted_ms))
        self.inflight.open(p)
        for expert in d.weights:
            self._dispatch(p, expert)
        p.dispatched = time.monotonic()

    def _finish(self, p: Pending) -> None:
        now = time.monotonic()
        _, open_tasks = self.inflight.finish(p.key, now)
        self._cancel_tasks(open_tasks)  # the answer goes without them: their work stops
        msg, degraded = aggregate(p, self.router, now)
        if degraded and isinstance(msg, Reply):
            self.stats["degraded"] += 1
        self._reply(p.envelope, msg)


def bad_request(exc: EdgeMoEError) -> str:
    """The ERROR bad_request text: a SelectionError is the query's own fault and says why as
    it is (the value-limit texts of edge_moe.wire.check_query); other errors are named."""
    return str(exc) if isinstance(exc, SelectionError) else f"{type(exc).__name__}: {exc}"


def split_envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """(routing envelope, protocol frames): identity, plus the empty delimiter if present."""
    if len(frames) >= 2 and frames[1] == b"":
        return frames[:2], frames[2:]
    return frames[:1], frames[1:]
