"""Tests of gate training (gating.planning.gate) and the ONNX runtime gate (edge_moe.runtime.gate).

Every table here is *synthetic* (gating.offline.synthetic, seeded): the tests check that the
trainer and the export work, not anything about real LLMs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from edge_moe.calibration import TEST, TRAIN, VALIDATION, CalibrationTable
from edge_moe.errors import GateError
from edge_moe.runtime.gate import OnnxGate
from gating.offline.synthetic import make_synthetic_table
from gating.planning.gate import (
    META_PREFIX,
    GateConfig,
    TrainedGate,
    export_gate_onnx,
    train_gate,
)
from gating.planning.mixture import (
    apply_prior_correction,
    evaluate_subset,
    fit_prior_correction,
    uniform_logits,
)
from gating.planning.temperature import apply_temperature, fit_temperature

REPO = Path(__file__).resolve().parents[4]
FAST = GateConfig(max_epochs=150)  # defaults otherwise; ~0.5 s per training here


@pytest.fixture(scope="module")
def table() -> CalibrationTable:
    t, _ = make_synthetic_table(n_samples=1000, n_experts=5, embedding_dim=24, seed=3)
    return t


@pytest.fixture(scope="module")
def gate(table: CalibrationTable) -> TrainedGate:
    return train_gate(table, FAST)


@pytest.fixture(scope="module")
def onnx_path(gate: TrainedGate, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_gate_onnx(gate, tmp_path_factory.mktemp("gate") / "gate.onnx")


def _calibrated(logprobs: np.ndarray, gate: TrainedGate) -> np.ndarray:
    """The gate's calibration: its prior divided out, then its temperatures."""
    assert gate.temperature is not None
    return apply_temperature(apply_prior_correction(logprobs, gate.prior), gate.temperature)


# --------------------------------------------------------------------------- training


def test_trained_gate_beats_uniform_on_synthetic_test_split(
    table: CalibrationTable, gate: TrainedGate
) -> None:
    test = table.split_rows(TEST)
    lp = _calibrated(test.logprobs, gate)
    args = (lp, test.labels, test.categories, test.category_names)
    trained = evaluate_subset(gate.logits(test.embeddings), *args)
    uniform = evaluate_subset(uniform_logits(test.n_samples, table.n_experts), *args)
    assert trained.nll < uniform.nll - 0.05, (trained.nll, uniform.nll)
    assert trained.accuracy >= uniform.accuracy, (trained.accuracy, uniform.accuracy)


def test_history_and_best_epoch_are_consistent(gate: TrainedGate) -> None:
    assert 1 <= gate.best_epoch <= len(gate.history) <= FAST.max_epochs
    val = [h.val_nll for h in gate.history]
    assert gate.best_val_nll == pytest.approx(min(val))
    assert val[gate.best_epoch - 1] == pytest.approx(gate.best_val_nll)
    stopped_early = len(gate.history) < FAST.max_epochs
    assert not stopped_early or len(gate.history) - gate.best_epoch == FAST.patience
    assert all(np.isfinite([h.train_nll for h in gate.history]))
    assert gate.prior.shape == (5, 4)


def test_prior_is_fitted_on_train_and_val_loss_is_the_mixture_nll(
    table: CalibrationTable, gate: TrainedGate
) -> None:
    train = table.split_rows(TRAIN)
    assert np.array_equal(gate.prior, fit_prior_correction(train.logprobs))
    assert gate.temperature is not None
    assert np.array_equal(gate.temperature,
                          fit_temperature(apply_prior_correction(train.logprobs, gate.prior), train.labels))
    val = table.split_rows(VALIDATION)
    lp = _calibrated(val.logprobs, gate)
    r = evaluate_subset(
        gate.logits(val.embeddings), lp, val.labels, val.categories, val.category_names
    )
    assert r.nll == pytest.approx(gate.best_val_nll, abs=1e-5)  # torch loss == numpy mixture NLL


