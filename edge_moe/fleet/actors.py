"""The Ray actors of a fleet: one per node (:class:`NodeActor`) and the coordinator's.

Ray only *places* these processes; queries never go through it (ZeroMQ is the data path).
Each actor builds its server in ``__init__`` and serves it on a daemon thread, so Ray's
method calls (:meth:`NodeActor.info`, :meth:`CoordinatorActor.status`) still answer while
it serves. Both are detached and named in the fleet's namespace (:data:`COORDINATOR_ACTOR`,
:func:`node_actor_name`), so ``status`` and ``down`` find them from another driver.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import replace
from typing import Any

from edge_moe.config import FleetConfig

logger = logging.getLogger(__name__)

COORDINATOR_ACTOR = "coordinator"


def node_actor_name(node: str) -> str:
    """The Ray actor name of fleet node ``node``."""
    return f"node:{node}"


class NodeActor:
    """A fleet node inside a Ray actor: builds its runners, serves on a thread.

    Constructed again by Ray after a crash or ``ray.kill(no_restart=False)``; the new
    server connects out and sends READY, so the coordinator uses the node again.
    """

    def __init__(self, fleet: FleetConfig, node: str, endpoint: str, artifacts: str | None,
                 toy: bool, toy_delay_ms: float, threads: int | None, meter: str,
                 artifact_paths: dict[str, str] | None = None,
                 curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        """``artifact_paths``: expert → the path of its shipped artifact on this host
        (:mod:`edge_moe.fleet.ship`), in place of the fleet file's; ``curve``: this node's
        CURVE client keys ``(server_public, public, secret)``; ``threads``: onnxruntime
        intra-op threads per runner, overriding the fleet's ``nodes[].threads`` (None: that,
        else the cores of this host)."""
        from edge_moe.energy import make_meter
        from nodes.server import NodeServer, build_experts

        logging.basicConfig(level=logging.WARNING)
        if artifact_paths:
            fleet = replace(fleet, experts=tuple(replace(e, artifact=artifact_paths.get(e.name, e.artifact))
                                                 for e in fleet.experts))
        spec = fleet.node(node)
        self.threads = threads or spec.threads or os.cpu_count() or 1
        kwargs = {"intra_op_threads": self.threads} if not toy else {}
        experts = build_experts(fleet, node, artifacts, toy, toy_delay_ms, kwargs)
        dc = fleet.device_class_of(node)
        self.node = node
        self.started = time.time()
        self.artifact_paths = dict(artifact_paths or {})
        self.server = NodeServer(node, endpoint, experts, dc, fleet.coordinator,
                                 meter=make_meter(dc, meter), curve=curve,
                                 max_batch=spec.max_batch, batch_wait_ms=spec.batch_wait_ms,
                                 stream_flush_ms=spec.stream_flush_ms)
        self.thread = threading.Thread(target=self._serve, name=f"edge-moe-{node}", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.server.run()
        finally:
            self.server.close()

    def score_timed(self, expert: str, prompt: str, options: list[str], mode: str = "letter"
                    ) -> tuple[list[float], float, int]:
        """Score with the runner this node serves, timed here: (log-probs, ms, prompt tokens)."""
        runner = self._runner(expert)
        t0 = time.perf_counter()
        lp = runner.score_options(prompt, options, mode)
        ms = (time.perf_counter() - t0) * 1e3
        tokens = len(runner.encode(prompt)) if hasattr(runner, "encode") else len(prompt.split())
        return [float(x) for x in lp], ms, tokens

    def measure_generation(self, expert: str, plan: list[Any]) -> list[Any]:
        """:func:`edge_moe.jobs.generation.measure_generation` with this node's runner."""
        from edge_moe.jobs.generation import measure_generation

        return measure_generation(self._runner(expert), plan)

    def _runner(self, expert: str) -> Any:
        from edge_moe.errors import ConfigError

        if expert not in self.server.experts:
            raise ConfigError(f"node {self.node} does not host expert '{expert}' "
                              f"(it hosts {sorted(self.server.experts)})")
        return self.server.experts[expert].runner

    def info(self) -> dict[str, Any]:
        import ray

        ctx = ray.get_runtime_context()
        return {"node": self.node, "pid": os.getpid(), "started": self.started,
                "serving": self.thread.is_alive(), "experts": list(self.server.experts),
                "stats": dict(self.server.stats), "restarted": ctx.was_current_actor_reconstructed,
                "ray_node_id": ctx.get_node_id(), "artifacts": self.artifact_paths,
                "max_batch": self.server.max_batch, "batch_wait_ms": self.server.batch_wait_ms,
                "threads": self.threads,
                "spin": next((h.runner.spin for h in self.server.experts.values()
                              if hasattr(h.runner, "spin")), None),
                "prefix": _prefix(self.server.experts.values())}


