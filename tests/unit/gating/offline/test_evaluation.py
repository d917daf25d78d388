"""gating.offline.evaluation: a plan's test figures, recomputed here from their definitions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edge_moe.calibration import TEST, VALIDATION, load_calibration
from gating.offline.evaluation import PlanEvaluator, one_hot, raw_accuracy, single_experts
from gating.planning import planner


def _test_rows(inputs: planner.PlanInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    idx = inputs.table.split == TEST
    return (inputs.gate_logits[idx], inputs.table.logprobs[idx].astype(np.float64), inputs.table.labels[idx],
            inputs.table.categories[idx])


def _expected(inputs: planner.PlanInputs, weights: np.ndarray) -> dict[str, object]:
    """Accuracy, NLL and the expected costs of a weight matrix, sample by sample."""
    _, lp, labels, cats = _test_rows(inputs)
    agg = inputs.profiles.aggregation_ms
    right, nll, joules, ms = [], [], [], []
    for i in range(len(labels)):
        probs = sum(weights[i, n] * np.exp(lp[i, n]) for n in range(lp.shape[1]))  # (K,)
        right.append(bool(np.argmax(probs) == labels[i]))
        nll.append(-np.log(max(probs[labels[i]], 1e-12)))
        active = np.flatnonzero(weights[i] > 0)
        joules.append(sum(inputs.energy_j[n, cats[i]] for n in active))
        ms.append(max(inputs.latency_ms[n, cats[i]] for n in active) + agg)
    right_a = np.array(right)
    per_cat = {c: right_a[cats == k].mean() for k, c in enumerate(inputs.categories) if (cats == k).any()}
    return {"accuracy": right_a.mean(), "nll": np.mean(nll), "per_category": per_cat,
            "expected_energy_j": np.mean(joules), "expected_latency_ms": np.mean(ms),
            "mean_active_experts": (weights > 0).sum(axis=1).mean()}


@pytest.mark.parametrize("top_k,tau,uniform", [(1, None, False), (2, None, False), (None, 0.7, False),
                                                (None, None, False), (None, None, True)])
def test_plan_figures_follow_from_their_definitions(toy_inputs, weights_of, top_k, tau, uniform) -> None:
    evaluate = PlanEvaluator(toy_inputs)
    logits, *_ = _test_rows(toy_inputs)
    if uniform:
        logits = np.zeros_like(logits)
    n = len(toy_inputs.experts)
    for bits in itertools.product([False, True], repeat=n):
        mask = np.array(bits)
        if not mask.any():
            assert evaluate(mask, top_k, tau, uniform=uniform) is None
            continue
        got = evaluate(mask, top_k, tau, uniform=uniform)
        want = _expected(toy_inputs, weights_of(logits, mask, top_k, tau))
        for key in ("accuracy", "nll", "expected_energy_j", "expected_latency_ms", "mean_active_experts"):
            # rel 1e-6: the gate's weights may be computed in float32
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-12), (bits, key)
        assert got["per_category"] == pytest.approx(want["per_category"], abs=1e-12), bits


def test_repeats_are_memoised_and_modes_are_not_confused(toy_inputs) -> None:
    evaluate = PlanEvaluator(toy_inputs)
    mask = np.array([True, False, True, True])
    first = evaluate(mask, 1, None)
    assert evaluate(mask.copy(), 1, None) is first
    assert evaluate(mask, 2, None) is not first
    assert evaluate(mask, 1, None, uniform=True) is not first


def test_one_hot() -> None:
    assert one_hot(4, 2).tolist() == [False, False, True, False]


def test_single_experts_raw_corrected_and_costs(toy_inputs) -> None:
    raw = load_calibration(toy_inputs.calibration_path).select_experts(list(toy_inputs.experts))
    evaluate = PlanEvaluator(toy_inputs)
    got = single_experts(toy_inputs, raw, evaluate, top_k=2)
    assert list(got) == list(toy_inputs.experts)
    test, val = raw.split == TEST, toy_inputs.table.split == VALIDATION
    for j, name in enumerate(toy_inputs.experts):
        s = got[name]
        raw_right = raw.logprobs[test, j].argmax(axis=1) == raw.labels[test]
        assert s["raw"]["accuracy"] == pytest.approx(raw_right.mean(), abs=1e-12)
        for k, c in enumerate(toy_inputs.categories):
            assert s["raw"]["per_category"][c] == pytest.approx(raw_right[raw.categories[test] == k].mean(), abs=1e-12)
        # one expert alone: its corrected argmax, on test and (the objective F) on validation
        corr = toy_inputs.table.logprobs
        assert s["corrected"]["accuracy"] == pytest.approx(
            (corr[test, j].argmax(axis=1) == toy_inputs.table.labels[test]).mean(), abs=1e-12)
        assert s["validation_accuracy"] == pytest.approx(
            (corr[val, j].argmax(axis=1) == toy_inputs.table.labels[val]).mean(), abs=1e-12)
        assert s["worst_energy_j"] == pytest.approx(toy_inputs.energy_j[j].max())
        assert s["worst_latency_ms"] == pytest.approx(toy_inputs.latency_ms[j].max()
                                                      + toy_inputs.profiles.aggregation_ms)
        prof = toy_inputs.profiles.expert(name)
        assert s["node"] == prof.node
        assert {c: f["value"] for c, f in s["energy_j"].items()} == {
            c: prof.energy_j[c].value for c in toy_inputs.categories}


def test_raw_accuracy_leaves_out_categories_without_test_samples(toy_inputs) -> None:
    raw = load_calibration(toy_inputs.calibration_path)
    got = raw_accuracy(raw, 0, (*toy_inputs.categories, "no-such-category"))
    assert "no-such-category" not in got["per_category"]
    assert set(got["per_category"]) == set(toy_inputs.categories)
