"""Fleet configuration: frozen dataclasses and the one loader, ``load_fleet(path)``.

A fleet YAML names the device classes (with power profiles), the nodes, the experts
on them, the application categories, the default budget and the coordinator. Every key
is one :class:`~edge_moe.config_schema.Key` of :data:`~edge_moe.config_schema.SCHEMA`
(type, default, unit, rule): the loader reads each section through that table, so a key
the table lacks is an unknown key, and :func:`schema_markdown` renders the same table as
``docs/reference/fleet-yaml.md``.

The loader finds every problem, not just the first. :func:`check_fleet` returns them all
and :func:`load_fleet` raises one :class:`ConfigError` listing them, one per line, each
naming file, key path, value and rule::

    configs/fleet.yaml: experts[2].node='orin-9' is not a node (known: orin-1, gpu-1)

A value that cannot be read is recorded and its default stands in; the cross-checks that
need it (a node's device class, an expert's node, ...) are skipped, so one mistake gives
one line. ``device_classes`` may be inline (a mapping) or a path to a YAML file holding
that mapping (relative to the fleet file), so fleets can share ``configs/device_classes.yaml``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edge_moe.config_schema import PRECISIONS, RUNNER_NAMES, Key, keys_of, schema_markdown
from edge_moe.errors import ConfigError

__all__ = ["PRECISIONS", "RUNNER_NAMES", "BudgetConfig", "CoordinatorConfig", "DeviceClass", "ExpertConfig",
           "FleetConfig", "NodeConfig", "check_fleet", "load_device_classes", "load_fleet", "read_yaml",
           "schema_markdown"]

logger = logging.getLogger(__name__)


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
    # Dynamic batching (nodes/server.py): at most max_batch TASKs of one expert, waiting batch_wait_ms
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    stream_flush_ms: float = 30.0  # a stream's PARTIALs after the first: at most one per this
    prepack: bool = True  # onnxruntime weight prepacking on CPU runners (benchmarks/batching_bench.py)
    threads: int | None = None  # intra-op threads per runner on this node; None: its host's cores
    spin: int | None = None  # llama.cpp threads' polls at a barrier; None: nodes.build.node_spin
    prefix_reuse: str = "exact"  # llama.cpp experts: what a prompt keeps of the cached one
    context: int | None = None  # llama.cpp experts: KV cache cap (tokens), None: the runner's;
    llama_cpp_batch: str = "off"  # "exact": up to max_batch sequences decode together

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
    ``http`` host needs one. ``metrics`` (``host:port``): the coordinator also serves its
    Prometheus metrics at ``/metrics`` there, with or without the HTTP front.
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
    metrics: str | None = None  # host:port: the coordinator's own /metrics (no HTTP front needed)


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



# ---------------------------------------------------------------- reading


class _Problems:
    """Every problem found, one line each, naming the file it is in."""

    def __init__(self, src: str, lines: list[str] | None = None) -> None:
        self.src = src
        self.lines = [] if lines is None else lines

    def add(self, msg: str) -> None:
        self.lines.append(f"{self.src}: {msg}")

    def raise_any(self) -> None:
        if self.lines:
            raise ConfigError("\n".join(self.lines))


class _Reader:
    """One mapping of the YAML, read against its section of the schema.

    A problem is recorded and the key's default stands in (None for a required key);
    ``bad`` names the keys that could not be read, so cross-checks can skip them.
    """

    def __init__(self, probs: _Problems, where: str, raw: Any, section: str) -> None:
        self.probs, self.where, self.keys = probs, where, keys_of(section)
        self.ok = isinstance(raw, dict)
        self.raw: dict[Any, Any] = raw if isinstance(raw, dict) else {}
        self.bad: set[str] = set()
        if not self.ok:
            probs.add(f"{where or 'top level'}={_show(raw)} must be a mapping")
            return
        allowed = ", ".join(sorted(self.keys))
        for k in sorted(set(raw) - set(self.keys), key=str):
            probs.add(f"{self.at(str(k))} is not a known field (allowed: {allowed})")
        for k in (n for n, key in self.keys.items() if key.required and n not in raw):
            probs.add(f"{self.at(k)} is required")
            self.bad.add(k)

    def at(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, name: str) -> Any:
        key: Key = self.keys[name]
        fallback = None if key.required else key.default
        if name in self.bad:
            return fallback
        v = self.raw.get(name, key.default)
        value, problem = key.check(v)
        if problem:
            self.probs.add(f"{self.at(name)}={_show(v)} {problem}")
            self.bad.add(name)
            return fallback
        return value

    def fields(self, cls: type) -> dict[str, Any]:
        """The keyword arguments of ``cls`` that this section's schema names."""
        return {f.name: self.get(f.name) for f in dataclasses.fields(cls) if f.name in self.keys}


