"""``edge-moe check-config``: every problem at once, ``--deep`` for what stops a deploy, ``--json``,
and a table that fits 80 columns."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from edge_moe.cli import app
from edge_moe.runtime.manifest import MANIFEST_VERSION, Manifest, write_manifest
from tests.toyfleet import Assets, make_assets

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs"


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, ["check-config", *args])


def fake_artifact(d: Path, precision: str = "fp32") -> None:
    """An artifact folder as the runner reads it: manifest.json, the model and the tokenizer."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.onnx").write_bytes(b"onnx")
    (d / "tokenizer.json").write_text("{}")
    write_manifest(d, Manifest(
        manifest_version=MANIFEST_VERSION, kind="decoder", name=d.name, architecture="LlamaForCausalLM",
        model_type="llama", parameter_count=1, precision=precision, opset=18, model_file="model.onnx",
        model_sha256="ab" * 32, source={}, inputs=["input_ids"], outputs=["logits"],
        tokenizer_file="tokenizer.json", special_tokens={},
        decoder={"num_layers": 1, "num_kv_heads": 1, "head_dim": 8, "vocab_size": 10, "max_context": 64,
                 "kv_dtype": "float32"}))


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    """The toy fleet, its gate, calibration table and profiles, and an artifact per expert."""
    d = tmp_path_factory.mktemp("check-config")
    a = make_assets(d, "cc", seed=0)
    for e in a.experts:
        fake_artifact(d / "artifacts" / "toy" / e)
    return a


Mutate = Callable[[dict[str, Any]], None]


@pytest.fixture
def deep(assets: Assets, tmp_path: Path) -> Callable[..., Any]:
    """Run ``check-config --deep --json`` on the toy fleet after ``mutate``; return the JSON and exit code."""
    def run(mutate: Mutate, *extra: str) -> Any:
        raw = yaml.safe_load(assets.fleet.read_text())
        mutate(raw)
        p = tmp_path / "fleet.yaml"
        p.write_text(yaml.safe_dump(raw, sort_keys=False))
        res = invoke(str(p), "--deep", "--json", "--artifacts", str(assets.dir / "artifacts"),
                     "--gate", str(assets.gate), "--calibration", str(assets.calibration),
                     "--profiles", str(assets.profiles), *extra)
        assert "Traceback" not in res.output
        return json.loads(res.stdout), res.exit_code
    return run


def test_five_problems_in_one_run(tmp_path: Path) -> None:
    raw = yaml.safe_load((CONFIGS / "fleet.local.yaml").read_text())
    raw["nodes"][0]["max_batch"] = 0
    raw["nodes"][1]["colour"] = "red"
    raw["experts"][2]["precision"] = "fp8"
    raw["coordinator"]["frontend"] = "tcp//127.0.0.1:5555"
    raw["budget"]["energy_j"] = -1
    p = tmp_path / "fleet.yaml"
    p.write_text(yaml.safe_dump(raw))
    (tmp_path / "device_classes.yaml").write_text((CONFIGS / "device_classes.yaml").read_text())
    res = invoke(str(p))
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "ConfigError: 5 problems" in res.output
    expected = ["nodes[0].max_batch=0 must be an integer >= 1", "nodes[1].colour is not a known field",
                "experts[2].precision='fp8' is not one of", "coordinator.frontend='tcp//127.0.0.1:5555' must be",
                "budget.energy_j=-1 must be >= 0"]
    for e in expected:
        assert f"{p}: {e}" in res.output, e
    out = json.loads(invoke(str(p), "--json").stdout)
    assert out["ok"] is False and out["fleet"] is None and len(out["errors"]) == 5


def test_a_missing_file_is_one_line() -> None:
    res = invoke(str(CONFIGS / "nope.yaml"))
    assert res.exit_code == 1 and "ConfigError: " in res.output and "file not found" in res.output


