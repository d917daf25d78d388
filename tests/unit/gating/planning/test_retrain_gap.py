"""Tests of the retrain-gap check (gating.offline.retrain_gap) on a tiny *synthetic* table."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from edge_moe.calibration import TEST, VALIDATION, CalibrationTable
from edge_moe.errors import GateError
from gating.offline.retrain_gap import GapReport, random_subsets, retrain_gap
from gating.offline.synthetic import make_synthetic_table
from gating.planning.gate import GateConfig, TrainedGate, train_gate
from gating.planning.mixture import apply_prior_correction, evaluate_subset
from gating.planning.temperature import apply_temperature

CONFIG = GateConfig(hidden_dim=32, max_epochs=60)


@pytest.fixture(scope="module")
def table() -> CalibrationTable:
    t, _ = make_synthetic_table(n_samples=400, n_experts=5, embedding_dim=16, seed=7)
    return t


@pytest.fixture(scope="module")
def gate(table: CalibrationTable) -> TrainedGate:
    return train_gate(table, CONFIG)


@pytest.fixture(scope="module")
def report(table: CalibrationTable, gate: TrainedGate) -> GapReport:
    return retrain_gap(table, gate, n_subsets=3, seed=11)


def test_random_subsets_are_distinct_proper_and_seeded() -> None:
    masks = random_subsets(8, 30, seed=4, min_size=2)
    assert len(masks) == 30
    assert len({m.tobytes() for m in masks}) == 30
    assert all(2 <= m.sum() < 8 for m in masks)
    again = random_subsets(8, 30, seed=4, min_size=2)
    assert all(np.array_equal(a, b) for a, b in zip(masks, again, strict=True))
    assert any(
        not np.array_equal(a, b) for a, b in zip(masks, random_subsets(8, 30, seed=5), strict=True)
    )


def test_random_subsets_enumerates_all_when_few_exist() -> None:
    masks = random_subsets(4, 30, seed=0, min_size=2)  # C(4,2) + C(4,3) = 10
    assert len(masks) == 10 and len({m.tobytes() for m in masks}) == 10
    with pytest.raises(GateError, match="no proper subset with at least 3 experts exists among 3"):
        random_subsets(3, 5, seed=0, min_size=3)
    with pytest.raises(GateError, match="min_size must be >= 1"):
        random_subsets(5, 5, seed=0, min_size=0)


def test_retrain_gap_rows_are_finite_and_match_the_subsets(
    table: CalibrationTable, gate: TrainedGate, report: GapReport
) -> None:
    masks = random_subsets(table.n_experts, 3, seed=11)
    assert len(report.rows) == 3
    test = table.split_rows(TEST)
    assert gate.temperature is not None
    lp = apply_temperature(apply_prior_correction(test.logprobs, gate.prior), gate.temperature)
    logits = gate.logits(test.embeddings)
    for row, mask in zip(report.rows, masks, strict=True):
        assert row.experts == tuple(table.experts[j] for j in np.flatnonzero(mask))
        values = (row.masked_nll, row.retrained_nll, row.masked_acc, row.retrained_acc)
        assert all(math.isfinite(v) for v in values)
        direct = evaluate_subset(
            logits, lp, test.labels, test.categories, test.category_names, mask
        )
        assert row.masked_nll == pytest.approx(direct.nll)
        assert row.masked_acc == pytest.approx(direct.accuracy)
        assert row.gap_nll == pytest.approx(row.masked_nll - row.retrained_nll)
    assert report.split == "test" and report.n_samples == test.n_samples
    assert report.max_gap_nll >= report.mean_gap_nll
    assert report.config == gate.config


def test_retrained_side_equals_a_direct_subset_gate(
    table: CalibrationTable, gate: TrainedGate, report: GapReport
) -> None:
    mask = random_subsets(table.n_experts, 3, seed=11)[0]
    sub = train_gate(table, gate.config, experts_mask=mask)
    test = table.split_rows(TEST)
    assert sub.temperature is not None and gate.temperature is not None
    assert np.allclose(sub.temperature, gate.temperature[mask])  # per expert, fitted on TRAIN
    lp = apply_temperature(apply_prior_correction(test.logprobs[:, mask], sub.prior), sub.temperature)
    r = evaluate_subset(
        sub.logits(test.embeddings), lp, test.labels, test.categories, test.category_names
    )
    assert report.rows[0].retrained_nll == pytest.approx(r.nll)
    assert report.rows[0].retrained_acc == pytest.approx(r.accuracy)


def test_report_serialises(report: GapReport) -> None:
    decoded = json.loads(json.dumps(report.to_json()))
    assert len(decoded["rows"]) == 3
    assert decoded["mean_gap_nll"] == pytest.approx(report.mean_gap_nll)
    assert decoded["rows"][0]["experts"] == list(report.rows[0].experts)
    assert "3 subsets on test" in report.summary() and "nats" in report.summary()


def test_retrain_gap_rejects_mismatched_gate_and_empty_split(
    table: CalibrationTable, gate: TrainedGate
) -> None:
    sub = train_gate(
        table,
        dataclasses.replace(CONFIG, max_epochs=2),
        experts_mask=np.array([True] * 4 + [False]),
    )
    with pytest.raises(GateError, match="are not the table's"):
        retrain_gap(table, sub, n_subsets=1)
    no_test = dataclasses.replace(
        table, split=np.where(table.split == TEST, VALIDATION, table.split).astype(np.int8)
    )
    with pytest.raises(GateError, match="no test rows"):
        retrain_gap(no_test, gate, n_subsets=1)
