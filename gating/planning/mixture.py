"""The gated mixture of expert option probabilities, in numpy (docs/design.md §2.1–2.3).

This is the arithmetic that the trainer, the selector, the baselines and the coordinator
share. With M samples, N experts and K options:

- **Prior correction.** Small LLMs prefer some letters whatever the question. For each
  expert, ``prior[n, k] = log mean_i p_n(k | x_i)`` over the calibration rows, and the
  corrected distribution is ``p'_n(k | x) ∝ p_n(k | x) / exp(prior[n, k])`` over the
  options the sample has (padded options stay ``-inf``).
- **Masked gate.** ``w = softmax(g(x))`` restricted to the subset S and renormalised
  (zeros outside S): θ* is reused for any S without retraining. The one implementation is
  :func:`edge_moe.runtime.gate.masked_gate_weights` (re-exported here).
- **Top-k / adaptive k.** Per sample keep the k largest weights of S (fixed k), or the
  smallest k whose gate mass reaches τ; renormalise. Ties go to the lower expert index.
- **Mixture.** ``p(k | x) = Σ_n w_n p'_n(k | x)``.

Conventions:
- A sample counts as correct when the label's mixture probability is positive and the
  label is the argmax (ties: lowest option index, like ``np.argmax``). With no active
  expert every probability is 0, so the sample is wrong.
- NLL is ``−log max(p(y | x), PROB_FLOOR)`` in nats, so it stays finite.
- The empty subset scores 0.0 accuracy and ``LOG_PROB_FLOOR`` neg-NLL, the lowest values
  either metric can take, so an objective stays monotone at the bottom.

Argument errors (shape mismatches, k < 1, τ outside (0, 1]) raise ``SelectionError``.
This module imports numpy only: it runs in the serving path.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np

from edge_moe.errors import SelectionError
from edge_moe.runtime.gate import as_mask as _as_mask
from edge_moe.runtime.gate import masked_gate_weights
from edge_moe.wire import k_or_tau_problem

logger = logging.getLogger(__name__)

PROB_FLOOR = 1e-12
LOG_PROB_FLOOR = math.log(PROB_FLOOR)  # ≈ -27.63 nats: the neg-NLL of the empty subset
_MASS_TOL = 1e-9  # cumulative gate mass within this of τ counts as reaching τ

Metric = Literal["accuracy", "neg_nll"]
METRICS: tuple[str, ...] = ("accuracy", "neg_nll")


# --------------------------------------------------------------------------- prior correction


def fit_prior_correction(logprobs: np.ndarray) -> np.ndarray:
    """Fit each expert's option prior (its letter bias) on the given rows.

    Args:
        logprobs: (M, N, K) log-probabilities; ``-inf`` pads options a sample lacks.
            Pass the TRAIN split only.

    Returns:
        (N, K) float64 ``prior[n, k] = log mean_i p_n(k | x_i)``, the mean taken over the
        rows where option k exists. An option that never exists in these rows gets the
        mean of the expert's other prior values, so it is neither boosted nor penalised.

    Raises:
        SelectionError: ``logprobs`` is not 3-d or has no rows.
    """
    lp = np.asarray(logprobs, dtype=np.float64)
    if lp.ndim != 3 or lp.shape[0] < 1:
        raise SelectionError(f"logprobs must be a non-empty (M, N, K) array, got shape {lp.shape}")
    seen = np.isfinite(lp).sum(axis=0) > 0  # (N, K) option k exists in some row
    count = np.maximum(np.isfinite(lp).sum(axis=0), 1)  # (N, K)
    mean_p = np.exp(lp).sum(axis=0) / count  # (N, K); exp(-inf) = 0
    prior = np.log(np.maximum(mean_p, PROB_FLOOR))  # (N, K) floor: no -inf from underflow
    n_seen = np.maximum(seen.sum(axis=1, keepdims=True), 1)  # (N, 1)
    fill = np.where(seen, prior, 0.0).sum(axis=1, keepdims=True) / n_seen  # (N, 1)
    prior = np.where(seen, prior, fill)
    return prior


def apply_prior_correction(logprobs: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Divide out each expert's option prior and renormalise over the valid options.

    Args:
        logprobs: (M, N, K) log-probabilities, ``-inf`` for missing options.
        prior: (N, K) from :func:`fit_prior_correction`.

    Returns:
        (M, N, K) float32 corrected log-probabilities; ``-inf`` entries stay ``-inf``.

    Raises:
        SelectionError: the shapes disagree.
    """
    lp = np.asarray(logprobs, dtype=np.float64)
    pr = np.asarray(prior, dtype=np.float64)
    if lp.ndim != 3 or pr.shape != lp.shape[1:]:
        raise SelectionError(
            f"prior shape {pr.shape} does not match logprobs (M, N, K) = {lp.shape}"
        )
    shifted = lp - pr[None]  # (M, N, K), -inf stays -inf
    top = np.max(shifted, axis=2, keepdims=True)  # (M, N, 1)
    top = np.where(np.isfinite(top), top, 0.0)  # a row with no valid option stays all -inf
    with np.errstate(divide="ignore"):
        lse = top + np.log(np.exp(shifted - top).sum(axis=2, keepdims=True))  # (M, N, 1)
    out = np.where(np.isfinite(shifted), shifted - lse, -np.inf)
    return out.astype(np.float32)


