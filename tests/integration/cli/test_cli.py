"""The `edge-moe` CLI end to end on the committed synthetic example data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_moe.calibration import TEST, load_calibration
from edge_moe.cli import app
from edge_moe.profiles import load_profiles
from edge_moe.runtime.gate import OnnxGate
from gating.planning.mixture import apply_prior_correction, evaluate_subset

REPO = Path(__file__).resolve().parents[3]
CAL = REPO / "configs" / "example" / "calibration.synthetic.npz"
PROF = REPO / "configs" / "example" / "profiles.synthetic.json"
runner = CliRunner()


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One plan run that trains the gate; later tests reuse its gate.onnx."""
    out = tmp_path_factory.mktemp("plan")
    res = invoke("plan", "--calibration", str(CAL), "--profiles", str(PROF),
                 "--energy-j", "2", "--latency-ms", "600", "--out-dir", str(out))
    assert res.exit_code == 0, res.output
    return out


def test_plan_writes_a_feasible_plan_consistent_with_the_mixture(trained: Path) -> None:
    plan = json.loads((trained / "plan.json").read_text())
    assert plan["status"] == "optimal"
    assert plan["experts"]
    assert plan["worst_energy_j"] <= 2.0
    assert max(plan["worst_latency_ms"]) <= 600.0
    assert plan["evaluations"] >= 1
    assert plan["gate"].endswith("gate.onnx") and Path(plan["gate"]).is_file()
    # the reported test accuracy is what the mixture of those experts really gives
    table = load_calibration(CAL)
    gate = OnnxGate.load(plan["gate"])
    table = table.select_experts(gate.experts)
    test = table.split == TEST
    lp = apply_prior_correction(table.logprobs[test], gate.prior)
    mask = np.isin(np.array(gate.experts), plan["experts"])
    rep = evaluate_subset(gate.logits(table.embeddings[test]), lp, table.labels[test], table.categories[test],
                          table.category_names, mask, top_k=2)
    assert rep.accuracy == pytest.approx(plan["test"]["accuracy"])
    # and the plan respects each chosen expert's profile
    prof = load_profiles(PROF)
    lat, en = prof.arrays(plan["experts"], table.category_names)
    assert np.all(lat.max(axis=0) + prof.aggregation_ms <= 600.0)