def test_the_demo_fleet_passes() -> None:
    res = invoke(str(CONFIGS / "fleet.demo.yaml"))
    assert res.exit_code == 0, res.output
    assert "server-1" in res.output and "smollm2-135m-int4" in res.output
    out = json.loads(invoke(str(CONFIGS / "fleet.demo.yaml"), "--json").stdout)
    assert out["ok"] and out["errors"] == [] and [n["name"] for n in out["fleet"]["nodes"]] == [
        "server-1", "minipc-1", "pi-1"]


def test_the_toy_fleet_is_deployable(deep: Callable[..., Any]) -> None:
    out, code = deep(lambda r: None)
    assert (code, out["ok"], out["errors"], out["warnings"]) == (0, True, [], [])
    assert out["fleet"]["coordinator"]["top_k"] == 2


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _expert(i: int, **kw: Any) -> Mutate:
    return lambda r: r["experts"][i].update(**kw)


def _coord(**kw: Any) -> Mutate:
    return lambda r: r["coordinator"].update(**kw)


@pytest.mark.parametrize(("mutate", "expected"), [
    (_expert(1, artifact="toy/nope"), "experts[1].artifact='toy/nope': expert 'synth-expert-1': artifact"),
    (_expert(1, artifact=""), "experts[1].artifact='': expert 'synth-expert-1' has no artifact"),
    (_expert(2, artifact="."), "experts[2].artifact='.': " + "{art} is not an artifact: manifest.json is missing"),
    (_expert(3, precision="int8"), "experts[3].precision='int8' but its artifact's manifest.json"),
    (_expert(0, runner="tensorrt"), "runner 'tensorrt' needs a built engine"),
    (_coord(frontend="tcp://192.0.2.1:5555"), "192.0.2.1 is not an address of this machine"),
    (_coord(backend="tcp://no-such-host.invalid:5556"), "host 'no-such-host.invalid' does not resolve"),
    (_coord(frontend="tcp://0.0.0.0:0"), "coordinator.frontend='tcp://0.0.0.0:0' is not a loopback address"),
    (_coord(frontend="tcp://127.0.0.1:45171", backend="tcp://127.0.0.1:45171"),
     "coordinator.backend='tcp://127.0.0.1:45171' has the port of coordinator.frontend"),
    (_coord(top_k=5), "coordinator.top_k=5 is more than the fleet's 4 experts"),
    (lambda r: r["nodes"].append({"name": "idle", "device_class": "cpu"}), "nodes[3] 'idle' hosts no experts"),
    (lambda r: r["nodes"][1].update(device_class="tpu"), "nodes[1].device_class='tpu' is not a device class"),
    (_coord(http="localhost"), "coordinator.http='localhost' must be host:port"),
    (lambda r: r["experts"][0].update(name="other"),
     "the gate {gate} is for experts ['synth-expert-0', 'synth-expert-1', 'synth-expert-2', 'synth-expert-3'], "
     "the fleet 'cc' has ['other', 'synth-expert-1', 'synth-expert-2', 'synth-expert-3']"),
])
def test_deep_catches(deep: Callable[..., Any], assets: Assets, mutate: Mutate, expected: str) -> None:
    out, code = deep(mutate)
    expected = expected.format(gate=assets.gate, art=assets.dir / "artifacts")
    assert code == 1 and not out["ok"], out
    assert sum(expected in e for e in out["errors"]) == 1, out["errors"]


def test_deep_catches_a_port_in_use(deep: Callable[..., Any], taken_port: int) -> None:
    out, code = deep(_coord(frontend=f"tcp://127.0.0.1:{taken_port}"))
    assert code == 1
    assert out["errors"] == [f"{out['fleet']['path']}: coordinator.frontend='tcp://127.0.0.1:{taken_port}' "
                             f"cannot be bound here: port {taken_port} is already taken on this machine"]


