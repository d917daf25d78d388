"""Building a node from a fleet config: its experts' runners (:func:`build_experts`), where
it connects (:func:`backend_endpoint`), and the whole :class:`~nodes.loop.NodeServer`
(:func:`build_server`, what ``edge-moe node`` runs).

Each expert of the node is built from its ``experts[].artifact``: an absolute folder, or
one relative to ``artifacts_dir`` (default ``$EDGE_MOE_CACHE/artifacts``, i.e.
``~/.cache/edge-moe/artifacts``, where ``exporters`` write ``<name>/<precision>``).
``toy`` serves :class:`edge_moe.runtime.toy.ToyExpert` instead (smoke tests, the benchmark).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_moe import paths
from edge_moe.config import FleetConfig, load_fleet
from edge_moe.energy import make_meter
from edge_moe.errors import ConfigError
from edge_moe.runtime.gguf import MAX_SEQ
from edge_moe.runtime.gguf_start import DEFAULT_SPIN
from nodes.execution import HostedExpert
from nodes.loop import NodeServer

logger = logging.getLogger(__name__)


def backend_endpoint(fleet: FleetConfig) -> str:
    """Where nodes connect: the backend address, with a wildcard host replaced by the
    coordinator node's host."""
    ep = fleet.coordinator.backend
    host = fleet.node(fleet.coordinator.node).host
    for wildcard in ("://0.0.0.0:", "://*:"):
        ep = ep.replace(wildcard, f"://{host}:")
    return ep


# llama.cpp experts' threads poll this many times at ggml's barrier before they sleep, on a
# node sharing its host with other nodes / alone on it (node_spin; nodes[].spin)
SPIN_SHARED = DEFAULT_SPIN  # the runner's own default: sleep at once
SPIN_ALONE = 300


def node_spin(fleet: FleetConfig, node: str) -> int:
    """How many times ``node``'s llama.cpp threads poll at a barrier before sleeping: its
    ``spin``, else :data:`SPIN_ALONE` when no other node with experts has its ``host``,
    else :data:`SPIN_SHARED` (``edge_moe/runtime/gguf_start.py`` has the measurements)."""
    spec = fleet.node(node)
    if spec.spin is not None:
        return spec.spin
    shared = any(n.host == spec.host and n.name != node and fleet.experts_on(n.name) for n in fleet.nodes)
    return SPIN_SHARED if shared else SPIN_ALONE


def build_experts(fleet: FleetConfig, node: str, artifacts_dir: str | Path | None = None,
                  toy: bool = False, toy_delay_ms: float = 0.0,
                  runner_kwargs: Mapping[str, Any] | None = None) -> dict[str, HostedExpert]:
    """The node's experts from ``experts[]`` of the fleet config.

    Raises:
        ConfigError: the node hosts no experts, or an expert has no artifact.
        ArtifactError / RunnerError: the runner cannot load its artifact.
    """
    from edge_moe.runtime.runners import make_runner

    fleet.node(node)  # ConfigError on an unknown node
    mine = fleet.experts_on(node)
    if not mine:
        raise ConfigError(f"{fleet.path}: node '{node}' hosts no experts")
    root = Path(artifacts_dir) if artifacts_dir is not None else paths.artifacts_dir()
    out: dict[str, HostedExpert] = {}
    for e in mine:
        if toy:
            from edge_moe.runtime.toy import ToyExpert

            out[e.name] = HostedExpert(ToyExpert(e.name, toy_delay_ms), ToyExpert.runner_name, "fp32")
            continue
        if not e.artifact:
            raise ConfigError(f"{fleet.path}: expert '{e.name}' has no artifact (needed to serve it)")
        path = Path(e.artifact)
        path = path if path.is_absolute() else root / path
        kwargs = dict(runner_kwargs or {})
        if e.runner == "onnxruntime":
            kwargs.setdefault("prepack", fleet.node(node).prepack)
        elif e.runner == "llama.cpp":
            kwargs.setdefault("spin", node_spin(fleet, node))
            kwargs.setdefault("prefix_reuse", fleet.node(node).prefix_reuse)
            if fleet.node(node).llama_cpp_batch == "exact" and fleet.node(node).max_batch > 1:
                kwargs.setdefault("n_seq", min(fleet.node(node).max_batch, MAX_SEQ))  # decoded together
            if fleet.node(node).context is not None:
                kwargs.setdefault("max_context", fleet.node(node).context)
        runner = make_runner(e.runner, path, **kwargs)
        out[e.name] = HostedExpert(runner, e.runner, e.precision)
    return out


def build_server(config: str | Path, node: str, *, endpoint: str | None = None,
                 artifacts_dir: str | Path | None = None, toy: bool = False, toy_delay_ms: float = 0.0,
                 meter: str = "auto", threads: int | None = None, curve_keys: str | Path | None = None,
                 key_name: str = "client") -> NodeServer:
    """The node ``node`` of the fleet file ``config``, ready to :meth:`~NodeServer.run`.

    Args:
        config: the fleet YAML.
        node: this node's name in it.
        endpoint: the coordinator's backend (default :func:`backend_endpoint`).
        artifacts_dir: root for relative artifact paths (default ``$EDGE_MOE_CACHE/artifacts``).
        toy / toy_delay_ms: serve toy experts, each sleeping ``toy_delay_ms`` per request.
        meter: ``auto`` (measured where counters exist) or ``modelled``.
        threads: onnxruntime intra-op threads per runner (default: the fleet's
            ``nodes[].threads``, else the cores of this host).
        curve_keys / key_name: the keys folder from ``edge-moe keys`` and this node's key
            pair name in it; needed when ``coordinator.curve`` is true.

    Raises:
        ConfigError / ArtifactError / RunnerError / SecurityError: what the config, the
            artifacts or the keys get wrong (any :class:`~edge_moe.errors.EdgeMoEError`).
    """
    fleet = load_fleet(config)
    spec = fleet.node(node)
    threads = threads or spec.threads or os.cpu_count() or 1
    experts = build_experts(fleet, node, artifacts_dir, toy, toy_delay_ms, {"intra_op_threads": threads})
    dc = fleet.device_class_of(node)
    curve = None
    if fleet.coordinator.curve:
        from edge_moe.security import load_client_keys

        curve = load_client_keys(curve_keys, key_name)
    return NodeServer(node, endpoint or backend_endpoint(fleet), experts, dc, fleet.coordinator,
                      meter=make_meter(dc, meter), curve=curve,
                      max_batch=spec.max_batch, batch_wait_ms=spec.batch_wait_ms,
                      stream_flush_ms=spec.stream_flush_ms)
