"""The exact selector against the brute-force oracle, its guarantees, and its errors.

Feasibility is re-derived here from the definition (not through the selector's helpers), so
a wrong helper fails these tests instead of agreeing with itself.
"""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_moe.errors import SelectionError
from gating.planning import selector
from gating.planning.selector import (
    Budget,
    Selection,
    SelectionProblem,
    brute_force,
    select_experts,
)

Objective = Callable[[np.ndarray], float]


# --------------------------------------------------------------------------- the definition


def worst_costs(e: np.ndarray, lat: np.ndarray, mask: np.ndarray, k: int | None,
                agg: float) -> tuple[float, np.ndarray]:
    """(max_c top-k energy sum, per-category max latency + agg), straight from the definition."""
    if not mask.any():
        return 0.0, np.zeros(e.shape[1])
    chosen = -np.sort(-e[mask], axis=0)  # (|S|, C) largest first
    if k is not None:
        chosen = chosen[:k]
    return float(chosen.sum(axis=0).max()), lat[mask].max(axis=0) + agg


def is_feasible(e: np.ndarray, lat: np.ndarray, mask: np.ndarray, k: int | None, agg: float,
                energy_budget: float, latency_budget: np.ndarray) -> bool:
    energy, latency = worst_costs(e, lat, mask, k, agg)
    slack = 1e-9 * max(energy_budget, 1.0) if math.isfinite(energy_budget) else 0.0
    lat_slack = 1e-9 * np.maximum(np.where(np.isfinite(latency_budget), latency_budget, 1.0), 1.0)
    return energy <= energy_budget + slack and bool((latency <= latency_budget + lat_slack).all())


