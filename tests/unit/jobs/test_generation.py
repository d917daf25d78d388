"""The generation cost model: plan, measure, fit, and the profiles built from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_moe.cli import app
from edge_moe.config import load_device_classes
from edge_moe.errors import ArtifactError, ConfigError, DataFormatError
from edge_moe.jobs.calibrate import load_latency
from edge_moe.jobs.generation import (
    GenerationCall,
    fit_generation,
    generation_figures,
    generation_plan,
    measure_generation,
    parse_calls,
)
from edge_moe.jobs.profile import Placement, build_profiles
from edge_moe.profiles import load_profiles
from edge_moe.runtime.toy import ToyExpert

REPO = Path(__file__).resolve().parents[3]
PREFILL = {"stem": 120.0, "other": 200.0}  # the prompt's length differs by category
PER_TOKEN = 15.0


def _calls(noise: float = 0.0, seed: int = 0, eos_at: int | None = None) -> list[GenerationCall]:
    """Timings of a known model: ms = PREFILL[c] + n * PER_TOKEN, times (1 + noise), with n the
    tokens a call *returned* (``eos_at``: every long call stops there)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in PREFILL:
        for t in (1, 1, 1, 16, 16):
            n = min(t, eos_at) if eos_at else t
            ms = (PREFILL[c] + n * PER_TOKEN) * (1 + noise * abs(rng.normal()))
            out.append(GenerationCall(c, t, n, ms))
    return out


def test_fit_recovers_known_prefill_and_per_token() -> None:
    fit = fit_generation(_calls())
    assert fit.slope_fitted and fit.n_calls == 10
    for c in PREFILL:
        assert fit.prefill_ms[c] == pytest.approx(PREFILL[c]) and fit.per_token_ms[c] == pytest.approx(PER_TOKEN)
    assert fit.margin == pytest.approx(1.0)  # exact data: no margin
    # early EOS: the fit uses the tokens returned, not max_new_tokens, and still recovers the model
    eos = fit_generation(_calls(eos_at=6))
    assert eos.per_token_ms["stem"] == pytest.approx(PER_TOKEN) and eos.prefill_ms["other"] == pytest.approx(200.0)


def test_fit_margin_is_p95_like() -> None:
    calls = _calls(noise=0.2, seed=1) + _calls(noise=0.2, seed=2)
    fit = fit_generation(calls)
    assert fit.margin > 1.0
    covered = np.mean([c.ms <= fit.latency_ms(c.category, c.n_tokens) for c in calls])
    assert covered >= 0.9  # ~95% of calls at or under the prediction
    mean = fit_generation(calls, quantile=None)
    assert mean.margin == 1.0 and mean.prefill_ms == fit.prefill_ms  # the margin scales, the fit is shared
    median = fit_generation(calls, quantile=50)
    assert 0.9 < median.margin < fit.margin


def test_fit_without_token_spread_charges_prefill_as_a_token() -> None:
    calls = [GenerationCall("x", 1, 1, 10.0), GenerationCall("x", 16, 1, 14.0), GenerationCall("y", 8, 0, 6.0)]
    fit = fit_generation(calls, quantile=None)
    assert not fit.slope_fitted
    assert fit.prefill_ms["x"] == fit.per_token_ms["x"] == pytest.approx(12.0 / 2)  # mean 12 ms over n + 1 = 2
    assert fit.prefill_ms["y"] == fit.per_token_ms["y"] == pytest.approx(6.0)  # EOS at once: n + 1 = 1
    with pytest.raises(DataFormatError, match="no timed generate calls"):
        fit_generation([])


def test_figures_energy_and_projection() -> None:
    fit = fit_generation(_calls(noise=0.1))
    here = generation_figures(fit, 15.0)
    s = here["stem"]
    assert s.prefill_ms.value == pytest.approx(fit.prefill_ms["stem"] * fit.margin, abs=1e-3)
    assert s.per_token_ms.value == pytest.approx(fit.per_token_ms["stem"] * fit.margin, abs=1e-3)
    assert s.prefill_j.value == pytest.approx(15.0 * fit.prefill_ms["stem"] / 1e3, rel=1e-5)  # busy W x fitted s
    assert s.j_per_token.value == pytest.approx(15.0 * fit.per_token_ms["stem"] / 1e3, rel=1e-5)
    assert (s.prefill_ms.source, s.prefill_j.source) == ("measured", "modelled")
    floored = generation_figures(fit, 15.0, min_margin={"stem": fit.margin * 2, "other": 0.5})
    assert floored["stem"].prefill_ms.value == pytest.approx(2 * s.prefill_ms.value, abs=2e-3)
    assert floored["stem"].prefill_j == s.prefill_j and floored["other"] == here["other"]  # a floor, J untouched
    far = generation_figures(fit, 30.0, speed=4.0, projected=True)["other"]
    assert far.per_token_ms.value == pytest.approx(here["other"].per_token_ms.value / 4, abs=1e-3)
    assert far.j_per_token.value == pytest.approx(30.0 * fit.per_token_ms["other"] / 4 / 1e3, rel=1e-5)
    assert {getattr(far, k).source for k in ("prefill_ms", "per_token_ms", "prefill_j", "j_per_token")} == {
        "projected"}


