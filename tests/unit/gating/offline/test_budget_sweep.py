"""gating.offline.budget_sweep: every method's plan at a budget, checked against the budgets' and the
methods' definitions on the toy inputs (costs from the profiles, accuracies from the table)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_moe.calibration import VALIDATION
from gating.offline.budget_grid import BudgetGrid, GridPoint
from gating.offline.budget_sweep import METHODS, MethodSweep, energy_slice, latency_slice
from gating.offline.margins import accuracy

TOP_K, TAU, DRAWS = 2, 0.7, 3


@pytest.fixture(scope="module")
def swept(toy_inputs):
    sweep = MethodSweep.make(toy_inputs, TOP_K, TAU, seed=1, random_draws=DRAWS)
    grid = BudgetGrid.make(toy_inputs.energy_j, toy_inputs.latency_ms, toy_inputs.profiles.aggregation_ms, 3, 3)
    points = grid.points()
    # and one budget no expert meets alone: every method but top-k of all has no plan there
    tight = GridPoint(len(points), float(toy_inputs.energy_j.min()) / 2, 0.0, grid.lat_lo / 2)
    return sweep, grid, [sweep.plan_point(p) for p in [*points, tight]]


def _costs(inputs, experts: list[str], k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(C,) worst-case J (the k costliest members per category) and (C,) ms (slowest + aggregation)."""
    idx = [inputs.experts.index(e) for e in experts]
    energy = -np.sort(-inputs.energy_j[idx], axis=0)[:k].sum(axis=0)
    return energy, inputs.latency_ms[idx].max(axis=0) + inputs.profiles.aggregation_ms


def _fits(inputs, experts: list[str], k: int | None, record: dict) -> bool:
    energy, ms = _costs(inputs, experts, k)
    tol = 1 + 1e-9
    return bool((energy <= record["energy_j"] * tol).all() and (ms <= np.array(record["latency_ms"]) * tol).all())


def test_every_plan_keeps_its_budget_by_definition(toy_inputs, swept) -> None:
    _, _, planned = swept
    for point in planned:
        rec = point.record
        assert tuple(rec["methods"]) == METHODS
        singles = [e for e in toy_inputs.experts if _fits(toy_inputs, [e], None, rec)]
        assert rec["singles_fit"] == singles
        for name, k in (("moe2", TOP_K), ("moe2-adaptive", None), ("greedy-per-joule", TOP_K),
                        ("best-single-val", TOP_K), ("best-single-test", TOP_K)):
            m = rec["methods"][name]
            assert (m["test"] is None) == (not singles), (name, rec["index"])
            if m["experts"]:
                assert _fits(toy_inputs, m["experts"], k, rec), (name, rec["index"])
        for draw in rec["methods"]["random"].get("draw_experts", []):
            assert _fits(toy_inputs, draw, TOP_K, rec)
        assert list(point.selections) == ["moe2", "moe2-adaptive"]
        assert list(point.selections["moe2"].experts) == rec["methods"]["moe2"]["experts"]


def test_uniform_over_s_pays_for_all_of_s(toy_inputs, swept) -> None:
    sweep, _, planned = swept
    for point in planned:
        rec = point.record
        for name, src in (("uniform-S", "moe2"), ("uniform-S-adaptive", "moe2-adaptive")):
            m, s = rec["methods"][name], rec["methods"][src]
            assert m["experts"] == s["experts"]
            if not s["experts"]:
                assert m["test"] is None
                continue
            energy, _ = _costs(toy_inputs, s["experts"], None)
            assert m["worst_energy_j"] == pytest.approx(energy.max())
            assert m["within_budget"] == _fits(toy_inputs, s["experts"], None, rec)
            assert (m["violations"] == []) == m["within_budget"]
            assert m["validation_objective"] is None
            mask = np.isin(toy_inputs.experts, s["experts"])
            assert m["test"] == sweep.evaluate(mask, None, None, uniform=True)


def test_random_is_the_mean_of_its_draws(toy_inputs, swept) -> None:
    sweep, _, planned = swept
    for point in planned:
        m = point.record["methods"]["random"]
        if m["test"] is None:
            continue
        tests = [sweep.evaluate(np.isin(toy_inputs.experts, d), TOP_K, None) for d in m["draw_experts"]]
        assert len(tests) == DRAWS
        assert m["test"]["draws"] == [t["accuracy"] for t in tests]
        for key in ("accuracy", "nll", "expected_energy_j", "expected_latency_ms"):
            assert m["test"][key] == pytest.approx(np.mean([t[key] for t in tests]))
        for c, v in m["test"]["per_category"].items():
            assert v == pytest.approx(np.mean([t["per_category"][c] for t in tests]))


def test_single_expert_baselines_pick_the_best_that_fits(toy_inputs, swept) -> None:
    sweep, _, planned = swept
    table, val = toy_inputs.table, toy_inputs.table.split == VALIDATION
    assert sweep.objective == "loglik"  # the default: the fair baseline is the best val log-likelihood
    rows = np.flatnonzero(val)
    val_acc = {e: np.log(np.maximum(np.exp(table.logprobs[rows, j, table.labels[rows]].astype(float)), 1e-12)).mean()
               for j, e in enumerate(toy_inputs.experts)}
    for point in planned:
        rec = point.record
        fits = rec["singles_fit"]
        if not fits:
            continue
        test_acc = {e: sweep.evaluate(np.isin(toy_inputs.experts, [e]), TOP_K, None)["accuracy"] for e in fits}
        (best_test,) = rec["methods"]["best-single-test"]["experts"]
        assert test_acc[best_test] == max(test_acc.values())
        (best_val,) = rec["methods"]["best-single-val"]["experts"]
        assert val_acc[best_val] == max(val_acc[e] for e in fits)


def test_topk_of_all_ignores_the_budget(toy_inputs, swept) -> None:
    _, _, planned = swept
    for point in planned:
        m = point.record["methods"]["topk-all"]
        assert m["experts"] == list(toy_inputs.experts)
        assert m["within_budget"] == _fits(toy_inputs, m["experts"], TOP_K, point.record)


def test_without_a_fitting_expert_nothing_is_planned(swept) -> None:
    _, _, planned = swept
    tight = planned[-1].record
    assert tight["singles_fit"] == []
    for name in METHODS[:-1]:
        m = tight["methods"][name]
        assert m["test"] is None and m["experts"] == [] and m["status"] == "infeasible", name
    assert tight["methods"]["topk-all"]["within_budget"] is False


def test_slices_cut_the_grid_at_the_loosest_other_budget(swept) -> None:
    _, grid, planned = swept
    points = [p.record for p in planned[:-1]]
    e_rows, l_rows = energy_slice(points), latency_slice(points)
    assert [r["index"] for r in e_rows] == [p["index"] for p in points if p["latency_scale"] == grid.scales.max()]
    assert [r["index"] for r in l_rows] == [p["index"] for p in points if p["energy_j"] == grid.energies.max()]
    for row in e_rows + l_rows:
        p = points[row["index"]]
        assert row["moe2_experts"] == p["methods"]["moe2"]["experts"]
        assert {m: row[m] for m in METHODS} == {m: accuracy(p, m) for m in METHODS}
