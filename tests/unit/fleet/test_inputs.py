"""`deploy` refuses a gate, calibration table or profiles made for other experts before it
starts anything, naming both lists (otherwise every query would end `no_experts`)."""

from __future__ import annotations

import time

import pytest

from edge_moe import fleet as F
from edge_moe import paths
from edge_moe.config import load_fleet
from edge_moe.errors import FleetError
from edge_moe.fleet.launch import inputs_mismatch
from tests.toyfleet import make_assets, write_fleet


def test_matching_inputs_pass(assets):
    assert inputs_mismatch(load_fleet(assets.fleet), assets.gate, assets.calibration, assets.profiles) == []


def test_other_experts_are_named_file_by_file(assets, tmp_path):
    other = make_assets(tmp_path / "other", "other", seed=9)
    renamed = [e.replace("synth-expert", "mine") for e in assets.experts]
    fleet_path = write_fleet(tmp_path / "fleet.yaml", tuple(renamed), assets.categories, "mine")
    problems = inputs_mismatch(load_fleet(fleet_path), other.gate, other.calibration, other.profiles)
    assert len(problems) == 3
    for what, p in zip(("gate", "calibration table", "profiles"), problems, strict=True):
        assert p.startswith(f"the {what} ") and str(sorted(other.experts)) in p and str(sorted(renamed)) in p
    missing = inputs_mismatch(load_fleet(fleet_path), tmp_path / "nope.onnx", other.calibration, other.profiles)
    assert "cannot be read" in missing[0] and "nope.onnx" in missing[0]


def test_deploy_refuses_before_starting_anything(assets, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_MOE_STATE", str(tmp_path / "state"))
    renamed = tuple(e.replace("synth-expert", "mine") for e in assets.experts)
    fleet = load_fleet(write_fleet(tmp_path / "fleet.yaml", renamed, assets.categories, "mismatch"))
    t0 = time.monotonic()
    with pytest.raises(FleetError, match=r"cannot deploy: the gate .* is for experts \[.*synth-expert-0"):
        F.deploy(fleet, gate=assets.gate, calibration=assets.calibration, profiles=assets.profiles,
                 toy=True, toy_encoder_dim=16)
    assert time.monotonic() - t0 < 5
    assert not (paths.state_dir() / "mismatch.json").exists()  # nothing was started or recorded


def test_deploy_takes_the_demo_files_of_the_fleet_it_deploys(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from edge_moe.cli import app

    monkeypatch.setenv("EDGE_MOE_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(app, ["deploy", str(paths.CONFIGS / "fleet.demo.real.yaml")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert str(tmp_path / "cache" / "demo" / "real" / "gate.onnx") in res.output.replace("\n", "")
    assert "run `make demo` once" in res.output
    res = CliRunner().invoke(app, ["deploy", str(paths.CONFIGS / "fleet.demo.yaml")])
    assert str(tmp_path / "cache" / "demo" / "gate.onnx") in res.output.replace("\n", "")


def test_a_fleet_of_some_of_the_gates_experts_fits(assets, tmp_path):
    """The gate is trained once on all experts and masked to the deployed ones: a fleet of a
    subset is fine; only an expert the files do not know is refused."""
    fleet = load_fleet(write_fleet(tmp_path / "sub.yaml", assets.experts, assets.categories, "sub",
                                   nodes={"node-a": [0], "node-b": [1]}))
    assert inputs_mismatch(fleet, assets.gate, assets.calibration, assets.profiles) == []


def test_serving_niceness_from_the_environment(assets, tmp_path, monkeypatch):
    """The serving actors run at nice 0 unless EDGE_MOE_NICENESS says otherwise (Ray's own
    default, 15, made experts yield to every busier process); a bad value is refused by name
    before anything starts."""
    from edge_moe.errors import ConfigError
    from edge_moe.fleet.launch import serving_env

    monkeypatch.delenv("EDGE_MOE_NICENESS", raising=False)
    assert serving_env() == {"env_vars": {"RAY_worker_niceness": "0"}}
    monkeypatch.setenv("EDGE_MOE_NICENESS", " 5 ")
    assert serving_env() == {"env_vars": {"RAY_worker_niceness": "5"}}
    monkeypatch.setenv("EDGE_MOE_STATE", str(tmp_path / "state"))
    fleet = load_fleet(assets.fleet)
    for bad in ("high", "20", "-21", "1.5", "nan"):
        monkeypatch.setenv("EDGE_MOE_NICENESS", bad)
        with pytest.raises(ConfigError, match=rf"EDGE_MOE_NICENESS='{bad}': expected an integer niceness"):
            F.deploy(fleet, gate=assets.gate, calibration=assets.calibration, profiles=assets.profiles,
                     toy=True, toy_encoder_dim=16)
        assert not (paths.state_dir() / f"{fleet.name}.json").exists()
