"""gating.offline.retrain_summary over a stand-in for gating.offline.retrain_gap (no torch, no training).

The stand-in module replaces ``gating.offline.retrain_gap`` in ``sys.modules`` for one test, so the
summary's lazy import finds it and torch is never imported.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from edge_moe.calibration import TEST
from edge_moe.errors import GateError
from gating.offline.retrain_summary import retrain_gap_summary


@dataclass
class Row:
    experts: tuple[str, ...]
    gap_nll: float
    gap_acc_points: float


class Report:
    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def to_json(self) -> dict[str, Any]:
        return {"rows": [r.gap_nll for r in self.rows], "mean_gap_nll": 0.0}


def _stand_in(monkeypatch: pytest.MonkeyPatch, fn: Callable[..., Report]) -> None:
    module = types.ModuleType("gating.offline.retrain_gap")
    module.retrain_gap = fn  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gating.offline.retrain_gap", module)


def test_summary_follows_from_the_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    rows = [Row((f"e{i}", f"e{i + 1}"), float(rng.normal()), float(rng.normal())) for i in range(7)]
    calls: list[dict[str, Any]] = []

    def fake(table: Any, gate: Any, **kw: Any) -> Report:
        calls.append(kw)
        return Report(rows)

    _stand_in(monkeypatch, fake)
    got = retrain_gap_summary("table", "gate", n_subsets=9, seed=4, progress=False)  # type: ignore[arg-type]
    assert calls == [{"n_subsets": 9, "seed": 4, "split": TEST, "progress": False}]
    assert got["ran"] is True and got["subsets"] == 7 and got["asked"] == 9
    assert got["min_gap_nll"] == min(r.gap_nll for r in rows)
    assert got["min_gap_acc_points"] == min(r.gap_acc_points for r in rows)
    assert got["subsets_retraining_helps_nll"] == sum(r.gap_nll > 0 for r in rows)
    assert got["worst_subset"] == list(max(rows, key=lambda r: r.gap_nll).experts)
    assert got["rows"] == [r.gap_nll for r in rows] and got["mean_gap_nll"] == 0.0  # the report's own keys


def test_a_gate_error_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(*_: Any, **__: Any) -> Report:
        raise GateError("need at least 3 experts for a proper subset of size >= 2")

    _stand_in(monkeypatch, fake)
    got = retrain_gap_summary("table", "gate", n_subsets=3, seed=0)  # type: ignore[arg-type]
    assert got == {"ran": False, "reason": "need at least 3 experts for a proper subset of size >= 2"}
