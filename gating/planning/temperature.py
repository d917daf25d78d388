"""Per-expert temperature scaling of option log-probabilities.

After the prior correction (:func:`gating.planning.mixture.apply_prior_correction`) an expert's
option distribution can still be over- or under-confident: a model at chance that puts
0.9 on its argmax poisons a mixture far more than one that puts 0.3 there. Temperature
scaling fixes the confidence without changing the expert's argmax::

    lp'_n(k | x) = log softmax_k( lp_n(k | x) / T_n )

``T_n`` minimises expert n's mean NLL on the given rows (the TRAIN split):
``T_n = 1 / β_n`` with ``β_n = argmin_β mean_i [ logsumexp_k(β·lp_n(k|x_i)) − β·lp_n(y_i|x_i) ]``.
That NLL is convex in β (a log-sum-exp of linear functions minus a linear one), so a
golden-section search over ``β ∈ [1/T_MAX, 1/T_MIN]`` finds the minimum of each expert
exactly (to :data:`_TOL` in log β). An expert at chance gets a large T (near uniform).

``-inf`` pads options a sample lacks and stays ``-inf``. T = 1 leaves log-probs unchanged
(bit for bit), which is what a gate record without temperatures means.
This module imports numpy only: it runs in the serving path.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from edge_moe.errors import SelectionError

logger = logging.getLogger(__name__)

T_MIN = 0.01  # sharpest temperature the fit may return
T_MAX = 1000.0  # flattest: an expert at chance ends near here (close to uniform)
_TOL = 1e-6  # golden-section stops when the log-β bracket is this narrow
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """log softmax over the last axis; rows with no finite entry stay all ``-inf``."""
    top = np.max(z, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        lse = top + np.log(np.exp(z - top).sum(axis=-1, keepdims=True))
    return np.where(np.isfinite(z), z - lse, -np.inf)


def apply_temperature(logprobs: np.ndarray, temperature: np.ndarray) -> np.ndarray:
    """Scale each expert's log-probs by 1/T_n and renormalise over the valid options.

    Args:
        logprobs: (M, N, K) log-probabilities (``-inf`` for missing options).
        temperature: (N,) positive finite temperatures.

    Returns:
        (M, N, K) float64 calibrated log-probabilities. An expert with T = 1 is returned as
        given (not renormalised), so a gate record without temperatures changes nothing.

    Raises:
        SelectionError: the shapes disagree or a temperature is not positive and finite.
    """
    lp = np.asarray(logprobs, dtype=np.float64)
    t = np.asarray(temperature, dtype=np.float64)
    if lp.ndim != 3 or t.shape != (lp.shape[1],):
        raise SelectionError(f"temperature shape {t.shape} does not match logprobs (M, N, K) = {lp.shape}")
    if not (np.isfinite(t).all() and (t > 0).all()):
        raise SelectionError(f"temperatures must be positive and finite, got {t.tolist()}")
    out = _log_softmax(lp / t[None, :, None])  # (M, N, K); -inf / T stays -inf
    return np.where((t == 1.0)[None, :, None], lp, out)  # T = 1: as given, bit for bit (old gate records)


def _nll(beta: np.ndarray, lp: np.ndarray, label_lp: np.ndarray) -> np.ndarray:
    """(N,) mean NLL of log softmax(β_n · lp) at the labels; lp (M, N, K), label_lp (M, N)."""
    z = beta[None, :, None] * lp  # (M, N, K)
    top = np.max(z, axis=2)  # (M, N)
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = top + np.log(np.exp(z - top[..., None]).sum(axis=2))  # (M, N)
    return (lse - beta[None, :] * label_lp).mean(axis=0)


def fit_temperature(logprobs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each expert's NLL-minimising temperature on the given rows (pass TRAIN only).

    Args:
        logprobs: (M, N, K) log-probabilities, prior-corrected when the mixture uses that.
        labels: (M,) correct option indices.

    Returns:
        (N,) float64 temperatures in [T_MIN, T_MAX].

    Raises:
        SelectionError: no rows, bad shapes, or a label that points at a missing option.
    """
    lp = np.asarray(logprobs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if lp.ndim != 3 or lp.shape[0] < 1 or y.shape != (lp.shape[0],):
        raise SelectionError(f"need (M, N, K) logprobs and (M,) labels with M >= 1, got {lp.shape}, {y.shape}")
    label_lp = lp[np.arange(lp.shape[0]), :, y]  # (M, N)
    if not np.isfinite(label_lp).all():
        raise SelectionError("a label points at an option with log-probability -inf")
    # z = β · lp with -inf kept -inf; replace -inf by a huge negative so β·lp stays -inf-like
    finite = np.where(np.isfinite(lp), lp, -1e30)
    lo = np.full(lp.shape[1], math.log(1.0 / T_MAX))  # log β bracket
    hi = np.full(lp.shape[1], math.log(1.0 / T_MIN))
    a = hi - _GOLDEN * (hi - lo)
    b = lo + _GOLDEN * (hi - lo)
    fa, fb = _nll(np.exp(a), finite, label_lp), _nll(np.exp(b), finite, label_lp)
    while (hi - lo).max() > _TOL:
        left = fa <= fb  # (N,) the minimum lies in [lo, b]
        hi = np.where(left, b, hi)
        lo = np.where(left, lo, a)
        a_new = hi - _GOLDEN * (hi - lo)
        b_new = lo + _GOLDEN * (hi - lo)
        # reuse one interior point per expert, evaluate the other
        a, b = np.where(left, a_new, b), np.where(left, a, b_new)
        f_new = _nll(np.exp(np.where(left, a, b)), finite, label_lp)
        fa, fb = np.where(left, f_new, fb), np.where(left, fa, f_new)
    beta = np.exp((lo + hi) / 2.0)
    t = np.clip(1.0 / beta, T_MIN, T_MAX)
    logger.debug("temperatures %s", np.round(t, 4).tolist())
    return t