# --------------------------------------------------------------------------- gate weights


def uniform_logits(n_samples: int, n_experts: int) -> np.ndarray:
    """(M, N) zero logits: the "uniform weights over S" baseline once masked."""
    return np.zeros((n_samples, n_experts), dtype=np.float32)


def select_top_k(
    weights: np.ndarray,
    top_k: int | None = None,
    tau: float | None = None,
    mask: np.ndarray | Sequence[bool] | None = None,
) -> np.ndarray:
    """Keep each sample's top-k experts of S (fixed k, or adaptive by mass τ); renormalise.

    Args:
        weights: (M, N) gate weights, zero outside S (from :func:`masked_gate_weights`).
        top_k: keep the k largest weights (fewer when |S| < k).
        tau: keep the smallest k whose cumulative weight is ≥ τ (τ in (0, 1]).
        mask: (N,) bool S; None means the experts with a positive weight in the row.

    Returns:
        (M, N) float64 renormalised weights. With neither top_k nor tau, all of S is kept.
        Ties are broken by the lower expert index.

    Raises:
        SelectionError: both top_k and tau are given, k < 1, or τ is outside (0, 1].
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2:
        raise SelectionError(f"weights must be (M, N), got shape {w.shape}")
    if (problem := k_or_tau_problem(top_k, tau)) is not None:
        raise SelectionError(problem)
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise SelectionError(f"top_k must be an integer >= 1, got {top_k}")
    if tau is not None and not (0.0 < tau <= 1.0):
        raise SelectionError(f"tau must be in (0, 1], got {tau}")
    cand = (w > 0) if mask is None else np.broadcast_to(_as_mask(mask, w.shape[1]), w.shape)
    if top_k is None and tau is None:
        kept = np.where(cand, w, 0.0)
    else:
        key = np.where(cand, -w, np.inf)  # (M, N) ascending key = descending weight, S first
        order = np.argsort(key, axis=1, kind="stable")  # (M, N) stable: lower index wins ties
        sorted_w = np.take_along_axis(np.where(cand, w, 0.0), order, axis=1)  # (M, N)
        rank = np.arange(w.shape[1])[None, :]  # (1, N)
        if top_k is not None:
            keep_sorted = np.broadcast_to(rank < int(top_k), w.shape)  # (M, N)
        else:
            assert tau is not None
            mass = np.cumsum(sorted_w, axis=1)  # (M, N)
            n_keep = (mass < tau - _MASS_TOL).sum(axis=1, keepdims=True) + 1  # (M, 1) smallest k
            keep_sorted = rank < n_keep
        keep = np.zeros(w.shape, dtype=bool)
        np.put_along_axis(keep, order, keep_sorted, axis=1)  # back to expert order
        kept = np.where(keep & cand, w, 0.0)
    total = kept.sum(axis=1, keepdims=True)  # (M, 1)
    return np.divide(kept, total, out=np.zeros_like(kept), where=total > 0)


def mix(weights: np.ndarray, logprobs: np.ndarray) -> np.ndarray:
    """Gate-weighted mixture ``p(k|x_i) = Σ_n w[i, n] · exp(logprobs[i, n, k])``.

    Args:
        weights: (M, N) gate weights.
        logprobs: (M, N, K) log-probabilities (``-inf`` contributes 0).

    Returns:
        (M, K) float64 mixture probabilities.
    """
    w = np.asarray(weights, dtype=np.float64)
    lp = np.asarray(logprobs, dtype=np.float64)
    if lp.ndim != 3 or w.shape != lp.shape[:2]:
        raise SelectionError(
            f"weights shape {w.shape} does not match logprobs (M, N, K) = {lp.shape}"
        )
    return np.einsum("mn,mnk->mk", w, np.exp(lp))  # (M, K)


def _scores(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample (correct bool, log p(label) clipped at LOG_PROB_FLOOR)."""
    p_label = probs[np.arange(probs.shape[0]), labels]  # (M,)
    correct = (probs.argmax(axis=1) == labels) & (p_label > 0)
    return correct, np.log(np.maximum(p_label, PROB_FLOOR))


