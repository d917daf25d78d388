"""The gating coordinator's loop: queries in on ZeroMQ, TASKs out to nodes, answers back.

Two ROUTER sockets, one thread, one poller (zguide ``ppqueue.py`` for the backend):

- *frontend*: clients (DEALER or REQ) send QUERY; each gets REPLY or ERROR (PARTIALs first
  when it asked for a stream);
- *backend*: nodes connect out as DEALER, send READY and heartbeats
  (:mod:`gating.coordinator.registry`), receive TASKs and answer RESULT, PARTIAL or ERROR.
  The coordinator heartbeats every live node.

The loop owns the sockets and the clock, never computes, and decides nothing itself. Per
query: :meth:`Coordinator._on_query` checks it (:meth:`Router.prepare`, the prompt size, the
in-flight bounds), answers at once what no live expert can serve (admission), and hands the
prompt to the embedding worker (:class:`gating.coordinator.embedding.EmbedWorker`: its own
thread, a bounded queue, batches). When the logits are back, :meth:`Coordinator._on_scored`
asks :meth:`Router.decide` for the plan over the *live* experts, with each one's predicted
queue wait and energy factor (:mod:`gating.coordinator.admission`) when
``coordinator.load_aware``, and fans the TASKs out with the deadline. As RESULTs arrive,
:func:`gating.coordinator.replies.aggregate` builds the REPLY. Every query and task in
flight is in one table, :class:`gating.coordinator.inflight.InFlight`.

Failure handling, every path answered, none blocking:

- *deadline*: shortly before it (``min(5 ms, 10%)``), aggregate what arrived, renormalised,
  and mark the reply degraded ("late"); nothing arrived → ERROR "deadline";
- *node lost or reconnected*: a node silent for ``heartbeat_s × liveness`` leaves the live
  set; a node whose READY comes on a new connection cannot answer on the old one. Either
  way each of its open tasks goes at once through the same fail-over
  (:func:`gating.coordinator.admission.choose_standby`: the same expert again when its node
  is back, else a standby of the plan, that can still make the deadline), else counts as
  "lost" and the query is aggregated without it;
- *infeasible budget*: a REPLY with no answer, ``plan.status == "infeasible"``;
- *bad input*: undecodable frames → ERROR "protocol"; wrong values → ERROR "bad_request";
  a prompt over ``coordinator.max_prompt_bytes`` → "bad_request" before it is embedded.

Nodes are peers to check, not to trust: a READY outside the fleet's placement is refused
(:meth:`gating.coordinator.registry.Registry.refusal`); a RESULT/ERROR from an identity that
never sent READY gets ERROR "not_ready"; one for a task that went to another connection is
dropped; a RESULT that breaks :func:`edge_moe.wire.check_result` is that expert's error and
a strike (``quarantine_after`` strikes within ``quarantine_s`` quarantine the node).

Other threads see the loop through :meth:`Coordinator.snapshot` (answered on the loop
thread) and the ``on_reply`` hook (called on the loop thread for every answer sent).
"""

from __future__ import annotations

import logging
import math
import queue
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future
from typing import Any

import zmq

from edge_moe.config import CoordinatorConfig
from edge_moe.errors import ConfigError, EdgeMoEError, ProtocolError, SelectionError
from edge_moe.runtime.liveness import HeartbeatTimer
from edge_moe.security import ServerKeys
from edge_moe.wire import (
    Error,
    ErrorCode,
    Heartbeat,
    Partial,
    Query,
    Ready,
    Reply,
    Result,
    Task,
    check_result,
    decode,
    echo_id,
    encode,
    prompt_size_problem,
)
from gating.coordinator import admission
from gating.coordinator.embedding import EmbedWorker, Scored
from gating.coordinator.inflight import Closed, InFlight, Pending, TaskRecord, Waiting
from gating.coordinator.load import LoadTracker
from gating.coordinator.metrics import make_metrics, mode_of
from gating.coordinator.registry import Registry
from gating.coordinator.replies import aggregate, plan_info
from gating.coordinator.routing import Decision, Embedder, Router, Status

logger = logging.getLogger(__name__)

