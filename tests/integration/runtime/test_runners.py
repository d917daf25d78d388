"""edge_moe.runtime.runners: torch-free import, the registry, and precise errors on bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_moe.errors import ArtifactError, ConfigError, RunnerError
from edge_moe.runtime.manifest import MANIFEST_VERSION
from edge_moe.runtime.runners import RUNNERS, OrtRunner, TrtRunner, make_runner


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from exporters.llm import export_decoder
    from exporters.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("runner")
    ckpt = make_tiny_checkpoint("llama", root / "ckpt", max_context=32)
    return export_decoder(ckpt, root / "artifact", name="tiny-llama")


@pytest.fixture()
def runner(artifact):
    return OrtRunner(artifact, intra_op_threads=1)


def _base_and_serving_modules() -> list[str]:
    """Every base module (edge_moe/*.py, edge_moe/runtime/*.py) and every serving-path module."""
    root = Path(__file__).resolve().parents[3]
    mods = [f"edge_moe.{f.stem}" for f in sorted((root / "edge_moe").glob("*.py")) if f.stem != "__init__"]
    mods += [f"edge_moe.runtime.{f.stem}" for f in sorted((root / "edge_moe" / "runtime").glob("*.py"))
             if f.stem != "__init__"]
    mods += [f"nodes.{f.stem}" for f in sorted((root / "nodes").glob("*.py")) if f.stem != "__init__"]
    mods += ["gating.coordinator", "gating.coordinator.routing", "gating.coordinator.registry", "gating.coordinator.aggregate"]
    return mods


def test_the_base_runtime_and_serving_path_import_no_torch():
    mods = _base_and_serving_modules()
    assert "edge_moe.runtime.runners" in mods and "edge_moe.runtime.gate" in mods and "nodes.server" in mods
    code = (
        f"import sys, importlib\nfor m in {mods!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_registry_and_unknown_runner(artifact):
    assert RUNNERS["onnxruntime"] is OrtRunner and RUNNERS["tensorrt"] is TrtRunner
    assert set(RUNNERS) == {"onnxruntime", "tensorrt", "llama.cpp"}
    assert isinstance(make_runner("onnxruntime", artifact), OrtRunner)
    with pytest.raises(
        ConfigError, match=r"unknown runner 'trt'; choose one of \['llama.cpp', 'onnxruntime', 'tensorrt'\]"
    ):
        make_runner("trt", artifact)


def test_tensorrt_runner_says_why_it_cannot_run(artifact):
    with pytest.raises(RunnerError, match="(?i)tensorrt"):
        TrtRunner(artifact)


def test_missing_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        OrtRunner(tmp_path / "nowhere")
    with pytest.raises(ArtifactError, match="manifest.json is missing"):
        OrtRunner(tmp_path)


def test_missing_model_file(artifact, tmp_path):
    broken = shutil.copytree(artifact, tmp_path / "a")
    (broken / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="model_file='model.onnx' is missing"):
        OrtRunner(broken)


def test_wrong_manifest_version(artifact, tmp_path):
    broken = shutil.copytree(artifact, tmp_path / "a")
    data = json.loads((broken / "manifest.json").read_text())
    data["manifest_version"] = MANIFEST_VERSION + 1
    (broken / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=f"manifest_version={MANIFEST_VERSION + 1}.*re-export"):
        OrtRunner(broken)


def test_malformed_manifest(artifact, tmp_path):
    broken = shutil.copytree(artifact, tmp_path / "a")
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="malformed JSON"):
        OrtRunner(broken)
    data = json.loads((artifact / "manifest.json").read_text())
    del data["decoder"]["num_layers"]
    (broken / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="decoder section must have"):
        OrtRunner(broken)


def test_unknown_provider_lists_available(artifact):
    with pytest.raises(
        RunnerError,
        match=r"'NoSuchExecutionProvider' is not available; available: \[.*CPUExecutionProvider",
    ):
        OrtRunner(artifact, providers=["NoSuchExecutionProvider"])


def test_empty_options_and_bad_mode(runner):
    with pytest.raises(RunnerError, match="non-empty list"):
        runner.score_options("w5 w6", [])
    with pytest.raises(RunnerError, match="unknown scoring mode 'logits'"):
        runner.score_options("w5 w6", ["a", "b"], mode="logits")


def test_prompt_longer_than_context(runner):
    long_prompt = " ".join(f"w{3 + i % 100}" for i in range(40))
    with pytest.raises(RunnerError, match="has 40 tokens, longer than tiny-llama's context of 32"):
        runner.generate(long_prompt, 4, chat=False)
    with pytest.raises(RunnerError, match="longer than"):
        runner.score_options(long_prompt, [" w5", " w6"], mode="continuation")
    with pytest.raises(RunnerError, match="prompt is empty"):
        runner.generate("", 4, chat=False)


def test_generation_stops_at_context(runner):
    g = runner.generate_ids([5] * 30, 16)
    assert g.n_tokens <= 2 and g.stop_reason in ("context", "eos")


def test_letter_scores_are_renormalised(runner):
    # the tiny vocabulary has no letters: every letter is the one <unk> token
    got = runner.score_options("w5 w6", ["x", "y", "z"], mode="letter")
    assert got.shape == (3,) and np.allclose(got, np.log(1 / 3))
    with pytest.raises(RunnerError, match="at most 26 options, got 27"):
        runner.score_options("w5 w6", [str(i) for i in range(27)], mode="letter")


def test_stop_strings_cut_the_text(runner):
    full = runner.generate("w5 w6 w7", 8, chat=False)
    if full.n_tokens >= 3:
        word = full.text.split()[1]
        cut = runner.generate("w5 w6 w7", 8, stop=[word], chat=False)
        assert cut.stop_reason == "stop" and word not in cut.text
        assert full.text.startswith(cut.text.rstrip())


def test_chat_formatting_uses_the_manifest(runner):
    m = runner.manifest
    assert runner.format_prompt("w5", chat=True) == f"{m.chat_prefix}w5{m.chat_suffix}"
    ids = runner.encode(runner.format_prompt("w5", chat=True), formatted_chat=True)
    assert ids[0] == 126 and 5 in ids  # <|im_start|> … w5
    assert isinstance(runner.forward(np.array([ids]))[0], np.ndarray)
