"""Paired accuracy margins between methods over the points of a budget grid.

The records are a budget sweep's points (``gating.offline.budget_sweep``): each has ``index``,
``energy_j``, ``latency_scale``, ``latency_ms``, ``singles_fit`` and, per method,
``methods[m]["test"]`` (test accuracy, overall and ``per_category``; None without a plan).

Margins are *paired*: at each grid point where both methods have a plan, the margin is
``100 · (acc(method) − acc(against))``, in points of test accuracy. Over those points:

- wins / ties / losses: margins above 1e-9, within ±1e-9, below −1e-9 (:data:`EPS_POINTS`);
- the best and worst margin, each with where it is (ties: the first in grid order);
- the mean margin.

Against ``best-single-test`` (the best single expert that fits the same budget, chosen on
test) the margin is conservative: the single expert is an oracle choice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

EPS_POINTS = 1e-9  # margins within this many points of 0 are ties

Point = dict[str, Any]


def accuracy(point: Point, method: str, category: str | None = None) -> float | None:
    """A method's test accuracy at a point (fraction): overall, or in one category (NaN when
    the category has no test samples); None when the method has no plan there."""
    test = point["methods"][method]["test"]
    if not test:
        return None
    return float(test["accuracy"] if category is None else test["per_category"].get(category, math.nan))


def _where(margin: float, point: Point, method: str, against: str) -> dict[str, Any]:
    """A margin with its grid point and both methods' plans there."""
    return {"margin_points": margin, "index": point["index"], "energy_j": point["energy_j"],
            "latency_scale": point["latency_scale"], "latency_ms": point["latency_ms"],
            "method_experts": point["methods"][method]["experts"],
            "against_experts": point["methods"][against]["experts"],
            "method_accuracy": accuracy(point, method), "against_accuracy": accuracy(point, against)}


def compare(points: list[Point], method: str, against: str) -> dict[str, Any]:
    """Paired margins of ``method`` over ``against`` (module docstring).

    Returns:
        ``{"points": 0}`` when no point has a plan of both; else ``points`` (how many do),
        ``wins``, ``ties``, ``losses``, ``mean_points`` and ``best`` / ``worst`` (each the
        margin in points, the point's position and both plans, see :func:`_where`).
    """
    diffs = [(100.0 * (a - b), p) for p in points
             if (a := accuracy(p, method)) is not None and (b := accuracy(p, against)) is not None]
    if not diffs:
        return {"points": 0}
    values = np.array([d for d, _ in diffs])
    best = max(diffs, key=lambda t: t[0])  # max() and min() keep the first of ties: grid order
    worst = min(diffs, key=lambda t: t[0])
    return {"points": len(diffs), "wins": int((values > EPS_POINTS).sum()),
            "ties": int((np.abs(values) <= EPS_POINTS).sum()), "losses": int((values < -EPS_POINTS).sum()),
            "mean_points": float(values.mean()),
            "best": _where(best[0], best[1], method, against), "worst": _where(worst[0], worst[1], method, against)}


def per_category_margins(points: list[Point], categories: Iterable[str], method: str,
                         singles: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per category: ``method``'s best and worst margin over the best single expert *in that
    category* among those that fit the point's budget alone (a test oracle per category).

    Args:
        points: the sweep's points.
        categories: the category names to report.
        method: the method measured (e.g. ``"moe2"``).
        singles: per expert name, its test figures alone (``per_category`` accuracy).

    Returns:
        Per category with at least one comparable point: ``best_points`` / ``best_index``,
        ``worst_points`` / ``worst_index`` (margin in points and the grid index; ties: first
        in grid order), ``losses`` (margins below −1e-9) and ``points`` compared.
    """
    out = {}
    for c in categories:
        diffs = []
        for p in points:
            mine = accuracy(p, method, c)
            fitting = [singles[name]["per_category"].get(c) for name in p["singles_fit"]]
            fitting = [v for v in fitting if v is not None]
            if mine is None or not fitting:
                continue
            diffs.append((100.0 * (mine - max(fitting)), p))
        if diffs:
            best, worst = max(diffs, key=lambda t: t[0]), min(diffs, key=lambda t: t[0])
            out[c] = {"best_points": best[0], "best_index": best[1]["index"],
                      "worst_points": worst[0], "worst_index": worst[1]["index"],
                      "losses": sum(1 for d, _ in diffs if d < -EPS_POINTS), "points": len(diffs)}
    return out


def method_summary(points: list[Point], methods: Iterable[str], reference: str = "moe2") -> dict[str, Any]:
    """Per method: how often it has a plan, its mean test accuracy there, how often that plan
    keeps the budget, and ``vs_moe2``: :func:`compare` of ``reference`` over it
    (``{"points": 0}`` for the reference itself)."""
    summary = {}
    for name in methods:
        accs = [a for a in (accuracy(p, name) for p in points) if a is not None]
        summary[name] = {"points_with_plan": len(accs), "mean_accuracy": float(np.mean(accs)) if accs else None,
                         "within_budget": sum(1 for p in points if p["methods"][name]["test"]
                                              and p["methods"][name]["within_budget"]),
                         "vs_moe2": compare(points, reference, name) if name != reference else {"points": 0}}
    return summary
