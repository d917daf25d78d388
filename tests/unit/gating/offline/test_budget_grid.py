"""gating.offline.budget_grid: the grid's budgets, recomputed here from the module's definitions."""

from __future__ import annotations

import numpy as np
import pytest

from gating.offline.budget_grid import BudgetGrid

RNG = np.random.default_rng(7)
ENERGY = RNG.uniform(0.5, 20.0, size=(5, 3))  # (N, C) J
LATENCY = RNG.uniform(20.0, 900.0, size=(5, 3))  # (N, C) ms
AGG = 4.0


def _fits(ms: np.ndarray, budget: np.ndarray) -> bool:
    return bool((ms <= budget * (1 + 1e-9)).all())


def test_regular_grid_spans_cheapest_alone_to_everything() -> None:
    grid = BudgetGrid.make(ENERGY, LATENCY, AGG, n_energy=6, n_latency=5, expert_budgets=False)
    alone = ENERGY.max(axis=1)
    assert grid.energies[0] == alone.min() and grid.energies[-1] == alone.sum()  # exact ends
    ratios = grid.energies[1:] / grid.energies[:-1]
    assert ratios == pytest.approx(np.full(5, (alone.sum() / alone.min()) ** (1 / 5)))  # geometric
    assert grid.scales.tolist() == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert grid.lat_lo.tolist() == pytest.approx((LATENCY + AGG).min(axis=0).tolist())
    assert grid.lat_hi.tolist() == pytest.approx((LATENCY + AGG).max(axis=0).tolist())


def test_single_points_give_the_loosest_budget() -> None:
    grid = BudgetGrid.make(ENERGY, LATENCY, AGG, n_energy=1, n_latency=1, expert_budgets=False)
    assert grid.energies.tolist() == [ENERGY.max(axis=1).sum()]
    assert grid.scales.tolist() == [1.0]


def test_latency_budget_is_geometric_in_s_with_exact_ends() -> None:
    grid = BudgetGrid.make(ENERGY, LATENCY, AGG, 3, 3, expert_budgets=False)
    lo, hi = (LATENCY + AGG).min(axis=0), (LATENCY + AGG).max(axis=0)
    assert grid.geometric
    assert np.array_equal(grid.latency_at(0.0), lo) and np.array_equal(grid.latency_at(1.0), hi)
    for s in (0.1, 0.5, 0.9):
        assert grid.latency_at(s) == pytest.approx(lo * (hi / lo) ** s)


def test_latency_budget_is_linear_when_some_category_can_be_free() -> None:
    latency = LATENCY.copy()
    latency[2, 1] = 0.0
    grid = BudgetGrid.make(ENERGY, latency, 0.0, 3, 3, expert_budgets=False)
    lo, hi = latency.min(axis=0), latency.max(axis=0)
    assert not grid.geometric
    assert grid.latency_at(0.3) == pytest.approx(lo + 0.3 * (hi - lo))


@pytest.mark.parametrize("agg,zero", [(AGG, False), (0.0, True)])
def test_scale_needed_is_the_smallest_scale_that_fits(agg: float, zero: bool) -> None:
    latency = LATENCY.copy()
    if zero:
        latency[0, 0] = 0.0  # linear budgets
    grid = BudgetGrid.make(ENERGY, latency, agg, 3, 3, expert_budgets=False)
    fine = np.linspace(0.0, 1.0, 20001)
    for row in latency + agg:
        s = grid.scale_needed(row)
        assert _fits(row, grid.latency_at(s))
        first = next(x for x in fine if _fits(row, grid.latency_at(float(x))))  # by search
        assert s == pytest.approx(first, abs=1e-4)


def test_expert_budgets_add_each_experts_own_regime() -> None:
    plain = BudgetGrid.make(ENERGY, LATENCY, AGG, 4, 3, expert_budgets=False)
    grid = BudgetGrid.make(ENERGY, LATENCY, AGG, 4, 3, expert_budgets=True)
    alone = ENERGY.max(axis=1)
    assert grid.energies.tolist() == sorted(set(plain.energies.tolist()) | set(alone.tolist()))
    unlock = [plain.scale_needed(row) for row in LATENCY + AGG]
    assert grid.scales.tolist() == sorted(set(plain.scales.tolist()) | set(unlock))
    for j, row in enumerate(LATENCY + AGG):  # at its own scale expert j fits, with a tight category
        budget = grid.latency_at(unlock[j])
        assert _fits(row, budget) and (row / budget).max() == pytest.approx(1.0), j


def test_points_are_energy_major_and_numbered() -> None:
    grid = BudgetGrid.make(ENERGY, LATENCY, AGG, 3, 4, expert_budgets=False)
    points = grid.points()
    expected = [(e, s) for e in grid.energies for s in grid.scales]
    assert [(p.energy_j, p.scale) for p in points] == expected
    assert [p.index for p in points] == list(range(len(expected)))
    for p in points:
        assert np.array_equal(p.latency_ms, grid.latency_at(p.scale))
    doc = grid.to_json(expert_budgets=False)
    assert doc["points"] == len(points) and doc["energies_j"] == grid.energies.tolist()
    assert doc["geometric_latency"] is True and doc["expert_budgets"] is False
