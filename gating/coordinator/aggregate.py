"""Aggregation of the experts' answers: the gated mixture, or a weighted vote over text.

- Options: ``p(k) = Σ_n w̃_n · exp(lp'_n[k])`` where ``w̃`` are the gate weights of the
  experts that *answered*, renormalised to sum to 1 (so a straggler's weight is spread
  over the others), and ``lp'`` their log-probs with the gate's per-expert prior
  correction divided out and then its temperature applied, when the gate's prior has K
  options (both are fitted on the calibration table's K; other K are mixed uncorrected):
  the same calibration the planner's F(S) mixes. Reuses :mod:`gating.planning.mixture`.
- Generation: each answer is normalised (case, surrounding punctuation, whitespace);
  each normalised answer scores the renormalised weight of the experts that gave it;
  the highest score wins, ties go to the group holding the top-weight expert, and the
  text returned is the top-weight expert's own text within the winning group.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping

import numpy as np

from edge_moe.errors import SelectionError
from gating.planning.mixture import apply_prior_correction, mix
from gating.planning.temperature import apply_temperature

_PUNCT = string.punctuation + " \t\r\n"


def renormalise(weights: Mapping[str, float]) -> dict[str, float]:
    """Weights over the given experts, summing to 1 (all equal when they sum to 0)."""
    total = float(sum(weights.values()))
    if not weights:
        return {}
    if total <= 0:
        return {k: 1.0 / len(weights) for k in weights}
    return {k: float(v) / total for k, v in weights.items()}


def mix_options(weights: Mapping[str, float], logprobs: Mapping[str, np.ndarray],
                prior: Mapping[str, np.ndarray] | None = None,
                temperature: Mapping[str, float] | None = None) -> tuple[np.ndarray, bool]:
    """The gated mixture over the options.

    Args:
        weights: expert → gate weight (renormalised here over the experts given).
        logprobs: expert → (K,) log-probabilities; the same K for all.
        prior: expert → (K',) log option prior; applied when K' == K for every expert.
        temperature: expert → T, applied after the prior (with it: the calibration the
            planner's F(S) used); an expert missing from it gets T = 1.

    Returns:
        ((K,) float64 probabilities, whether the prior correction was applied).

    Raises:
        SelectionError: no experts, or the experts disagree on K.
    """
    names = [n for n in weights if n in logprobs]
    if not names:
        raise SelectionError("no expert answered; nothing to mix")
    ks = {len(logprobs[n]) for n in names}
    if len(ks) != 1:
        raise SelectionError(f"experts returned different option counts {sorted(ks)}")
    w = renormalise({n: weights[n] for n in names})
    lp = np.stack([np.asarray(logprobs[n], np.float64) for n in names])[None]  # (1, S, K)
    corrected = False
    if prior is not None and all(n in prior and len(prior[n]) == lp.shape[2] for n in names):
        pr = np.stack([np.asarray(prior[n], np.float64) for n in names])  # (S, K)
        lp = apply_prior_correction(lp, pr).astype(np.float64)
        corrected = True
        if temperature is not None:
            t = np.array([float(temperature.get(n, 1.0)) for n in names])  # (S,)
            lp = apply_temperature(lp, t)
    probs = mix(np.array([[w[n] for n in names]]), lp)[0]  # (K,)
    return probs, corrected


def normalise_answer(text: str) -> str:
    """Lower case, inner whitespace collapsed, surrounding punctuation stripped."""
    return re.sub(r"\s+", " ", text.strip().lower()).strip(_PUNCT)


def vote(weights: Mapping[str, float], texts: Mapping[str, str]) -> tuple[str, dict[str, float]]:
    """The weighted vote over normalised answers.

    Returns:
        (the winning text, normalised answer → renormalised weight).

    Raises:
        SelectionError: no expert answered.
    """
    names = [n for n in weights if n in texts]
    if not names:
        raise SelectionError("no expert answered; nothing to vote on")
    w = renormalise({n: weights[n] for n in names})
    scores: dict[str, float] = {}
    for n in names:
        key = normalise_answer(texts[n])
        scores[key] = scores.get(key, 0.0) + w[n]
    top_expert = max(names, key=lambda n: w[n])  # max keeps the first on ties: gate order
    best = max(scores.values())
    winners = {k for k, v in scores.items() if v >= best - 1e-12}
    group = normalise_answer(texts[top_expert])
    if group not in winners:
        group = sorted(winners)[0]
    speaker = max((n for n in names if normalise_answer(texts[n]) == group), key=lambda n: w[n])
    return texts[speaker], scores
