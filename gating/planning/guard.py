"""The paired guard: a multi-expert plan must beat the best single expert, significantly.

A plan that wins by one validation question can lose by ten on test (docs/design.md §2.8). So
after the selector has chosen S, and when S has more than one expert:

1. b = the single expert that fits the same budget and scores best on the same objective
   and the same selection data (:func:`gating.planning.baselines.best_single`).
2. d_i = score_i(S) − score_i(b) for each selection row i (the objective's per-row scores,
   :meth:`gating.planning.mixture.MixtureObjective.row_scores`: correct or not, or log p(label)).
3. The paired bootstrap: ``resamples`` seeded draws of the rows with replacement; the lower
   bound is the (1 − confidence) quantile of the resampled mean of d (one-sided).
4. S stands only if that lower bound is > 0; otherwise the plan is b.

A plan of one expert, or S = b, passes unchanged. ``GuardReport`` records every figure, and
``plan.json`` carries it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_moe.errors import ConfigError
from gating.planning import baselines
from gating.planning.mixture import MixtureObjective
from gating.planning.selector import OPTIMAL, Budget, Selection, SelectionProblem

logger = logging.getLogger(__name__)

DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000


def bootstrap_lower_bound(diff: np.ndarray, confidence: float, resamples: int = DEFAULT_RESAMPLES,
                          seed: int = 0) -> float:
    """One-sided paired bootstrap lower bound on mean(diff) at ``confidence``.

    Args:
        diff: (M,) paired per-row differences.
        confidence: in (0, 1); the bound is the (1 − confidence) quantile of the means.
        resamples: bootstrap draws.
        seed: the draws' seed (the same seed gives the same rows for every plan compared).

    Raises:
        ConfigError: confidence outside (0, 1), resamples < 1 or no rows.
    """
    d = np.asarray(diff, dtype=np.float64)
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"guard confidence={confidence} must be in (0, 1)")
    if resamples < 1 or d.ndim != 1 or d.size == 0:
        raise ConfigError(f"need resamples >= 1 and a non-empty (M,) diff, got {resamples}, {d.shape}")
    idx = np.random.default_rng(seed).integers(0, d.size, size=(resamples, d.size))  # (B, M)
    means = d[idx].mean(axis=1)  # (B,)
    return float(np.quantile(means, 1.0 - confidence))


@dataclass(frozen=True)
class GuardReport:
    """What the guard compared and decided (gain and bound in the objective's units per row)."""

    confidence: float
    resamples: int
    seed: int
    candidate: tuple[str, ...]  # the selector's S
    single: tuple[str, ...]  # the best single expert that fits ((): none compared)
    gain: float | None  # mean d over the selection rows
    lower_bound: float | None
    replaced: bool  # True: the plan is the single expert, not S
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def apply_guard(problem: SelectionProblem, budget: Budget, selection: Selection, objective: MixtureObjective,
                confidence: float = DEFAULT_CONFIDENCE, resamples: int = DEFAULT_RESAMPLES,
                seed: int = 0) -> tuple[Selection, GuardReport]:
    """Keep a multi-expert ``selection`` only if its paired gain over the best single expert is significant.

    Args:
        problem / budget: what ``selection`` was chosen for (its objective is ``objective``).
        selection: the selector's answer.
        objective: the same F, whose per-row scores are compared.
        confidence, resamples, seed: the bootstrap (:func:`bootstrap_lower_bound`).

    Returns:
        (the plan, the report). The plan is ``selection`` or the single expert with status
        "optimal" and a message that says the guard chose it.
    """
    def report(single: tuple[str, ...], gain: float | None, lower: float | None, replaced: bool,
               reason: str) -> GuardReport:
        return GuardReport(confidence, resamples, seed, selection.experts, single, gain, lower, replaced, reason)

    if selection.status != OPTIMAL or int(selection.mask.sum()) <= 1:
        return selection, report((), None, None, False, "a plan of at most one expert: nothing to guard")
    single = baselines.best_single(problem, budget)
    if not single.mask.any():  # cannot happen when S is feasible, but say so rather than assume
        return selection, report((), None, None, False, "no single expert fits alone")
    diff = objective.row_scores(selection.mask) - objective.row_scores(single.mask)  # (M,)
    gain = float(diff.mean())
    lower = bootstrap_lower_bound(diff, confidence, resamples, seed)
    if lower > 0.0:
        return selection, report(single.experts, gain, lower, False,
                                 f"gain {gain:+.4g} per row, lower bound {lower:+.4g} > 0 at {confidence:g}")
    why = (f"guard: {list(selection.experts)} beats {list(single.experts)} by {gain:+.4g} per selection row, "
           f"but its paired bootstrap lower bound at {confidence:g} is {lower:+.4g} <= 0; the single expert is kept")
    logger.debug("%s", why)
    plan = dataclasses.replace(single, status=OPTIMAL, message=why)
    return plan, report(single.experts, gain, lower, True, why)