def _show(v: Any) -> str:
    return repr(v) if not isinstance(v, (dict, list)) else type(v).__name__


def _list(probs: _Problems, key: str, raw: Any) -> list[Any]:
    if not isinstance(raw, list) or not raw:
        probs.add(f"{key} must be a non-empty list, got {_show(raw)}")
        return []
    return raw


def _unique(probs: _Problems, key: str, names: list[tuple[int, str]]) -> None:
    seen: set[str] = set()
    for i, n in names:
        if n in seen:
            probs.add(f"{key}[{i}].name='{n}' is a duplicate (names must be unique)")
        seen.add(n)


def read_yaml(p: Path) -> Any:
    """A YAML file's contents; ConfigError names a missing or malformed file."""
    if not p.is_file():
        raise ConfigError(f"{p}: file not found")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from exc


# ---------------------------------------------------------------- sections


def load_device_classes(path: str | os.PathLike[str]) -> dict[str, DeviceClass]:
    """Load a YAML mapping of device-class name -> power profile.

    Raises:
        ConfigError: the file is missing or malformed, or breaks rules (all listed).
    """
    p = Path(path)
    probs = _Problems(str(p))
    classes = _device_classes(probs, read_yaml(p))
    probs.raise_any()
    return classes


def _device_classes(probs: _Problems, raw: Any) -> dict[str, DeviceClass]:
    if not isinstance(raw, dict) or not raw:
        probs.add("device_classes must be a non-empty mapping of name -> profile")
        return {}
    out = {}
    for name, body in raw.items():
        r = _Reader(probs, f"device_classes.{name}", body, "device_classes.<name>")
        v = r.fields(DeviceClass)
        if r.ok and not {"power_idle_w", "power_busy_w"} & r.bad and v["power_busy_w"] < v["power_idle_w"]:
            probs.add(f"device_classes.{name}.power_busy_w={v['power_busy_w']} must be >= "
                      f"power_idle_w={v['power_idle_w']}")
        out[str(name)] = DeviceClass(name=str(name), **v)
    return out


def _fleet_device_classes(probs: _Problems, p: Path, raw: Any) -> dict[str, DeviceClass] | None:
    """The fleet's device classes, inline or from their file; None when unreadable."""
    lines = len(probs.lines)
    if isinstance(raw, str):
        dc_path = Path(raw) if os.path.isabs(raw) else p.parent / raw
        if not dc_path.is_file():
            probs.add(f"device_classes='{raw}' is not a file (looked at {dc_path})")
            return None
        try:
            classes = _device_classes(_Problems(str(dc_path), probs.lines), read_yaml(dc_path))
        except ConfigError as exc:
            probs.lines.append(str(exc))
            return None
    else:
        classes = _device_classes(probs, raw)
    return classes if classes or len(probs.lines) == lines else None


def _nodes(probs: _Problems, raw: Any, classes: dict[str, DeviceClass] | None) -> tuple[list[NodeConfig], bool]:
    """The nodes, and whether every node's name could be read (for the cross-checks)."""
    nodes, names, complete = [], [], True
    for i, body in enumerate(_list(probs, "nodes", raw)):
        r = _Reader(probs, f"nodes[{i}]", body, "nodes[]")
        if not r.ok:
            complete = False
            continue
        v = r.fields(NodeConfig)
        if classes is not None and "device_class" not in r.bad and v["device_class"] not in classes:
            probs.add(f"nodes[{i}].device_class='{v['device_class']}' is not a device class "
                      f"(known: {', '.join(classes)})")
        complete = complete and "name" not in r.bad
        if "name" not in r.bad:
            names.append((i, v["name"]))
        nodes.append(NodeConfig(**v))
    _unique(probs, "nodes", names)
    return nodes, complete and bool(nodes)


def _experts(probs: _Problems, raw: Any, node_names: list[str] | None) -> list[ExpertConfig]:
    experts, names = [], []
    for i, body in enumerate(_list(probs, "experts", raw)):
        r = _Reader(probs, f"experts[{i}]", body, "experts[]")
        if not r.ok:
            continue
        v = r.fields(ExpertConfig)
        if node_names is not None and "node" not in r.bad and v["node"] not in node_names:
            probs.add(f"experts[{i}].node='{v['node']}' is not a node (known: {', '.join(node_names)})")
        if "name" not in r.bad:
            names.append((i, v["name"]))
        experts.append(ExpertConfig(**v))
    _unique(probs, "experts", names)
    return experts


