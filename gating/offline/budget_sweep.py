"""Every method's plan at one budget of a grid, chosen on validation and evaluated on test.

The methods, in :data:`METHODS` order (the order of each point's ``methods`` record):

- ``moe2``: ``select_experts`` on the planner's objective with fixed k (the constraint is the
  k-largest energy sum), then the paired guard when it is on (``gating.planning.guard``), as
  ``gating.planning.planner.plan_one`` does; ``moe2-adaptive``: the same with adaptive k (the fewest
  experts with gate mass ≥ τ), whose constraint is all of S;
- ``uniform-S`` / ``uniform-S-adaptive``: equal weights over all of MoE²'s S (fixed / adaptive),
  so every member answers; its worst-case J is all of S and can break the fixed-k budget
  (``within_budget`` and ``violations`` say so);
- ``greedy-per-joule``, ``best-single-val`` (the single expert chosen on the same selection
  data by the same objective: the fair baseline),
  ``topk-all`` (top-k of every expert, ignoring the budget): ``gating.planning.baselines``;
- ``random``: the mean over ``random_draws`` seeded ``baselines.random_feasible`` subsets;
- ``best-single-test``: the single expert with the best *test* accuracy among those that fit
  alone (an oracle; a ceiling, not a deployable baseline).

Every method except ``moe2-adaptive`` and ``uniform-S-adaptive`` answers with the top-k of
its S. Each record's ``test`` is ``gating.offline.evaluation.PlanEvaluator``'s dict, None without a
plan. :func:`energy_slice` and :func:`latency_slice` cut the swept points along one axis.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from gating.offline.budget_grid import GridPoint
from gating.offline.evaluation import PlanEvaluator, one_hot
from gating.offline.json_values import json_number
from gating.offline.margins import accuracy
from gating.planning import baselines, planner
from gating.planning.guard import DEFAULT_RESAMPLES, apply_guard
from gating.planning.mixture import MixtureObjective
from gating.planning.selector import (
    INFEASIBLE,
    Budget,
    Instance,
    Selection,
    SelectionProblem,
    select_experts,
    validate,
)

logger = logging.getLogger(__name__)

METHODS = ("moe2", "moe2-adaptive", "uniform-S", "uniform-S-adaptive", "greedy-per-joule", "random",
           "best-single-val", "best-single-test", "topk-all")
MOE2 = ("moe2", "moe2-adaptive")  # the methods ``select_experts`` plans
_MEAN_KEYS = ("accuracy", "nll", "mean_active_experts", "expected_energy_j", "expected_latency_ms")


@dataclass(frozen=True)
class PlannedPoint:
    """One grid point's plans: the JSON ``record`` and MoE²'s selections (for the cross-check)."""

    record: dict[str, Any]  # index, energy_j, latency_scale, latency_ms, singles_fit, methods
    selections: dict[str, Selection]  # "moe2" and "moe2-adaptive", the selector's (unguarded) answers


@dataclass
class MethodSweep:
    """The objectives, problems and evaluator that every grid point shares.

    Build it with :meth:`make`; ``problems`` and ``objectives`` are keyed by :data:`MOE2`.
    """

    inputs: planner.PlanInputs
    evaluate: PlanEvaluator
    top_k: int | None
    tau: float
    seed: int
    random_draws: int
    problems: dict[str, SelectionProblem] = field(default_factory=dict)
    objectives: dict[str, Callable[[np.ndarray], float]] = field(default_factory=dict)
    objective: str = "loglik"
    folds: int = 0
    guard: float | None = None  # the paired guard's confidence; None: off

    @classmethod
    def make(cls, inputs: planner.PlanInputs, top_k: int | None, tau: float, seed: int,
             random_draws: int, objective: str = "loglik", folds: int = 0,
             guard: float | None = None) -> MethodSweep:
        """The sweep over ``inputs``: F on the selection data (fixed k and adaptive τ), a test evaluator.

        Args:
            top_k: the fine level's k (None: all of S answers).
            tau: adaptive k's gate-mass threshold.
            seed: seeds the random baseline (with the point's index), the folds and the guard.
            random_draws: random feasible subsets averaged per point.
            objective / folds: F (``gating.planning.inputs.make_objective``).
            guard: the paired guard's confidence for MoE²'s plans; None turns it off.
        """
        sweep = cls(inputs, PlanEvaluator(inputs), top_k, tau, seed, random_draws,
                    objective=objective, folds=folds, guard=guard)
        sweep.objectives["moe2"] = planner.make_objective(inputs, top_k, None, objective=objective,
                                                          folds=folds, seed=seed)
        sweep.objectives["moe2-adaptive"] = planner.make_objective(inputs, None, tau, objective=objective,
                                                                   folds=folds, seed=seed)
        sweep.problems["moe2"] = planner.make_problem(inputs, sweep.objectives["moe2"], top_k)
        # adaptive k may activate any member of S: its constraint is all of S (as plan_one)
        sweep.problems["moe2-adaptive"] = planner.make_problem(inputs, sweep.objectives["moe2-adaptive"], None)
        return sweep

    def plan_point(self, point: GridPoint) -> PlannedPoint:
        """Every method's plan at one budget, evaluated on test (records in :data:`METHODS` order)."""
        k, ev = self.top_k, self.evaluate
        budget = Budget(energy_j=point.energy_j, latency_ms=point.latency_ms)
        prob_k = self.problems["moe2"]
        all_active = validate(replace(prob_k, top_k=None), budget)  # every member of S answers
        sels = {"moe2": select_experts(prob_k, budget),
                "moe2-adaptive": select_experts(self.problems["moe2-adaptive"], budget)}
        plans, guards = {}, {}
        for name in MOE2:
            plans[name], guards[name] = self._guarded(name, budget, sels[name])
        methods = {
            "moe2": _entry(plans["moe2"], ev(plans["moe2"].mask, k, None), message=plans["moe2"].message,
                           guard=guards["moe2"]),
            "moe2-adaptive": _entry(plans["moe2-adaptive"], ev(plans["moe2-adaptive"].mask, None, self.tau),
                                    message=plans["moe2-adaptive"].message, guard=guards["moe2-adaptive"]),
            "uniform-S": self._uniform(plans["moe2"], all_active),
            "uniform-S-adaptive": self._uniform(plans["moe2-adaptive"], all_active),
        }
        sel = baselines.greedy_per_joule(prob_k, budget)
        methods["greedy-per-joule"] = _entry(sel, ev(sel.mask, k, None))
        methods["random"] = self._random(prob_k, budget, point.index)
        sel = baselines.best_single(prob_k, budget)
        methods["best-single-val"] = _entry(sel, ev(sel.mask, k, None))
        fits = [self.inputs.experts[j] for j in np.flatnonzero(all_active.alone_feasible())]
        methods["best-single-test"] = self._best_single_test(fits, all_active)
        sel = baselines.topk_all(prob_k, budget)
        methods["topk-all"] = _entry(sel, ev(sel.mask, k, None), message=sel.message)
        record = {"index": point.index, "energy_j": point.energy_j, "latency_scale": point.scale,
                  "latency_ms": [float(v) for v in point.latency_ms], "singles_fit": fits, "methods": methods}
        return PlannedPoint(record, sels)

    def _guarded(self, name: str, budget: Budget, sel: Selection) -> tuple[Selection, dict[str, Any] | None]:
        """The paired guard on one MoE² selection (unchanged when the guard is off)."""
        if self.guard is None:
            return sel, None
        f = self.objectives[name]
        assert isinstance(f, MixtureObjective)
        plan, report = apply_guard(self.problems[name], budget, sel, f, self.guard, DEFAULT_RESAMPLES, self.seed)
        return plan, report.to_json()

    def _uniform(self, sel: Selection, all_active: Instance) -> dict[str, Any]:
        """Equal weights over all of a MoE² plan's S: all of S answers, so all of S costs."""
        mask = sel.mask
        if not mask.any():
            return _entry(None, None, True)
        worst = float(all_active.energy_by_category(mask).max())
        return _entry(sel, self.evaluate(mask, None, None, uniform=True), all_active.feasible(mask),
                      worst_energy_j=worst, validation_objective=None, violations=all_active.violations(mask))

    def _random(self, problem: SelectionProblem, budget: Budget, index: int) -> dict[str, Any]:
        """The mean test figures of ``random_draws`` seeded random feasible subsets."""
        draws = [baselines.random_feasible(problem, budget, seed=self.seed * 100_003 + index * self.random_draws + d)
                 for d in range(self.random_draws)]
        tests = [self.evaluate(s.mask, self.top_k, None) for s in draws]
        first = tests[0]
        if first is None:
            return _entry(None, None, True)
        mean: dict[str, Any] = {key: float(np.mean([t[key] for t in tests if t])) for key in _MEAN_KEYS}
        mean["per_category"] = {c: float(np.mean([t["per_category"][c] for t in tests if t]))
                                for c in first["per_category"]}
        mean["draws"] = [t["accuracy"] for t in tests if t]
        return _entry(draws[0], mean, True, draw_experts=[list(s.experts) for s in draws])

    def _best_single_test(self, fits: list[str], all_active: Instance) -> dict[str, Any]:
        """The test oracle: of the experts that fit alone, the one with the best test accuracy."""
        if not fits:
            return _entry(None, None, True)
        experts = self.inputs.experts
        tests = {name: self.evaluate(one_hot(len(experts), experts.index(name)), self.top_k, None)
                 for name in fits}
        best = max(fits, key=lambda name: tests[name]["accuracy"])  # type: ignore[index]
        mask = one_hot(len(experts), experts.index(best))
        return {"status": "feasible", "experts": [best], "within_budget": True,
                "worst_energy_j": float(all_active.energy_by_category(mask).max()), "test": tests[best]}


def _entry(sel: Selection | None, test: dict[str, Any] | None, within_budget: bool | None = None,
           worst_energy_j: float | None = None, **extra: Any) -> dict[str, Any]:
    """One method's record at a point; ``sel=None``: no plan. ``within_budget`` defaults to
    "the selection does not violate the budget"; ``worst_energy_j`` to the selection's own."""
    if sel is None:
        return {"status": INFEASIBLE, "experts": [], "test": None, "within_budget": True, **extra}
    if within_budget is None:
        within_budget = sel.status != "violates"
    return {"status": sel.status, "experts": list(sel.experts),
            "validation_objective": json_number(sel.objective),
            "worst_energy_j": json_number(sel.worst_energy_j if worst_energy_j is None else worst_energy_j),
            "evaluations": sel.evaluations, "within_budget": within_budget, "test": test, **extra}


def _slice_row(point: dict[str, Any]) -> dict[str, Any]:
    return {"index": point["index"], "energy_j": point["energy_j"], "latency_scale": point["latency_scale"],
            "latency_ms": point["latency_ms"], "moe2_experts": point["methods"]["moe2"]["experts"],
            **{m: accuracy(point, m) for m in METHODS}}


def energy_slice(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points at the largest latency scale (every expert fits in time), in grid order:
    position, MoE²'s S and each method's test accuracy (None without a plan)."""
    top_s = max(p["latency_scale"] for p in points)
    return [_slice_row(p) for p in points if p["latency_scale"] == top_s]


def latency_slice(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points at the largest energy budget (every subset fits in J), as :func:`energy_slice`."""
    top_e = max(p["energy_j"] for p in points)
    return [_slice_row(p) for p in points if p["energy_j"] == top_e]
