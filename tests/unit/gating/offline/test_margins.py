"""gating.offline.margins: paired margins over made-up sweep points, recounted here with plain loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gating.offline.margins import accuracy, compare, method_summary, per_category_margins

CATS = ("a", "b")
EXPERTS = ("x", "y", "z")


def _test(acc: float, rng: np.random.Generator) -> dict[str, object]:
    return {"accuracy": acc, "per_category": {c: float(rng.choice([0.25, 0.5, 0.75])) for c in CATS}}


def make_points(seed: int = 0, n: int = 30) -> list[dict[str, object]]:
    """Grid points whose accuracies come from a few values, so ties occur, and some have no plan."""
    rng = np.random.default_rng(seed)
    points = []
    for i in range(n):
        methods = {}
        for m in ("moe2", "base", "other"):
            has_plan = rng.random() > 0.2
            methods[m] = {"experts": [str(e) for e in rng.choice(EXPERTS, size=2, replace=False)],
                          "within_budget": bool(rng.random() > 0.3),
                          "test": _test(float(rng.choice([0.4, 0.5, 0.6, 0.7])), rng) if has_plan else None}
        points.append({"index": i, "energy_j": float(i), "latency_scale": i / n, "latency_ms": [1.0 * i, 2.0 * i],
                       "singles_fit": [str(e) for e in EXPERTS[: int(rng.integers(0, 4))]], "methods": methods})
    return points


def test_accuracy_reads_one_plan() -> None:
    p = make_points()[0]
    p["methods"]["moe2"]["test"] = {"accuracy": 0.5, "per_category": {"a": 0.25}}
    p["methods"]["base"]["test"] = None
    assert accuracy(p, "moe2") == 0.5 and accuracy(p, "moe2", "a") == 0.25
    assert math.isnan(accuracy(p, "moe2", "b"))  # a category without test samples
    assert accuracy(p, "base") is None


def test_compare_counts_paired_points_only() -> None:
    points = make_points()
    got = compare(points, "moe2", "base")
    pairs = [(100 * (p["methods"]["moe2"]["test"]["accuracy"] - p["methods"]["base"]["test"]["accuracy"]), p["index"])
             for p in points if p["methods"]["moe2"]["test"] and p["methods"]["base"]["test"]]
    assert got["points"] == len(pairs) > 0
    assert got["wins"] == sum(d > 1e-9 for d, _ in pairs)
    assert got["ties"] == sum(abs(d) <= 1e-9 for d, _ in pairs) > 0
    assert got["losses"] == sum(d < -1e-9 for d, _ in pairs)
    assert got["mean_points"] == pytest.approx(sum(d for d, _ in pairs) / len(pairs))
    top, bottom = max(d for d, _ in pairs), min(d for d, _ in pairs)
    first_top = next(i for d, i in pairs if d == top)  # ties: the first in grid order
    first_bottom = next(i for d, i in pairs if d == bottom)
    assert got["best"]["margin_points"] == top and got["best"]["index"] == first_top
    assert got["worst"]["margin_points"] == bottom and got["worst"]["index"] == first_bottom
    at = points[first_top]
    assert got["best"]["method_experts"] == at["methods"]["moe2"]["experts"]
    assert got["best"]["against_accuracy"] == at["methods"]["base"]["test"]["accuracy"]
    assert got["best"]["latency_ms"] == at["latency_ms"]


def test_compare_without_a_common_plan() -> None:
    points = make_points()
    for p in points:
        p["methods"]["base"]["test"] = None
    assert compare(points, "moe2", "base") == {"points": 0}


def test_per_category_margins_against_the_best_fitting_single() -> None:
    rng = np.random.default_rng(1)
    singles = {e: {"per_category": {"a": float(rng.random()), "b": float(rng.random())}} for e in EXPERTS}
    del singles["z"]["per_category"]["b"]  # z has no test sample in b
    points = make_points(2)
    got = per_category_margins(points, CATS, "moe2", singles)
    for c in CATS:
        diffs = []
        for p in points:
            fitting = [singles[e]["per_category"][c] for e in p["singles_fit"] if c in singles[e]["per_category"]]
            if p["methods"]["moe2"]["test"] and fitting:
                diffs.append((100 * (p["methods"]["moe2"]["test"]["per_category"][c] - max(fitting)), p["index"]))
        best, worst = max(diffs, key=lambda t: t[0]), min(diffs, key=lambda t: t[0])
        assert got[c] == {"best_points": best[0], "best_index": best[1], "worst_points": worst[0],
                          "worst_index": worst[1], "losses": sum(d < -1e-9 for d, _ in diffs), "points": len(diffs)}


def test_method_summary() -> None:
    points = make_points(3)
    got = method_summary(points, ("moe2", "base", "other"))
    assert list(got) == ["moe2", "base", "other"]
    for m, s in got.items():
        accs = [p["methods"][m]["test"]["accuracy"] for p in points if p["methods"][m]["test"]]
        assert s["points_with_plan"] == len(accs)
        assert s["mean_accuracy"] == pytest.approx(sum(accs) / len(accs))
        assert s["within_budget"] == sum(bool(p["methods"][m]["test"]) and p["methods"][m]["within_budget"]
                                         for p in points)
        assert s["vs_moe2"] == ({"points": 0} if m == "moe2" else compare(points, "moe2", m))
