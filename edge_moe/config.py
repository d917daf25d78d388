"""Fleet configuration: frozen dataclasses and the one loader, ``load_fleet(path)``.

A fleet YAML names the device classes (with power profiles), the nodes, the experts
on them, the application categories, the default budget and the coordinator. The
loader rejects unknown keys and says file, field, value and rule, e.g.::

    configs/fleet.yaml: experts[2].node='orin-9' is not a node (known: orin-1, gpu-1)

``device_classes`` may be inline (a mapping) or a path to a YAML file holding that
mapping (relative to the fleet file), so fleets can share ``configs/device_classes.yaml``.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edge_moe.errors import ConfigError

logger = logging.getLogger(__name__)

RUNNER_NAMES = ("onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")


@dataclass(frozen=True)
class DeviceClass:
    """A kind of edge device and its power profile (W), with where the figures come from."""

    name: str
    power_idle_w: float
    power_busy_w: float
    source: str
    throughput_factor: float = 1.0  # relative to this repo's reference CPU (for projections)
    throughput_source: str = ""
    energy_counters: tuple[str, ...] = ()  # e.g. ("nvml",), ("jetson",), ("rapl",)


@dataclass(frozen=True)
class NodeConfig:
    name: str
    device_class: str
    host: str = "127.0.0.1"
    ray_resource: str = ""  # custom Ray resource that pins this node's actor; default edge_moe_node:<name>
    num_gpus: float = 0.0
    # Dynamic batching (nodes/server.py): TASKs for one expert served together, at most
    # max_batch at once (1: one at a time), waiting at most batch_wait_ms for more.
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    # onnxruntime weight prepacking on this node's CPU runners (faster GEMMs, a second copy
    # of the MatMul weights in memory; see benchmarks/batching_bench.py).
    prepack: bool = True

    @property
    def resource(self) -> str:
        return self.ray_resource or f"edge_moe_node:{self.name}"


@dataclass(frozen=True)
class ExpertConfig:
    name: str
    node: str
    artifact: str = ""
    runner: str = "onnxruntime"
    precision: str = "fp32"


@dataclass(frozen=True)
class BudgetConfig:
    """A default budget: ``latency_ms`` is one value or one per category."""

    energy_j: float = math.inf
    latency_ms: float | dict[str, float] = math.inf


@dataclass(frozen=True)
class CoordinatorConfig:
    """The coordinator's endpoints, liveness and limits (the fleet YAML's ``coordinator``).

    ``max_prompt_bytes``: a QUERY whose prompt is longer in UTF-8 is refused with ERROR
    ``bad_request`` before it is embedded. ``quarantine_after`` bad RESULTs (wrong option
    count, NaN, negative ms or J, ...) from one node within ``quarantine_s`` seconds take
    that node out of the plans for ``quarantine_s`` seconds.

    ``load_aware``: plan against each expert's predicted completion time (its node's queue
    wait + its profile) rather than the profile alone, and answer ERROR ``overloaded`` when
    only load keeps a budget from being met. ``max_pending``: queries in flight (TASKs out);
    ``max_waiting``: queries waiting for the embedding worker. Past either bound a query is
    answered ERROR ``overloaded`` at once.

    ``http`` (``host:port``; port 0 picks a free one): ``edge-moe deploy`` also serves the
    OpenAI-compatible HTTP front there (:mod:`gating.http`), next to the coordinator.
    ``http_api_keys``: a file of API keys (one per line) the front requires; a non-loopback
    ``http`` host needs one.
    """

    node: str
    frontend: str = "tcp://127.0.0.1:5555"
    backend: str = "tcp://127.0.0.1:5556"
    heartbeat_s: float = 1.0
    liveness: int = 3
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 8.0
    top_k: int | None = 2
    curve: bool = False
    max_prompt_bytes: int = 65536
    quarantine_after: int = 3
    quarantine_s: float = 30.0
    load_aware: bool = True
    max_pending: int = 1024
    max_waiting: int = 256
    http: str | None = None
    http_api_keys: str | None = None
    objective: str = "loglik"  # F(S) when the coordinator re-plans online: "loglik" or "accuracy"


@dataclass(frozen=True)
class FleetConfig:
    name: str
    path: str
    device_classes: dict[str, DeviceClass]
    nodes: tuple[NodeConfig, ...]
    experts: tuple[ExpertConfig, ...]
    categories: tuple[str, ...]
    budget: BudgetConfig
    coordinator: CoordinatorConfig
    _nodes: dict[str, NodeConfig] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._nodes.update({n.name: n for n in self.nodes})

    def node(self, name: str) -> NodeConfig:
        if name not in self._nodes:
            raise ConfigError(f"{self.path}: unknown node '{name}' (known: {', '.join(self._nodes)})")
        return self._nodes[name]

    def device_class_of(self, node: str) -> DeviceClass:
        return self.device_classes[self.node(node).device_class]

    def experts_on(self, node: str) -> tuple[ExpertConfig, ...]:
        return tuple(e for e in self.experts if e.node == node)

    def placement(self) -> dict[str, tuple[str, ...]]:
        """Node name → the names of the experts placed on it (every node, maybe none).

        The coordinator admits a READY only within this (``Coordinator(placement=...)``).
        """
        return {n.name: tuple(e.name for e in self.experts_on(n.name)) for n in self.nodes}


# ---------------------------------------------------------------- schema helpers


def _http_address(r: Any, raw: Any) -> str | None:
    """``coordinator.http``: ``host:port`` with a port in 0..65535 (0: a free one), or None."""
    if raw is None:
        return None
    host, sep, port = str(raw).rpartition(":") if isinstance(raw, str) else ("", "", "")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise r.error(f"coordinator.http={_show(raw)} must be host:port (port 0..65535; 0 picks a free one)")
    return str(raw)


class _Reader:
    """Reads one mapping, tracking the field path so every error names file and field."""

    def __init__(self, src: str, where: str, raw: Any, allowed: set[str], required: set[str]) -> None:
        self.src, self.where = src, where
        if not isinstance(raw, dict):
            raise self.error(f"{where or 'top level'}={_show(raw)} must be a mapping")
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise self.error(
                f"{self._at(unknown[0])} is not a known field (allowed: {', '.join(sorted(allowed))})"
            )
        missing = sorted(required - set(raw))
        if missing:
            raise self.error(f"{self._at(missing[0])} is required")
        self.raw = raw

    def _at(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def error(self, msg: str) -> ConfigError:
        return ConfigError(f"{self.src}: {msg}")

    def text(self, key: str, default: str | None = None) -> str:
        v = self.raw.get(key, default)
        if not isinstance(v, str) or not v:
            raise self.error(f"{self._at(key)}={_show(v)} must be a non-empty string")
        return v

    def number(self, key: str, default: float | None = None, *, minimum: float = 0.0,
            allow_inf: bool = False, positive: bool = False) -> float:
        v = self.raw.get(key, default)
        if isinstance(v, str) and allow_inf and v.strip().lower() in ("inf", "infinity", ".inf"):
            v = math.inf
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.error(f"{self._at(key)}={_show(v)} must be a number")
        if math.isnan(v) or (math.isinf(v) and not allow_inf):
            raise self.error(f"{self._at(key)}={_show(v)} must be finite")
        if v < minimum or (positive and v <= 0):
            rule = "> 0" if positive else f">= {minimum}"
            raise self.error(f"{self._at(key)}={_show(v)} must be {rule}")
        return float(v)

    def integer(self, key: str, default: int | None = None, *, minimum: int = 1) -> int:
        v = self.raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise self.error(f"{self._at(key)}={_show(v)} must be an integer >= {minimum}")
        return v

    def flag(self, key: str, default: bool) -> bool:
        v = self.raw.get(key, default)
        if not isinstance(v, bool):
            raise self.error(f"{self._at(key)}={_show(v)} must be true or false")
        return v

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        v = self.raw.get(key, default)
        if v not in choices:
            raise self.error(f"{self._at(key)}={_show(v)} is not one of {list(choices)}")
        return str(v)


def _show(v: Any) -> str:
    return repr(v) if not isinstance(v, (dict, list)) else type(v).__name__


def _list(src: str, key: str, raw: Any) -> list[Any]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{src}: {key} must be a non-empty list, got {_show(raw)}")
    return raw


def _unique(src: str, key: str, names: list[str]) -> None:
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            raise ConfigError(f"{src}: {key}[{i}].name='{n}' is a duplicate (names must be unique)")
        seen.add(n)


# ---------------------------------------------------------------- sections


def load_device_classes(path: str | os.PathLike[str]) -> dict[str, DeviceClass]:
    """Load a YAML mapping of device-class name -> power profile."""
    p = Path(path)
    return _device_classes(str(p), read_yaml(p))


def _device_classes(src: str, raw: Any) -> dict[str, DeviceClass]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{src}: device_classes must be a non-empty mapping of name -> profile")
    out = {}
    fields = {"power_idle_w", "power_busy_w", "source", "throughput_factor", "throughput_source",
              "energy_counters", "notes"}
    for name, body in raw.items():
        r = _Reader(src, f"device_classes.{name}", body, fields, {"power_idle_w", "power_busy_w", "source"})
        idle, busy = r.number("power_idle_w"), r.number("power_busy_w", positive=True)
        if busy < idle:
            raise r.error(f"device_classes.{name}.power_busy_w={busy} must be >= power_idle_w={idle}")
        counters = body.get("energy_counters", [])
        if not isinstance(counters, list) or any(c not in ("nvml", "rapl", "jetson") for c in counters):
            raise r.error(f"device_classes.{name}.energy_counters={_show(counters)} must be a list "
                          "drawn from ['nvml', 'rapl', 'jetson']")
        out[str(name)] = DeviceClass(
            name=str(name), power_idle_w=idle, power_busy_w=busy, source=r.text("source"),
            throughput_factor=r.number("throughput_factor", 1.0, positive=True),
            throughput_source=str(body.get("throughput_source", "")),
            energy_counters=tuple(counters),
        )
    return out


def _budget(src: str, raw: Any, categories: tuple[str, ...]) -> BudgetConfig:
    if raw is None:
        return BudgetConfig()
    r = _Reader(src, "budget", raw, {"energy_j", "latency_ms"}, set())
    energy = r.number("energy_j", math.inf, allow_inf=True)
    lat_raw = raw.get("latency_ms", math.inf)
    latency: float | dict[str, float]
    if isinstance(lat_raw, dict):
        lr = _Reader(src, "budget.latency_ms", lat_raw, set(categories), set())
        latency = {c: lr.number(c, allow_inf=True) for c in lat_raw}
        missing = [c for c in categories if c not in latency]
        if missing:
            raise ConfigError(f"{src}: budget.latency_ms lacks categories {missing} "
                              "(give one value, or one per category)")
    else:
        latency = r.number("latency_ms", math.inf, allow_inf=True)
    return BudgetConfig(energy_j=energy, latency_ms=latency)


def read_yaml(p: Path) -> Any:
    """A YAML file's contents; ConfigError names a missing or malformed file."""
    if not p.is_file():
        raise ConfigError(f"{p}: file not found")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from exc


