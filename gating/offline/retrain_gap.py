"""The retrain gap: how much the masked full gate θ* loses against a gate retrained on S.

The paper's claim 1 (docs/design.md §2.2) is that masking θ* to a subset S and
renormalising is optimality-preserving, so no per-subset retraining is needed. This
module measures it. For R seeded random proper subsets S (|S| ≥ ``min_size``):

- masked: the full gate's softmax restricted to S (no top-k), on the chosen split;
- retrained: ``train_gate(table, experts_mask=S)`` with the same config and seed;
- gap = NLL(masked) − NLL(retrained) in nats, and accuracy(retrained) − accuracy(masked)
  in points. Positive means retraining helps; the claim holds when both are ≈ 0 or < 0.

Both sides use the same prior correction (it is fitted per expert on TRAIN, so it does
not depend on S).
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edge_moe.calibration import SPLIT_NAMES, TEST, CalibrationTable
from edge_moe.errors import GateError
from edge_moe.progress import ProgressCallback, reporter
from gating.planning.gate import GateConfig, TrainedGate, train_gate
from gating.planning.mixture import apply_prior_correction, evaluate_subset
from gating.planning.temperature import apply_temperature

logger = logging.getLogger(__name__)

PROGRESS_TASK = "retraining gates on subsets"  # the label retrain_gap reports progress under


@dataclass(frozen=True)
class GapRow:
    """One subset: masked θ* against the gate retrained on it (NLL in nats, accuracy fraction)."""

    experts: tuple[str, ...]
    masked_nll: float
    retrained_nll: float
    masked_acc: float
    retrained_acc: float

    @property
    def gap_nll(self) -> float:
        return self.masked_nll - self.retrained_nll

    @property
    def gap_acc_points(self) -> float:
        return 100.0 * (self.retrained_acc - self.masked_acc)


@dataclass(frozen=True)
class GapReport:
    """Retrain gap over R subsets on one split."""

    split: str
    n_samples: int
    rows: tuple[GapRow, ...]
    config: GateConfig
    seed: int
    retrain_seconds: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def mean_gap_nll(self) -> float:
        return float(np.mean([r.gap_nll for r in self.rows]))

    @property
    def max_gap_nll(self) -> float:
        return float(np.max([r.gap_nll for r in self.rows]))

    @property
    def mean_gap_acc_points(self) -> float:
        return float(np.mean([r.gap_acc_points for r in self.rows]))

    @property
    def max_gap_acc_points(self) -> float:
        return float(np.max([r.gap_acc_points for r in self.rows]))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (plain floats, ints, strs, lists); ``json.dumps`` it to write."""
        return {
            "split": self.split,
            "n_samples": self.n_samples,
            "seed": self.seed,
            "config": asdict(self.config),
            "retrain_seconds": self.retrain_seconds,
            "mean_gap_nll": self.mean_gap_nll,
            "max_gap_nll": self.max_gap_nll,
            "mean_gap_acc_points": self.mean_gap_acc_points,
            "max_gap_acc_points": self.max_gap_acc_points,
            "notes": list(self.notes),
            "rows": [
                {
                    **asdict(r),
                    "experts": list(r.experts),
                    "gap_nll": r.gap_nll,
                    "gap_acc_points": r.gap_acc_points,
                }
                for r in self.rows
            ],
        }

    def summary(self) -> str:
        return (
            f"retrain gap over {len(self.rows)} subsets on {self.split} (n={self.n_samples}): "
            f"NLL mean {self.mean_gap_nll:+.4f} / max {self.max_gap_nll:+.4f} nats, "
            f"accuracy mean {self.mean_gap_acc_points:+.2f} / max {self.max_gap_acc_points:+.2f} points "
            "(masked − retrained; positive = retraining helps)"
        )


