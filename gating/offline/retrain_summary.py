"""Claim 1 condensed for a report: ``gating.offline.retrain_gap`` over random subsets, summarised.

MoE²'s first claim is that the gate θ* trained once on all experts, masked to a subset S and
renormalised, is as good as a gate retrained on S alone. ``gating.offline.retrain_gap.retrain_gap``
measures the gap on R random subsets, signed so that positive means retraining helps (NLL:
masked − retrained; accuracy: retrained − masked);
:func:`retrain_gap_summary` runs it and adds, beside ``GapReport``'s own means and maxima,
the minimum gaps, how many subsets retraining helped (NLL gap > 0) and the subset with the
largest NLL gap. Too few experts for a proper subset of size ≥ 2 is an
answer (``ran: False`` with the reason), not an error.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edge_moe.calibration import TEST, CalibrationTable
from edge_moe.errors import GateError
from edge_moe.progress import ProgressCallback

logger = logging.getLogger(__name__)


def retrain_gap_summary(table: CalibrationTable, gate: Any, n_subsets: int, seed: int,
                        progress: ProgressCallback | None = None) -> dict[str, Any]:
    """The retrain gap on the test split, with its summary.

    Args:
        table: the calibration table as loaded (the gate applies its own prior correction).
        gate: the full ``gating.planning.gate.TrainedGate`` θ*.
        n_subsets: random subsets asked for (fewer when fewer exist).
        seed: the subset-sampling seed.
        progress: hears the retraining over subsets (:func:`gating.offline.retrain_gap.retrain_gap`).

    Returns:
        ``{"ran": False, "reason": ...}`` when ``retrain_gap`` raises ``GateError``; else
        ``ran``, ``subsets`` (measured), ``asked``, ``min_gap_nll`` (nats),
        ``min_gap_acc_points``, ``subsets_retraining_helps_nll``, ``worst_subset`` (expert
        names) and every key of ``GapReport.to_json()`` (its rows, means and maxima).
    """
    from gating.offline.retrain_gap import retrain_gap  # torch: only when the check runs

    try:
        report = retrain_gap(table, gate, n_subsets=n_subsets, seed=seed, split=TEST, progress=progress)
    except GateError as exc:
        return {"ran": False, "reason": str(exc)}
    doc = report.to_json()
    gaps = np.array([r.gap_nll for r in report.rows])  # (R,) nats
    acc = np.array([r.gap_acc_points for r in report.rows])  # (R,) points
    worst = max(report.rows, key=lambda r: r.gap_nll)
    return {"ran": True, "subsets": len(report.rows), "asked": n_subsets,
            "min_gap_nll": float(gaps.min()), "min_gap_acc_points": float(acc.min()),
            "subsets_retraining_helps_nll": int((gaps > 0).sum()),
            "worst_subset": list(worst.experts), **doc}
