"""The gating coordinator's loop: queries in on ZeroMQ, TASKs out to nodes, answers back.

Two ROUTER sockets, one thread, one poller (zguide ``ppqueue.py`` for the backend):

- *frontend*: clients (DEALER or REQ) send QUERY; each gets REPLY or ERROR (PARTIALs first
  when it asked for a stream). A DEALER client may send CANCEL for its query: ERROR
  "cancelled" at once, and CANCEL to the nodes of its open tasks;
- *backend*: nodes connect out as DEALER, send READY and heartbeats
  (:mod:`gating.coordinator.registry`), receive TASKs and answer RESULT, PARTIAL or ERROR.
  The coordinator heartbeats every live node.

The loop (this module) owns the sockets and the clock, never computes, and decides nothing
itself; its handlers are in two halves, the client side (:mod:`gating.coordinator.clients`)
and the node side (:mod:`gating.coordinator.backend`). Per query: :meth:`Coordinator._on_query` checks it (:meth:`Router.prepare`, the prompt size, the
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
  and mark the reply degraded ("late"); nothing arrived → ERROR "deadline". The late tasks'
  nodes get CANCEL, and what their late RESULTs spent is counted as cancelled work;
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
from edge_moe.errors import ConfigError
from edge_moe.runtime.liveness import HeartbeatTimer
from edge_moe.security import ServerKeys
from edge_moe.wire import (
    Error,
    ErrorCode,
    Heartbeat,
    Reply,
    encode,
)
from gating.coordinator.backend import NodeSide
from gating.coordinator.clients import ClientSide, split_envelope
from gating.coordinator.embedding import EmbedWorker, Scored
from gating.coordinator.inflight import InFlight
from gating.coordinator.load import LoadTracker
from gating.coordinator.metrics import make_metrics, serve_metrics
from gating.coordinator.registry import Registry
from gating.coordinator.routing import Embedder, Router

logger = logging.getLogger(__name__)

DEFAULT_DEADLINE_MS = 30_000.0
STATS = ("queries", "replies", "errors", "malformed_frontend", "malformed_backend", "degraded",
         "oversized_prompts", "refused_ready", "not_ready", "bad_results", "misrouted",
         "quarantines", "overloaded", "redispatched", "cancelled", "cancel_unknown", "cancels_sent",
         "cancelled_tokens", "cancelled_energy_j", "cancelled_compute_ms")
OnReply = Callable[[Reply | Error], None]


class Coordinator(ClientSide, NodeSide):
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
        self.stats: dict[str, float] = dict.fromkeys(STATS, 0)
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
        self._metrics_server: Any = None
        self.metrics_url: str | None = None

    def serve_metrics(self, listen: str) -> str:
        """Serve this coordinator's Prometheus metrics at ``http://<listen>/metrics`` (a
        thread of its own; stopped by :meth:`close`); returns the URL.

        Raises:
            ConfigError: prometheus-client is missing (the ``http`` extra), or ``listen`` is
                not a bindable host:port.
        """
        if self.metrics is None:
            raise ConfigError("serving metrics needs prometheus-client: pip install 'edge-moe[http]'")
        self._metrics_server, self.metrics_url = serve_metrics(self.metrics, listen)
        return self.metrics_url

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
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
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
        while not self._asks.empty():  # cheap on every turn; raising Empty is not
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
                    env, _ = split_envelope(frames)
                    self._reply(env, Error("", ErrorCode.INTERNAL, "internal error; see the coordinator log"))


def _is_loopback(endpoint: str) -> bool:
    if endpoint.startswith(("inproc://", "ipc://")):
        return True
    host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "[::1]", "::1") or host.startswith("127.")
