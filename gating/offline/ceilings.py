"""What any choice of experts could reach on test: ceilings, and the oracle with its chance control.

Chosen on *test*, so none is deployable; they bound what a selection rule could show:

- *test-chosen single*: at each budget, the single expert with the best test accuracy among
  those that fit alone;
- *test-chosen fixed subset*: at each budget, the feasible subset S whose top-k mixture (the
  planner's gate, its calibration) has the best test accuracy, found by enumerating all
  2^N subsets (``gating.offline.enumeration``). Its gap over the test-chosen single is the most
  any subset choice could gain from mixing on these tables;
- *per-question oracle*: the fraction of test questions that at least one expert answers
  right (calibrated argmax). Its *chance control*: N random guessers, each picking one of the
  question's options uniformly, reach ``mean_i [1 − (1 − 1/K_i)^N]`` (exact) on the same
  questions; a simulation with a seed is recorded beside it. When the oracle is near that,
  "some expert is right" measures chance, not complementary skill.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_moe.calibration import TEST
from gating.offline.budget_grid import GridPoint
from gating.offline.enumeration import Enumeration
from gating.planning import planner
from gating.planning.mixture import MixtureObjective
from gating.planning.selector import Budget

logger = logging.getLogger(__name__)


def oracle(inputs: planner.PlanInputs, seed: int = 0) -> dict[str, Any]:
    """The per-question oracle over all experts and its random-guesser control (module docstring)."""
    _, rows = planner.split_rows(inputs, TEST)
    lp = rows.logprobs  # (M, N, K) calibrated, -inf pads
    right = lp.argmax(axis=2) == rows.labels[:, None]  # (M, N) each expert alone, calibrated argmax
    n_options = np.isfinite(lp[:, 0, :]).sum(axis=1)  # (M,) K_i
    n = lp.shape[1]
    exact = float(np.mean(1.0 - (1.0 - 1.0 / n_options) ** n))
    rng = np.random.default_rng(seed)
    guesses = (rng.random((rows.labels.shape[0], n)) * n_options[:, None]).astype(np.int64)  # (M, N)
    simulated = float((guesses == rows.labels[:, None]).any(axis=1).mean())
    return {"experts": n, "test_rows": int(rows.labels.shape[0]), "oracle_accuracy": float(right.any(axis=1).mean()),
            "chance_guessers_exact": exact, "chance_guessers_simulated": simulated, "seed": seed,
            "best_single_accuracy": float(right.mean(axis=0).max())}


def subset_ceilings(inputs: planner.PlanInputs, grid: Sequence[GridPoint], top_k: int | None) -> dict[str, Any]:
    """Per point the test-chosen single and fixed subset, and their gap (module docstring).

    Returns:
        ``points`` (per point: both ceilings' experts and accuracy, ``gap_points`` and
        ``gap_questions``) and ``summary`` (means over the points with a plan, the largest gap).
    """
    logits, rows = planner.split_rows(inputs, TEST)
    f = MixtureObjective(logits, rows.logprobs, rows.labels, top_k=top_k, metric="accuracy")
    n, m = len(inputs.experts), int(rows.labels.shape[0])
    enum = Enumeration(f, n)
    problem = planner.make_problem(inputs, f, top_k)
    singles = np.array([1 << j for j in range(n)])
    out: list[dict[str, Any]] = []
    for point in grid:
        feasible = enum.feasible(problem, Budget(energy_j=point.energy_j, latency_ms=point.latency_ms))
        feasible[0] = False
        if not feasible.any():
            out.append({"index": point.index, "subset": [], "single": []})
            continue
        ids = np.flatnonzero(feasible)
        best = int(ids[np.argmax(enum.values[ids])])  # first in binary order on ties
        fit = singles[feasible[singles]]
        one = int(fit[np.argmax(enum.values[fit])])
        gap = float(enum.values[best] - enum.values[one])
        out.append({"index": point.index,
                    "subset": [inputs.experts[j] for j in np.flatnonzero(enum.masks[best])],
                    "subset_accuracy": float(enum.values[best]),
                    "single": [inputs.experts[j] for j in np.flatnonzero(enum.masks[one])],
                    "single_accuracy": float(enum.values[one]),
                    "gap_points": 100.0 * gap, "gap_questions": int(round(gap * m))})
    planned = [r for r in out if r["subset"]]
    summary: dict[str, Any] = {"points": len(out), "with_plan": len(planned), "test_rows": m}
    if planned:
        gaps = np.array([r["gap_points"] for r in planned])
        summary.update(mean_subset_accuracy=float(np.mean([r["subset_accuracy"] for r in planned])),
                       mean_single_accuracy=float(np.mean([r["single_accuracy"] for r in planned])),
                       max_gap_points=float(gaps.max()), mean_gap_points=float(gaps.mean()),
                       max_gap_questions=max(int(r["gap_questions"]) for r in planned),
                       points_with_gap=int((gaps > 1e-9).sum()))
    return {"points": out, "summary": summary}
