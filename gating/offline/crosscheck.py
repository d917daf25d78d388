"""The selector against brute force at every point of a budget grid, on the real objective.

For one objective F and the selections a sweep made (``gating.offline.budget_sweep``), at each grid
point:

- *equal*: the selector and ``gating.planning.selector.brute_force`` have the same status and, when
  both are optimal, ``|F(selector) − F(brute force)| ≤`` :data:`~gating.offline.enumeration.TIE`;
  *same set*: the same experts (ties can give equal F with other sets);
- *non-monotone F changed the plan*: the best feasible set scores strictly more than the best
  maximal feasible set (``gating.offline.enumeration``), so a search that trusts monotonicity
  would miss the optimum; whether the selector's and brute force's sets are maximal;
- *enumeration agrees*: the enumeration's best feasible F equals brute force's optimum;
- the evaluation counts of both searches.

Plus, once, ``gating.planning.planner.monotonicity_report``: how often adding an expert lowers F
(every pair when N ≤ ``CROSSCHECK_MAX_N``, else 4096 sampled). Above ``CROSSCHECK_MAX_N``
experts brute force is not run; the result says so (``ran: False``) and keeps the
selector's evaluation counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gating.offline.budget_grid import GridPoint
from gating.offline.enumeration import TIE, Enumeration
from gating.offline.json_values import json_number
from gating.planning import planner
from gating.planning.selector import Budget, Selection, SelectionProblem, brute_force

logger = logging.getLogger(__name__)

MAX_N = planner.CROSSCHECK_MAX_N  # brute force and the 2^N enumeration up to this N


def crosscheck(name: str, problem: SelectionProblem, objective: Callable[[np.ndarray], float],
               grid: Sequence[GridPoint], selections: Sequence[Selection], seed: int = 0,
               on_point: Callable[[], None] | None = None) -> dict[str, Any]:
    """Check the selections a sweep made at each grid point against brute force.

    Args:
        name: the objective's name, recorded as ``objective``.
        problem: the selection problem the selections solved (its ``objective`` is F).
        objective: F itself, for the monotonicity report and the enumeration.
        grid: the grid points, in the order of ``selections``.
        selections: the selector's answer at each grid point.
        seed: the monotonicity report's sampling seed.
        on_point: called after each point is checked (a progress bar's advance).

    Returns:
        ``objective``, ``constraint_top_k``, ``points``, ``monotonicity`` and, when brute force
        ran, ``ran: True``, the totals of :func:`summarise` and ``rows`` (one
        :func:`check_point` per point); else ``ran: False``, ``reason`` and the selector's
        ``selector_evaluations`` (total) and ``selector_evaluations_mean``.
    """
    n = len(problem.experts)
    pairs = n * 2 ** (n - 1)
    mono = planner.monotonicity_report(objective, n, max_pairs=max(4096, pairs if n <= MAX_N else 0), seed=seed)
    out: dict[str, Any] = {"objective": name, "constraint_top_k": problem.top_k, "points": len(selections),
                           "monotonicity": mono}
    if n > MAX_N:
        out.update(ran=False, reason=f"N={n} > {MAX_N}: brute force (2^N subsets) not run")
        sel_evals = [s.evaluations for s in selections]
        out.update(selector_evaluations=int(sum(sel_evals)), selector_evaluations_mean=float(np.mean(sel_evals)))
        return out
    enum = Enumeration(objective, n)
    rows = []
    for point, sel in zip(grid, selections, strict=True):
        rows.append(check_point(enum, problem, point, sel))
        if on_point is not None:
            on_point()
    out.update(ran=True, **summarise(rows), rows=rows)
    return out


def check_point(enum: Enumeration, problem: SelectionProblem, point: GridPoint,
                sel: Selection) -> dict[str, Any]:
    """One grid point: the selector's answer against brute force and the enumeration."""
    budget = Budget(energy_j=point.energy_j, latency_ms=point.latency_ms)
    ref = brute_force(problem, budget)
    info = enum.analyse(problem, budget)
    optimal = sel.status == "optimal" and ref.status == "optimal"
    diff = abs(sel.objective - ref.objective) if optimal else 0.0
    return {
        "index": point.index, "energy_j": point.energy_j, "latency_scale": point.scale,
        "status": sel.status, "brute_force_status": ref.status,
        "equal": sel.status == ref.status and diff <= TIE, "abs_diff": diff,
        "same_set": sel.experts == ref.experts,
        "selector": list(sel.experts), "selector_objective": json_number(sel.objective),
        "brute_force": list(ref.experts), "brute_force_objective": json_number(ref.objective),
        "selector_evaluations": sel.evaluations, "brute_force_evaluations": ref.evaluations,
        "feasible_sets": info["feasible_sets"], "maximal_sets": info["maximal_sets"],
        "best_maximal_objective": json_number(info["best_maximal"]),
        "nonmonotone_changed_plan": info["changed_plan"],
        "enumeration_agrees": (not optimal) or abs(info["best_feasible"] - ref.objective) <= TIE,
        "selector_set_maximal": bool(sel.mask.any() and info["maximal"][enum.index(sel.mask)]),
        "brute_force_set_maximal": bool(ref.mask.any() and info["maximal"][enum.index(ref.mask)]),
        "selector_saw_nonmonotone": "not monotone" in sel.message,
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over the :func:`check_point` rows: agreement counts, the largest ΔF, evaluation
    totals and means, and the non-monotone counts (non-maximal ones among planned points)."""
    planned = [r for r in rows if r["status"] == "optimal"]
    sel_e = [r["selector_evaluations"] for r in rows]
    ref_e = [r["brute_force_evaluations"] for r in rows]
    return {
        "equal": sum(r["equal"] for r in rows),
        "same_set": sum(r["same_set"] for r in rows),
        "with_plan": len(planned),
        "max_abs_diff": float(max((r["abs_diff"] for r in rows), default=0.0)),
        "selector_evaluations": int(sum(sel_e)), "brute_force_evaluations": int(sum(ref_e)),
        "selector_evaluations_mean": float(np.mean(sel_e)), "brute_force_evaluations_mean": float(np.mean(ref_e)),
        "nonmonotone_changed_plan": sum(r["nonmonotone_changed_plan"] for r in rows),
        "changed_plan_selector_equal": sum(r["nonmonotone_changed_plan"] and r["equal"] for r in rows),
        "selector_saw_nonmonotone": sum(r["selector_saw_nonmonotone"] for r in rows),
        "selector_non_maximal": sum(1 for r in planned if not r["selector_set_maximal"]),
        "brute_force_non_maximal": sum(1 for r in planned if not r["brute_force_set_maximal"]),
        "enumeration_agrees": all(r["enumeration_agrees"] for r in rows),
    }
