"""`edge-moe plan`: the objective, the folds and the guard reach plan.json, and the CLI checks them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_moe.cli import app
from edge_moe.jobs.plan import run_plan
from gating.offline.synthetic import write_toy_inputs


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    _, cal, prof, gate = write_toy_inputs(tmp_path_factory.mktemp("toy"), n_experts=4, embedding_dim=8, seed=5,
                                          n_samples=300, n_categories=2)
    return cal, prof, gate


@pytest.mark.parametrize(("objective", "folds", "guard"), [("loglik", 0, 0.95), ("accuracy", 0, None),
                                                           ("loglik", 4, 0.9)])
def test_plan_json_records_objective_folds_and_guard(toy: tuple[Path, Path, Path], tmp_path: Path,
                                                     objective: str, folds: int, guard: float | None) -> None:
    cal, prof, gate = toy
    rec = run_plan(cal, prof, float("inf"), float("inf"), 2, None, gate, tmp_path, False, 0, 0, progress=False,
                   objective=objective, folds=folds, guard_confidence=guard)
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert doc == json.loads(json.dumps(rec))
    assert doc["selection"]["objective"] == objective and doc["selection"]["folds"] == folds
    assert doc["selection"]["data"] == (f"{folds}-fold cross-validation over train + validation" if folds
                                        else "validation split")
    assert doc["temperature"] == [1.0, 1.0, 1.0, 1.0]  # the toy gate's record has none: T = 1
    assert doc["guard"]["enabled"] is (guard is not None)
    if guard is not None:
        assert doc["guard"]["confidence"] == guard and doc["guard"]["resamples"] > 0
        if doc["guard"]["replaced"]:
            assert doc["experts"] == doc["guard"]["single"]
        else:
            assert doc["experts"] == doc["guard"]["candidate"]
    assert doc["status"] == "optimal" and doc["test"]["n"] > 0
    assert 0.0 <= doc["objective_validation_accuracy"] <= 1.0


def test_cli_rejects_bad_objective_folds_and_confidence(toy: tuple[Path, Path, Path], tmp_path: Path) -> None:
    cal, prof, gate = toy
    base = ["plan", "--calibration", str(cal), "--profiles", str(prof), "--gate", str(gate), "--out-dir", str(tmp_path)]
    runner = CliRunner()
    for extra, message in ((["--objective", "nll"], "'nll' is not one of"), (["--folds", "1"], "--folds=1"),
                           (["--guard-confidence", "1.5"], "--guard-confidence=1.5")):
        res = runner.invoke(app, [*base, *extra])
        assert res.exit_code == 1 and message in res.output, res.output
    res = runner.invoke(app, [*base, "--objective", "accuracy", "--guard-confidence", "0"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert doc["selection"]["objective"] == "accuracy" and doc["guard"] == {"enabled": False}
