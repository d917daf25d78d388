"""The committed example data is exactly what its committed script makes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge_moe.calibration import load_calibration
from gating.offline.synthetic import write_example

EXAMPLE = Path(__file__).resolve().parents[4] / "configs" / "example"


def test_committed_example_is_reproducible(tmp_path: Path) -> None:
    cal, prof = write_example(str(tmp_path), seed=0)
    fresh, committed = load_calibration(cal), load_calibration(EXAMPLE / "calibration.synthetic.npz")
    for key in ("logprobs", "labels", "categories", "embeddings", "split"):
        np.testing.assert_array_equal(getattr(fresh, key), getattr(committed, key), err_msg=key)
    assert fresh.experts == committed.experts
    assert all("synth" in e for e in committed.experts)
    assert json.loads(Path(prof).read_text()) == json.loads((EXAMPLE / "profiles.synthetic.json").read_text())


def test_example_has_every_split_and_category() -> None:
    t = load_calibration(EXAMPLE / "calibration.synthetic.npz")
    assert set(np.unique(t.split)) == {0, 1, 2}
    assert set(np.unique(t.categories)) == set(range(t.n_categories))