def check_selection(sel: Selection, problem: SelectionProblem, budget: Budget) -> None:
    """The invariants every selector answer must meet."""
    e, lat = np.asarray(problem.energy_j), np.asarray(problem.latency_ms)
    lat_budget = np.broadcast_to(np.asarray(budget.latency_ms, dtype=float), (e.shape[1],))
    assert sel.mask.dtype == bool and sel.mask.shape == (e.shape[0],)
    assert sel.experts == tuple(np.asarray(problem.experts)[sel.mask])
    energy, latency = worst_costs(e, lat, sel.mask, problem.top_k, problem.aggregation_ms)
    assert sel.worst_energy_j == pytest.approx(energy, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(sel.worst_latency_ms, latency, rtol=1e-12)
    assert sel.worst_latency_ms.shape == (e.shape[1],)
    if sel.status == "infeasible":
        assert not sel.mask.any() and math.isnan(sel.objective)
        return
    assert sel.status == "optimal" and sel.mask.any()
    assert is_feasible(e, lat, sel.mask, problem.top_k, problem.aggregation_ms, budget.energy_j, lat_budget)
    assert sel.objective == problem.objective(sel.mask.copy())


# --------------------------------------------------------------------------- objectives


def coverage(rng: np.random.Generator, n: int) -> Objective:
    """Fraction of samples that at least one expert in S gets right (monotone, submodular)."""
    right = rng.random((24, n)) < rng.uniform(0.1, 0.7, n)  # (M, N)
    return lambda mask: float(right[:, mask].any(axis=1).mean())


def modular(rng: np.random.Generator, n: int) -> Objective:
    """Σ_{n∈S} w_n with w on a 1/64 grid, so every sum is exact in floating point."""
    w = rng.integers(0, 200, n) / 64.0
    return lambda mask: float(w[mask].sum())


def mixture_max(rng: np.random.Generator, n: int) -> Objective:
    """mean_i max_{n∈S} p_n(y_i): the soft accuracy of a perfect router inside S (monotone)."""
    p = rng.dirichlet(np.ones(4), size=(32, n))[:, :, 0]  # (M, N) p_n(label)
    return lambda mask: float(p[:, mask].max(axis=1).mean())


OBJECTIVES = {"coverage": coverage, "modular": modular, "mixture_max": mixture_max}


def random_instance(seed: int, make: Callable[[np.random.Generator, int], Objective],
                    top_k: int | None, per_category: bool, n_max: int = 12
                    ) -> tuple[SelectionProblem, Budget]:
    """A seeded instance: heterogeneous costs, budgets from infeasible to loose."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, n_max + 1))
    c = int(rng.integers(1, 5))
    size = rng.uniform(0.1, 1.0, n)
    lat = (40 + 900 * size[:, None] ** 1.5) * rng.uniform(0.8, 1.3, (n, c))  # (N, C) ms
    if rng.random() < 0.5:  # bigger is hungrier everywhere
        e = size[:, None] ** 1.5 * rng.uniform(0.5, 1.5, (n, c)) * 10  # (N, C) J
    else:  # specialists: the cost order differs by category, so top-k loads really mix
        e = rng.lognormal(0.0, 1.0, (n, c))
    agg = float(rng.choice([0.0, 2.0]))
    k_eff = n if top_k is None else min(top_k, n)
    worst_all = np.sort(e, axis=0)[-k_eff:].sum(axis=0).max()
    energy_budget = float(rng.uniform(0.0, 1.1) * worst_all)
    lat_frac = rng.uniform(0.2, 1.2, c if per_category else 1)
    latency_budget = lat_frac * lat.max() + agg
    problem = SelectionProblem(
        experts=[f"e{i}" for i in range(n)], energy_j=e, latency_ms=lat,
        objective=make(rng, n), top_k=top_k, aggregation_ms=agg,
    )
    budget = Budget(energy_j=energy_budget,
                    latency_ms=latency_budget if per_category else float(latency_budget[0]))
    return problem, budget


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("per_category", [False, True], ids=["scalar-latency", "per-category-latency"])
@pytest.mark.parametrize("top_k", [None, 1, 2, 3], ids=lambda k: f"k={k}")
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_selector_matches_brute_force(objective: str, top_k: int | None, per_category: bool) -> None:
    """24 configurations x 30 seeds = 720 instances with N <= 12."""
    statuses = []
    for seed in range(30):
        config = zlib.crc32(f"{objective}/{top_k}/{per_category}".encode())
        problem, budget = random_instance(config + seed, OBJECTIVES[objective], top_k, per_category)
        sel = select_experts(problem, budget)
        ref = brute_force(problem, budget)
        check_selection(sel, problem, budget)
        check_selection(ref, problem, budget)
        assert sel.status == ref.status, (seed, sel.message, ref.message)
        if ref.status == "optimal":
            assert sel.objective == pytest.approx(ref.objective, abs=1e-12), (seed, sel, ref)
        statuses.append(sel.status)
    assert "optimal" in statuses  # the sweep is not vacuous


def search_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps 1-4 only: no incumbent seeds, no polish, so the tests see the B&B itself."""
    monkeypatch.setattr(selector, "_seed_incumbent",
                        lambda inst, evaluate, candidates: selector._Incumbent(inst, np.zeros(inst.n, dtype=bool)))
    monkeypatch.setattr(selector, "_polish", lambda inst, evaluate, incumbent, candidates: 0)


@pytest.mark.parametrize("top_k", [None, 2, 3], ids=lambda k: f"k={k}")
def test_branch_and_bound_alone_is_exact(top_k: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the seeds and the polish (accelerator and non-monotone aid) B&B is exact."""
    search_alone(monkeypatch)
    for seed in range(80):
        problem, budget = random_instance(7919 * seed + 1, OBJECTIVES[sorted(OBJECTIVES)[seed % 3]],
                                          top_k, bool(seed % 2))
        sel, ref = select_experts(problem, budget), brute_force(problem, budget)
        check_selection(sel, problem, budget)
        assert sel.status == ref.status
        if ref.status == "optimal":
            assert sel.objective == pytest.approx(ref.objective, abs=1e-12), seed


def test_top_k_loads_with_specialist_costs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Costs whose order differs by category, k = 2..3, no seeds: the top-k bookkeeping.

    Here an expert can be the costliest in one category and the cheapest in another, so
    the k largest of I change members as I grows (a bug there once hid behind the seeds).
    """
    search_alone(monkeypatch)
    for seed in range(400):
        rng = np.random.default_rng(seed)
        n, c, k = int(rng.integers(4, 11)), int(rng.integers(2, 4)), int(rng.integers(2, 4))
        e = rng.lognormal(0.0, 1.0, (n, c))  # (N, C)
        problem = SelectionProblem([f"e{i}" for i in range(n)], e, np.ones((n, c)), modular(rng, n), top_k=k)
        budget = Budget(energy_j=float(rng.uniform(0.3, 1.0) * np.sort(e, axis=0)[-k:].sum(axis=0).max()))
        sel, ref = select_experts(problem, budget), brute_force(problem, budget)
        check_selection(sel, problem, budget)
        assert sel.status == ref.status, seed
        assert sel.status == "infeasible" or sel.objective == ref.objective, seed


def test_instances_cover_infeasible_and_multi_expert_answers() -> None:
    """The random family above really reaches infeasible budgets and multi-expert optima."""
    sizes = []
    for seed in range(60):
        problem, budget = random_instance(seed, mixture_max, None, True)
        sizes.append(len(select_experts(problem, budget).experts))
    assert 0 in sizes and max(sizes) >= 4


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    costs=st.lists(st.lists(st.integers(0, 6), min_size=2, max_size=2), min_size=1, max_size=8),
    weights=st.lists(st.integers(0, 9), min_size=8, max_size=8),
    budget_j=st.integers(0, 20),
    top_k=st.sampled_from([None, 1, 2, 3]),
)
def test_integer_costs_with_ties_and_exact_budgets(costs: list[list[int]], weights: list[int],
                                                    budget_j: int, top_k: int | None) -> None:
    """Integer costs make budgets hit sums exactly and make ties: the boundary cases."""
    e = np.array(costs, dtype=float)
    n = e.shape[0]
    w = np.array(weights[:n], dtype=float)
    problem = SelectionProblem(experts=[f"e{i}" for i in range(n)], energy_j=e,
                               latency_ms=np.ones_like(e), objective=lambda m: float(w[m].sum()),
                               top_k=top_k)
    budget = Budget(energy_j=float(budget_j))
    sel, ref = select_experts(problem, budget), brute_force(problem, budget)
    check_selection(sel, problem, budget)
    assert sel.status == ref.status
    assert sel.objective == ref.objective or (math.isnan(sel.objective) and math.isnan(ref.objective))


def test_loose_budget_takes_everyone_and_top1_takes_everyone_that_fits() -> None:
    rng = np.random.default_rng(3)
    e, lat = rng.uniform(1, 5, (6, 2)), rng.uniform(10, 50, (6, 2))
    f = mixture_max(rng, 6)
    loose = select_experts(SelectionProblem([f"e{i}" for i in range(6)], e, lat, f), Budget())
    assert loose.mask.all() and loose.objective == f(np.ones(6, dtype=bool))
    # top_k=1: worst-case energy is the largest single cost, so all that fit alone fit together
    budget = Budget(energy_j=float(np.median(e.max(axis=1))))
    top1 = select_experts(SelectionProblem([f"e{i}" for i in range(6)], e, lat, f, top_k=1), budget)
    np.testing.assert_array_equal(top1.mask, e.max(axis=1) <= budget.energy_j)


def test_far_fewer_evaluations_than_brute_force() -> None:
    """A guard on the bound's strength: N=16, a medium budget, mixture-max objective."""
    rng = np.random.default_rng(11)
    n = 16
    size = np.sort(rng.uniform(0.1, 1.0, n))
    e = 10 * size[:, None] ** 1.5 * rng.uniform(0.8, 1.3, (n, 3))
    problem = SelectionProblem([f"e{i}" for i in range(n)], e, e * 20, mixture_max(rng, n))
    budget = Budget(energy_j=0.35 * float(e.sum(axis=0).max()))
    sel, ref = select_experts(problem, budget), brute_force(problem, budget)
    assert sel.objective == pytest.approx(ref.objective, abs=1e-12)
    assert sel.evaluations * 10 < ref.evaluations, (sel.evaluations, ref.evaluations)


def test_memoised_no_mask_evaluated_twice_and_count_is_exact() -> None:
    problem, budget = random_instance(5, coverage, 2, True)
    problem = dataclasses.replace(problem, experts=[f"e{i}" for i in range(10)],
                                  energy_j=np.random.default_rng(1).uniform(1, 4, (10, 2)),
                                  latency_ms=np.ones((10, 2)))
    seen: list[bytes] = []
    inner = coverage(np.random.default_rng(2), 10)

    def f(mask: np.ndarray) -> float:
        seen.append(mask.tobytes())
        return inner(mask)

    sel = select_experts(dataclasses.replace(problem, objective=f), Budget(energy_j=6.0))
    assert sel.evaluations == len(seen) == len(set(seen)) > 0


def test_deterministic() -> None:
    problem, budget = random_instance(8, mixture_max, None, True)
    a, b = select_experts(problem, budget), select_experts(problem, budget)
    assert a == b and np.array_equal(a.mask, b.mask)


# --------------------------------------------------------------------------- non-monotone F


def random_set_function(seed: int) -> Objective:
    """A different uniform value for every subset: as far from monotone as it gets."""
    return lambda mask: float(np.random.default_rng([seed, *np.flatnonzero(mask).tolist(), 99]).random())


@pytest.mark.parametrize("top_k", [None, 2])
def test_non_monotone_objective_still_feasible_and_no_worse_than_single(top_k: int | None) -> None:
    """Guaranteed for any F: a feasible set, F(mask) reported, ≥ best single expert, ≤ optimum.

    Exactness is *not* guaranteed; how often it matches is measured by the benchmark.
    """
    for seed in range(60):
        problem, budget = random_instance(seed, mixture_max, top_k, bool(seed % 2), n_max=9)
        problem = dataclasses.replace(problem, objective=random_set_function(seed))
        sel, ref = select_experts(problem, budget), brute_force(problem, budget)
        check_selection(sel, problem, budget)
        assert sel.status == ref.status
        if ref.status != "optimal":
            continue
        assert sel.objective <= ref.objective
        e, lat = np.asarray(problem.energy_j), np.asarray(problem.latency_ms)
        lat_budget = np.broadcast_to(np.asarray(budget.latency_ms, dtype=float), (e.shape[1],))
        alone = np.eye(e.shape[0], dtype=bool)
        singles = [problem.objective(alone[i]) for i in range(e.shape[0])
                   if is_feasible(e, lat, alone[i], top_k, problem.aggregation_ms, budget.energy_j, lat_budget)]
        assert sel.objective >= max(singles)


def test_real_gated_mixture_accuracy_is_feasible() -> None:
    """The planner's true objective (masked, renormalised top-k mixture) is not monotone."""
    mixture = pytest.importorskip("gating.planning.mixture")
    rng = np.random.default_rng(4)
    m, n, k = 60, 8, 4
    logprobs = np.log(rng.dirichlet(np.ones(k), size=(m, n))).astype(np.float32)  # (M, N, K)
    labels = rng.integers(0, k, m)
    f = mixture.MixtureObjective(rng.normal(size=(m, n)), logprobs, labels, top_k=2)
    e = rng.uniform(1, 10, (n, 2))
    for frac in (0.55, 0.75, 0.95):
        problem = SelectionProblem([f"e{i}" for i in range(n)], e, np.ones((n, 2)), f, top_k=2)
        budget = Budget(energy_j=frac * float(np.sort(e, axis=0)[-2:].sum(axis=0).max()))
        sel, ref = select_experts(problem, budget), brute_force(problem, budget)
        check_selection(sel, problem, budget)
        assert sel.status == ref.status == "optimal"
        assert sel.objective <= ref.objective


def test_seen_non_monotonicity_is_reported() -> None:
    """Pairs score 2 (+ε), triples 3, all four 2.5; the budget admits pairs only."""
    def f(mask: np.ndarray) -> float:
        size = int(mask.sum())
        return {1: 1.0, 2: 2.0 + 0.01 * int(np.flatnonzero(mask)[0]), 3: 3.0, 4: 2.5}[size]

    problem = SelectionProblem(list("abcd"), np.ones((4, 1)), np.ones((4, 1)), f)
    sel = select_experts(problem, Budget(energy_j=2.0))
    assert len(sel.experts) == 2 and sel.status == "optimal"
    assert "not monotone" in sel.message


# --------------------------------------------------------------------------- infeasible


def _never_called(mask: np.ndarray) -> float:
    raise AssertionError("F must not be called when nothing is feasible")


def _two_experts(**kw: object) -> SelectionProblem:
    e = np.array([[1.0, 0.8], [2.0, 3.0]])
    lat = np.array([[300.0, 500.0], [100.0, 90.0]])
    return SelectionProblem(["x", "y"], e, lat, _never_called, categories=("stem", "humanities"), **kw)  # type: ignore[arg-type]


def test_infeasible_energy_names_budget_need_expert_and_category() -> None:
    sel = select_experts(_two_experts(), Budget(energy_j=0.5))
    assert sel.status == "infeasible" and sel.experts == () and sel.evaluations == 0
    assert math.isnan(sel.objective) and sel.worst_energy_j == 0.0
    assert sel.message == ("infeasible: energy budget 0.5 J < 1 J needed by the cheapest expert (x) "
                           "in category 'stem'")
    assert brute_force(_two_experts(), Budget(energy_j=0.5)).message == sel.message


def test_infeasible_latency_names_category() -> None:
    sel = select_experts(_two_experts(aggregation_ms=5.0), Budget(latency_ms=[1000.0, 80.0]))
    assert sel.status == "infeasible"
    assert "latency budget 80 ms < 95 ms" in sel.message and "'humanities'" in sel.message
    assert "(y)" in sel.message


def test_infeasible_when_no_expert_meets_both() -> None:
    # x is cheap but slow, y is fast but hungry
    sel = select_experts(_two_experts(), Budget(energy_j=1.5, latency_ms=200.0))
    assert sel.status == "infeasible" and "no single expert meets both budgets" in sel.message
    assert "x: latency" in sel.message and "y: energy" in sel.message


def test_no_experts_is_infeasible_not_an_error() -> None:
    problem = SelectionProblem([], np.zeros((0, 2)), np.zeros((0, 2)), _never_called)
    sel = select_experts(problem, Budget())
    assert sel.status == "infeasible" and "no experts" in sel.message


# --------------------------------------------------------------------------- bad input


def _ok(**changes: object) -> tuple[SelectionProblem, Budget]:
    problem = SelectionProblem(["a", "b"], np.ones((2, 3)), np.ones((2, 3)), lambda m: float(m.sum()))
    budget_fields = {k: changes.pop(k) for k in ("energy_budget", "latency_budget") if k in changes}
    budget = Budget(energy_j=budget_fields.get("energy_budget", 5.0),  # type: ignore[arg-type]
                    latency_ms=budget_fields.get("latency_budget", 10.0))  # type: ignore[arg-type]
    return dataclasses.replace(problem, **changes), budget  # type: ignore[arg-type]


NAN_E = np.array([[1.0, np.nan, 1.0], [1.0, 1.0, 1.0]])

BAD: dict[str, tuple[dict[str, object], str]] = {
    "nan energy": (dict(energy_j=NAN_E), "energy_j[0, 1]=nan"),
    "negative latency": (dict(latency_ms=-np.ones((2, 3))), "latency_ms[0, 0]=-1.0"),
    "inf energy": (dict(energy_j=np.full((2, 3), np.inf)), "energy_j[0, 0]=inf"),
    "rows != experts": (dict(energy_j=np.ones((3, 3))), "energy_j must have shape (N=2"),
    "shapes differ": (dict(latency_ms=np.ones((2, 4))), "latency_ms shape (2, 4)"),
    "1-d costs": (dict(energy_j=np.ones(2)), "energy_j must have shape"),
    "k = 0": (dict(top_k=0), "top_k must be None or an integer >= 1, got 0"),
    "k float": (dict(top_k=1.5), "top_k"),
    "k bool": (dict(top_k=True), "top_k"),
    "not callable": (dict(objective=3.0), "objective must be callable"),
    "duplicate names": (dict(experts=["a", "a"]), "experts has duplicate names ['a']"),
    "name not str": (dict(experts=["a", 2]), "experts[1]=2"),
    "negative aggregation": (dict(aggregation_ms=-1.0), "aggregation_ms=-1.0"),
    "categories length": (dict(categories=("x",)), "categories must be 3 names"),
    "nan energy budget": (dict(energy_budget=math.nan), "budget.energy_j=nan"),
    "negative energy budget": (dict(energy_budget=-1.0), "budget.energy_j=-1.0"),
    "latency budget length": (dict(latency_budget=[1.0, 2.0]), "budget.latency_ms has shape (2,)"),
    "latency budget nan": (dict(latency_budget=[1.0, math.nan, 2.0]), "budget.latency_ms[1]=nan"),
    "negative latency budget": (dict(latency_budget=-3.0), "budget.latency_ms=-3.0"),
    "F returns nan": (dict(objective=lambda m: math.nan), "objective returned nan"),
    "F returns str": (dict(objective=lambda m: "high"), "objective returned 'high'"),
}


@pytest.mark.parametrize("solver", [select_experts, brute_force], ids=["selector", "brute_force"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_selection_error_naming_the_field(case: str, solver: Callable[..., Selection]) -> None:
    changes, expected = BAD[case]
    problem, budget = _ok(**changes)
    with pytest.raises(SelectionError) as info:
        solver(problem, budget)
    assert expected in str(info.value)


def test_brute_force_refuses_huge_n() -> None:
    problem = SelectionProblem([f"e{i}" for i in range(30)], np.ones((30, 1)), np.ones((30, 1)), lambda m: 0.0)
    with pytest.raises(SelectionError, match="brute_force enumerates 2\\^N subsets; N=30"):
        brute_force(problem, Budget())


# --------------------------------------------------------------------------- the Selection type


def test_selection_is_frozen_and_json_plain() -> None:
    problem, budget = random_instance(2, coverage, None, True)
    sel = select_experts(problem, budget)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sel.status = "x"  # type: ignore[misc]
    with pytest.raises(ValueError):
        sel.mask[0] = not sel.mask[0]
    doc = json.loads(json.dumps(sel.to_json(), allow_nan=False))
    assert doc["experts"] == list(sel.experts) and doc["evaluations"] == sel.evaluations
    assert len(doc["worst_latency_ms"]) == np.shape(problem.energy_j)[1]
    empty = select_experts(_two_experts(), Budget(energy_j=0.1))
    assert json.loads(json.dumps(empty.to_json(), allow_nan=False))["objective"] is None


# --------------------------------------------------------------------------- the planner's objectives


@pytest.mark.parametrize("top_k", [None, 1, 2], ids=lambda k: f"k={k}")
@pytest.mark.parametrize("metric", ["accuracy", "neg_nll"])
def test_selector_matches_brute_force_on_gated_mixture_objectives(metric: str, top_k: int | None) -> None:
    """The planner's F (accuracy or log-likelihood of the gated mixture) is not monotone: the
    selector must still equal brute force on every instance (step 6 certifies it)."""
    mixture = pytest.importorskip("gating.planning.mixture")
    seen_non_monotone = 0
    for seed in range(40):
        rng = np.random.default_rng(1000 + seed)
        m, n, k = int(rng.integers(20, 80)), int(rng.integers(2, 9)), 4
        logprobs = np.log(rng.dirichlet(np.full(k, 0.5), size=(m, n))).astype(np.float32)  # (M, N, K)
        labels = rng.integers(0, k, m)
        f = mixture.MixtureObjective(rng.normal(size=(m, n)) * 2, logprobs, labels, top_k=top_k, metric=metric)
        e = rng.uniform(1, 10, (n, 2))
        problem = SelectionProblem([f"e{i}" for i in range(n)], e, rng.uniform(1, 5, (n, 2)), f, top_k=top_k,
                                   monotone=False)
        k_eff = n if top_k is None else min(top_k, n)
        frac = rng.uniform(0.2, 1.05)
        budget = Budget(energy_j=frac * float(np.sort(e, axis=0)[-k_eff:].sum(axis=0).max()),
                        latency_ms=float(rng.uniform(2, 6)))
        sel, ref = select_experts(problem, budget), brute_force(problem, budget)
        check_selection(sel, problem, budget)
        assert sel.status == ref.status, (seed, sel.message)
        if ref.status == "optimal":
            assert sel.objective == pytest.approx(ref.objective, abs=1e-12), (seed, sel.message, ref.experts)
        seen_non_monotone += "F scored" in sel.message
    assert seen_non_monotone > 0  # some instances show their non-monotonicity to the search


def test_certify_step_is_what_makes_non_monotone_f_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without step 6 the search misses this optimum; with it, it does not."""
    def f(mask: np.ndarray) -> float:  # the pair {a, b} scores best; every other set grows with size
        if tuple(np.flatnonzero(mask)) == (0, 1):
            return 10.0
        return float(mask.sum()) + 0.1 * float(mask[3])

    problem = SelectionProblem(list("abcd"), np.ones((4, 1)), np.ones((4, 1)), f, monotone=False)
    budget = Budget(energy_j=4.0)  # everyone fits: the union closes the search at once
    ref = brute_force(problem, budget)
    assert ref.experts == ("a", "b")
    sel = select_experts(problem, budget)
    assert sel.experts == ("a", "b") and "declared not monotone: certified by enumeration" in sel.message
    assert select_experts(dataclasses.replace(problem, monotone=True), budget).experts != ("a", "b")
    monkeypatch.setattr(selector, "EXACT_MAX_CANDIDATES", 0)
    assert select_experts(problem, budget).experts != ("a", "b")
