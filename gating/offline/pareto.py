"""The Pareto front of plans in (expected energy on test, test accuracy).

A *plan* is a method's expert set as some grid point of a budget sweep chose it
(``gating.offline.budget_sweep``), once per (method, experts), plus each single expert alone
(method ``"single"``). The baselines that are averages or oracles (``random``,
``best-single-test``, ``best-single-val``) are left out: the single experts stand for them.

A plan is on the front when no other plan has expected J ≤ and accuracy ≥ with a different
(J, accuracy) point. Two fronts are reported: MoE²'s own (``moe2`` and ``moe2-adaptive`` plans
only) and the front of all plans, where the plans that land on the same point with the same
experts are merged into one row listing every method that reached it. MoE²'s share of that
front counts a row as MoE²'s when a MoE² method is among them.

Expected energy is the mean J of the experts that actually answer each test sample
(``gating.offline.evaluation``); the worst-case J, what a budget constrains, is kept beside it.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

EXCLUDED = ("random", "best-single-test", "best-single-val")  # averages and oracles, not plans
Plan = dict[str, Any]


def collect_plans(points: list[dict[str, Any]], singles: dict[str, Any]) -> list[Plan]:
    """The distinct plans of a sweep and the single experts (module docstring).

    Args:
        points: the sweep's point records.
        singles: per expert, ``gating.offline.evaluation.single_experts``' record.

    Returns:
        One row per (method, experts), in first-seen grid order, then the single experts:
        ``method``, ``experts``, ``accuracy``, ``expected_energy_j``, ``worst_energy_j`` and
        ``first_index`` (the first grid point that chose it; None for a single expert).
    """
    plans: dict[tuple[str, tuple[str, ...]], Plan] = {}
    for p in points:
        for method, m in p["methods"].items():
            if m["test"] and method not in EXCLUDED:
                plans.setdefault((method, tuple(m["experts"])), {
                    "method": method, "experts": m["experts"], "accuracy": m["test"]["accuracy"],
                    "expected_energy_j": m["test"]["expected_energy_j"],
                    "worst_energy_j": m["worst_energy_j"], "first_index": p["index"]})
    for name, s in singles.items():
        plans[("single", (name,))] = {"method": "single", "experts": [name],
                                      "accuracy": s["corrected"]["accuracy"],
                                      "expected_energy_j": s["corrected"]["expected_energy_j"],
                                      "worst_energy_j": s["worst_energy_j"], "first_index": None}
    return list(plans.values())


def front(candidates: list[Plan]) -> list[Plan]:
    """The non-dominated plans, by ascending expected J (then descending accuracy).

    A plan is dominated by one with expected J ≤ and accuracy ≥ at a different point; plans
    at the same point do not dominate each other, so all of them stay.
    """
    keep = [a for a in candidates if not any(
        b["expected_energy_j"] <= a["expected_energy_j"] and b["accuracy"] >= a["accuracy"]
        and (b["expected_energy_j"], b["accuracy"]) != (a["expected_energy_j"], a["accuracy"])
        for b in candidates)]
    return sorted(keep, key=lambda r: (r["expected_energy_j"], -r["accuracy"]))


def merge_methods(rows: list[Plan]) -> list[Plan]:
    """One row per (point, experts), with ``methods``: every method that reached it, in order."""
    merged: dict[tuple[float, float, tuple[str, ...]], Plan] = {}
    for r in rows:
        key = (r["expected_energy_j"], r["accuracy"], tuple(r["experts"]))
        merged.setdefault(key, {**r, "methods": []})["methods"].append(r["method"])
    return list(merged.values())


def pareto(points: list[dict[str, Any]], singles: dict[str, Any]) -> dict[str, Any]:
    """Both fronts of a sweep.

    Returns:
        ``plans`` (:func:`collect_plans`), ``moe2_front`` (the front of the MoE² plans),
        ``global_front`` (the front of all plans, :func:`merge_methods`) and
        ``moe2_share_of_global_front`` (the fraction of its rows a MoE² method reached).
    """
    rows = collect_plans(points, singles)
    moe2 = front([r for r in rows if r["method"] in ("moe2", "moe2-adaptive")])
    every = merge_methods(front(rows))
    share = sum(any(m.startswith("moe2") for m in r["methods"]) for r in every) / max(len(every), 1)
    return {"plans": rows, "moe2_front": moe2, "global_front": every, "moe2_share_of_global_front": share}
