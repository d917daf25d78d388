"""gating.offline.enumeration: the feasible and maximal families, checked set by set with itertools."""

from __future__ import annotations

import numpy as np
import pytest

from gating.offline.enumeration import TIE, Enumeration
from gating.planning.selector import Budget


def budgets(toy) -> list[Budget]:
    return [Budget(energy_j=e, latency_ms=np.quantile(toy.latency, q, axis=0) + toy.aggregation_ms)
            for e in (5.0, 12.0, 20.0, 60.0) for q in (0.4, 0.8, 1.0)]


@pytest.mark.parametrize("top_k", [None, 1, 2])
def test_feasible_and_maximal_sets_follow_from_their_definitions(toy, top_k: int | None) -> None:
    enum = Enumeration(toy.objective, toy.n)
    for budget in budgets(toy):
        ok = {s for s in toy.subsets if toy.fits(s, budget, top_k)}
        maximal = {s for s in ok if not any(toy.fits(tuple(sorted((*s, u))), budget, top_k)
                                            for u in range(toy.n) if u not in s)}
        info = enum.analyse(toy.problem(top_k), budget)
        assert info["feasible_sets"] == len(ok)
        assert info["maximal_sets"] == len(maximal)
        assert {s for s in toy.subsets if info["maximal"][sum(1 << j for j in s)]} == maximal
        best = max((toy.value(s) for s in ok), default=-np.inf)
        best_max = max((toy.value(s) for s in maximal), default=-np.inf)
        assert info["best_feasible"] == best and info["best_maximal"] == best_max
        assert info["changed_plan"] == (best > best_max + TIE)


def test_a_non_monotone_objective_changes_the_plan_somewhere(toy) -> None:
    enum = Enumeration(toy.objective, toy.n)
    changed = [enum.analyse(toy.problem(2), b)["changed_plan"] for b in budgets(toy)]
    assert any(changed)  # the random F is far from monotone: the check has something to find


def test_values_and_index_round_trip(toy) -> None:
    enum = Enumeration(toy.objective, toy.n)
    assert enum.values[0] == -np.inf
    for s in toy.subsets:
        mask = np.isin(np.arange(toy.n), s)
        i = enum.index(mask)
        assert i == sum(1 << j for j in s)
        assert np.array_equal(enum.masks[i], mask) and enum.values[i] == toy.value(s)
