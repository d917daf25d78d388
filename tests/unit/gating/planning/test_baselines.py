"""Baselines: feasible where they promise it, and never better than MoE² on monotone F."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pytest

from edge_moe.errors import SelectionError
from gating.planning.baselines import best_single, greedy_per_joule, random_feasible, topk_all
from gating.planning.selector import (
    Budget,
    Selection,
    SelectionProblem,
    brute_force,
    select_experts,
)


def feasible(problem: SelectionProblem, budget: Budget, mask: np.ndarray) -> bool:
    """The budget, from its definition (independent of the selector's helpers)."""
    if not mask.any():
        return True
    e, lat = np.asarray(problem.energy_j), np.asarray(problem.latency_ms)
    chosen = -np.sort(-e[mask], axis=0)
    if problem.top_k is not None:
        chosen = chosen[: problem.top_k]
    energy_ok = chosen.sum(axis=0).max() <= budget.energy_j * (1 + 1e-9)
    latency = lat[mask].max(axis=0) + problem.aggregation_ms
    return bool(energy_ok and (latency <= np.asarray(budget.latency_ms) * (1 + 1e-9)).all())


def instance(seed: int, top_k: int | None = None) -> tuple[SelectionProblem, Budget]:
    """Seeded instance with a monotone mixture-max objective; N in 2..10."""
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(2, 11)), int(rng.integers(1, 4))
    size = rng.uniform(0.1, 1.0, n)
    e = 10 * size[:, None] ** 1.5 * rng.uniform(0.6, 1.4, (n, c))  # (N, C) J
    lat = (40 + 900 * size[:, None] ** 1.5) * rng.uniform(0.8, 1.3, (n, c))  # (N, C) ms
    p = rng.dirichlet(np.ones(4), size=(40, n))[:, :, 0] * (0.5 + size)  # (M, N) skill grows with size
    k = n if top_k is None else min(top_k, n)
    budget = Budget(energy_j=float(rng.uniform(0.15, 0.9) * np.sort(e, axis=0)[-k:].sum(axis=0).max()),
                    latency_ms=rng.uniform(0.5, 1.2, c) * lat.max())
    problem = SelectionProblem([f"e{i}" for i in range(n)], e, lat,
                               lambda mask: float(p[:, mask].max(axis=1).mean()), top_k=top_k)
    return problem, budget


BASELINES: dict[str, Callable[[SelectionProblem, Budget], Selection]] = {
    "best_single": best_single,
    "random_feasible": lambda p, b: random_feasible(p, b, seed=7),
    "greedy_per_joule": greedy_per_joule,
}


@pytest.mark.parametrize("top_k", [None, 2])
def test_feasible_baselines_are_feasible_and_never_beat_moe2(top_k: int | None) -> None:
    counts = {"feasible": 0, "infeasible": 0}
    for seed in range(120):
        problem, budget = instance(seed, top_k)
        moe2 = select_experts(problem, budget)
        for name, baseline in BASELINES.items():
            sel = baseline(problem, budget)
            counts[sel.status] += 1
            assert sel.status == ("infeasible" if moe2.status == "infeasible" else "feasible"), name
            assert feasible(problem, budget, sel.mask), (name, seed)
            assert sel.experts == tuple(np.asarray(problem.experts)[sel.mask])
            if sel.status == "feasible":
                assert sel.objective == problem.objective(sel.mask.copy())
                assert moe2.objective >= sel.objective - 1e-12, (name, seed)
    assert counts["feasible"] > 100 and counts["infeasible"] > 0  # both branches exercised


def test_best_single_is_the_best_feasible_singleton() -> None:
    for seed in range(80):
        problem, budget = instance(seed)
        n = len(problem.experts)
        singles = [np.eye(n, dtype=bool)[i] for i in range(n)]
        values = [problem.objective(m) for m in singles if feasible(problem, budget, m)]
        sel = best_single(problem, budget)
        if not values:
            assert sel.status == "infeasible"
            continue
        assert sel.objective == max(values) and len(sel.experts) == 1
        assert sel.evaluations == len(values)


def test_random_feasible_is_maximal_seeded_and_varies_with_seed() -> None:
    rng = np.random.default_rng(0)
    e = rng.uniform(1.0, 2.0, (8, 2))  # about 3 of 8 fit 5 J, in many ways
    problem = SelectionProblem([f"e{i}" for i in range(8)], e, np.ones((8, 2)), lambda m: float(m.sum()))
    budget = Budget(energy_j=5.0, latency_ms=10.0)
    picks = set()
    for seed in range(20):
        sel = random_feasible(problem, budget, seed=seed)
        assert sel.status == "feasible" and sel.evaluations == 1
        assert np.array_equal(sel.mask, random_feasible(problem, budget, seed=seed).mask)
        for u in np.flatnonzero(~sel.mask):  # maximal: nobody else fits
            grown = sel.mask.copy()
            grown[u] = True
            assert not feasible(problem, budget, grown)
        picks.add(sel.experts)
    assert len(picks) > 1