def test_training_is_deterministic_and_full_mask_equals_no_mask(
    table: CalibrationTable, gate: TrainedGate
) -> None:
    x = table.embeddings[:50]
    again = train_gate(table, FAST)
    assert np.array_equal(again.logits(x), gate.logits(x))
    full = train_gate(table, FAST, experts_mask=np.ones(table.n_experts, dtype=bool))
    assert np.array_equal(full.logits(x), gate.logits(x))
    other_seed = train_gate(table, dataclasses.replace(FAST, seed=1))
    assert not np.array_equal(other_seed.logits(x), gate.logits(x))


def test_subset_gate_covers_only_its_experts(table: CalibrationTable, gate: TrainedGate) -> None:
    mask = np.array([True, False, True, False, True])
    sub = train_gate(table, dataclasses.replace(FAST, max_epochs=5), experts_mask=mask)
    assert sub.experts == (table.experts[0], table.experts[2], table.experts[4])
    assert sub.logits(table.embeddings[:7]).shape == (7, 3)
    assert np.allclose(sub.prior, gate.prior[mask])  # the prior is per expert, fitted on TRAIN


def test_train_gate_rejects_unusable_input(table: CalibrationTable) -> None:
    no_val = dataclasses.replace(
        table, split=np.where(table.split == VALIDATION, TRAIN, table.split).astype(np.int8)
    )
    with pytest.raises(GateError, match="no validation rows"):
        train_gate(no_val, FAST)
    no_train = dataclasses.replace(table, split=np.full(table.n_samples, TEST, dtype=np.int8))
    with pytest.raises(GateError, match="no train rows"):
        train_gate(no_train, FAST)
    with pytest.raises(GateError, match="selects no expert"):
        train_gate(table, FAST, experts_mask=np.zeros(table.n_experts, dtype=bool))
    with pytest.raises(GateError, match=r"experts_mask must be a bool array of shape \(5,\)"):
        train_gate(table, FAST, experts_mask=np.ones(3, dtype=bool))
    with pytest.raises(GateError, match="needs a CalibrationTable"):
        train_gate("table.npz", FAST)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [("hidden_dim", 0), ("dropout", 1.0), ("lr", 0.0), ("batch_size", 0), ("patience", 0)],
)
def test_gate_config_names_the_bad_field(field: str, value: Any) -> None:
    with pytest.raises(GateError, match=f"GateConfig.{field}="):
        GateConfig(**{field: value})


def test_trained_gate_logits_reject_wrong_dim(gate: TrainedGate) -> None:
    with pytest.raises(GateError, match=r"embeddings must be \(M, 24\).*\(3, 16\)"):
        gate.logits(np.zeros((3, 16), dtype=np.float32))


# --------------------------------------------------------------------------- ONNX export and runtime


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_onnx_logits_match_torch(
    table: CalibrationTable, gate: TrainedGate, onnx_path: Path, batch: int
) -> None:
    runtime = OnnxGate.load(onnx_path)
    x = table.embeddings[-batch:]
    got = runtime.logits(x)
    assert got.shape == (batch, table.n_experts) and got.dtype == np.float32
    assert np.abs(got - gate.logits(x)).max() <= 1e-4


def test_manifest_round_trips(gate: TrainedGate, onnx_path: Path) -> None:
    runtime = OnnxGate.load(onnx_path, intra_op_num_threads=2)
    assert runtime.experts == gate.experts
    assert np.array_equal(runtime.prior, gate.prior)  # JSON floats round-trip exactly
    assert gate.temperature is not None and np.array_equal(runtime.temperature, gate.temperature)
    assert runtime.embedding_dim == gate.embedding_dim
    assert json.loads(runtime.manifest[META_PREFIX + "gate_config"]) == dataclasses.asdict(
        gate.config
    )
    assert float(runtime.manifest[META_PREFIX + "best_val_nll"]) == gate.best_val_nll
    model = onnx.load(str(onnx_path))
    assert not any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
    assert [p.name for p in onnx_path.parent.iterdir()] == ["gate.onnx"]  # no temp file left
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.dim_value  # the batch stayed dynamic


def test_runtime_weights_are_masked(table: CalibrationTable, onnx_path: Path) -> None:
    runtime = OnnxGate.load(onnx_path)
    mask = np.array([False, True, True, False, True])
    w = runtime.weights(table.embeddings[:9], mask)
    assert np.allclose(w.sum(axis=1), 1.0) and (w[:, ~mask] == 0).all()
    assert np.allclose(runtime.weights(table.embeddings[:9]).sum(axis=1), 1.0)
    assert runtime.logits(np.zeros((0, 24), dtype=np.float32)).shape == (0, 5)


