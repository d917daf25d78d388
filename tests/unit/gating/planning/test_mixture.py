"""Tests of gating.planning.mixture against plain-Python references and hand computations.

Random data is seeded; the letter-bias test uses a *synthetic* table (gating.offline.synthetic).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edge_moe.calibration import TEST, TRAIN
from edge_moe.errors import SelectionError
from gating.offline.synthetic import make_synthetic_table
from gating.planning.mixture import (
    LOG_PROB_FLOOR,
    PROB_FLOOR,
    MixtureObjective,
    apply_prior_correction,
    evaluate_subset,
    fit_prior_correction,
    masked_gate_weights,
    mix,
    select_top_k,
    uniform_logits,
)


def _random_logprobs(
    rng: np.random.Generator, m: int, n: int, k: int, pad: bool = True
) -> np.ndarray:
    x = rng.normal(0.0, 1.5, (m, n, k))
    if pad:  # some samples have only 2 or 3 of the k options
        n_opts = rng.integers(2, k + 1, m)
        missing = np.arange(k)[None, None, :] >= n_opts[:, None, None]  # (M, 1, K)
        x[np.broadcast_to(missing, x.shape)] = -np.inf
    return x - np.logaddexp.reduce(x, axis=2, keepdims=True)


# --------------------------------------------------------------------------- plain-Python references


def _ref_top_k(
    w: list[float], cand: list[bool], top_k: int | None, tau: float | None
) -> list[float]:
    members = [j for j in range(len(w)) if cand[j]]
    members.sort(key=lambda j: (-w[j], j))  # larger weight first, lower index wins ties
    if top_k is not None:
        keep = members[:top_k]
    elif tau is not None:
        keep, mass = [], 0.0
        for j in members:
            keep.append(j)
            mass += w[j]
            if mass >= tau - 1e-9:
                break
    else:
        keep = members
    total = sum(w[j] for j in keep)
    return [w[j] / total if (j in keep and total > 0) else 0.0 for j in range(len(w))]


def _ref_mix(w: np.ndarray, lp: np.ndarray) -> np.ndarray:
    m, n, k = lp.shape
    out = np.zeros((m, k))
    for i in range(m):
        for o in range(k):
            for j in range(n):
                if np.isfinite(lp[i, j, o]):
                    out[i, o] += w[i, j] * math.exp(lp[i, j, o])
    return out


# --------------------------------------------------------------------------- gate weights


def test_masked_weights_sum_to_one_over_s_and_zero_outside() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 3.0, (50, 7))
    logits[0, 0] = 900.0  # an expert outside S with a huge logit must not underflow S
    for _ in range(20):
        mask = rng.random(7) < 0.5
        mask[0] = False
        mask[rng.integers(1, 7)] = True
        w = masked_gate_weights(logits, mask)
        assert np.allclose(w[:, mask].sum(axis=1), 1.0)
        assert (w[:, ~mask] == 0).all()
        assert np.isfinite(w).all()
        sub = np.exp(logits[:, mask] - logits[:, mask].max(axis=1, keepdims=True))
        assert np.allclose(w[:, mask], sub / sub.sum(axis=1, keepdims=True))
    assert (masked_gate_weights(logits, np.zeros(7, dtype=bool)) == 0).all()
    assert np.allclose(masked_gate_weights(logits).sum(axis=1), 1.0)


def test_masked_weights_reject_bad_mask() -> None:
    with pytest.raises(SelectionError, match=r"bool array of shape \(3,\)"):
        masked_gate_weights(np.zeros((2, 3)), np.array([1, 0, 1]))


@pytest.mark.parametrize("seed", range(5))
def test_select_top_k_and_tau_match_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m, n = 40, 6
    mask = rng.random(n) < 0.7
    mask[rng.integers(n)] = True
    logits = np.round(rng.normal(0.0, 1.0, (m, n)), 1)  # rounding makes ties common
    logits[:5] = 0.0  # rows of exact ties
    w = masked_gate_weights(logits, mask)
    cases: list[tuple[int | None, float | None]] = [(None, None)]
    cases += [(k, None) for k in range(1, n + 2)]
    cases += [(None, t) for t in (0.05, 0.3, 0.5, 0.8, 0.95, 1.0)]
    for top_k, tau in cases:
        got = select_top_k(w, top_k=top_k, tau=tau, mask=mask)
        for i in range(m):
            ref = _ref_top_k(w[i].tolist(), mask.tolist(), top_k, tau)
            assert np.allclose(got[i], ref, atol=1e-12), (top_k, tau, i)
        assert np.allclose(got.sum(axis=1), 1.0)
        # without a mask the candidates are the positive weights, the same S here
        assert np.allclose(select_top_k(w, top_k=top_k, tau=tau), got)


def test_select_top_k_tie_goes_to_lower_index() -> None:
    w = np.array([[0.25, 0.25, 0.25, 0.25]])
    assert select_top_k(w, top_k=2).tolist() == [[0.5, 0.5, 0.0, 0.0]]
    assert select_top_k(w, tau=0.5).tolist() == [[0.5, 0.5, 0.0, 0.0]]
    assert select_top_k(w, tau=0.51).tolist() == [[1 / 3, 1 / 3, 1 / 3, 0.0]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": 2, "tau": 0.5}, "not both"),
        ({"top_k": 0}, "top_k must be an integer >= 1"),
        ({"top_k": 1.5}, "top_k must be an integer >= 1"),
        ({"tau": 0.0}, r"tau must be in \(0, 1\]"),
        ({"tau": 1.2}, r"tau must be in \(0, 1\]"),
    ],
)
def test_select_top_k_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(SelectionError, match=message):
        select_top_k(np.full((2, 3), 1 / 3), **kwargs)


# --------------------------------------------------------------------------- mixture


def test_mix_matches_loop_reference_with_padding() -> None:
    rng = np.random.default_rng(1)
    lp = _random_logprobs(rng, 30, 5, 4)
    w = masked_gate_weights(rng.normal(size=(30, 5)), rng.random(5) < 0.6)
    got = mix(w, lp)
    assert np.allclose(got, _ref_mix(w, lp))
    assert np.isfinite(got).all()
    with pytest.raises(SelectionError, match="does not match"):
        mix(w[:, :4], lp)


def test_evaluate_subset_matches_hand_computation() -> None:
    # 3 samples, 2 experts, 3 options; sample 2 has only 2 options.
    p = np.array(
        [
            [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]],
            [[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]],
            [[0.9, 0.1, 0.0], [0.4, 0.6, 0.0]],
        ]
    )
    with np.errstate(divide="ignore"):
        lp = np.log(p)
    labels = np.array([1, 0, 0])
    cats = np.array([0, 1, 0])
    logits = np.log(
        np.array([[1.0, 3.0], [1.0, 1.0], [3.0, 1.0]])
    )  # weights 1/4,3/4; 1/2,1/2; 3/4,1/4
    r = evaluate_subset(logits, lp, labels, cats, ["a", "b", "empty"])
    # mixtures: s0 = [.25, .65, .10] -> pred 1 ok, p=.65; s1 = [.4, .4, .2] -> tie, argmax 0 ok, p=.4
    # s2 = [.775, .225, 0] -> pred 0 ok, p=.775
    assert r.accuracy == 1.0
    assert r.nll == pytest.approx(-(math.log(0.65) + math.log(0.4) + math.log(0.775)) / 3)
    assert r.n == 3 and r.mean_active_experts == 2.0
    assert r.per_category["a"] == pytest.approx((1.0, -(math.log(0.65) + math.log(0.775)) / 2, 2))
    assert r.per_category["b"].n == 1
    assert "empty" not in r.per_category  # categories without samples are omitted

    # expert 0 alone: preds 0, 1, 0 -> correct: no, no, yes
    only0 = evaluate_subset(logits, lp, labels, cats, ["a", "b", "empty"], np.array([True, False]))
    assert only0.accuracy == pytest.approx(1 / 3)
    assert only0.nll == pytest.approx(-(math.log(0.2) + math.log(0.2) + math.log(0.9)) / 3)
    assert only0.mean_active_experts == 1.0

    # top-1 picks the heavier expert per sample: s0 -> e1, s1 -> tie -> e0, s2 -> e0
    top1 = evaluate_subset(logits, lp, labels, cats, ["a", "b", "empty"], top_k=1)
    assert top1.nll == pytest.approx(-(math.log(0.8) + math.log(0.2) + math.log(0.9)) / 3)
    assert top1.mean_active_experts == 1.0

    # empty subset: nothing is correct and the NLL sits at the floor
    none = evaluate_subset(logits, lp, labels, cats, ["a", "b", "empty"], np.array([False, False]))
    assert none.accuracy == 0.0 and none.nll == pytest.approx(-math.log(PROB_FLOOR))
    assert none.mean_active_experts == 0.0

    decoded = json.loads(json.dumps(r.to_json()))
    assert decoded["per_category"]["a"]["n"] == 2 and decoded["accuracy"] == 1.0


def test_uniform_logits_give_uniform_weights() -> None:
    u = uniform_logits(4, 5)
    assert u.shape == (4, 5) and (u == 0).all()
    mask = np.array([True, False, True, True, False])
    assert np.allclose(masked_gate_weights(u, mask)[:, mask], 1 / 3)


# --------------------------------------------------------------------------- objective


@pytest.mark.parametrize(("top_k", "tau"), [(None, None), (2, None), (None, 0.7)])
def test_objective_matches_evaluate_subset_and_memoises(
    top_k: int | None, tau: float | None
) -> None:
    rng = np.random.default_rng(2)
    m, n, k = 120, 6, 4
    lp = _random_logprobs(rng, m, n, k)
    labels = np.array([rng.integers(0, int(np.isfinite(lp[i, 0]).sum())) for i in range(m)])
    logits = rng.normal(0.0, 2.0, (m, n))
    cats = np.zeros(m, dtype=np.int64)
    acc = MixtureObjective(logits, lp, labels, top_k=top_k, tau=tau)
    nll = MixtureObjective(logits, lp, labels, top_k=top_k, tau=tau, metric="neg_nll")
    masks = [np.array([(s >> j) & 1 == 1 for j in range(n)]) for s in range(1, 2**n)]
    for mask in masks:
        r = evaluate_subset(logits, lp, labels, cats, ["c"], mask, top_k=top_k, tau=tau)
        assert acc(mask) == pytest.approx(r.accuracy, abs=1e-12)
        assert nll(mask) == pytest.approx(-r.nll, abs=1e-9)
    assert acc.evaluations == len(masks)
    for mask in masks[:10]:
        acc(mask)
    assert acc.evaluations == len(masks) and acc.calls == len(masks) + 10
    assert acc(frozenset({0, 2})) == acc(np.array([True, False, True, False, False, False]))
    assert acc.evaluations == len(masks)  # the set form hits the same cache entry
    empty = np.zeros(n, dtype=bool)
    assert acc(empty) == 0.0 and nll(empty) == LOG_PROB_FLOOR
    assert all(acc(empty) <= acc(mk) and nll(empty) <= nll(mk) for mk in masks)


def test_objective_rejects_bad_arguments() -> None:
    lp = np.log(np.full((3, 2, 2), 0.5))
    with pytest.raises(SelectionError, match="unknown metric 'f1'"):
        MixtureObjective(np.zeros((3, 2)), lp, np.zeros(3, dtype=int), metric="f1")  # type: ignore[arg-type]
    with pytest.raises(SelectionError, match="gate_logits shape"):
        MixtureObjective(np.zeros((3, 3)), lp, np.zeros(3, dtype=int))
    with pytest.raises(SelectionError, match="not both"):
        MixtureObjective(np.zeros((3, 2)), lp, np.zeros(3, dtype=int), top_k=1, tau=0.5)
    f = MixtureObjective(np.zeros((3, 2)), lp, np.zeros(3, dtype=int))
    with pytest.raises(SelectionError, match=r"shape \(2,\)"):
        f(np.array([True, False, True]))


# --------------------------------------------------------------------------- prior correction


def test_prior_fit_respects_padding_and_apply_renormalises() -> None:
    p = np.array(
        [[[0.5, 0.5, 0.0]], [[0.2, 0.2, 0.6]]]
    )  # (M=2, N=1, K=3); option 2 missing in row 0
    with np.errstate(divide="ignore"):
        lp = np.log(p)
    lp[0, 0, 2] = -np.inf
    prior = fit_prior_correction(lp)
    assert prior == pytest.approx(np.log([[0.35, 0.35, 0.6]]))  # option 2 averaged over 1 row only
    corrected = apply_prior_correction(lp, prior)
    assert np.isneginf(corrected[0, 0, 2])
    assert np.allclose(np.logaddexp.reduce(corrected.astype(np.float64), axis=2), 0.0, atol=1e-6)
    assert np.allclose(np.exp(corrected[0, 0, :2]), 0.5)  # equal priors leave row 0 as it was
    unseen = fit_prior_correction(lp[:1])  # option 2 never seen: filled with the expert's mean
    assert unseen[0, 2] == pytest.approx(np.log(0.5))
    with pytest.raises(SelectionError, match="prior shape"):
        apply_prior_correction(lp, prior[:, :2])


def test_prior_correction_fixes_strong_letter_bias() -> None:
    """Synthetic: experts 0 and 1 get a +3 logit bias towards option 1 ("B")."""
    table, _ = make_synthetic_table(n_samples=600, n_experts=4, seed=0)
    lp = table.logprobs.astype(np.float64)
    lp[:, :2, 1] += 3.0
    lp -= np.logaddexp.reduce(lp, axis=2, keepdims=True)
    train, test = table.split == TRAIN, table.split == TEST
    prior = fit_prior_correction(lp[train])
    corrected = apply_prior_correction(lp[test], prior)
    y = table.labels[test]
    for n in (0, 1):
        raw_pred = lp[test][:, n].argmax(axis=1)
        assert (raw_pred == 1).mean() > 0.8  # the bias is real: mostly "B"
        raw_acc = (raw_pred == y).mean()
        fixed_acc = (corrected[:, n].argmax(axis=1) == y).mean()
        assert fixed_acc >= raw_acc + 0.05, (n, raw_acc, fixed_acc)
        assert (corrected[:, n].argmax(axis=1) == 1).mean() < 0.5