def test_greedy_per_joule_prefers_cheap_accuracy_and_stops_without_gain() -> None:
    # a: F 0.5 for 1 J; b: F 0.6 for 10 J; c adds nothing. Budget 10.5 J fits a + ... only a or b alone.
    value = {"a": 0.5, "b": 0.6, "c": 0.0}

    def f(mask: np.ndarray) -> float:
        return max((value[x] for x, on in zip("abc", mask, strict=True) if on), default=0.0)

    problem = SelectionProblem(list("abc"), np.array([[1.0], [10.0], [0.1]]), np.ones((3, 1)), f)
    sel = greedy_per_joule(problem, Budget(energy_j=10.5))
    assert sel.experts == ("a",)  # c fits but adds no gain; b no longer fits
    assert best_single(problem, Budget(energy_j=10.5)).experts == ("b",)
    assert select_experts(problem, Budget(energy_j=10.5)).objective == pytest.approx(0.6)


def test_topk_all_reports_violations_and_amounts() -> None:
    problem = SelectionProblem(["x", "y"], np.array([[1.0, 2.0], [3.0, 1.0]]),
                               np.array([[100.0, 100.0], [250.0, 50.0]]), lambda m: float(m.sum()),
                               aggregation_ms=2.0, categories=("stem", "law"))
    sel = topk_all(problem, Budget(energy_j=3.5, latency_ms=200.0))
    assert sel.status == "violates" and sel.mask.all() and sel.objective == 2.0
    assert "energy 4 J > budget 3.5 J in category 'stem' (over by 0.5 J)" in sel.message
    assert "latency 252 ms > budget 200 ms in category 'stem' (over by 52 ms)" in sel.message
    assert "'law'" not in sel.message  # 3 J and 102 ms fit there
    ok = topk_all(problem, Budget(energy_j=4.0, latency_ms=252.0))
    assert ok.status == "feasible" and "fit" in ok.message
    assert json.dumps(sel.to_json(), allow_nan=False)


def test_topk_all_counts_only_k_largest_energy() -> None:
    e = np.array([[1.0], [2.0], [3.0]])
    problem = SelectionProblem(list("abc"), e, np.ones((3, 1)), lambda m: 1.0, top_k=2)
    assert topk_all(problem, Budget(energy_j=5.0)).status == "feasible"
    assert topk_all(problem, Budget(energy_j=4.9)).status == "violates"


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_infeasible_budget_gives_the_empty_set_and_says_why(name: str) -> None:
    problem, _ = instance(0)
    sel = BASELINES[name](problem, Budget(energy_j=0.0))
    assert sel.status == "infeasible" and not sel.mask.any() and math.isnan(sel.objective)
    assert "energy budget 0 J <" in sel.message
    assert sel.message == brute_force(problem, Budget(energy_j=0.0)).message


@pytest.mark.parametrize("name", [*sorted(BASELINES), "topk_all"])
def test_baselines_validate_like_the_selector(name: str) -> None:
    problem, budget = instance(0)
    fn = topk_all if name == "topk_all" else BASELINES[name]
    with pytest.raises(SelectionError, match="budget.energy_j=nan"):
        fn(problem, Budget(energy_j=math.nan))
    with pytest.raises(SelectionError, match="top_k"):
        fn(SelectionProblem(problem.experts, problem.energy_j, problem.latency_ms, problem.objective,
                            top_k=0), budget)


@pytest.mark.parametrize("top_k", [None, 2])
def test_moe2_never_below_best_single_or_greedy_even_for_non_monotone_f(top_k: int | None) -> None:
    """The selector's seeds include both baselines' answers, so this holds for any F."""
    for seed in range(60):
        problem, budget = instance(seed, top_k)
        salt = seed * 1000 + 17

        def f(mask: np.ndarray, salt: int = salt) -> float:  # a different value for every subset
            return float(np.random.default_rng([salt, *np.flatnonzero(mask).tolist()]).random())

        problem = SelectionProblem(problem.experts, problem.energy_j, problem.latency_ms, f, top_k=top_k)
        moe2 = select_experts(problem, budget)
        assert feasible(problem, budget, moe2.mask)
        for baseline in (best_single, greedy_per_joule):
            sel = baseline(problem, budget)
            if sel.status == "feasible":
                assert moe2.objective >= sel.objective, (baseline.__name__, seed)