DEFAULT_DEADLINE_MS = 30_000.0
MAX_PARTIAL_CHARS = 65536  # a longer PARTIAL from a node is dropped, not forwarded
MAX_REFUSALS_REMEMBERED = 1024  # identities whose refused READY was logged (one warning each)
STATS = ("queries", "replies", "errors", "malformed_frontend", "malformed_backend", "degraded",
         "oversized_prompts", "refused_ready", "not_ready", "bad_results", "misrouted",
         "quarantines", "overloaded", "redispatched")
OnReply = Callable[[Reply | Error], None]


class Coordinator:
    """The serving loop. Construct (or :func:`gating.coordinator.build.build_coordinator`),
    then :meth:`run` (blocking) until :meth:`stop`.

    Args:
        router: decides each query (:func:`gating.coordinator.routing.load_router`).
        embedder: ``embed(list[str]) -> (M, D)``, handed to the router; None keeps the router's.
        config: endpoints, heartbeat_s, liveness, bounds.
        frontend / backend: override the config's bind addresses (tests: random ports).
        default_deadline_ms: for queries with neither a deadline nor a finite latency budget.
        curve: the server keys: both sockets become CURVE servers, and a ZAP authenticator
            admits only the public keys in ``curve.authorized_dir``.
        insecure: allow binding a non-loopback address without CURVE.
        placement: node name → the expert names the fleet places on it: READYs outside it
            are refused. None (tests, ad hoc runs) admits any READY.
        on_reply: called on the loop thread with every REPLY and ERROR sent to a client.

    Raises:
        ConfigError: no embedder, a non-loopback bind without CURVE, or a bind failed.
    """

    def __init__(self, router: Router, embedder: Embedder | None, config: CoordinatorConfig,
                 frontend: str | None = None, backend: str | None = None,
                 default_deadline_ms: float = DEFAULT_DEADLINE_MS,
                 curve: ServerKeys | None = None, insecure: bool = False,
                 context: zmq.Context | None = None,
                 placement: Mapping[str, Collection[str]] | None = None,
                 on_reply: OnReply | None = None) -> None:
        self.router = router if embedder is None else router.with_embedder(embedder)
        if self.router.embedder is None:
            raise ConfigError("no embedder: give the Coordinator one, or load_router(..., embedder=...)")
        self.config = config
        self.default_deadline_ms = default_deadline_ms
        self.on_reply = on_reply
        self.registry = Registry(config.heartbeat_s, config.liveness, placement,
                                 config.quarantine_after, config.quarantine_s)
        self._own_context = context is None
        self.ctx = context or zmq.Context()
        self._stopping = False
        self._running = False
        self.stats = dict.fromkeys(STATS, 0)
        self._refused: set[bytes] = set()
        self._asks: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        suspect = min(2.0, config.liveness - 0.5) * config.heartbeat_s if config.liveness > 1 else math.inf
        self.load = LoadTracker(suspect_s=suspect)
        self.inflight = InFlight(self.load)
        front, back = frontend or config.frontend, backend or config.backend
        for ep in (front, back):
            if curve is None and not insecure and not _is_loopback(ep):
                raise ConfigError(f"binding {ep} without CURVE: set coordinator.curve: true, "
                                  "or pass insecure=True (--insecure) to accept plaintext")
        self._auth: Any = None
        if curve is not None:
            from zmq.auth.thread import ThreadAuthenticator

            self._auth = ThreadAuthenticator(self.ctx)
            self._auth.start()
            self._auth.configure_curve(domain="*", location=str(curve.authorized_dir))
        self.frontend = self._bind(front, curve)
        self.backend = self._bind(back, curve)
        self.frontend_endpoint = self.frontend.getsockopt_string(zmq.LAST_ENDPOINT)
        self.backend_endpoint = self.backend.getsockopt_string(zmq.LAST_ENDPOINT)
        self.embedder = EmbedWorker(self.router.score, self.ctx, max_waiting=config.max_waiting)
        self.metrics = make_metrics(inflight=lambda: len(self.inflight),
                                    live=lambda: len(self.registry.live_experts))

    def _bind(self, endpoint: str, curve: ServerKeys | None) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a reply to a vanished peer is dropped, not raised
        if curve is not None:
            sock.curve_secretkey, sock.curve_publickey = curve.secret, curve.public
            sock.curve_server = True
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise ConfigError(f"cannot bind {endpoint}: {exc}") from exc
        return sock

    # ---------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from a signal handler or another thread)."""
        self._stopping = True

    def close(self) -> None:
        self.embedder.close()
        self.frontend.close(linger=0)
        self.backend.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        if self._own_context:
            self.ctx.term()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def snapshot(self, timeout_s: float = 2.0) -> dict[str, Any]:
        """The coordinator's state for ``status``, read on the loop thread (safe from any
        thread): endpoints, nodes with their liveness and load, live experts, queries in
        flight, counters. When the loop is not running it is read here.

        Raises:
            TimeoutError: the loop did not answer within ``timeout_s``.
        """
        if not self._running:
            return self._snapshot()
        fut: Future[dict[str, Any]] = Future()
        self._asks.put((self._snapshot, fut))
        return fut.result(timeout=timeout_s)

    def _snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        reg, load = self.registry, self.load
        nodes = {}
        for e in reg.nodes:
            until = reg.quarantined_until(e.name)
            nodes[e.name] = {
                "experts": list(e.experts), "device_class": e.ready.device_class,
                "energy_source": e.ready.energy_source,
                "last_heartbeat_s_ago": round(now - e.liveness.last_seen, 3),
                "live": not e.liveness.expired(now) and until is None,
                "quarantined_s_left": None if until is None else round(max(0.0, until - now), 1),
                "queued": load.reported_queue(e.name), "tasks_out": load.outstanding(e.name),
                "batch": load.reported_batch(e.name),
                "predicted_wait_ms": round(min(load.node_wait_ms(e.name, now), 1e9), 1),
            }
        return {"frontend": self.frontend_endpoint, "backend": self.backend_endpoint,
                "nodes": nodes, "live_experts": list(reg.live_experts),
                "in_flight": len(self.inflight.pending),
                "waiting_to_embed": len(self.inflight.waiting), "stats": dict(self.stats)}

    def run(self) -> None:
        """Serve until :meth:`stop`. Bad input is answered, never raised."""
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        poller.register(self.backend, zmq.POLLIN)
        poller.register(self.embedder.socket, zmq.POLLIN)
        beats = HeartbeatTimer(self.config.heartbeat_s, time.monotonic())
        self._running = True
        try:
            while not self._stopping:
                self._turn(poller, beats)
        finally:
            self._running = False
            self._answer_asks()

    def _turn(self, poller: zmq.Poller, beats: HeartbeatTimer) -> None:
        now = time.monotonic()
        wake = min(beats.next_at, self.registry.next_expiry() + 1e-3, self.inflight.next_flush())
        timeout_ms = max(0.0, min(wake - now, 0.1)) * 1000
        events = dict(poller.poll(int(math.ceil(timeout_ms))))
        if self.backend in events:
            self._drain(self.backend, self._on_backend)
        for scored in self.embedder.done():  # also drains results that came without a wake-up
            self._guarded(self._on_scored, scored)
        if self.frontend in events:
            self._drain(self.frontend, self._on_frontend)
        now = time.monotonic()
        if beats.due(now):
            for node in self.registry.nodes:
                self.backend.send_multipart([node.identity, *encode(Heartbeat("coordinator"))])
            beats.sent(now)
        for dead in self.registry.expire(now):
            self._fail_over(dead.name, f"node {dead.name} missed {self.config.liveness} heartbeats")
        for key in self.inflight.due_pending(now):
            self._finish(self.inflight.pending[key])
        for w in self.inflight.due_waiting(now):
            self._reply(w.envelope, Error(w.query.id, ErrorCode.DEADLINE,
                                          "the deadline passed while the prompt waited to be "
                                          f"embedded ({self.embedder.waiting} prompts waiting)"))
        self._answer_asks()

    def _answer_asks(self) -> None:
        while True:
            try:
                fn, fut = self._asks.get_nowait()
            except queue.Empty:
                return
            try:
                fut.set_result(fn())
            except Exception as exc:  # handed to the asking thread
                fut.set_exception(exc)

    def _guarded(self, handler: Callable[[Scored], None], item: Scored) -> None:
        try:
            handler(item)
        except Exception:  # a bug in one query must not stop the service
            logger.exception("internal error deciding a query")
            w = self.inflight.take_waiting(item.key)  # type: ignore[arg-type]
            if w is not None:
                self._reply(w.envelope, Error(w.query.id, ErrorCode.INTERNAL,
                                              "internal error; see the coordinator log"))

    def _drain(self, sock: zmq.Socket, handler: Callable[[list[bytes]], None]) -> None:
        for _ in range(1000):  # bounded so one flooded socket cannot starve the other
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                handler(frames)
            except Exception:  # a bug in one message must not stop the service
                logger.exception("internal error handling a message")
                if sock is self.frontend and frames:
                    env, _ = _split_envelope(frames)
                    self._reply(env, Error("", ErrorCode.INTERNAL, "internal error; see the coordinator log"))

    # ---------------------------------------------------------------- frontend

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
        envelope, body = _split_envelope(frames)
        try:
            msg = decode(body)
        except ProtocolError as exc:
            self.stats["malformed_frontend"] += 1
            self._reply(envelope, Error("", ErrorCode.PROTOCOL, str(exc)))
            return
        if not isinstance(msg, Query):
            self.stats["malformed_frontend"] += 1
            self._reply(envelope, Error(echo_id(getattr(msg, "id", "")), ErrorCode.PROTOCOL,
                                        f"the frontend accepts QUERY, got {type(msg).__name__.upper()}"))
            return
        self.stats["queries"] += 1
        self._on_query(envelope, msg)

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
            self._reply(envelope, Error(echo_id(q.id), ErrorCode.BAD_REQUEST, _bad_request(exc)))
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
        if not self.embedder.submit(key, q.prompt):
            self._overloaded(envelope, q, f"{self.config.max_waiting} prompts are waiting to be "
                             "embedded, the limit (coordinator.max_waiting)", 50.0)
            return
        budget_ms = admission.deadline_ms(q, self.router.latency_budget_ms(q), self.default_deadline_ms)
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
                self._reply(envelope, Error(q.id, ErrorCode.BAD_REQUEST, _bad_request(s.error)))
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
        task = Task(rec.id, expert, q.prompt, timeout, q.options, q.mode, q.max_new_tokens, stream)
        self.backend.send_multipart([node.identity, *encode(task)])

    # ---------------------------------------------------------------- backend

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
            return  # a late answer to a finished query
        rec, p = found
        if rec.identity != identity:
            self.stats["misrouted"] += 1
            logger.warning("dropped a %s for task %s from node %s (%r): that task went to node %s",
                           type(msg).__name__.upper(), msg.id, node, identity, rec.node)
            return
        expert = rec.expert
        p.rtt_ms[expert] = (now - p.dispatched) * 1e3
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

    def _finish(self, p: Pending) -> None:
        now = time.monotonic()
        self.inflight.finish(p.key, now)
        msg, degraded = aggregate(p, self.router, now)
        if degraded and isinstance(msg, Reply):
            self.stats["degraded"] += 1
        self._reply(p.envelope, msg)


def _bad_request(exc: EdgeMoEError) -> str:
    """The ERROR bad_request text: a SelectionError is the query's own fault and says why as
    it is (the value-limit texts of edge_moe.wire.check_query); other errors are named."""
    return str(exc) if isinstance(exc, SelectionError) else f"{type(exc).__name__}: {exc}"


def _split_envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """(routing envelope, protocol frames): identity, plus the empty delimiter if present."""
    if len(frames) >= 2 and frames[1] == b"":
        return frames[:2], frames[2:]
    return frames[:1], frames[1:]


def _is_loopback(endpoint: str) -> bool:
    if endpoint.startswith(("inproc://", "ipc://")):
        return True
    host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "[::1]", "::1") or host.startswith("127.")
