"""gating.offline.crosscheck: the selector-vs-brute-force record, against an itertools oracle."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from gating.offline import crosscheck as crosscheck_module
from gating.offline.budget_grid import BudgetGrid, GridPoint
from gating.offline.crosscheck import crosscheck, summarise
from gating.planning import baselines
from gating.planning.selector import Budget, select_experts


def _points(toy) -> list[GridPoint]:
    return BudgetGrid.make(toy.energy, toy.latency, toy.aggregation_ms, n_energy=4, n_latency=3).points()


def _budget(p: GridPoint) -> Budget:
    return Budget(energy_j=p.energy_j, latency_ms=p.latency_ms)


@pytest.mark.parametrize("top_k", [2, None])
def test_rows_follow_from_an_exhaustive_search(toy, top_k: int | None) -> None:
    prob = toy.problem(top_k)
    points = _points(toy)
    sels = [select_experts(prob, _budget(p)) for p in points]
    ticks: list[int] = []
    out = crosscheck("F", prob, toy.objective, points, sels, seed=0, on_point=lambda: ticks.append(1))
    assert out["ran"] and out["points"] == len(points) == len(out["rows"]) == len(ticks)
    assert out["objective"] == "F" and out["constraint_top_k"] == top_k
    for p, sel, row in zip(points, sels, out["rows"], strict=True):
        ok = [s for s in toy.subsets if toy.fits(s, _budget(p), top_k)]
        assert row["index"] == p.index and row["feasible_sets"] == len(ok) == row["brute_force_evaluations"]
        assert row["brute_force_status"] == ("optimal" if ok else "infeasible")
        if ok:
            assert row["brute_force_objective"] == max(toy.value(s) for s in ok)
            assert row["equal"] == (sel.status == "optimal"
                                    and abs(sel.objective - row["brute_force_objective"]) <= 1e-12)
        assert row["selector"] == list(sel.experts) and row["selector_evaluations"] == sel.evaluations
        assert row["enumeration_agrees"]
    # the random F is far from monotone: the record sees that, and the totals add its rows up
    assert out["monotonicity"]["exhaustive"] and out["monotonicity"]["drops"] > 0
    assert out["equal"] == sum(r["equal"] for r in out["rows"])
    assert out["selector_evaluations"] == sum(s.evaluations for s in sels)


def test_a_wrong_optimum_is_caught(toy) -> None:
    """Greedy answers relabelled "optimal": the check must find the points where they are not."""
    prob = toy.problem(2)
    points = _points(toy)
    sels = [replace(s, status="optimal") if s.experts else s
            for s in (baselines.greedy_per_joule(prob, _budget(p)) for p in points)]
    out = crosscheck("F", prob, toy.objective, points, sels)
    gaps = []
    for p, sel, row in zip(points, sels, out["rows"], strict=True):
        ok = [s for s in toy.subsets if toy.fits(s, _budget(p), 2)]
        if not ok:
            continue
        best = max(ok, key=toy.value)
        gap = abs(toy.value(tuple(int(e[1:]) for e in sel.experts)) - toy.value(best))
        gaps.append(gap)
        assert row["equal"] == (gap <= 1e-12) and row["abs_diff"] == pytest.approx(gap)
        assert row["same_set"] == (tuple(int(e[1:]) for e in sel.experts) == best)
    assert out["equal"] < out["points"] and out["max_abs_diff"] == pytest.approx(max(gaps))


def test_summary_totals_follow_from_the_rows() -> None:
    rng = np.random.default_rng(5)
    flags = ("equal", "same_set", "nonmonotone_changed_plan", "selector_saw_nonmonotone", "selector_set_maximal",
             "brute_force_set_maximal", "enumeration_agrees")
    rows = [{**{f: bool(rng.random() < 0.7) for f in flags}, "status": str(rng.choice(["optimal", "infeasible"])),
             "abs_diff": float(rng.random()), "selector_evaluations": int(rng.integers(1, 50)),
             "brute_force_evaluations": int(rng.integers(1, 50))} for _ in range(40)]
    got = summarise(rows)
    planned = [r for r in rows if r["status"] == "optimal"]
    assert got["equal"] == len([r for r in rows if r["equal"]])
    assert got["same_set"] == len([r for r in rows if r["same_set"]])
    assert got["with_plan"] == len(planned)
    assert got["max_abs_diff"] == max(r["abs_diff"] for r in rows)
    assert got["selector_evaluations"] == sum(r["selector_evaluations"] for r in rows)
    assert got["brute_force_evaluations_mean"] == pytest.approx(np.mean([r["brute_force_evaluations"] for r in rows]))
    assert got["nonmonotone_changed_plan"] == len([r for r in rows if r["nonmonotone_changed_plan"]])
    assert got["changed_plan_selector_equal"] == len([r for r in rows if r["nonmonotone_changed_plan"] and r["equal"]])
    assert got["selector_saw_nonmonotone"] == len([r for r in rows if r["selector_saw_nonmonotone"]])
    assert got["selector_non_maximal"] == len([r for r in planned if not r["selector_set_maximal"]])
    assert got["brute_force_non_maximal"] == len([r for r in planned if not r["brute_force_set_maximal"]])
    assert got["enumeration_agrees"] == all(r["enumeration_agrees"] for r in rows)


def test_too_many_experts_skips_brute_force_and_says_so(toy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crosscheck_module, "MAX_N", toy.n - 1)
    prob = toy.problem(2)
    points = _points(toy)[-3:]  # the loosest budgets: plans, so evaluations to count
    sels = [select_experts(prob, _budget(p)) for p in points]
    assert all(s.evaluations > 0 for s in sels)
    out = crosscheck("F", prob, toy.objective, points, sels)
    assert out["ran"] is False and f"N={toy.n} > {toy.n - 1}" in out["reason"] and "rows" not in out
    assert out["selector_evaluations"] == sum(s.evaluations for s in sels)
    assert out["selector_evaluations_mean"] == pytest.approx(np.mean([s.evaluations for s in sels]))
