"""gating.planning.inputs: the profiles' generation cost model, aligned like the scoring costs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gating.offline.synthetic import write_toy_inputs
from gating.planning.inputs import load_inputs


def _gen(pre: float, tok: float) -> dict:  # type: ignore[type-arg]
    return {"prefill_ms": {"value": pre, "source": "measured"}, "per_token_ms": {"value": tok, "source": "measured"},
            "prefill_j": {"value": pre / 100, "source": "modelled"},
            "j_per_token": {"value": tok / 100, "source": "modelled"}}


def test_generation_costs_in_gate_and_table_order(tmp_path: Path) -> None:
    table, cal, prof, gate = write_toy_inputs(tmp_path, n_experts=3, embedding_dim=8, seed=1, n_samples=120,
                                              n_categories=2)
    plain = load_inputs(cal, prof, gate)
    assert plain.generation is None and plain.generation_missing == plain.experts  # an old file: none
    assert "lack a generation cost model" in plain.generation_message and str(prof) in plain.generation_message
    doc = json.loads(prof.read_text())
    # the file lists experts and categories in reverse: the inputs must put them back in order
    doc["experts"] = dict(reversed(list(doc["experts"].items())))
    doc["categories"] = list(reversed(doc["categories"]))
    for i, e in enumerate(table.experts):
        doc["experts"][e]["generation"] = {c: _gen(100.0 * (i + 1) + j, float(i + 1))
                                           for j, c in enumerate(table.category_names)}
    prof.write_text(json.dumps(doc))
    inputs = load_inputs(cal, prof, gate)
    assert inputs.generation is not None and inputs.generation_missing == () and inputs.generation_message == ""
    n, c = len(inputs.experts), len(inputs.categories)
    assert inputs.generation.prefill_ms.shape == inputs.latency_ms.shape == (n, c)
    want = np.array([[100.0 * (table.experts.index(e) + 1) + table.category_names.index(k) + 8 * (
        table.experts.index(e) + 1) for k in inputs.categories] for e in inputs.experts])
    np.testing.assert_allclose(inputs.generation.latency_ms(8), want)
    np.testing.assert_allclose(inputs.generation.energy_j(8), want / 100)
    # one expert without it: None, and the message names it
    del doc["experts"][table.experts[1]]["generation"]
    prof.write_text(json.dumps(doc))
    inputs = load_inputs(cal, prof, gate)
    assert inputs.generation is None and inputs.generation_missing == (table.experts[1],)
    assert repr([table.experts[1]]) in inputs.generation_message


# --------------------------------------------------------------------------- calibration and objectives


def _with_temperature(gate: Path, out: Path, temperature: list[float] | None) -> Path:
    """A copy of a gate.onnx whose record carries these temperatures (None: no key, an old record)."""
    import onnx

    model = onnx.load(str(gate))
    kept = [p for p in model.metadata_props if p.key != "edge_moe.temperature"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    if temperature is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = "edge_moe.temperature", json.dumps(temperature)
    onnx.save(model, str(out))
    return out


def test_inputs_apply_the_records_prior_then_temperature(tmp_path: Path) -> None:
    from gating.planning.mixture import apply_prior_correction
    from gating.planning.temperature import apply_temperature

    table, cal, prof, gate = write_toy_inputs(tmp_path, n_experts=3, embedding_dim=8, seed=2, n_samples=150,
                                              n_categories=2)
    old = load_inputs(cal, prof, _with_temperature(gate, tmp_path / "old.onnx", None))
    assert np.array_equal(old.gate.temperature, np.ones(3))
    raw = table.select_experts(list(old.experts)).logprobs
    corrected = apply_prior_correction(raw, old.gate.prior)
    np.testing.assert_allclose(old.table.logprobs, corrected, atol=1e-6)  # T = 1 changes nothing
    t = [2.0, 0.5, 1.0]
    new = load_inputs(cal, prof, _with_temperature(gate, tmp_path / "new.onnx", t))
    assert new.prior_corrected is not None
    np.testing.assert_allclose(new.prior_corrected, corrected, atol=1e-6)
    np.testing.assert_allclose(new.table.logprobs, apply_temperature(corrected, np.array(t)), atol=1e-5)
    assert not np.allclose(new.table.logprobs, old.table.logprobs)


def test_make_objective_by_name_and_on_folds(tmp_path: Path) -> None:
    import pytest

    from edge_moe.calibration import TRAIN, VALIDATION
    from edge_moe.errors import ConfigError
    from gating.planning.crossval import cross_validated_rows, fold_ids
    from gating.planning.inputs import make_objective
    from gating.planning.mixture import masked_gate_weights, select_top_k
    from gating.planning.temperature import apply_temperature, fit_temperature

    _, cal, prof, gate = write_toy_inputs(tmp_path, n_experts=3, embedding_dim=8, seed=4, n_samples=200,
                                          n_categories=2)
    inputs = load_inputs(cal, prof, gate)
    val = inputs.table.split == VALIDATION
    mask = np.array([True, False, True])
    w = select_top_k(masked_gate_weights(inputs.gate_logits[val], mask), top_k=1, mask=mask)  # (M, N)
    lp = inputs.table.logprobs[val].astype(np.float64)
    probs = np.einsum("mn,mnk->mk", w, np.exp(lp))  # (M, K) the mixture, by its definition
    labels = inputs.table.labels[val]
    want_ll = float(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12)).mean())
    want_acc = float((probs.argmax(axis=1) == labels).mean())
    assert make_objective(inputs, 1, None)(mask) == pytest.approx(want_ll)  # loglik is the default
    assert make_objective(inputs, 1, None, objective="accuracy")(mask) == pytest.approx(want_acc)
    with pytest.raises(ConfigError, match="unknown objective 'nll'"):
        make_objective(inputs, 1, None, objective="nll")
    with pytest.raises(ConfigError, match="folds=1"):
        make_objective(inputs, 1, None, folds=1)

    # k-fold CV: every train + validation row once, calibrated by temperatures fitted out of its fold
    rows = np.flatnonzero((inputs.table.split == TRAIN) | val)
    ids = fold_ids(rows.size, 3, seed=7)
    assert np.bincount(ids).max() - np.bincount(ids).min() <= 1
    logits, cv_lp, cv_labels = cross_validated_rows(inputs.gate_logits, inputs.prior_corrected, inputs.table.labels,
                                                    inputs.table.split, 3, seed=7)
    assert cv_lp.shape[0] == rows.size and np.array_equal(cv_labels, inputs.table.labels[rows])
    assert inputs.prior_corrected is not None
    pc = inputs.prior_corrected[rows].astype(np.float64)
    for f in range(3):
        held = ids == f
        t = fit_temperature(pc[~held], cv_labels[~held])
        np.testing.assert_allclose(cv_lp[held], apply_temperature(pc[held], t), atol=1e-5)
    f_cv = make_objective(inputs, 1, None, folds=3, seed=7)
    assert f_cv.row_scores(mask).shape == (rows.size,)
    assert f_cv(mask) == pytest.approx(float(f_cv.row_scores(mask).mean()))