def test_plan_reuses_gate_and_sweeps(trained: Path, tmp_path: Path) -> None:
    res = invoke("plan", "--calibration", str(CAL), "--profiles", str(PROF), "--gate", str(trained / "gate.onnx"),
                 "--energy-j", "2", "--latency-ms", "600", "--sweep", "--out-dir", str(tmp_path))
    assert res.exit_code == 0, res.output
    first = json.loads((trained / "plan.json").read_text())
    again = json.loads((tmp_path / "plan.json").read_text())
    assert again["experts"] == first["experts"]
    doc = json.loads((tmp_path / "plans.json").read_text())
    methods = {p["method"] for p in doc["plans"]}
    assert methods == {"moe2", "moe2-adaptive", "uniform", "best-single", "random", "greedy-per-joule", "topk-all"}
    chk = doc["brute_force_check"]
    assert chk["points"] > 0 and chk["equal"] == chk["points"]
    # MoE² is never beaten on the validation objective by a feasible baseline using the same gate and k
    by_point: dict[tuple[float, float], dict[str, float]] = {}
    for p in doc["plans"]:
        if p["status"] == "optimal" and p["method"] in ("moe2", "best-single", "random", "greedy-per-joule"):
            key = (p["budget"]["energy_j"], p["budget"]["latency_ms"][0])
            by_point.setdefault(key, {})[p["method"]] = float(p["objective_value"])
    assert by_point
    for vals in by_point.values():
        for method, v in vals.items():
            assert vals.get("moe2", -1.0) >= v - 1e-12, (method, vals)
    assert json.loads((tmp_path / "pareto.json").read_text())
    assert (tmp_path / "tradeoffs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_infeasible_budget_exits_two_and_says_which(trained: Path, tmp_path: Path) -> None:
    """An infeasible budget is an answer with its own exit code (2), never a traceback."""
    res = invoke("plan", "--calibration", str(CAL), "--profiles", str(PROF), "--gate", str(trained / "gate.onnx"),
                 "--energy-j", "0.0001", "--out-dir", str(tmp_path))
    assert res.exit_code == 2, res.output
    assert "infeasible" in res.output and "energy" in res.output
    assert json.loads((tmp_path / "plan.json").read_text())["status"] == "infeasible"
    res = invoke("plan", "--calibration", str(CAL), "--profiles", str(PROF), "--gate", str(trained / "gate.onnx"),
                 "--latency-ms", "synth-cat-1=1", "--out-dir", str(tmp_path))
    assert res.exit_code == 2 and "latency" in res.output and "synth-cat-1" in res.output, res.output


def test_plan_json_is_the_record_alone_on_stdout(trained: Path, tmp_path: Path) -> None:
    res = invoke("plan", "--example", "--gate", str(trained / "gate.onnx"), "--energy-j", "0.0001",
                 "--out-dir", str(tmp_path), "--json")
    assert res.exit_code == 2, res.output
    record = json.loads(res.stdout)  # nothing else on stdout: the progress lines went to stderr
    assert record == json.loads((tmp_path / "plan.json").read_text())
    assert record["status"] == "infeasible" and "energy budget 0.0001 J" in record["message"]
    assert "infeasible" in res.stderr and "wrote" in res.stderr
    res = invoke("plan", "--example", "--gate", str(trained / "gate.onnx"), "--energy-j", "2",
                 "--out-dir", str(tmp_path), "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["status"] == "optimal", res.output


def test_the_old_out_spelling_still_works_for_one_release(trained: Path, tmp_path: Path) -> None:
    res = invoke("plan", "--example", "--gate", str(trained / "gate.onnx"), "--energy-j", "2",
                 "--out", str(tmp_path / "old"))
    assert res.exit_code == 0, res.output
    assert "warning: plan --out is deprecated and goes in the next release; use --out-dir" in res.stderr
    assert (tmp_path / "old" / "plan.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--calibration", "/nonexistent/cal.npz"], "/nonexistent/cal.npz: calibration table not found"),
        (["--energy-j", "nan"], "--energy-j='nan' must be a number >= 0"),
        (["--energy-j", "-3"], "--energy-j='-3' must be a number >= 0"),
        (["--latency-ms", "chemistry=5"], "unknown categories ['chemistry']"),
        (["--latency-ms", "5", "--latency-ms", "6"], "each must be CATEGORY=MS"),
        (["--tau", "1.5"], "--tau=1.5 must be in (0, 1]"),
    ],
)
def test_bad_input_exits_one_and_names_it(trained: Path, tmp_path: Path, args: list[str], message: str) -> None:
    base = {"--calibration": str(CAL), "--profiles": str(PROF), "--gate": str(trained / "gate.onnx"),
            "--out-dir": str(tmp_path)}
    argv = ["plan"]
    for k, v in base.items():
        if k not in args:
            argv += [k, v]
    res = invoke(*argv, *args)
    assert res.exit_code == 1, res.output
    assert message in res.output


def test_malformed_profiles_exit_one(trained: Path, tmp_path: Path) -> None:
    bad = tmp_path / "p.json"
    bad.write_text('{"experts": {}}')
    res = invoke("plan", "--calibration", str(CAL), "--profiles", str(bad), "--out-dir", str(tmp_path))
    assert res.exit_code == 1
    assert f"DataFormatError: {bad}" in res.output


def test_check_config() -> None:
    res = invoke("check-config", str(REPO / "configs" / "fleet.example.yaml"))
    assert res.exit_code == 0 and "orin-1" in res.output
    res = invoke("check-config", str(REPO / "configs" / "nope.yaml"))
    assert res.exit_code == 1 and "ConfigError" in res.output


def test_console_script_help() -> None:
    out = subprocess.run([sys.executable, "-m", "edge_moe.cli", "plan", "--help"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    for flag in ("--calibration", "--profiles", "--energy-j", "--latency-ms", "--top-k", "--sweep", "--gate"):
        assert flag in out


def test_retrain_check_writes_the_gap(tmp_path: Path) -> None:
    res = invoke("plan", "--calibration", str(CAL), "--profiles", str(PROF), "--energy-j", "30",
                 "--retrain-check", "2", "--out-dir", str(tmp_path))
    assert res.exit_code == 0, res.output
    gap = json.loads((tmp_path / "retrain_gap.json").read_text())
    assert len(gap["rows"]) == 2
    for row in gap["rows"]:
        assert 2 <= len(row["experts"]) < 6
        assert np.isfinite(row["masked_nll"]) and np.isfinite(row["retrained_nll"])
    assert "retrain gap over 2 subsets" in res.output