def test_runtime_rejects_wrong_embedding_dim(onnx_path: Path) -> None:
    runtime = OnnxGate.load(onnx_path)
    with pytest.raises(
        GateError, match=r"gate\.onnx: embeddings must be \(M, 24\), got shape \(2, 384\)"
    ):
        runtime.logits(np.zeros((2, 384), dtype=np.float32))


def test_runtime_load_errors_name_the_file(onnx_path: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(GateError, match=r"nope\.onnx: gate ONNX file not found"):
        OnnxGate.load(missing)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf")
    with pytest.raises(GateError, match=r"garbage\.onnx: not a loadable ONNX model"):
        OnnxGate.load(garbage)

    model = onnx.load(str(onnx_path))
    bare = tmp_path / "bare.onnx"
    kept = [p for p in model.metadata_props if p.key != META_PREFIX + "prior"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(bare))
    with pytest.raises(GateError, match=r"bare\.onnx: gate manifest lacks .*edge_moe\.prior"):
        OnnxGate.load(bare)

    model = onnx.load(str(onnx_path))
    for p in model.metadata_props:
        if p.key == META_PREFIX + "format_version":
            p.value = "99"
    future = tmp_path / "future.onnx"
    onnx.save(model, str(future))
    with pytest.raises(GateError, match=r"future\.onnx: edge_moe\.format_version='99'"):
        OnnxGate.load(future)


def test_old_records_without_temperatures_load_with_t_1(onnx_path: Path, tmp_path: Path) -> None:
    model = onnx.load(str(onnx_path))
    kept = [p for p in model.metadata_props if p.key != META_PREFIX + "temperature"]
    assert len(kept) == len(model.metadata_props) - 1  # the new record has the key
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    runtime = OnnxGate.load(old)
    assert np.array_equal(runtime.temperature, np.ones(runtime.n_experts))

    for bad in ("[1.0, 2.0]", "[1, 1, 1, 1, 0]", '"x"', "[1, 1, 1, 1, NaN]"):
        model = onnx.load(str(onnx_path))
        for p in model.metadata_props:
            if p.key == META_PREFIX + "temperature":
                p.value = bad
        broken = tmp_path / "broken.onnx"
        onnx.save(model, str(broken))
        with pytest.raises(GateError, match=r"broken\.onnx: .*(temperature|malformed)"):
            OnnxGate.load(broken)


def test_serving_modules_do_not_import_torch() -> None:
    code = "import edge_moe.runtime.gate, gating.planning.mixture, gating.planning.temperature, gating.planning.guard, gating.coordinator.aggregate, sys; assert 'torch' not in sys.modules, 'torch imported'"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_masked_training_loss_equals_numpy_subset_nll(table: CalibrationTable, gate: TrainedGate) -> None:
    """The subset-dropout loss is the same masked mixture NLL the planner evaluates."""
    import torch

    from gating.planning.gate import _label_logprobs, mixture_nll

    val = table.split_rows(VALIDATION)
    logits = gate.logits(val.embeddings)
    lp = _calibrated(val.logprobs, gate)
    label_lp = _label_logprobs(val, gate.prior, gate.temperature)
    for s in ([0, 2], [1], [0, 1, 3, 4]):
        mask = np.zeros(table.n_experts, dtype=bool)
        mask[s] = True
        r = evaluate_subset(logits, lp, val.labels, val.categories, val.category_names, mask)
        rows = torch.from_numpy(np.tile(mask, (len(val.labels), 1)))  # (M, N) same subset per row
        got = float(mixture_nll(torch.from_numpy(logits), label_lp, rows))
        assert got == pytest.approx(r.nll, abs=1e-5), s


def test_subset_dropout_is_configurable_and_validated() -> None:
    assert GateConfig().subset_dropout == 0.5
    with pytest.raises(GateError, match=r"GateConfig.subset_dropout=1.5 must be in \[0, 1\]"):
        GateConfig(subset_dropout=1.5)
