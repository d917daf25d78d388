"""Profiles JSON format: round trip, alignment, and precise errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_moe.errors import DataFormatError
from edge_moe.profiles import load_profiles, parse_profiles, save_profiles

REPO = Path(__file__).resolve().parents[3]
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


# ---------------------------------------------------------------- the generation cost model


def _gen(pre: float, tok: float, pre_j: float, tok_j: float, src: str = "measured") -> dict:  # type: ignore[type-arg]
    en = "modelled" if src == "measured" else src
    return {"prefill_ms": {"value": pre, "source": src}, "per_token_ms": {"value": tok, "source": src},
            "prefill_j": {"value": pre_j, "source": en}, "j_per_token": {"value": tok_j, "source": en}}


def _gen_doc() -> dict:  # type: ignore[type-arg]
    d = _doc()
    d["experts"]["a"]["generation"] = {"x": _gen(100, 10, 1.0, 0.1), "y": _gen(120, 10, 1.2, 0.1)}
    d["experts"]["b"]["generation"] = {"x": _gen(300, 30, 3.0, 0.3, "projected"),
                                       "y": _gen(340, 30, 3.4, 0.3, "projected")}
    return d


def test_generation_round_trip_order_and_arithmetic(tmp_path: Path) -> None:
    prof = parse_profiles(_gen_doc())
    gen = prof.generation_arrays(["b", "a"], ["y", "x"])
    assert gen is not None and prof.generation_missing(["a", "b"]) == []
    np.testing.assert_array_equal(gen.prefill_ms, [[340, 300], [120, 100]])
    np.testing.assert_array_equal(gen.per_token_ms, [[30, 30], [10, 10]])
    # by hand: b on y with 8 tokens is 340 + 8 * 30 ms and 3.4 + 8 * 0.3 J
    lat, en = gen.latency_ms(8), gen.energy_j(8)
    assert lat.shape == en.shape == (2, 2) and lat.dtype == np.float64
    assert lat[0, 0] == 340 + 8 * 30 and lat[1, 1] == 100 + 8 * 10
    assert en[0, 0] == pytest.approx(3.4 + 8 * 0.3) and en[1, 0] == pytest.approx(1.2 + 8 * 0.1)
    np.testing.assert_allclose(gen.latency_ms(1), gen.prefill_ms + gen.per_token_ms)
    assert prof.sources()["generation"] == ["measured", "modelled", "projected"]
    back = load_profiles(save_profiles(prof, tmp_path / "p.json"))
    assert back.to_json() == prof.to_json() == _gen_doc() | {"categories": ["x", "y"], "note": ""}
    assert back.expert("a").generation["y"].prefill_j.value == 1.2


def test_generation_bad_tokens_and_shapes() -> None:
    from edge_moe.errors import SelectionError
    from edge_moe.profiles import GenerationCosts

    gen = parse_profiles(_gen_doc()).generation_arrays(["a"], ["x"])
    assert gen is not None
    for bad in (0, -3, 2.5, True):
        with pytest.raises(SelectionError, match="max_new_tokens"):
            gen.latency_ms(bad)  # type: ignore[arg-type]
    with pytest.raises(DataFormatError, match="one \\(N, C\\) shape"):
        GenerationCosts(np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 3)), np.zeros((2, 2)))


def test_old_files_have_no_generation_model(tmp_path: Path) -> None:
    prof = load_profiles(EXAMPLE)  # written before the generation model existed
    assert prof.generation_arrays(prof.names, prof.categories) is None
    assert prof.generation_missing(prof.names) == list(prof.names)
    assert "generation" not in prof.sources() and "generation" not in json.dumps(prof.to_json())
    # one expert (or one category) short is enough for None, and generation_missing names it
    d = _gen_doc()
    del d["experts"]["b"]["generation"]["y"]
    p = parse_profiles(d)
    assert p.generation_arrays(["a", "b"], ["x", "y"]) is None and p.generation_missing(["a", "b"]) == ["b"]
    assert p.generation_arrays(["a", "b"], ["x"]) is not None and p.generation_missing(["b"], ["x"]) == []
    with pytest.raises(DataFormatError, match="expert 'zed' has no profile"):
        p.generation_missing(["zed"])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda g: g["x"]["per_token_ms"].update(value=float("nan")),
         "experts.a.generation.x.per_token_ms.value=nan must be a finite number >= 0"),
        (lambda g: g["x"]["prefill_j"].update(source="guessed"),
         "experts.a.generation.x.prefill_j.source='guessed' must be one of"),
        (lambda g: g["y"].pop("j_per_token"), "experts.a.generation.y: missing ['j_per_token']"),
        (lambda g: g["y"].update(tokens_per_s=3), "experts.a.generation.y: unknown keys ['tokens_per_s']"),
        (lambda g: g["x"].update(prefill_ms=12.0), "experts.a.generation.x.prefill_ms=12.0 must be an object"),
        (lambda g: g.update(z=g["x"]), "experts.a.generation.z: 'z' is not a category of this expert's latency_ms"),
        (lambda g: g.update(x=[1, 2]), "experts.a.generation.x=[1, 2] must be an object of"),
        (lambda g: g.clear(), "experts.a.generation must be a non-empty object"),
    ],
)
def test_bad_generation_named(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    d = _gen_doc()
    mutate(d["experts"]["a"]["generation"])
    p = tmp_path / "prof.json"
    p.write_text(json.dumps(d))
    with pytest.raises(DataFormatError) as exc:
        load_profiles(p)
    assert str(exc.value).startswith(f"{p}: "), str(exc.value)
    assert message in str(exc.value)
