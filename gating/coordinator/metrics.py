"""Prometheus metrics of the serving path (prometheus-client, a registry of their own).

The coordinator keeps one :class:`ServingMetrics` and counts every answer it sends, whoever
asked (ZeroMQ clients and the HTTP front alike); the HTTP front serves it at ``/metrics``
when it runs beside the coordinator (``edge-moe deploy`` with ``coordinator.http``). A front
on its own counts what passes through it in a :class:`ServingMetrics` of its own.

Names (the ``_total`` suffix is prometheus-client's for counters):

- ``edge_moe_requests_total{status,mode}``: status ``ok`` / ``degraded`` / ``infeasible`` or
  the ERROR code; mode ``options`` / ``generation`` (``-`` when unknown);
- ``edge_moe_request_latency_seconds``: receipt to answer (histogram);
- ``edge_moe_stage_latency_seconds{stage}``: the REPLY's stage times (histogram);
- ``edge_moe_expert_requests_total{expert,status}``, ``edge_moe_expert_energy_joules_total{expert,source}``;
- ``edge_moe_live_experts``, ``edge_moe_inflight_requests`` (gauges);
- ``edge_moe_plan_cache_hits_total``;
- ``edge_moe_cancelled_queries_total``: queries in flight that their client cancelled (CANCEL);
- ``edge_moe_cancelled_tokens_total{reason}``, ``edge_moe_cancelled_energy_joules_total{reason}``:
  what the nodes spent on cancelled tasks, from their late RESULTs; reason ``client`` (the
  client's CANCEL) or ``finished`` (the query was answered without the task: its deadline).

Without prometheus-client installed (the ``http`` extra), :func:`make_metrics` returns None
and nothing is counted. :func:`serve_metrics` serves them on a port of the coordinator's own
(``coordinator.metrics`` / ``edge-moe coordinator --metrics``), with or without the HTTP front.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge_moe.wire import Error, Reply

LATENCY_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)
STAGE_BUCKETS = (.0005, .001, .005, .01, .05, .1, .5, 1, 5, 30)


class ServingMetrics:
    """The counters, histograms and gauges above.

    Args:
        inflight / live: callables read at scrape time for the two gauges; None keeps them
            as plain gauges (set by the owner).
    """

    def __init__(self, inflight: Callable[[], float] | None = None,
                 live: Callable[[], float] | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("edge_moe_requests", "answers by outcome", ["status", "mode"], registry=r)
        self.latency = Histogram("edge_moe_request_latency_seconds", "receipt to answer, seconds",
                                 registry=r, buckets=LATENCY_BUCKETS)
        self.stage = Histogram("edge_moe_stage_latency_seconds", "REPLY stage seconds", ["stage"],
                               registry=r, buckets=STAGE_BUCKETS)
        self.expert_requests = Counter("edge_moe_expert_requests", "chosen experts by status",
                                       ["expert", "status"], registry=r)
        self.expert_energy = Counter("edge_moe_expert_energy_joules", "answering experts' joules",
                                     ["expert", "source"], registry=r)
        self.live = Gauge("edge_moe_live_experts", "live experts", registry=r)
        self.inflight = Gauge("edge_moe_inflight_requests", "queries in flight", registry=r)
        self.cache_hits = Counter("edge_moe_plan_cache_hits", "replies whose plan came from the cache",
                                  registry=r)
        self.cancelled_queries = Counter("edge_moe_cancelled_queries", "queries cancelled by their client",
                                         registry=r)
        self.cancelled_tokens = Counter("edge_moe_cancelled_tokens", "tokens generated for cancelled tasks",
                                        ["reason"], registry=r)
        self.cancelled_energy = Counter("edge_moe_cancelled_energy_joules", "joules spent on cancelled tasks",
                                        ["reason"], registry=r)
        if inflight is not None:
            self.inflight.set_function(inflight)
        if live is not None:
            self.live.set_function(live)
        self._live_fn = live

    def answered(self, msg: Reply | Error, mode: str = "-", seconds: float | None = None) -> None:
        """Count one answer (a REPLY or an ERROR sent to a client)."""
        if isinstance(msg, Error):
            self.requests.labels(msg.code, mode).inc()
            if seconds is not None:
                self.latency.observe(seconds)
            return
        if msg.plan.status == "infeasible":
            status = "infeasible"
        else:
            status = "degraded" if msg.degraded else "ok"
        self.requests.labels(status, mode).inc()
        self.latency.observe(seconds if seconds is not None else msg.total_ms / 1e3)
        for stage, ms in msg.stage_ms.items():
            if stage != "total":
                self.stage.labels(stage).observe(ms / 1e3)
        for u in msg.experts:
            self.expert_requests.labels(u.name, u.status).inc()
            if u.status == "ok":
                self.expert_energy.labels(u.name, u.energy_source or "unknown").inc(u.energy_j)
        if self._live_fn is None:
            self.live.set(len(msg.plan.live))
        if msg.plan.cached:
            self.cache_hits.inc()


    def cancelled(self, reason: str, n_tokens: int, energy_j: float) -> None:
        """Count what a node spent on a cancelled task (its late RESULT's figures)."""
        self.cancelled_tokens.labels(reason).inc(n_tokens)
        self.cancelled_energy.labels(reason).inc(energy_j)


def mode_of(msg: Reply | Error | Any) -> str:
    """``options`` / ``generation`` from a REPLY's answer; ``-`` otherwise."""
    if isinstance(msg, Reply):
        if msg.probabilities is not None:
            return "options"
        if msg.text is not None:
            return "generation"
    return "-"


def make_metrics(inflight: Callable[[], float] | None = None,
                 live: Callable[[], float] | None = None) -> ServingMetrics | None:
    """A :class:`ServingMetrics`, or None when prometheus-client is not installed."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return None
    return ServingMetrics(inflight, live)


def serve_metrics(metrics: ServingMetrics, listen: str) -> tuple[Any, str]:
    """Serve ``metrics`` at ``http://<listen>/metrics`` on a thread of its own (prometheus-
    client's WSGI server), so a ZeroMQ-only coordinator can be scraped.

    Args:
        listen: ``host:port``; port 0 picks a free one.

    Returns:
        (the server: call ``shutdown()`` then ``server_close()`` to stop it, its URL).

    Raises:
        ConfigError: ``listen`` is not host:port, or it cannot be bound.
    """
    from prometheus_client import start_http_server

    from edge_moe.errors import ConfigError

    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"coordinator metrics address {listen!r} is not host:port")
    try:
        server, _ = start_http_server(int(port), host, registry=metrics.registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {listen}: {exc.strerror or exc}") from exc
    return server, f"http://{host}:{server.server_port}/metrics"