def test_deep_reports_everything_at_once(deep: Callable[..., Any], taken_port: int) -> None:
    def many(r: dict[str, Any]) -> None:
        r["experts"][1]["artifact"] = "toy/nope"
        r["experts"][3]["precision"] = "int8"
        r["coordinator"].update(backend=f"tcp://127.0.0.1:{taken_port}", top_k=9)
        r["nodes"].append({"name": "idle", "device_class": "cpu"})

    out, code = deep(many)
    assert code == 1 and len(out["errors"]) == 5, out["errors"]


def test_deep_leaves_another_machine_s_addresses_alone(deep: Callable[..., Any]) -> None:
    out, code = deep(lambda r: (r["nodes"][0].update(host="192.0.2.7"), r["coordinator"].update(
        frontend="tcp://0.0.0.0:5555", curve=True)))
    assert code == 0 and out["errors"] == [], out
    assert len(out["warnings"]) == 1 and "at 192.0.2.7, not this machine" in out["warnings"][0]


def test_inputs_need_deep_and_each_other(assets: Assets) -> None:
    res = invoke(str(assets.fleet), "--gate", str(assets.gate))
    assert res.exit_code == 1 and "give --gate, --calibration and --profiles together, with --deep" in res.output


def test_the_example_fleet_is_deployable_but_for_its_artifacts(tmp_path: Path) -> None:
    from edge_moe.config import load_fleet

    fleet = load_fleet(CONFIGS / "fleet.example.yaml")
    assert all(e.runner == "onnxruntime" for e in fleet.experts)
    for e in fleet.experts:
        fake_artifact(tmp_path / e.artifact, e.precision)
    res = invoke(str(CONFIGS / "fleet.example.yaml"), "--deep", "--json", "--artifacts", str(tmp_path))
    out = json.loads(res.stdout)
    assert res.exit_code == 0 and out["errors"] == [], out
    assert [w for w in out["warnings"] if "not this machine" not in w] == []


def test_the_table_fits_80_columns(tmp_path: Path) -> None:
    raw = yaml.safe_load((CONFIGS / "fleet.example.yaml").read_text())
    raw["device_classes"] = str(CONFIGS / "device_classes.yaml")
    raw["experts"].append({"name": "a-very-long-expert-name-that-would-not-fit-in-one-column-of-the-table",
                           "node": "orin-1", "precision": "int4"})
    p = tmp_path / "a-long-fleet-file-name-so-that-the-title-is-longer-than-eighty-columns.yaml"
    p.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "COLUMNS": "80"}
    res = subprocess.run([sys.executable, "-m", "edge_moe.cli", "check-config", str(p)], capture_output=True,
                         text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    assert sum("orin-1" in line for line in lines) == 1 and "qwen2.5-coder-0.5b" in res.stdout


def test_llama_cpp_nodes_show_their_spin_and_prompt_reuse(tmp_path: Path) -> None:
    """A node with a llama.cpp expert shows its spin and ``prefix_reuse`` (table and --json)."""
    raw = yaml.safe_load((CONFIGS / "fleet.local.yaml").read_text())
    raw["experts"][0].update(runner="llama.cpp", artifact="x/model.gguf", precision="int4")
    raw["nodes"][0]["prefix_reuse"] = "tokens"
    raw["nodes"][0]["context"] = 2048
    p = tmp_path / "fleet.yaml"
    p.write_text(yaml.safe_dump(raw))
    (tmp_path / "device_classes.yaml").write_text((CONFIGS / "device_classes.yaml").read_text())
    res = invoke(str(p))
    assert res.exit_code == 0, res.output
    assert "prefix tokens" in res.output and res.output.count("prefix ") == 1
    nodes = json.loads(invoke(str(p), "--json").stdout)["fleet"]["nodes"]
    assert [n["prefix_reuse"] for n in nodes] == ["tokens"] + ["exact"] * (len(nodes) - 1)
    assert [n["context"] for n in nodes] == [2048] + [None] * (len(nodes) - 1)
    assert "context ≤ 2048" in res.output