def load_fleet(path: str | os.PathLike[str]) -> FleetConfig:
    """Load and validate a fleet YAML.

    Raises:
        ConfigError: naming the file, the field, the value and the rule broken.
    """
    p = Path(path)
    src = str(p)
    raw = read_yaml(p)
    top = _Reader(src, "", raw, {"name", "device_classes", "nodes", "experts", "categories",
                                 "budget", "coordinator"},
                  {"device_classes", "nodes", "experts", "categories", "coordinator"})
    dc_raw = raw["device_classes"]
    if isinstance(dc_raw, str):
        dc_path = (p.parent / dc_raw) if not os.path.isabs(dc_raw) else Path(dc_raw)
        if not dc_path.is_file():
            raise ConfigError(f"{src}: device_classes='{dc_raw}' is not a file (looked at {dc_path})")
        classes = load_device_classes(dc_path)
    else:
        classes = _device_classes(src, dc_raw)

    nodes = []
    for i, body in enumerate(_list(src, "nodes", raw["nodes"])):
        r = _Reader(src, f"nodes[{i}]", body, {"name", "device_class", "host", "ray_resource", "num_gpus",
                                                "max_batch", "batch_wait_ms", "prepack"},
                    {"name", "device_class"})
        dc = r.text("device_class")
        if dc not in classes:
            raise r.error(f"nodes[{i}].device_class='{dc}' is not a device class "
                          f"(known: {', '.join(classes)})")
        nodes.append(NodeConfig(name=r.text("name"), device_class=dc, host=r.text("host", "127.0.0.1"),
                                ray_resource=str(body.get("ray_resource", "")),
                                num_gpus=r.number("num_gpus", 0.0),
                                max_batch=r.integer("max_batch", NodeConfig.max_batch),
                                batch_wait_ms=r.number("batch_wait_ms", NodeConfig.batch_wait_ms),
                                prepack=r.flag("prepack", NodeConfig.prepack)))
    _unique(src, "nodes", [n.name for n in nodes])
    node_names = [n.name for n in nodes]

    experts = []
    for i, body in enumerate(_list(src, "experts", raw["experts"])):
        r = _Reader(src, f"experts[{i}]", body, {"name", "node", "artifact", "runner", "precision"},
                    {"name", "node"})
        node = r.text("node")
        if node not in node_names:
            raise r.error(f"experts[{i}].node='{node}' is not a node (known: {', '.join(node_names)})")
        experts.append(ExpertConfig(name=r.text("name"), node=node, artifact=str(body.get("artifact", "")),
                                    runner=r.choice("runner", RUNNER_NAMES, "onnxruntime"),
                                    precision=r.choice("precision", PRECISIONS, "fp32")))
    _unique(src, "experts", [e.name for e in experts])

    cats = _list(src, "categories", raw["categories"])
    for i, c in enumerate(cats):
        if not isinstance(c, str) or not c:
            raise ConfigError(f"{src}: categories[{i}]={_show(c)} must be a non-empty string")
    if len(set(cats)) != len(cats):
        raise ConfigError(f"{src}: categories={cats} has duplicates")
    categories = tuple(cats)

    r = _Reader(src, "coordinator", raw["coordinator"],
                {"node", "frontend", "backend", "heartbeat_s", "liveness", "reconnect_min_s",
                 "reconnect_max_s", "top_k", "curve", "max_prompt_bytes", "quarantine_after",
                 "quarantine_s", "load_aware", "max_pending", "max_waiting", "http", "http_api_keys", "objective"},
                {"node"})
    cnode = r.text("node")
    if cnode not in node_names:
        raise r.error(f"coordinator.node='{cnode}' is not a node (known: {', '.join(node_names)})")
    top_k_raw = raw["coordinator"].get("top_k", 2)
    coordinator = CoordinatorConfig(
        node=cnode, frontend=r.text("frontend", CoordinatorConfig.frontend),
        backend=r.text("backend", CoordinatorConfig.backend),
        heartbeat_s=r.number("heartbeat_s", 1.0, positive=True), liveness=r.integer("liveness", 3),
        reconnect_min_s=r.number("reconnect_min_s", 0.5, positive=True),
        reconnect_max_s=r.number("reconnect_max_s", 8.0, positive=True),
        top_k=None if top_k_raw is None else r.integer("top_k", 2), curve=r.flag("curve", False),
        max_prompt_bytes=r.integer("max_prompt_bytes", CoordinatorConfig.max_prompt_bytes),
        quarantine_after=r.integer("quarantine_after", CoordinatorConfig.quarantine_after),
        quarantine_s=r.number("quarantine_s", CoordinatorConfig.quarantine_s, positive=True),
        load_aware=r.flag("load_aware", CoordinatorConfig.load_aware),
        max_pending=r.integer("max_pending", CoordinatorConfig.max_pending),
        max_waiting=r.integer("max_waiting", CoordinatorConfig.max_waiting),
        http=_http_address(r, raw["coordinator"].get("http")),
        http_api_keys=r.text("http_api_keys") if raw["coordinator"].get("http_api_keys") is not None else None,
        objective=r.choice("objective", ("accuracy", "loglik"), CoordinatorConfig.objective),
    )
    if coordinator.http and coordinator.http_api_keys is None:
        host = coordinator.http.rpartition(":")[0]
        if not (host in ("localhost", "::1", "[::1]") or host.startswith("127.")):
            raise r.error(f"coordinator.http={coordinator.http!r} is not a loopback address: "
                          "set coordinator.http_api_keys (a file of API keys) to serve it")
    if coordinator.reconnect_max_s < coordinator.reconnect_min_s:
        raise r.error(f"coordinator.reconnect_max_s={coordinator.reconnect_max_s} must be >= "
                      f"reconnect_min_s={coordinator.reconnect_min_s}")
    name = top.text("name", p.stem)
    return FleetConfig(name=name, path=src, device_classes=classes, nodes=tuple(nodes),
                       experts=tuple(experts), categories=categories,
                       budget=_budget(src, raw.get("budget"), categories), coordinator=coordinator)
