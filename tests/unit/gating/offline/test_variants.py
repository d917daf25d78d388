"""gating.offline.variants and gating.offline.ceilings on the toy inputs: fair baselines, paired intervals, ceilings."""

from __future__ import annotations

import numpy as np
import pytest

from edge_moe.calibration import TEST
from gating.offline.budget_grid import BudgetGrid
from gating.offline.ceilings import oracle, subset_ceilings
from gating.offline.variants import Variant, default_variants, run_variants
from gating.planning import baselines, planner
from gating.planning.selector import Budget

TOP_K = 2


@pytest.fixture(scope="module")
def grid(toy_inputs):
    g = BudgetGrid.make(toy_inputs.energy_j, toy_inputs.latency_ms, toy_inputs.profiles.aggregation_ms, 4, 3)
    return g.points()


@pytest.fixture(scope="module")
def swept(toy_inputs, grid):
    return run_variants(toy_inputs, default_variants(folds=3), grid, TOP_K, seed=2)


def test_variant_names_and_defaults() -> None:
    names = [v.name for v in default_variants(5)]
    assert names == ["accuracy", "accuracy+guard", "loglik", "loglik+guard", "loglik-cv5", "loglik-cv5+guard"]
    assert Variant("loglik", 5, 0.9).selection_name == "loglik-cv5"


def test_each_point_against_its_fair_baseline(toy_inputs, grid, swept) -> None:
    logits, test = planner.split_rows(toy_inputs, TEST)
    for v in default_variants(folds=3):
        doc = swept["variants"][v.name]
        f = planner.make_objective(toy_inputs, TOP_K, None, objective=v.objective, folds=v.folds, seed=2)
        problem = planner.make_problem(toy_inputs, f, TOP_K)
        assert doc["summary"]["brute_force_equal"] == len(grid)
        for point, row in zip(grid, doc["points"], strict=True):
            if not row["plan"]:
                continue
            single = baselines.best_single(problem, Budget(energy_j=point.energy_j, latency_ms=point.latency_ms))
            assert row["fair_single"] == list(single.experts)  # same objective, same selection data
            if v.guard is None:
                assert row["plan"] == row["selected"] and not row["guard_replaced"]
            elif row["guard_replaced"]:
                assert row["plan"] == row["fair_single"] and len(row["selected"]) > 1
            else:
                assert row["plan"] == row["selected"]
            acc = {name: planner.evaluate_test(toy_inputs, np.isin(toy_inputs.experts, row[name]), TOP_K, None)
                   ["accuracy"] for name in ("plan", "fair_single")}
            assert row["test_accuracy"] == pytest.approx(acc["plan"])
            assert row["diff_points"] == pytest.approx(100 * (acc["plan"] - acc["fair_single"]))
            lo, hi = row["diff_ci_points"]
            assert lo - 1e-9 <= row["diff_points"] <= hi + 1e-9
        s = doc["summary"]
        planned = [r for r in doc["points"] if r["plan"]]
        assert s["mean_diff_points"] == pytest.approx(np.mean([r["diff_points"] for r in planned]))
        lo, hi = s["mean_diff_ci_points"]
        assert lo - 1e-9 <= s["mean_diff_points"] <= hi + 1e-9
        assert s["significantly_below"] == sum(r["diff_ci_points"][1] < 0 for r in planned)
        assert s["guard_replaced"] == sum(r["guard_replaced"] for r in planned)


def test_guard_never_leaves_more_multi_expert_plans(swept) -> None:
    for name in ("accuracy", "loglik", "loglik-cv3"):
        free, guarded = swept["variants"][name]["summary"], swept["variants"][name + "+guard"]["summary"]
        assert guarded["multi_expert_plans"] + guarded["guard_replaced"] == free["multi_expert_plans"]


def test_ceilings_bound_every_plan_and_the_oracle_control(toy_inputs, grid, swept) -> None:
    c = subset_ceilings(toy_inputs, grid, TOP_K)
    for i, row in enumerate(c["points"]):
        if not row["subset"]:
            continue
        assert row["subset_accuracy"] >= row["single_accuracy"] - 1e-12
        for v in swept["variants"].values():
            mine = v["points"][i]
            if mine["plan"]:
                assert mine["test_accuracy"] <= row["subset_accuracy"] + 1e-12
                assert mine["fair_single_test_accuracy"] <= row["single_accuracy"] + 1e-12
    o = oracle(toy_inputs, seed=0)
    n, k = len(toy_inputs.experts), toy_inputs.table.n_options
    assert o["chance_guessers_exact"] == pytest.approx(1 - (1 - 1 / k) ** n)
    assert abs(o["chance_guessers_simulated"] - o["chance_guessers_exact"]) < 0.1
    assert o["best_single_accuracy"] <= o["oracle_accuracy"] <= 1.0
