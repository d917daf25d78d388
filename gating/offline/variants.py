"""Objective variants of the planner, each against its fair baseline, paired on test.

A *variant* is how the planner chooses S: the objective (``accuracy`` or ``loglik``), the
selection data (the validation split, or k-fold CV over train + validation) and whether the
paired guard runs (:mod:`gating.planning.guard`). Its *fair baseline* is the single expert that fits
the same budget and scores best on the same objective and the same selection data
(``baselines.best_single`` on the variant's own problem): what a deployer with the same data
would pick without mixing.

At every grid point, for each variant: the selector's S (checked against brute force), the
guarded plan, the fair single expert, and their test accuracies. Differences are *paired*
on the test questions: ``d_i = correct_i(plan) − correct_i(single)``; the 95% interval is
the percentile bootstrap of mean(d) over the test rows (:data:`RESAMPLES` draws, seeded;
the same draws for every point and variant). The summary's interval bootstraps the per-row
mean of d over the grid points, so it is paired across points too.

A point is *significantly below* its baseline when the interval's upper end is < 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_moe.calibration import TEST
from gating.offline.budget_grid import GridPoint
from gating.planning import baselines, planner
from gating.planning.guard import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, apply_guard
from gating.planning.mixture import MixtureObjective
from gating.planning.selector import Budget, brute_force, select_experts

logger = logging.getLogger(__name__)

RESAMPLES = 2000
TIE = 1e-12


@dataclass(frozen=True)
class Variant:
    """One way of choosing S: objective, folds (0: validation split), guard confidence (None: off)."""

    objective: str
    folds: int = 0
    guard: float | None = None

    @property
    def name(self) -> str:
        data = f"-cv{self.folds}" if self.folds else ""
        return f"{self.objective}{data}" + ("+guard" if self.guard is not None else "")

    @property
    def selection_name(self) -> str:
        """The objective and data without the guard: the selector's problem."""
        return f"{self.objective}-cv{self.folds}" if self.folds else self.objective


def default_variants(folds: int = 5, confidence: float = DEFAULT_CONFIDENCE) -> list[Variant]:
    """accuracy, loglik and loglik on k-fold CV, each without and with the guard."""
    out = []
    for objective, k in (("accuracy", 0), ("loglik", 0), ("loglik", folds)):
        out += [Variant(objective, k, None), Variant(objective, k, confidence)]
    return out


def _ci(means: np.ndarray) -> list[float]:
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


class PairedTest:
    """Per-row test correctness of plans (top-k mixture of S) and paired bootstrap intervals."""

    def __init__(self, inputs: planner.PlanInputs, top_k: int | None, seed: int) -> None:
        logits, rows = planner.split_rows(inputs, TEST)
        self.f = MixtureObjective(logits, rows.logprobs, rows.labels, top_k=top_k, metric="accuracy")
        self.m = rows.labels.shape[0]
        self.idx = np.random.default_rng(seed).integers(0, self.m, size=(RESAMPLES, self.m))  # (B, M)
        self._rows: dict[bytes, np.ndarray] = {}

    def correct(self, mask: np.ndarray) -> np.ndarray:
        """(M,) 1.0 where the plan's mixture is right on a test row."""
        key = np.asarray(mask, dtype=bool).tobytes()
        if key not in self._rows:
            self._rows[key] = self.f.row_scores(np.asarray(mask, dtype=bool))
        return self._rows[key]

    def interval(self, diff: np.ndarray) -> list[float]:
        """95% percentile bootstrap interval of mean(diff), in the same units."""
        return _ci(diff[self.idx].mean(axis=1))


