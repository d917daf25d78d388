"""gating.offline.pareto: both fronts, checked against dominance by its definition."""

from __future__ import annotations

import numpy as np

from gating.offline.pareto import EXCLUDED, collect_plans, front, merge_methods, pareto


def make_sweep(seed: int = 0) -> tuple[list[dict[str, object]], dict[str, object]]:
    """Points whose plans repeat across budgets and share a few (J, accuracy) values, plus singles."""
    rng = np.random.default_rng(seed)
    sets = [["x"], ["y"], ["x", "y"], ["y", "z"], ["x", "y", "z"]]
    cost = {tuple(s): float(rng.choice([1.0, 2.0, 3.0])) for s in map(tuple, sets)}
    acc = {tuple(s): float(rng.choice([0.5, 0.6, 0.7])) for s in map(tuple, sets)}
    points = []
    for i in range(12):
        methods = {}
        for m in ("moe2", "moe2-adaptive", "greedy-per-joule", *EXCLUDED):
            s = sets[int(rng.integers(len(sets)))]
            has_plan = rng.random() > 0.15
            methods[m] = {"experts": s, "worst_energy_j": 10 * cost[tuple(s)],
                          "test": {"accuracy": acc[tuple(s)], "expected_energy_j": cost[tuple(s)]} if has_plan else None}
        points.append({"index": i, "methods": methods})
    singles = {e: {"corrected": {"accuracy": float(rng.choice([0.4, 0.6])), "expected_energy_j": float(rng.random())},
                   "worst_energy_j": 5.0} for e in ("x", "y", "z")}
    return points, singles


def _dominated(a: dict[str, object], rows: list[dict[str, object]]) -> bool:
    return any(b["expected_energy_j"] <= a["expected_energy_j"] and b["accuracy"] >= a["accuracy"]
               and (b["expected_energy_j"] < a["expected_energy_j"] or b["accuracy"] > a["accuracy"]) for b in rows)


def _reference_front(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    return sorted((r for r in rows if not _dominated(r, rows)), key=lambda r: (r["expected_energy_j"], -r["accuracy"]))


def test_plans_are_distinct_and_first_seen() -> None:
    points, singles = make_sweep()
    plans = collect_plans(points, singles)
    seen: dict[tuple[str, tuple[str, ...]], int] = {}
    for p in points:
        for m, rec in p["methods"].items():
            if rec["test"] and m not in EXCLUDED:
                seen.setdefault((m, tuple(rec["experts"])), p["index"])
    multi = [r for r in plans if r["method"] != "single"]
    assert {(r["method"], tuple(r["experts"])): r["first_index"] for r in multi} == seen
    assert len(multi) == len(seen)
    assert [r["experts"] for r in plans if r["method"] == "single"] == [["x"], ["y"], ["z"]]


def test_front_keeps_exactly_the_non_dominated_plans_sorted() -> None:
    points, singles = make_sweep(1)
    plans = collect_plans(points, singles)
    got = front(plans)
    assert [id(r) for r in _reference_front(plans)] == [id(r) for r in got]
    assert len(got) < len(plans)  # the sweep has dominated plans to drop


def test_pareto_merges_methods_and_counts_moe2s_share() -> None:
    points, singles = make_sweep(2)
    got = pareto(points, singles)
    plans = collect_plans(points, singles)
    assert got["plans"] == plans
    moe2 = [r for r in plans if r["method"] in ("moe2", "moe2-adaptive")]
    assert got["moe2_front"] == _reference_front(moe2)
    global_front = _reference_front(plans)
    keys = {(r["expected_energy_j"], r["accuracy"], tuple(r["experts"])) for r in global_front}
    assert len(got["global_front"]) == len(keys)
    for row in got["global_front"]:
        key = (row["expected_energy_j"], row["accuracy"], tuple(row["experts"]))
        assert row["methods"] == [r["method"] for r in global_front
                                  if (r["expected_energy_j"], r["accuracy"], tuple(r["experts"])) == key]
    share = sum(any(m in ("moe2", "moe2-adaptive") for m in r["methods"]) for r in got["global_front"])
    assert got["moe2_share_of_global_front"] == share / len(got["global_front"])
    assert merge_methods([]) == []
