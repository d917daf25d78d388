"""Building a node from the fleet config, and the ``edge-moe node`` command's front door."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_moe.cli import app
from edge_moe.config import load_fleet
from edge_moe.errors import ArtifactError, ConfigError
from nodes.server import backend_endpoint, build_experts, build_server

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def test_build_experts_from_the_fleet_config(tmp_path):
    fleet = load_fleet(CONFIGS / "fleet.local.yaml")
    assert backend_endpoint(fleet) == "tcp://127.0.0.1:5556"
    assert backend_endpoint(load_fleet(CONFIGS / "fleet.example.yaml")) == "tcp://10.0.0.2:5556"
    toys = build_experts(fleet, "cpu-a", toy=True)
    assert list(toys) == ["smollm2-135m"] and toys["smollm2-135m"].runner_name == "toy-onnx"
    with pytest.raises(ConfigError, match="unknown node 'nope'"):
        build_experts(fleet, "nope", toy=True)
    with pytest.raises(ArtifactError, match=str(tmp_path)):
        build_experts(fleet, "cpu-a", artifacts_dir=tmp_path)


def test_build_server_takes_the_node_settings_from_the_config():
    with build_server(CONFIGS / "fleet.local.yaml", "cpu-a", toy=True, meter="modelled") as server:
        spec = load_fleet(CONFIGS / "fleet.local.yaml").node("cpu-a")
        assert server.endpoint == "tcp://127.0.0.1:5556" and list(server.experts) == ["smollm2-135m"]
        assert (server.max_batch, server.batch_wait_ms) == (spec.max_batch, spec.batch_wait_ms)
        assert server.executor.stream_flush_ms == spec.stream_flush_ms == 30.0
        assert server.meter.source == "modelled"


def test_the_node_command_has_help_and_fails_cleanly():
    runner = CliRunner()
    res = runner.invoke(app, ["node", "--help"])
    assert res.exit_code == 0
    for option in ("--config", "--node", "--backend", "--artifacts", "--toy", "--toy-delay-ms", "--meter",
                   "--threads", "--curve-keys", "--key-name"):
        assert option in res.output, option
    res = runner.invoke(app, ["node", "--config", str(CONFIGS / "fleet.local.yaml"), "--node", "nope", "--toy"])
    assert res.exit_code == 1 and "ConfigError" in res.output and "unknown node 'nope'" in res.output


def test_each_runner_gets_its_node_settings(monkeypatch, tmp_path):
    """onnxruntime experts get ``prepack``, llama.cpp experts ``spin`` and ``prefix_reuse``
    (nodes[] of the file)."""
    import yaml

    import edge_moe.runtime.runners as runners

    made = []
    monkeypatch.setattr(runners, "make_runner", lambda name, path, **kw: made.append((name, kw)) or object())
    raw = yaml.safe_load((CONFIGS / "fleet.local.yaml").read_text())
    raw["nodes"][0].update(spin=250, prepack=False, prefix_reuse="tokens", context=1000)
    raw["experts"] = [{"name": "a", "node": raw["nodes"][0]["name"], "artifact": "a/fp32"},
                      {"name": "b", "node": raw["nodes"][0]["name"], "artifact": "b.gguf", "runner": "llama.cpp",
                       "precision": "int4"}]
    raw["device_classes"] = str(CONFIGS / raw["device_classes"]) if isinstance(raw["device_classes"], str) \
        else raw["device_classes"]
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(raw))
    build_experts(load_fleet(path), raw["nodes"][0]["name"], runner_kwargs={"intra_op_threads": 2})
    assert made == [("onnxruntime", {"intra_op_threads": 2, "prepack": False}),
                    ("llama.cpp", {"intra_op_threads": 2, "spin": 250, "prefix_reuse": "tokens", "max_context": 1000})]
    raw["nodes"][0].pop("context")  # null: the runner's own cap (DEFAULT_CONTEXT)
    path.write_text(yaml.safe_dump(raw))
    made.clear()
    build_experts(load_fleet(path), raw["nodes"][0]["name"])
    assert "max_context" not in made[1][1] and "n_seq" not in made[1][1]  # llama_cpp_batch: off
    raw["nodes"][0].update(llama_cpp_batch="exact", max_batch=6)
    path.write_text(yaml.safe_dump(raw))
    made.clear()
    build_experts(load_fleet(path), raw["nodes"][0]["name"])
    assert made[1][1]["n_seq"] == 6 and "n_seq" not in made[0][1]  # llama.cpp only, max_batch sequences
    raw["nodes"][0].update(max_batch=1)
    path.write_text(yaml.safe_dump(raw))
    made.clear()
    build_experts(load_fleet(path), raw["nodes"][0]["name"])
    assert "n_seq" not in made[1][1]  # max_batch 1: nothing to batch