# --------------------------------------------------------------------------- evaluation


class CategoryScore(NamedTuple):
    """Accuracy (fraction), NLL (nats) and sample count of one category."""

    accuracy: float
    nll: float
    n: int


@dataclass(frozen=True)
class MixtureReport:
    """Accuracy and NLL of the gated mixture restricted to one subset S.

    ``per_category`` omits categories with no samples in the evaluated rows.
    """

    experts_mask: tuple[bool, ...]
    accuracy: float
    nll: float
    n: int
    mean_active_experts: float
    top_k: int | None
    tau: float | None
    per_category: dict[str, CategoryScore] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (plain floats, ints, strs, lists); ``json.dumps`` it to write."""
        return {
            "experts_mask": list(self.experts_mask),
            "accuracy": self.accuracy,
            "nll": self.nll,
            "n": self.n,
            "mean_active_experts": self.mean_active_experts,
            "top_k": self.top_k,
            "tau": self.tau,
            "per_category": {k: v._asdict() for k, v in self.per_category.items()},
        }


def _check_rows(gate_logits: np.ndarray, logprobs: np.ndarray, labels: np.ndarray) -> None:
    if np.ndim(logprobs) != 3:
        raise SelectionError(f"logprobs must be (M, N, K), got shape {np.shape(logprobs)}")
    m, n, k = np.shape(logprobs)
    if np.shape(gate_logits) != (m, n):
        raise SelectionError(f"gate_logits shape {np.shape(gate_logits)} must be (M, N) = {(m, n)}")
    if np.shape(labels) != (m,):
        raise SelectionError(f"labels shape {np.shape(labels)} must be (M,) = ({m},)")
    if m and (np.min(labels) < 0 or np.max(labels) >= k):
        raise SelectionError(f"labels must be in [0, {k})")


def evaluate_subset(
    gate_logits: np.ndarray,
    logprobs: np.ndarray,
    labels: np.ndarray,
    categories: np.ndarray,
    category_names: Sequence[str],
    mask: np.ndarray | Sequence[bool] | None = None,
    top_k: int | None = None,
    tau: float | None = None,
) -> MixtureReport:
    """Accuracy and NLL of the gated mixture over S, overall and per category.

    Args:
        gate_logits: (M, N) gate logits (``uniform_logits`` for the uniform baseline).
        logprobs: (M, N, K) expert log-probabilities, prior-corrected by the caller.
        labels: (M,) correct option indices.
        categories: (M,) indices into ``category_names``.
        category_names: (C,) names.
        mask: (N,) bool S; None means every expert.
        top_k, tau: fine-level selection inside S (see :func:`select_top_k`).

    Returns:
        A MixtureReport. ``nll`` is mean −log max(p(y|x), PROB_FLOOR) in nats.
    """
    _check_rows(gate_logits, logprobs, labels)
    cats = np.asarray(categories)
    if cats.shape != np.shape(labels):
        raise SelectionError(f"categories shape {cats.shape} must match labels {np.shape(labels)}")
    m = _as_mask(mask, np.shape(logprobs)[1])
    w = select_top_k(masked_gate_weights(gate_logits, m), top_k=top_k, tau=tau, mask=m)  # (M, N)
    correct, logp = _scores(mix(w, logprobs), np.asarray(labels))
    per_category: dict[str, CategoryScore] = {}
    for c, name in enumerate(category_names):
        rows = cats == c
        if rows.any():
            per_category[name] = CategoryScore(
                float(correct[rows].mean()), float(-logp[rows].mean()), int(rows.sum())
            )
    n = int(correct.shape[0])
    return MixtureReport(
        experts_mask=tuple(bool(b) for b in m),
        accuracy=float(correct.mean()) if n else math.nan,
        nll=float(-logp.mean()) if n else math.nan,
        n=n,
        mean_active_experts=float((w > 0).sum(axis=1).mean()) if n else 0.0,
        top_k=top_k,
        tau=tau,
        per_category=per_category,
    )


class MixtureObjective:
    """Memoised subset objective ``F(S)`` for the selector (higher is better).

    ``F(S)`` is the accuracy, or the mean log p(label) (``metric="neg_nll"``), of the masked
    gate mixture over S with optional top-k / adaptive-τ. ``F(∅)`` is 0.0 (accuracy) or
    ``LOG_PROB_FLOOR`` (neg_nll), never above any non-empty S.

    The expert probabilities are exponentiated once here; one evaluation touches only the
    columns of S. ``evaluations`` counts cache misses, ``calls`` every call.

    Args:
        gate_logits: (M, N) gate logits for the evaluation rows.
        logprobs: (M, N, K) prior-corrected expert log-probabilities.
        labels: (M,) correct option indices.
        top_k, tau: fine-level selection (see :func:`select_top_k`).
        metric: "accuracy" or "neg_nll".
    """

    def __init__(
        self,
        gate_logits: np.ndarray,
        logprobs: np.ndarray,
        labels: np.ndarray,
        top_k: int | None = None,
        tau: float | None = None,
        metric: Metric = "accuracy",
    ) -> None:
        _check_rows(gate_logits, logprobs, labels)
        if metric not in METRICS:
            raise SelectionError(f"unknown metric '{metric}'; choose one of {list(METRICS)}")
        select_top_k(np.zeros((0, 1)), top_k=top_k, tau=tau)  # validates top_k / tau
        m, n, k = np.shape(logprobs)
        self.n_experts = n
        self.top_k = top_k
        self.tau = tau
        self.metric: Metric = metric
        self._logits = np.asarray(gate_logits, dtype=np.float64)  # (M, N)
        lab = np.asarray(labels, dtype=np.int64)
        probs = np.exp(np.asarray(logprobs, dtype=np.float64))  # (M, N, K)
        self._probs_t = np.ascontiguousarray(probs.transpose(1, 0, 2))  # (N, M, K) column = expert
        self._p_label = np.ascontiguousarray(probs[np.arange(m), :, lab].T)  # (N, M)
        self._labels = lab
        self._rows = np.arange(m)
        self._cache: dict[bytes, float] = {}
        self.evaluations = 0
        self.calls = 0

    def __call__(self, mask: np.ndarray | Sequence[bool] | Iterable[int]) -> float:
        """F(S) for a (N,) bool mask, or for a set / frozenset of expert indices."""
        self.calls += 1
        if isinstance(mask, set | frozenset):
            m = np.zeros(self.n_experts, dtype=bool)
            m[list(mask)] = True
        else:
            m = _as_mask(np.asarray(mask), self.n_experts)
        key = np.packbits(m).tobytes()
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        self.evaluations += 1
        value = self._evaluate(m)
        self._cache[key] = value
        return value

    def _evaluate(self, m: np.ndarray) -> float:
        if not m.any() or self._rows.size == 0:
            return 0.0 if self.metric == "accuracy" else LOG_PROB_FLOOR
        return float(self.row_scores(m).mean())

    def row_scores(self, mask: np.ndarray | Sequence[bool]) -> np.ndarray:
        """(M,) per-row scores whose mean is F(S): 1.0/0.0 correct (accuracy) or log p(label).

        The paired guard (:mod:`gating.planning.guard`) bootstraps differences of these rows. The
        empty set scores 0.0 (accuracy) or ``LOG_PROB_FLOOR`` on every row.
        """
        m = _as_mask(np.asarray(mask), self.n_experts)
        idx = np.flatnonzero(m)
        if idx.size == 0:
            return np.full(self._rows.size, 0.0 if self.metric == "accuracy" else LOG_PROB_FLOOR)
        w = masked_gate_weights(self._logits[:, idx])  # (M, |S|) the softmax over S
        if self.top_k is not None or self.tau is not None:
            w = select_top_k(w, top_k=self.top_k, tau=self.tau, mask=np.ones(idx.size, dtype=bool))
        if self.metric == "neg_nll":
            p_label = np.einsum("ms,sm->m", w, self._p_label[idx])  # (M,)
            return np.log(np.maximum(p_label, PROB_FLOOR))
        probs = np.einsum("ms,smk->mk", w, self._probs_t[idx])  # (M, K)
        p_label = probs[self._rows, self._labels]
        correct = (probs.argmax(axis=1) == self._labels) & (p_label > 0)
        return correct.astype(np.float64)