def _categories(probs: _Problems, raw: Any) -> tuple[str, ...] | None:
    """The categories; None when they could not be read."""
    cats = _list(probs, "categories", raw)
    bad = [i for i, c in enumerate(cats) if not isinstance(c, str) or not c]
    for i in bad:
        probs.add(f"categories[{i}]={_show(cats[i])} must be a non-empty string")
    if not bad and len(set(cats)) != len(cats):
        probs.add(f"categories={cats} has duplicates")
    return tuple(cats) if cats and not bad else None


def _budget(probs: _Problems, raw: Any, categories: tuple[str, ...] | None) -> BudgetConfig:
    if raw is None:
        return BudgetConfig()
    r = _Reader(probs, "budget", raw, "budget")
    energy = r.get("energy_j")
    lat_raw = r.raw.get("latency_ms", math.inf)
    if not isinstance(lat_raw, dict):
        value, problem = dataclasses.replace(r.keys["latency_ms"], type="number").check(lat_raw)
        if problem:
            probs.add(f"budget.latency_ms={_show(lat_raw)} {problem}")
        return BudgetConfig(energy_j=energy, latency_ms=value)
    latency = {}
    for c, ms in lat_raw.items():
        if categories is not None and c not in categories:
            probs.add(f"budget.latency_ms.{c} is not a known field (allowed: {', '.join(sorted(categories))})")
            continue
        value, problem = Key(f"budget.latency_ms.{c}", "number", allow_inf=True).check(ms)
        if problem:
            probs.add(f"budget.latency_ms.{c}={_show(ms)} {problem}")
        latency[str(c)] = value
    missing = [c for c in categories or () if c not in latency]
    if missing:
        probs.add(f"budget.latency_ms lacks categories {missing} (give one value, or one per category)")
    return BudgetConfig(energy_j=energy, latency_ms=latency)


def _coordinator(probs: _Problems, raw: Any, node_names: list[str] | None) -> CoordinatorConfig | None:
    r = _Reader(probs, "coordinator", raw, "coordinator")
    if not r.ok:
        return None
    c = CoordinatorConfig(**r.fields(CoordinatorConfig))
    if node_names is not None and "node" not in r.bad and c.node not in node_names:
        probs.add(f"coordinator.node='{c.node}' is not a node (known: {', '.join(node_names)})")
    if c.http and "http_api_keys" not in r.bad and c.http_api_keys is None:
        host = c.http.rpartition(":")[0]
        if not (host in ("localhost", "::1", "[::1]") or host.startswith("127.")):
            probs.add(f"coordinator.http={c.http!r} is not a loopback address: "
                      "set coordinator.http_api_keys (a file of API keys) to serve it")
    if not {"reconnect_min_s", "reconnect_max_s"} & r.bad and c.reconnect_max_s < c.reconnect_min_s:
        probs.add(f"coordinator.reconnect_max_s={c.reconnect_max_s} must be >= "
                  f"reconnect_min_s={c.reconnect_min_s}")
    return c


# ---------------------------------------------------------------- the fleet


def check_fleet(path: str | os.PathLike[str]) -> tuple[FleetConfig | None, list[str]]:
    """Load and validate a fleet YAML, collecting every problem.

    Returns:
        ``(fleet, [])`` for a valid file, else ``(None, problems)``: one line per problem,
        each naming the file, the key path, the value and the rule broken.
    """
    p = Path(path)
    src = str(p)
    probs = _Problems(src)
    try:
        raw = read_yaml(p)
    except ConfigError as exc:
        return None, [str(exc)]
    top = _Reader(probs, "", raw, "")
    if not top.ok:
        return None, probs.lines
    name = top.get("name") if "name" in raw else p.stem
    classes = _fleet_device_classes(probs, p, raw["device_classes"]) if "device_classes" in raw else None
    nodes, names_complete = _nodes(probs, raw["nodes"], classes) if "nodes" in raw else ([], False)
    node_names = [n.name for n in nodes] if names_complete else None
    experts = _experts(probs, raw["experts"], node_names) if "experts" in raw else []
    categories = _categories(probs, raw["categories"]) if "categories" in raw else None
    budget = _budget(probs, raw.get("budget"), categories)
    coordinator = _coordinator(probs, raw["coordinator"], node_names) if "coordinator" in raw else None
    if probs.lines or classes is None or categories is None or coordinator is None:
        return None, probs.lines
    return FleetConfig(name=name, path=src, device_classes=classes, nodes=tuple(nodes),
                       experts=tuple(experts), categories=categories, budget=budget,
                       coordinator=coordinator), []


def load_fleet(path: str | os.PathLike[str]) -> FleetConfig:
    """Load and validate a fleet YAML.

    Raises:
        ConfigError: listing every problem, one per line, each naming the file, the key
            path, the value and the rule broken (:func:`check_fleet` returns them).
    """
    fleet, problems = check_fleet(path)
    if fleet is None:
        raise ConfigError("\n".join(problems) or f"{path}: not a fleet")
    return fleet
