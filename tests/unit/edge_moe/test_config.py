"""Fleet YAML loader: every file in configs/ loads; every rule names file, field and value; every
problem of a file is reported at once; the schema table matches the dataclasses and the docs."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import yaml

from edge_moe.config import (
    CoordinatorConfig,
    DeviceClass,
    ExpertConfig,
    NodeConfig,
    check_fleet,
    load_device_classes,
    load_fleet,
    schema_markdown,
)
from edge_moe.config_schema import MINIMAL_EXAMPLE, REQUIRED, SCHEMA, keys_of
from edge_moe.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("fleet*.yaml")))
def test_every_fleet_in_configs_loads(name: str) -> None:
    fleet = load_fleet(CONFIGS / name)
    assert fleet.nodes and fleet.experts and fleet.categories
    for e in fleet.experts:
        assert fleet.node(e.node).name == e.node
        assert fleet.device_class_of(e.node).power_busy_w > 0


def test_fleet_files_exist() -> None:
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    assert {"fleet.local.yaml", "fleet.example.yaml", "device_classes.yaml"} <= names


def test_device_classes_cite_sources() -> None:
    classes = load_device_classes(CONFIGS / "device_classes.yaml")
    assert {"cpu", "jetson-agx-orin", "rtx-4090"} <= set(classes)
    for dc in classes.values():
        assert len(dc.source) > 20, dc.name
        assert dc.power_busy_w >= dc.power_idle_w


def test_local_fleet_shape() -> None:
    fleet = load_fleet(CONFIGS / "fleet.local.yaml")
    assert len(fleet.nodes) >= 3
    assert fleet.coordinator.node in {n.name for n in fleet.nodes}
    assert fleet.node("cpu-a").resource == "edge_moe_node:cpu-a"


def test_example_fleet_per_category_budget() -> None:
    fleet = load_fleet(CONFIGS / "fleet.example.yaml")
    assert isinstance(fleet.budget.latency_ms, dict)
    assert set(fleet.budget.latency_ms) == set(fleet.categories)
    assert {n.device_class for n in fleet.nodes} >= {"jetson-agx-orin", "rtx-4090"}


def _write(tmp_path: Path, mutate) -> Path:  # type: ignore[no-untyped-def]
    raw = yaml.safe_load((CONFIGS / "fleet.local.yaml").read_text())
    raw["device_classes"] = yaml.safe_load((CONFIGS / "device_classes.yaml").read_text())
    mutate(raw)
    p = tmp_path / "fleet.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r["experts"][1].update(node="orin-9"),
         "experts[1].node='orin-9' is not a node (known: cpu-a, cpu-b, cpu-c)"),
        (lambda r: r["nodes"][0].update(colour="red"), "nodes[0].colour is not a known field"),
        (lambda r: r["nodes"][0].update(max_batch=0), "nodes[0].max_batch=0 must be an integer >= 1"),
        (lambda r: r["nodes"][1].update(max_batch=2.5), "nodes[1].max_batch=2.5 must be an integer >= 1"),
        (lambda r: r["nodes"][1].update(batch_wait_ms=-1), "nodes[1].batch_wait_ms=-1 must be >= 0"),
        (lambda r: r["nodes"][2].update(batch_wait_ms=float("nan")), "nodes[2].batch_wait_ms=nan must be finite"),
        (lambda r: r["nodes"][0].update(prepack="no"), "nodes[0].prepack='no' must be true or false"),
        (lambda r: r["nodes"][0].update(spin=-1), "nodes[0].spin=-1"),
        (lambda r: r["nodes"][0].update(spin=1.5), "nodes[0].spin=1.5"),
        (lambda r: r["nodes"][0].update(context=8), "nodes[0].context=8"),
        (lambda r: r["nodes"][0].update(context="4k"), "nodes[0].context='4k'"),
        (lambda r: r["nodes"][0].update(llama_cpp_batch="fast"), "nodes[0].llama_cpp_batch='fast'"),
        (lambda r: r["nodes"][0].update(prefix_reuse="yes"), "nodes[0].prefix_reuse='yes'"),
        (lambda r: r["nodes"][0].update(stream_flush_ms=float("nan")), "nodes[0].stream_flush_ms=nan"),
        (lambda r: r["nodes"][0].update(stream_flush_ms=-5), "nodes[0].stream_flush_ms=-5"),
        (lambda r: r.update(extra=1), "extra is not a known field"),
        (lambda r: r["nodes"][2].update(device_class="tpu"), "nodes[2].device_class='tpu' is not a device class"),
        (lambda r: r["nodes"].append({"name": "cpu-a", "device_class": "cpu"}), "nodes[3].name='cpu-a' is a duplicate"),
        (lambda r: r["experts"][0].update(runner="trt"), "experts[0].runner='trt' is not one of ['onnxruntime', 'tensorrt', 'llama.cpp']"),
        (lambda r: r["budget"].update(energy_j=float("nan")), "budget.energy_j=nan must be finite"),
        (lambda r: r["budget"].update(energy_j=-1), "budget.energy_j=-1 must be >= 0"),
        (lambda r: r["budget"].update(latency_ms={"stem": 5}), "budget.latency_ms lacks categories"),
        (lambda r: r["budget"].update(latency_ms={"chemistry": 5}), "budget.latency_ms.chemistry is not a known field"),
        (lambda r: r["coordinator"].update(liveness=0), "coordinator.liveness=0 must be an integer >= 1"),
        (lambda r: r["coordinator"].update(node="nowhere"), "coordinator.node='nowhere' is not a node"),
        (lambda r: r["coordinator"].update(max_prompt_bytes=0),
         "coordinator.max_prompt_bytes=0 must be an integer >= 1"),
        (lambda r: r["coordinator"].update(max_prompt_bytes="64k"),
         "coordinator.max_prompt_bytes='64k' must be an integer >= 1"),
        (lambda r: r["coordinator"].update(max_prompt_bytes=1.5),
         "coordinator.max_prompt_bytes=1.5 must be an integer >= 1"),
        (lambda r: r["coordinator"].update(quarantine_after=0),
         "coordinator.quarantine_after=0 must be an integer >= 1"),
        (lambda r: r["coordinator"].update(quarantine_s=0), "coordinator.quarantine_s=0 must be > 0"),
        (lambda r: r["coordinator"].update(quarantine_s=float("inf")),
         "coordinator.quarantine_s=inf must be finite"),
        (lambda r: r["coordinator"].update(quarantine_window_s=3), "coordinator.quarantine_window_s is not a known field"),
        (lambda r: r["coordinator"].update(http="8000"), "coordinator.http='8000' must be host:port"),
        (lambda r: r["coordinator"].update(http="127.0.0.1:70000"), "coordinator.http='127.0.0.1:70000' must be host:port"),
        (lambda r: r["coordinator"].update(http="0.0.0.0:8000"),
         "coordinator.http='0.0.0.0:8000' is not a loopback address: set coordinator.http_api_keys"),
        (lambda r: r["coordinator"].update(max_waiting=0), "coordinator.max_waiting=0 must be an integer >= 1"),
        (lambda r: r["coordinator"].update(load_aware="yes"), "coordinator.load_aware='yes' must be true or false"),
        (lambda r: r["device_classes"]["cpu"].update(power_busy_w=1.0), "power_busy_w=1.0 must be >= power_idle_w=5.0"),
        (lambda r: r["device_classes"]["cpu"].pop("source"), "device_classes.cpu.source is required"),
        (lambda r: r.pop("experts"), "experts is required"),
        (lambda r: r.update(categories=[]), "categories must be a non-empty list"),
        (lambda r: r["coordinator"].update(frontend="tcp//127.0.0.1:5555"),
         "coordinator.frontend='tcp//127.0.0.1:5555' must be tcp://HOST:PORT"),
        (lambda r: r["coordinator"].update(backend="tcp://127.0.0.1:99999"),
         "coordinator.backend='tcp://127.0.0.1:99999' must be tcp://HOST:PORT"),
        (lambda r: r["nodes"][0].update(ray_resource=5), "nodes[0].ray_resource=5 must be a string"),
        (lambda r: r["device_classes"]["cpu"].update(energy_counters=["smi"]),
         "device_classes.cpu.energy_counters=list must be a list drawn from ['nvml', 'rapl', 'jetson']"),
    ],
)
def test_bad_fleet_names_file_field_value(tmp_path: Path, mutate, expected: str) -> None:  # type: ignore[no-untyped-def]
    p = _write(tmp_path, mutate)
    with pytest.raises(ConfigError) as exc:
        load_fleet(p)
    assert str(exc.value).startswith(str(p) + ": "), str(exc.value)
    assert expected in str(exc.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_fleet(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_fleet(bad)
    ref = _write(tmp_path, lambda r: r.update(device_classes="missing.yaml"))
    with pytest.raises(ConfigError, match="device_classes='missing.yaml' is not a file"):
        load_fleet(ref)


def test_inf_budget_and_defaults(tmp_path: Path) -> None:
    p = _write(tmp_path, lambda r: r.pop("budget"))
    fleet = load_fleet(p)
    assert math.isinf(fleet.budget.energy_j) and math.isinf(fleet.budget.latency_ms)  # type: ignore[arg-type]


def test_coordinator_top_k_default_and_null(tmp_path: Path) -> None:
    fleet = load_fleet(_write(tmp_path, lambda r: r["coordinator"].pop("top_k")))
    assert fleet.coordinator.top_k == 2
    fleet = load_fleet(_write(tmp_path, lambda r: r["coordinator"].update(top_k=None)))
    assert fleet.coordinator.top_k is None


def test_coordinator_limits_default_and_set(tmp_path: Path) -> None:
    cfg = load_fleet(CONFIGS / "fleet.local.yaml").coordinator
    assert (cfg.max_prompt_bytes, cfg.quarantine_after, cfg.quarantine_s) == (65536, 3, 30.0)
    fleet = load_fleet(_write(tmp_path, lambda r: r["coordinator"].update(
        max_prompt_bytes=1024, quarantine_after=5, quarantine_s=2.5)))
    cfg = fleet.coordinator
    assert (cfg.max_prompt_bytes, cfg.quarantine_after, cfg.quarantine_s) == (1024, 5, 2.5)
    assert (cfg.load_aware, cfg.max_pending, cfg.max_waiting, cfg.http) == (True, 1024, 256, None)
    cfg = load_fleet(_write(tmp_path, lambda r: r["coordinator"].update(
        load_aware=False, http="0.0.0.0:0", http_api_keys="keys.txt"))).coordinator
    assert (cfg.load_aware, cfg.http, cfg.http_api_keys) == (False, "0.0.0.0:0", "keys.txt")


def test_placement_lists_every_node_and_its_experts() -> None:
    fleet = load_fleet(CONFIGS / "fleet.example.yaml")
    placement = fleet.placement()
    assert set(placement) == {n.name for n in fleet.nodes}
    assert placement["orin-2"] == ("gemma3-270m", "smollm2-135m") and placement["coord"] == ("smollm2-135m-int4",)
    assert sorted(e for es in placement.values() for e in es) == sorted(e.name for e in fleet.experts)


def test_node_batching_defaults_and_set(tmp_path: Path) -> None:
    fleet = load_fleet(_write(tmp_path, lambda r: r["nodes"][1].update(max_batch=1, batch_wait_ms=0)))
    a, b = fleet.node("cpu-a"), fleet.node("cpu-b")
    assert (a.max_batch, a.batch_wait_ms) == (8, 5.0)
    assert (b.max_batch, b.batch_wait_ms) == (1, 0.0)
    assert a.prepack and b.prepack
    assert (a.spin, a.stream_flush_ms, a.prefix_reuse) == (None, 30.0, "exact")
    fleet = load_fleet(_write(tmp_path, lambda r: r["nodes"][0].update(spin=0, stream_flush_ms=0)))
    assert (fleet.node("cpu-a").spin, fleet.node("cpu-a").stream_flush_ms) == (0, 0.0)


def test_every_problem_at_once(tmp_path: Path) -> None:
    def five(r: dict) -> None:  # type: ignore[type-arg]
        r["nodes"][0].update(max_batch=0)
        r["nodes"][1].update(colour="red")
        r["nodes"][2].update(device_class="tpu")
        r["experts"][1].update(node="orin-9")
        r["coordinator"].update(heartbeat_s=-1)

    p = _write(tmp_path, five)
    fleet, problems = check_fleet(p)
    assert fleet is None and len(problems) == 5, problems
    assert all(line.startswith(f"{p}: ") for line in problems)
    with pytest.raises(ConfigError) as exc:
        load_fleet(p)
    assert str(exc.value).splitlines() == problems
    for expected in ("nodes[0].max_batch=0", "nodes[1].colour is not a known field",
                     "nodes[2].device_class='tpu'", "experts[1].node='orin-9'", "coordinator.heartbeat_s=-1"):
        assert sum(expected in line for line in problems) == 1, expected


@pytest.mark.parametrize(
    ("mutate", "only"),
    [  # a value that cannot be read is reported once; the cross-checks that need it are skipped
        (lambda r: r["nodes"][0].update(name=5), "nodes[0].name=5 must be a non-empty string"),
        (lambda r: r["nodes"].__setitem__(0, "cpu-a"), "nodes[0]='cpu-a' must be a mapping"),
        (lambda r: r.update(device_classes="missing.yaml"), "device_classes='missing.yaml' is not a file"),
        (lambda r: r.update(categories="stem"), "categories must be a non-empty list, got 'stem'"),
    ],
)
def test_unreadable_values_give_one_line(tmp_path: Path, mutate, only: str) -> None:  # type: ignore[no-untyped-def]
    fleet, problems = check_fleet(_write(tmp_path, mutate))
    assert fleet is None and len(problems) == 1 and only in problems[0], problems


def test_check_fleet_of_a_good_file() -> None:
    fleet, problems = check_fleet(CONFIGS / "fleet.local.yaml")
    assert problems == [] and fleet == load_fleet(CONFIGS / "fleet.local.yaml")


@pytest.mark.parametrize(("section", "cls", "skip"), [
    ("device_classes.<name>", DeviceClass, {"name", "notes"}), ("nodes[]", NodeConfig, set()),
    ("experts[]", ExpertConfig, set()), ("coordinator", CoordinatorConfig, set()),
])
def test_schema_is_the_dataclasses(section: str, cls: type, skip: set[str]) -> None:
    keys = keys_of(section)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.name.startswith("_")}
    assert set(keys) - skip == set(fields) - skip
    for name, key in keys.items():
        if name in skip:
            continue
        f = fields[name]
        default = REQUIRED if f.default is dataclasses.MISSING else f.default
        assert key.default == default or (key.type == "list" and tuple(key.default) == default), name


def test_every_key_is_documented() -> None:
    assert len({k.path for k in SCHEMA}) == len(SCHEMA)
    for k in SCHEMA:
        assert k.doc and k.rule(), k.path
        assert f"| `{k.name}` |" in schema_markdown()


def test_the_committed_reference_is_generated() -> None:
    doc = REPO / "docs" / "reference" / "fleet-yaml.md"
    assert doc.read_text() == schema_markdown(), (
        "docs/reference/fleet-yaml.md is stale; regenerate it: .venv/bin/python -c 'from edge_moe.config "
        "import schema_markdown as m; print(m(), end=\"\")' > docs/reference/fleet-yaml.md")


def test_the_minimal_example_loads(tmp_path: Path) -> None:
    (tmp_path / "device_classes.yaml").write_text((CONFIGS / "device_classes.yaml").read_text())
    p = tmp_path / "fleet.yaml"
    p.write_text(MINIMAL_EXAMPLE)
    fleet = load_fleet(p)
    assert fleet.name == "tiny" and fleet.coordinator.frontend == "tcp://127.0.0.1:5555"


def test_a_node_alone_on_its_host_spins_longer(tmp_path: Path) -> None:
    """``node_spin``: a node's ``spin``, else 300 alone on its host, 100 sharing it with a node
    that has experts (the tables in edge_moe/runtime/gguf_start.py)."""
    from edge_moe.runtime.gguf_start import DEFAULT_SPIN
    from nodes.build import SPIN_ALONE, SPIN_SHARED, node_spin

    assert (SPIN_SHARED, SPIN_ALONE) == (DEFAULT_SPIN, 300)
    demo = load_fleet(CONFIGS / "fleet.demo.real.yaml")  # three nodes on one host
    assert {node_spin(demo, n.name) for n in demo.nodes} == {SPIN_SHARED}

    def apart(r: dict) -> None:  # type: ignore[type-arg]
        for i, n in enumerate(r["nodes"]):
            n["host"] = f"10.0.0.{i + 1}"
        r["nodes"][1]["spin"] = 7

    fleet = load_fleet(_write(tmp_path, apart))
    assert [node_spin(fleet, n.name) for n in fleet.nodes] == [SPIN_ALONE, 7, SPIN_ALONE]
