"""The paired guard: constructed cases where the mixture's gain is and is not significant."""

from __future__ import annotations

import numpy as np
import pytest

from edge_moe.errors import ConfigError
from gating.planning.guard import apply_guard, bootstrap_lower_bound
from gating.planning.mixture import MixtureObjective
from gating.planning.selector import Budget, SelectionProblem, select_experts


def test_bootstrap_lower_bound_by_construction() -> None:
    assert bootstrap_lower_bound(np.ones(50), 0.95) == pytest.approx(1.0)
    assert bootstrap_lower_bound(-np.ones(50), 0.95) == pytest.approx(-1.0)
    one_win = np.zeros(200)
    one_win[0] = 1.0  # one question in 200: the bootstrap often draws it zero times
    assert bootstrap_lower_bound(one_win, 0.95) <= 0.0
    rng = np.random.default_rng(0)
    strong = rng.normal(0.5, 1.0, 400)  # mean 0.5, s.e. 0.05: 10 standard errors above 0
    lo = bootstrap_lower_bound(strong, 0.95, seed=3)
    assert 0.3 < lo < strong.mean()
    assert bootstrap_lower_bound(strong, 0.99, seed=3) < lo  # more confidence, lower bound
    assert bootstrap_lower_bound(strong, 0.95, seed=3) == lo  # seeded
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="confidence"):
            bootstrap_lower_bound(strong, bad)


def _two_expert_case(n_rows: int, b_only: int) -> tuple[SelectionProblem, MixtureObjective]:
    """A right on rows [0, n_rows − b_only), B right on every row where A is not (and some).

    The gate sends the rows B alone gets right to B, the rest to A, so the mixture of both
    gets every row right; A alone misses ``b_only`` rows, B alone misses the rest.
    """
    m = n_rows
    labels = np.zeros(m, dtype=np.int64)
    right_a = np.arange(m) < m - b_only
    right_b = ~right_a
    p = np.full((m, 2, 2), 0.1)
    p[:, 0, 0] = np.where(right_a, 0.9, 0.1)
    p[:, 0, 1] = 1.0 - p[:, 0, 0]
    p[:, 1, 0] = np.where(right_b, 0.9, 0.1)
    p[:, 1, 1] = 1.0 - p[:, 1, 0]
    logits = np.where(right_a[:, None], [[4.0, -4.0]], [[-4.0, 4.0]])  # (M, 2)
    f = MixtureObjective(logits, np.log(p), labels, top_k=1, metric="accuracy")
    problem = SelectionProblem(["a", "b"], np.ones((2, 1)), np.ones((2, 1)), f, top_k=1)
    return problem, f


def test_guard_keeps_a_significant_mixture() -> None:
    problem, f = _two_expert_case(100, b_only=40)  # A alone 60%, mixture 100%
    budget = Budget()
    sel = select_experts(problem, budget)
    assert sel.experts == ("a", "b")
    plan, report = apply_guard(problem, budget, sel, f, confidence=0.95)
    assert plan is sel and not report.replaced
    assert report.single == ("a",) and report.gain == pytest.approx(0.4)
    assert report.lower_bound is not None and report.lower_bound > 0.3


def test_guard_replaces_a_one_question_win_by_the_single_expert() -> None:
    problem, f = _two_expert_case(100, b_only=1)  # A alone 99%, mixture 100%
    budget = Budget()
    sel = select_experts(problem, budget)
    assert sel.experts == ("a", "b") and sel.objective > f(np.array([True, False]))
    plan, report = apply_guard(problem, budget, sel, f, confidence=0.95)
    assert report.replaced and plan.experts == ("a",) and plan.status == "optimal"
    assert report.gain == pytest.approx(0.01) and report.lower_bound is not None and report.lower_bound <= 0
    assert "guard" in plan.message and report.to_json()["candidate"] == ["a", "b"]
    # at a low enough confidence the same win is admitted
    plan, report = apply_guard(problem, budget, sel, f, confidence=0.5)
    assert not report.replaced and plan.experts == ("a", "b")


def test_guard_leaves_single_expert_plans_alone() -> None:
    problem, f = _two_expert_case(100, b_only=1)
    budget = Budget(latency_ms=np.array([1.0]))  # only a is fast enough
    sel = select_experts(SelectionProblem(["a", "b"], np.ones((2, 1)), np.array([[1.0], [5.0]]), f, top_k=1), budget)
    assert sel.experts == ("a",)
    plan, report = apply_guard(problem, budget, sel, f)
    assert plan is sel and not report.replaced and report.gain is None
