"""Per-expert temperature scaling: hand-computed optima, padding, and what it leaves alone."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_moe.errors import SelectionError
from gating.planning.temperature import T_MAX, apply_temperature, fit_temperature


def _rows(p: list[float], labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Every row the same option distribution p for one expert; (M, 1, K) log-probs."""
    lp = np.log(np.tile(np.asarray(p, dtype=np.float64), (len(labels), 1)))[:, None, :]
    return lp, np.asarray(labels)


def test_overconfident_expert_gets_the_hand_computed_temperature() -> None:
    # p = (0.9, 0.1) on every row, but option 0 is right on 60%: the NLL optimum makes it 0.6,
    # 9^β / (9^β + 1) = 0.6  =>  β = ln 1.5 / ln 9,  T = ln 9 / ln 1.5 ≈ 5.419
    lp, y = _rows([0.9, 0.1], [0] * 6 + [1] * 4)
    t = fit_temperature(lp, y)
    assert t.shape == (1,)
    assert t[0] == pytest.approx(math.log(9) / math.log(1.5), rel=1e-5)
    assert np.exp(apply_temperature(lp, t))[0, 0] == pytest.approx([0.6, 0.4], abs=1e-5)


def test_calibrated_expert_keeps_t_1_and_underconfident_gets_t_below_1() -> None:
    lp, y = _rows([0.8, 0.2], [0, 0, 0, 0, 1])  # empirical 0.8: already calibrated
    assert fit_temperature(lp, y)[0] == pytest.approx(1.0, rel=1e-5)
    lp, y = _rows([0.6, 0.4], [0] * 9 + [1])  # says 0.6, right 90%: sharpen, 1.5^β = 9
    assert fit_temperature(lp, y)[0] == pytest.approx(math.log(1.5) / math.log(9), rel=1e-5)


def test_experts_are_fitted_independently_and_chance_goes_flat() -> None:
    rng = np.random.default_rng(0)
    m = 400
    labels = rng.integers(0, 4, m)
    sharp = np.log(rng.dirichlet(np.full(4, 0.2), size=m))  # (M, 4) confident, unrelated to labels
    good = np.log(np.full((m, 4), 0.1))
    favourite = np.where(np.arange(m) < 0.7 * m, labels, (labels + 1) % 4)  # right on exactly 70%
    good[np.arange(m), favourite] = np.log(0.7)  # says 0.7 and is right 70% of the time: calibrated
    lp = np.stack([sharp, good], axis=1)  # (M, 2, 4)
    t = fit_temperature(lp, labels)
    assert t[0] > 50  # near uniform: its confidence carries no information
    assert t[0] <= T_MAX
    assert t[1] == pytest.approx(1.0, rel=1e-4)
    alone = fit_temperature(lp[:, 1:], labels)
    assert alone[0] == pytest.approx(t[1], rel=1e-9)


def test_padding_stays_minus_inf_and_argmax_is_kept() -> None:
    rng = np.random.default_rng(1)
    lp = np.log(rng.dirichlet(np.ones(3), size=(20, 2)))
    lp = np.concatenate([lp, np.full((20, 2, 1), -np.inf)], axis=2)  # (M, N, 4) option 3 missing
    out = apply_temperature(lp, np.array([0.5, 7.0]))
    assert np.isneginf(out[..., 3]).all()
    assert np.allclose(np.exp(out).sum(axis=2), 1.0)
    assert (out.argmax(axis=2) == lp.argmax(axis=2)).all()
    assert np.allclose(apply_temperature(lp, np.ones(2))[..., :3], lp[..., :3])
    labels = rng.integers(0, 3, 20)
    t = fit_temperature(lp, labels)
    assert np.isfinite(t).all() and (t > 0).all()


def test_bad_arguments_raise() -> None:
    lp, y = _rows([0.5, 0.5], [0, 1])
    with pytest.raises(SelectionError, match="temperature shape"):
        apply_temperature(lp, np.ones(2))
    with pytest.raises(SelectionError, match="positive and finite"):
        apply_temperature(lp, np.zeros(1))
    with pytest.raises(SelectionError, match="M >= 1"):
        fit_temperature(lp[:0], y[:0])
    bad = lp.copy()
    bad[0, 0, 0] = -np.inf
    with pytest.raises(SelectionError, match="-inf"):
        fit_temperature(bad, y)