def _prefix(hosted: Any) -> dict[str, Any] | None:
    """The llama.cpp experts' prompt reuse (nodes[].prefix_reuse): its mode and the prompt
    tokens asked and reused so far; None on a node without them."""
    runners = [h.runner for h in hosted if hasattr(h.runner, "prefix_reuse")]
    if not runners:
        return None
    return {"mode": runners[0].prefix_reuse, "prompt_tokens": sum(r.prompt_tokens for r in runners),
            "reused_tokens": sum(r.reused_tokens for r in runners),
            # KV cache tokens per sequence now (they grow with requests), the cap (nodes[].context),
            # and the sequences that each hold them (llama_cpp_batch: exact)
            "context": max(getattr(r, "n_ctx", 0) for r in runners),
            "max_context": max(getattr(r, "max_context", 0) for r in runners),
            "streams": max(getattr(r, "n_seq", 1) for r in runners)}


def _server_keys(curve: dict[str, Any]) -> Any:
    """:class:`edge_moe.security.ServerKeys` from key bytes, the allow-list in a 0700 folder."""
    import tempfile
    from pathlib import Path

    from edge_moe.security import ServerKeys

    d = Path(tempfile.mkdtemp(prefix="edge-moe-zap-"))  # mkdtemp: mode 0700
    for name, text in curve["authorized"].items():
        (d / f"{Path(name).name}.key").write_text(text)
    return ServerKeys(curve["public"], curve["secret"], d)


class CoordinatorActor:
    """The gating coordinator inside a Ray actor; :meth:`status` reads its registry."""

    def __init__(self, fleet: FleetConfig, gate: str, calibration: str, profiles: str,
                 encoder: str | None, toy_encoder_dim: int | None, frontend: str,
                 backend: str, curve: dict[str, Any] | None = None) -> None:
        """``curve``: the coordinator's CURVE keys, ``{"public", "secret", "authorized":
        {name: public key file text}}``; the allow-list is written to a private folder on
        this host for ZAP."""
        from gating.coordinator import build_coordinator

        logging.basicConfig(level=logging.WARNING)
        self.totals: dict[str, dict[str, float]] = {}  # per expert: answers, ms and J so far
        self._totals_lock = threading.Lock()
        self.started = time.time()
        self.coordinator = build_coordinator(
            fleet, gate, calibration, profiles, encoder=encoder, toy_encoder_dim=toy_encoder_dim,
            frontend=frontend, backend=backend, curve=_server_keys(curve) if curve else None,
            on_reply=self._count)
        cfg = fleet.coordinator
        if cfg.metrics:
            self.coordinator.serve_metrics(cfg.metrics)
        self.thread = threading.Thread(target=self._serve, name="edge-moe-coordinator", daemon=True)
        self.thread.start()
        self.http = None
        if cfg.http:  # the OpenAI-compatible front beside it, as a client of its frontend
            from gating.http import HttpThread

            self.http = HttpThread(self.coordinator.frontend_endpoint, cfg.http,
                                   [e.name for e in fleet.experts], cfg.http_api_keys,
                                   metrics=self.coordinator.metrics,
                                   curve=curve.get("http_client") if curve else None)

    def _count(self, msg: Any) -> None:
        """The coordinator's ``on_reply`` hook (its loop thread): per-expert totals."""
        with self._totals_lock:
            for u in getattr(msg, "experts", ()):
                t = self.totals.setdefault(u.name, {"answers": 0, "compute_ms": 0.0, "energy_j": 0.0,
                                                    "failures": 0})
                if u.status == "ok":
                    t["answers"] += 1
                    t["compute_ms"] += u.compute_ms
                    t["energy_j"] += u.energy_j
                else:
                    t["failures"] += 1

    def _serve(self) -> None:
        try:
            self.coordinator.run()
        finally:
            self.coordinator.close()

    def endpoints(self) -> tuple[str, str]:
        return self.coordinator.frontend_endpoint, self.coordinator.backend_endpoint

    def status(self) -> dict[str, Any]:
        """The coordinator's :meth:`~gating.coordinator.Coordinator.snapshot` (read on its
        loop thread), with this actor's process, the HTTP front and the per-expert totals."""
        snap = self.coordinator.snapshot()
        with self._totals_lock:
            totals = {k: dict(v) for k, v in self.totals.items()}
        return {"pid": os.getpid(), "started": self.started, "serving": self.thread.is_alive(),
                "http": self.http.url if self.http is not None else None,
                "metrics": self.coordinator.metrics_url, **snap,
                "experts_so_far": totals}
