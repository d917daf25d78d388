"""Test-split evaluation of a plan: accuracy, NLL and the expected cost of what answers.

A plan is a subset S (a mask over the experts) and a fine level: the top-k of S by gate
weight, adaptive k (the fewest experts whose gate mass reaches τ), or all of S. Its test
figures come from ``gating.planning.mixture.evaluate_subset`` on the table's TEST rows, with the
prior-corrected log-probs the planner mixes (``gating.planning.planner.PlanInputs``). On top of that:

- *expected energy*: the mean over test samples of the J (sum) of the experts that actually
  answer the sample, at the sample's category;
- *expected latency*: the same mean of the ms (max over the answering experts, plus the
  aggregation cost).

Worst-case energy, what a budget constrains, is the selector's business, not this module's.
:func:`single_experts` applies the evaluator to each expert alone and adds the raw argmax
accuracy and the expert's profile, the report's first table.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import numpy as np

from edge_moe.calibration import TEST, CalibrationTable
from edge_moe.errors import ConfigError
from gating.planning import planner
from gating.planning.mixture import evaluate_subset, masked_gate_weights, select_top_k

logger = logging.getLogger(__name__)


class PlanEvaluator:
    """Test-split accuracy, NLL, expected J and ms of a plan (memoised by subset and mode).

    Args:
        inputs: the planner's aligned inputs; only the TEST rows are used.

    Raises:
        ConfigError: the test split (split == 2) is empty, naming the table.
    """

    def __init__(self, inputs: planner.PlanInputs) -> None:
        idx = inputs.table.split == TEST
        self.rows = inputs.table.rows(idx)
        if self.rows.n_samples == 0:
            raise ConfigError(f"{inputs.calibration_path}: the test split (split == 2) is empty")
        self.logits = inputs.gate_logits[idx]  # (M, N)
        self.names = inputs.categories
        cats = self.rows.categories
        self.energy = inputs.energy_j[:, cats].T  # (M, N) J of expert n on sample i's category
        self.latency = inputs.latency_ms[:, cats].T  # (M, N) ms
        self.aggregation_ms = inputs.profiles.aggregation_ms
        self._cache: dict[tuple[bytes, int | None, float | None, bool], dict[str, Any]] = {}

    def __call__(self, mask: np.ndarray, top_k: int | None, tau: float | None,
                 uniform: bool = False) -> dict[str, Any] | None:
        """Evaluate one plan on test.

        Args:
            mask: (N,) bool, the subset S.
            top_k: k experts of S answer each sample (None: see ``tau``).
            tau: adaptive k when ``top_k`` is None; both None: all of S answers.
            uniform: equal gate weights over S instead of the gate's.

        Returns:
            None for the empty set; else ``accuracy`` (fraction), ``per_category`` accuracy,
            ``nll`` (nats), ``mean_active_experts``, ``expected_energy_j`` (J per request) and
            ``expected_latency_ms`` (ms per request). The same dict is returned on a repeat.
        """
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return None
        key = (mask.tobytes(), top_k, tau, uniform)
        if key not in self._cache:
            self._cache[key] = self._evaluate(mask, top_k, tau, uniform)
        return self._cache[key]

    def _evaluate(self, mask: np.ndarray, top_k: int | None, tau: float | None,
                  uniform: bool) -> dict[str, Any]:
        logits = np.zeros_like(self.logits) if uniform else self.logits  # (M, N)
        rep = evaluate_subset(logits, self.rows.logprobs, self.rows.labels, self.rows.categories,
                              self.names, mask, top_k=top_k, tau=tau)
        # (M, N) the experts that answer each sample: the same selection the mixture made
        active = select_top_k(masked_gate_weights(logits, mask), top_k=top_k, tau=tau, mask=mask) > 0
        return {
            "accuracy": rep.accuracy,
            "per_category": {c: s.accuracy for c, s in rep.per_category.items()},
            "nll": rep.nll,
            "mean_active_experts": rep.mean_active_experts,
            "expected_energy_j": float((active * self.energy).sum(axis=1).mean()),
            "expected_latency_ms": float((np.where(active, self.latency, 0.0).max(axis=1)
                                          + self.aggregation_ms).mean()),
        }


def one_hot(n: int, j: int) -> np.ndarray:
    """(n,) bool mask of expert j alone."""
    mask = np.zeros(n, dtype=bool)
    mask[j] = True
    return mask


def raw_accuracy(table: CalibrationTable, expert: int, categories: tuple[str, ...]) -> dict[str, Any]:
    """Test accuracy of one expert's raw argmax (no prior correction), overall and per category.

    Args:
        table: the calibration table as loaded (uncorrected log-probs).
        expert: the expert's column in ``table``.
        categories: category names, in the table's category order.

    Returns:
        ``{"accuracy": fraction, "per_category": {name: fraction}}``; categories without
        test samples are left out of ``per_category``.
    """
    test = table.split_rows(TEST)
    right = test.logprobs[:, expert, :].argmax(axis=1) == test.labels  # (M,) raw argmax
    per_category = {c: float(right[test.categories == i].mean())
                    for i, c in enumerate(categories) if (test.categories == i).any()}
    return {"accuracy": float(right.mean()), "per_category": per_category}


def single_experts(inputs: planner.PlanInputs, raw: CalibrationTable,
                   evaluate: PlanEvaluator, top_k: int | None) -> dict[str, Any]:
    """Each expert alone: raw and prior-corrected test accuracy, validation F, its costs.

    Args:
        inputs: the planner's inputs (prior-corrected, experts in the gate's order).
        raw: the same table uncorrected, experts in the gate's order.
        evaluate: the test evaluator over ``inputs``.
        top_k: the fine level's k (irrelevant for one expert, but the planner's F takes it).

    Returns:
        Per expert name, in gate order: ``node``; ``raw`` (:func:`raw_accuracy`);
        ``corrected`` (the evaluator's figures for S = {expert}); ``validation_accuracy``
        and ``validation_loglik`` (the planner's two objectives F); ``latency_ms`` and ``energy_j`` per category as the
        profiles give them (value and source); ``worst_energy_j`` (J, its worst category) and
        ``worst_latency_ms`` (ms, its worst category plus aggregation).
    """
    objective = planner.make_objective(inputs, top_k, None, objective="accuracy")
    loglik = planner.make_objective(inputs, top_k, None, objective="loglik")
    out = {}
    for j, name in enumerate(inputs.experts):
        mask = one_hot(len(inputs.experts), j)
        corrected = evaluate(mask, top_k, None)
        assert corrected is not None  # a one-expert mask is never empty
        prof = inputs.profiles.expert(name)
        out[name] = {
            "node": prof.node,
            "raw": raw_accuracy(raw, j, inputs.categories),
            "corrected": corrected,
            "validation_accuracy": objective(mask),
            "validation_loglik": loglik(mask),
            "latency_ms": {c: asdict(prof.latency_ms[c]) for c in inputs.categories},
            "energy_j": {c: asdict(prof.energy_j[c]) for c in inputs.categories},
            "worst_energy_j": float(inputs.energy_j[j].max()),
            "worst_latency_ms": float(inputs.latency_ms[j].max() + inputs.profiles.aggregation_ms),
        }
    return out
