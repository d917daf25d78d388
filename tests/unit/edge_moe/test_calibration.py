"""Calibration table format: round trip, and precise errors for every malformed input."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge_moe.calibration import CalibrationTable, load_calibration, save_calibration
from edge_moe.errors import DataFormatError
from gating.offline.synthetic import make_synthetic_table


@pytest.fixture(scope="module")
def table() -> CalibrationTable:
    return make_synthetic_table(n_samples=60, n_experts=3, seed=3)[0]


def test_round_trip(tmp_path: Path, table: CalibrationTable) -> None:
    p = save_calibration(table, tmp_path / "t.npz")
    back = load_calibration(p)
    for key in ("logprobs", "labels", "categories", "embeddings", "split"):
        np.testing.assert_array_equal(getattr(back, key), getattr(table, key))
        assert getattr(back, key).dtype == getattr(table, key).dtype
    assert back.experts == table.experts and back.category_names == table.category_names
    assert [f.name for f in tmp_path.iterdir()] == ["t.npz"]  # no temp file left behind


def test_padding_with_minus_inf_is_allowed(table: CalibrationTable) -> None:
    lp = table.logprobs.copy()
    rows = table.labels != 3
    lp[rows, :, 3] = -np.inf
    t = replace(table, logprobs=lp)
    assert np.isneginf(t.logprobs).any()


def _arrays(table: CalibrationTable) -> dict[str, np.ndarray]:
    return {
        "logprobs": table.logprobs, "labels": table.labels, "categories": table.categories,
        "category_names": np.array(table.category_names), "experts": np.array(table.experts),
        "embeddings": table.embeddings, "split": table.split,
    }


@pytest.mark.parametrize(
    ("key", "bad", "message"),
    [
        ("logprobs", lambda a: a.astype(np.float64), "'logprobs' must be float32, got float64"),
        ("logprobs", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 7, np.nan, a).astype(np.float32),
         "'logprobs' contains NaN (first at sample 0, expert 1, option 3)"),
        ("logprobs", lambda a: a[:, :, 0], "must be a 3-d (M, N, K) array"),
        ("labels", lambda a: a.astype(np.int32), "'labels' must be int64, got int32"),
        ("labels", lambda a: a + 10, "'labels' values must be in [0, 4)"),
        ("labels", lambda a: a[:-1], "'labels' must have shape (60,)"),
        ("split", lambda a: (a + 5).astype(np.int8), "'split' values must be 0 (train), 1 (validation) or 2 (test)"),
        ("categories", lambda a: a + 99, "'categories' values must be in [0, 4)"),
        ("experts", lambda a: a[:2], "'experts' must name 3 experts"),
        ("embeddings", lambda a: np.full_like(a, np.inf), "'embeddings' contains NaN or inf"),
    ],
)
def test_bad_arrays_named(tmp_path: Path, table: CalibrationTable, key: str, bad, message: str) -> None:  # type: ignore[no-untyped-def]
    arrays = _arrays(table)
    arrays[key] = bad(arrays[key])
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(DataFormatError) as exc:
        load_calibration(p)
    assert str(exc.value).startswith(f"{p}: "), str(exc.value)
    assert message in str(exc.value)


def test_missing_label_option_rejected(tmp_path: Path, table: CalibrationTable) -> None:
    arrays = _arrays(table)
    lp = arrays["logprobs"].copy()
    lp[5, 2, table.labels[5]] = -np.inf
    arrays["logprobs"] = lp
    np.savez(tmp_path / "x.npz", **arrays)
    with pytest.raises(DataFormatError, match="sample 5: the labelled option .* is -inf"):
        load_calibration(tmp_path / "x.npz")


def test_missing_key_missing_file_and_garbage(tmp_path: Path, table: CalibrationTable) -> None:
    with pytest.raises(DataFormatError, match="calibration table not found"):
        load_calibration(tmp_path / "absent.npz")
    arrays = _arrays(table)
    del arrays["split"]
    np.savez(tmp_path / "nosplit.npz", **arrays)
    with pytest.raises(DataFormatError, match=r"missing keys \['split'\]"):
        load_calibration(tmp_path / "nosplit.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(DataFormatError, match="not a readable calibration .npz"):
        load_calibration(tmp_path / "junk.npz")


def test_select_experts_and_rows(table: CalibrationTable) -> None:
    sub = table.select_experts([table.experts[2], table.experts[0]])
    np.testing.assert_array_equal(sub.logprobs[:, 0], table.logprobs[:, 2])
    with pytest.raises(DataFormatError, match="not in the calibration table"):
        table.select_experts(["nobody"])
    assert table.split_rows(0).n_samples == int((table.split == 0).sum())