def test_plan_and_measure_a_toy_expert() -> None:
    plan = generation_plan({"a": ["p1", "p2"], "b": ["p3"]}, 8)
    assert [(p.category, p.prompt, p.max_new_tokens) for p in plan] == [
        ("a", "p1", 1), ("a", "p2", 1), ("b", "p3", 1), ("a", "p1", 8), ("b", "p3", 8)]
    assert len(generation_plan({"a": ["p1", "p2"], "b": ["p3"]}, 8, long_calls=3)) == 6
    with pytest.raises(ConfigError, match="must be > 1"):
        generation_plan({"a": ["p"]}, 1)
    calls = measure_generation(ToyExpert("t", delay_ms=2.0), plan)
    assert [c.n_tokens for c in calls] == [1] * 5  # a toy always makes one 'token'
    assert all(c.ms >= 2.0 for c in calls)  # the delay is inside the timed call
    fit = fit_generation(calls)
    assert not fit.slope_fitted and fit.prefill_ms["a"] >= 1.0

    class Liar:
        def generate(self, prompt: str, max_new_tokens: int = 1) -> Any:
            return type("G", (), {"text": "x", "n_tokens": max_new_tokens + 1})()

    with pytest.raises(ArtifactError, match="n_tokens=2"):
        measure_generation(Liar(), plan[:1], warmup=False)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([], "calls must be a non-empty list"),
        ([{"category": "a", "max_new_tokens": 4, "n_tokens": 5, "ms": 1.0}], "calls[0].n_tokens=5 must be"),
        ([{"category": "a", "max_new_tokens": 0, "n_tokens": 0, "ms": 1.0}], "calls[0].max_new_tokens=0"),
        ([{"category": "a", "max_new_tokens": 4, "n_tokens": 2, "ms": -1}], "calls[0].ms=-1 must be"),
        ([{"category": "", "max_new_tokens": 4, "n_tokens": 2, "ms": 1}], "calls[0].category=''"),
        ([{"category": "a", "max_new_tokens": 4, "n_tokens": 2, "ms": 1, "tps": 3}], "calls[0]={"),
    ],
)
def test_bad_calls_named(bad: Any, message: str) -> None:
    with pytest.raises(DataFormatError) as exc:
        parse_calls(bad, "f.json: calls")
    assert str(exc.value).startswith("f.json: " + message) or message in str(exc.value), str(exc.value)


def _latency_doc(with_generation: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {"format": "edge-moe-latency/1", "n_samples": 10, "what": "x", "experts": {}}
    for e in ("a", "b"):
        d: dict[str, Any] = {"categories": {c: {"n": 5, "p50_ms": 100.0, "p95_ms": 150.0, "mean_ms": 110.0,
                                                "mean_tokens": 80} for c in PREFILL}}
        if with_generation or e == "a":
            d["generation"] = {"what": "x", "calls": [c.to_json() for c in _calls(noise=0.1)]}
        doc["experts"][e] = d
    return doc


def test_profiles_from_a_latency_document(tmp_path: Path) -> None:
    classes = load_device_classes(REPO / "configs" / "device_classes.yaml")
    cpu, orin = classes["cpu"], classes["jetson-agx-orin"]
    lat = tmp_path / "t.latency.json"
    lat.write_text(json.dumps(_latency_doc(True)))
    prof = build_profiles(load_latency(lat), {"a": Placement("n1", cpu), "b": Placement("n2", orin)}, cpu)
    gen = prof.generation_arrays(["a", "b"], ["stem", "other"])
    assert gen is not None and "SCORING-ONLY" not in prof.note
    fit = fit_generation(_calls(noise=0.1))
    speed = orin.throughput_factor / cpu.throughput_factor
    # the margin is at least the scoring p95 / mean (150 / 110 ms here), more than these calls' own
    assert fit.margin < 150 / 110
    scale = 150 / 110 / fit.margin
    assert gen.latency_ms(16)[0, 0] == pytest.approx(fit.latency_ms("stem", 16) * scale, abs=0.05)
    assert gen.latency_ms(16)[1, 1] == pytest.approx(fit.latency_ms("other", 16) * scale / speed, abs=0.05)
    assert gen.energy_j(8)[1, 0] == pytest.approx(
        orin.power_busy_w * (fit.prefill_ms["stem"] + 8 * fit.per_token_ms["stem"]) / speed / 1e3, rel=1e-4)
    assert prof.sources()["generation"] == ["measured", "modelled", "projected"]
    # the CLI writes it, and it round-trips
    out = tmp_path / "profiles.json"
    res = CliRunner().invoke(app, ["profile", str(lat), "--out", str(out), "--device-class", "cpu"])
    assert res.exit_code == 0, res.output
    assert load_profiles(out).generation_arrays(["b", "a"], ["other", "stem"]) is not None
    assert "scoring-only" not in res.output
    # a document without timed calls for b still builds, scoring-only for b, and says so
    lat.write_text(json.dumps(_latency_doc(False)))
    prof = build_profiles(load_latency(lat), {"a": Placement("n1", cpu), "b": Placement("n2", cpu)}, cpu)
    assert prof.generation_arrays(["a", "b"], ["stem"]) is None and prof.generation_missing(["a", "b"]) == ["b"]
    assert "SCORING-ONLY: experts ['b']" in prof.note
    res = CliRunner().invoke(app, ["profile", str(lat), "--out", str(out), "--device-class", "cpu"])
    assert res.exit_code == 0 and "experts ['b'] have no generation cost model" in res.output, res.output
    # bad calls in the latency document are named
    doc = _latency_doc(True)
    doc["experts"]["b"]["generation"]["calls"][3]["ms"] = float("nan")
    lat.write_text(json.dumps(doc))
    with pytest.raises(DataFormatError, match=r"experts\.b\.generation\.calls\[3\]\.ms=nan"):
        load_latency(lat)
    doc["experts"]["b"]["generation"]["calls"][3].update(ms=1.0, category="art")
    lat.write_text(json.dumps(doc))
    with pytest.raises(DataFormatError, match=r"calls\[3\]\.category='art' is not one of its categories"):
        load_latency(lat)