def random_subsets(
    n_experts: int, n_subsets: int, seed: int, min_size: int = 2
) -> list[np.ndarray]:
    """Up to ``n_subsets`` distinct seeded proper subsets with ``min_size ≤ |S| < n_experts``.

    The size is drawn uniformly first, then the members, so small and large subsets are
    equally represented. When fewer subsets exist than asked for, all of them are returned.

    Raises:
        GateError: no proper subset of that size exists, or the arguments are out of range.
    """
    if min_size < 1:
        raise GateError(f"min_size must be >= 1, got {min_size}")
    if n_subsets < 1:
        raise GateError(f"n_subsets must be >= 1, got {n_subsets}")
    if n_experts <= min_size:
        raise GateError(
            f"no proper subset with at least {min_size} experts exists among {n_experts} experts"
        )
    total = sum(math.comb(n_experts, s) for s in range(min_size, n_experts))
    rng = np.random.default_rng(seed)
    if total <= n_subsets:
        combos = [
            c
            for s in range(min_size, n_experts)
            for c in itertools.combinations(range(n_experts), s)
        ]
        picked = [combos[i] for i in rng.permutation(len(combos))]
    else:
        seen: set[tuple[int, ...]] = set()
        picked = []
        while len(picked) < n_subsets:
            size = int(rng.integers(min_size, n_experts))
            combo = tuple(sorted(int(j) for j in rng.choice(n_experts, size, replace=False)))
            if combo not in seen:
                seen.add(combo)
                picked.append(combo)
    masks = []
    for combo in picked:
        m = np.zeros(n_experts, dtype=bool)
        m[list(combo)] = True
        masks.append(m)
    return masks


def retrain_gap(
    table: CalibrationTable,
    gate: TrainedGate,
    n_subsets: int = 30,
    seed: int = 0,
    config: GateConfig | None = None,
    split: int = TEST,
    min_size: int = 2,
    progress: ProgressCallback | None = None,
) -> GapReport:
    """Compare the masked full gate with gates retrained on random subsets.

    Args:
        table: the calibration table the full gate was trained on.
        gate: the full gate θ* (over ``table.experts``).
        n_subsets: R, the number of distinct random subsets.
        seed: subset-sampling seed (retraining uses ``config.seed``).
        config: retraining config; defaults to the gate's own config.
        split: rows to evaluate on (TEST by default).
        min_size: smallest |S|.
        progress: hears ``("retraining gates on subsets", subsets done, subsets in all)``.

    Returns:
        A GapReport with one row per subset.

    Raises:
        GateError: the gate's experts are not the table's, the split is empty, or no
            subset of the asked size exists.
    """
    if tuple(gate.experts) != tuple(table.experts):
        raise GateError(
            f"the gate's experts {list(gate.experts)} are not the table's {list(table.experts)}; "
            "retrain_gap needs the full gate trained on this table"
        )
    if not (table.split == split).any():  # checked first: an empty table is invalid
        raise GateError(
            f"calibration table has no {SPLIT_NAMES.get(split, split)} rows to evaluate on"
        )
    rows_eval = table.split_rows(split)
    config = config or gate.config
    masks = random_subsets(table.n_experts, n_subsets, seed, min_size)
    corrected = apply_prior_correction(rows_eval.logprobs, gate.prior)  # (M, N, K)
    if gate.temperature is not None:  # the calibration the gate was trained on
        corrected = apply_temperature(corrected, gate.temperature)  # (M, N, K)
    full_logits = gate.logits(rows_eval.embeddings)  # (M, N)

    def score(logits: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
        r = evaluate_subset(
            logits,
            corrected,
            rows_eval.labels,
            rows_eval.categories,
            rows_eval.category_names,
            mask,
        )
        return r.nll, r.accuracy

    rows: list[GapRow] = []
    seconds = 0.0
    tell = reporter(progress)
    tell(PROGRESS_TASK, 0, len(masks))
    for mask in masks:
        masked_nll, masked_acc = score(full_logits, mask)
        sub_gate = train_gate(table, config, experts_mask=mask)
        seconds += sub_gate.train_seconds
        # The retrained gate covers S only: scatter its logits back; outside S is masked anyway.
        logits = np.zeros_like(full_logits)
        logits[:, mask] = sub_gate.logits(rows_eval.embeddings)  # (M, |S|) into (M, N)
        retrained_nll, retrained_acc = score(logits, mask)
        rows.append(
            GapRow(
                experts=tuple(table.experts[j] for j in np.flatnonzero(mask)),
                masked_nll=masked_nll,
                retrained_nll=retrained_nll,
                masked_acc=masked_acc,
                retrained_acc=retrained_acc,
            )
        )
        tell(PROGRESS_TASK, len(rows), len(masks))
    report = GapReport(
        split=SPLIT_NAMES.get(split, str(split)),
        n_samples=rows_eval.n_samples,
        rows=tuple(rows),
        config=config,
        seed=seed,
        retrain_seconds=seconds,
        notes=(
            "gap_nll = masked_nll - retrained_nll (nats); gap_acc_points = 100*(retrained_acc - masked_acc)",
            "masked: full gate softmax restricted to S and renormalised, no top-k",
        ),
    )
    logger.info("%s", report.summary())
    return report