def run_variant(inputs: planner.PlanInputs, variant: Variant, grid: Sequence[GridPoint], top_k: int | None,
                paired: PairedTest, seed: int = 0) -> dict[str, Any]:
    """One variant over the grid: per point and in summary (module docstring).

    Returns:
        ``name``, ``objective``, ``folds``, ``guard_confidence``, ``points`` (per point: the
        selector's S, the plan, the fair single, their test accuracies, the difference in
        points with its interval, ``brute_force_equal``, ``guard_replaced``) and ``summary``.
    """
    f = planner.make_objective(inputs, top_k, None, objective=variant.objective, folds=variant.folds, seed=seed)
    problem = planner.make_problem(inputs, f, top_k)
    rows, diffs = [], []
    for point in grid:
        budget = Budget(energy_j=point.energy_j, latency_ms=point.latency_ms)
        sel = select_experts(problem, budget)
        ref = brute_force(problem, budget)
        equal = sel.status == ref.status and (sel.status != "optimal" or abs(sel.objective - ref.objective) <= TIE)
        plan, replaced, guard = sel, False, None
        if variant.guard is not None:
            plan, report = apply_guard(problem, budget, sel, f, variant.guard, DEFAULT_RESAMPLES, seed)
            replaced, guard = report.replaced, report.to_json()
        single = baselines.best_single(problem, budget)
        if not plan.mask.any() or not single.mask.any():
            rows.append({"index": point.index, "plan": [], "status": plan.status, "brute_force_equal": equal})
            continue
        d = paired.correct(plan.mask) - paired.correct(single.mask)  # (M,)
        diffs.append(d)
        rows.append({
            "index": point.index, "energy_j": point.energy_j, "latency_scale": point.scale,
            "status": plan.status, "selected": list(sel.experts), "plan": list(plan.experts),
            "fair_single": list(single.experts), "objective_value": float(sel.objective),
            "test_accuracy": float(paired.correct(plan.mask).mean()),
            "fair_single_test_accuracy": float(paired.correct(single.mask).mean()),
            "diff_points": 100.0 * float(d.mean()), "diff_ci_points": [100.0 * v for v in paired.interval(d)],
            "brute_force_equal": equal, "guard_replaced": replaced, "guard": guard,
        })
    return {"name": variant.name, "objective": variant.objective, "folds": variant.folds,
            "guard_confidence": variant.guard, "points": rows, "summary": _summary(rows, diffs, paired)}


def _summary(rows: list[dict[str, Any]], diffs: list[np.ndarray], paired: PairedTest) -> dict[str, Any]:
    planned = [r for r in rows if r["plan"]]
    out: dict[str, Any] = {"points": len(rows), "with_plan": len(planned),
                           "brute_force_equal": sum(r["brute_force_equal"] for r in rows)}
    if not planned:
        return out
    per_row = np.mean(np.stack(diffs), axis=0)  # (M,) each test row's mean difference over the points
    diff = np.array([r["diff_points"] for r in planned])
    out.update(
        mean_test_accuracy=float(np.mean([r["test_accuracy"] for r in planned])),
        mean_fair_single_test_accuracy=float(np.mean([r["fair_single_test_accuracy"] for r in planned])),
        mean_diff_points=float(diff.mean()), mean_diff_ci_points=[100.0 * v for v in paired.interval(per_row)],
        min_diff_points=float(diff.min()), max_diff_points=float(diff.max()),
        below_minus_1=int((diff < -1.0 - 1e-9).sum()),
        significantly_below=sum(1 for r in planned if r["diff_ci_points"][1] < 0),
        significantly_above=sum(1 for r in planned if r["diff_ci_points"][0] > 0),
        multi_expert_selected=sum(1 for r in planned if len(r["selected"]) > 1),
        multi_expert_plans=sum(1 for r in planned if len(r["plan"]) > 1),
        guard_replaced=sum(1 for r in planned if r["guard_replaced"]),
        differs_from_fair_single=sum(1 for r in planned if r["plan"] != r["fair_single"]),
    )
    return out


def run_variants(inputs: planner.PlanInputs, variants: Sequence[Variant], grid: Sequence[GridPoint],
                 top_k: int | None, seed: int = 0) -> dict[str, Any]:
    """:func:`run_variant` for each variant, with one shared set of bootstrap draws."""
    paired = PairedTest(inputs, top_k, seed)
    return {"resamples": RESAMPLES, "test_rows": paired.m, "top_k": top_k, "seed": seed,
            "variants": {v.name: run_variant(inputs, v, grid, top_k, paired, seed) for v in variants}}
