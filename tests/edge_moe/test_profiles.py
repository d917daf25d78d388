"""Profiles JSON format: round trip, alignment, and precise errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_moe.errors import DataFormatError
from edge_moe.profiles import load_profiles, parse_profiles, save_profiles

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "configs" / "example" / "profiles.synthetic.json"


def _doc() -> dict:  # type: ignore[type-arg]
    return {
        "format": "edge-moe-profiles/1",
        "aggregation_ms": 1.5,
        "experts": {
            "a": {"node": "n1", "latency_ms": {"x": {"value": 10, "source": "measured"},
                                               "y": {"value": 20, "source": "measured"}},
                  "energy_j": {"x": {"value": 0.1, "source": "modelled"},
                               "y": {"value": 0.2, "source": "modelled"}}},
            "b": {"node": "n2", "latency_ms": {"x": {"value": 30, "source": "projected"},
                                               "y": {"value": 40, "source": "projected"}},
                  "energy_j": {"x": {"value": 0.3, "source": "modelled"},
                               "y": {"value": 0.4, "source": "modelled"}}},
        },
    }


def test_arrays_in_requested_order_and_round_trip(tmp_path: Path) -> None:
    prof = parse_profiles(_doc())
    lat, en = prof.arrays(["b", "a"], ["y", "x"])
    np.testing.assert_array_equal(lat, [[40, 30], [20, 10]])
    np.testing.assert_array_equal(en, [[0.4, 0.3], [0.2, 0.1]])
    assert prof.sources() == {"latency_ms": ["measured", "projected"], "energy_j": ["modelled"]}
    back = load_profiles(save_profiles(prof, tmp_path / "p.json"))
    assert back.to_json() == prof.to_json()


def test_example_profiles_load() -> None:
    prof = load_profiles(EXAMPLE)
    assert len(prof.names) == 6 and "synthetic" in prof.note


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["experts"]["a"]["latency_ms"].update(x={"value": float("nan"), "source": "measured"}),
         "experts.a.latency_ms.x.value=nan must be a finite number >= 0"),
        (lambda d: d["experts"]["a"]["latency_ms"].update(x={"value": -1, "source": "measured"}),
         "experts.a.latency_ms.x.value=-1 must be a finite number >= 0"),
        (lambda d: d["experts"]["b"]["energy_j"].update(y={"value": 1, "source": "guessed"}),
         "experts.b.energy_j.y.source='guessed' must be one of ['measured', 'modelled', 'projected']"),
        (lambda d: d["experts"]["b"]["energy_j"].update(y=0.4), "experts.b.energy_j.y=0.4 must be an object"),
        (lambda d: d["experts"]["b"]["energy_j"].pop("y"), "experts.b.energy_j lacks categories ['y']"),
        (lambda d: d["experts"]["a"].pop("node"), "experts.a: missing 'node'"),
        (lambda d: d.update(aggregation_ms="fast"), "aggregation_ms='fast' must be a finite number >= 0"),
        (lambda d: d.update(format="v0"), "format='v0', expected 'edge-moe-profiles/1'"),
        (lambda d: d.update(speed=1), "unknown keys ['speed']"),
    ],
)
def test_bad_profiles_named(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    d = _doc()
    mutate(d)
    p = tmp_path / "prof.json"
    p.write_text(json.dumps(d))
    with pytest.raises(DataFormatError) as exc:
        load_profiles(p)
    assert str(exc.value).startswith(f"{p}: "), str(exc.value)
    assert message in str(exc.value)


def test_missing_file_bad_json_and_unknown_expert(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="profiles file not found"):
        load_profiles(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="not valid JSON"):
        load_profiles(tmp_path / "bad.json")
    with pytest.raises(DataFormatError, match="expert 'zed' has no profile"):
        parse_profiles(_doc()).arrays(["zed"], ["x"])
    with pytest.raises(DataFormatError, match="has no figure for category 'w'"):
        parse_profiles(_doc()).arrays(["a"], ["w"])
