"""exporters.source: the GGUF conversion fills its cache folder atomically, and the source
names other code imports from exporters.llm still resolve there.

The conversion subprocess is replaced by running its ``-c`` code in this process with a
fake ``_convert_gguf``, so the code string itself (the module it imports) is checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_moe.errors import ArtifactError
from exporters import source


@pytest.fixture
def gguf(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EDGE_MOE_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "tiny.gguf"
    f.write_bytes(b"GGUF not really")
    return f


def _run_in_process(monkeypatch, convert):
    """subprocess.run for the conversion: exec its code here, ``convert`` as the body."""
    monkeypatch.setattr(source, "_convert_gguf", convert)

    def run(cmd, **kwargs):
        assert cmd[:2] == [sys.executable, "-c"]
        monkeypatch.setattr(sys, "argv", ["-c", *cmd[3:]])
        exec(cmd[2], {})  # the conversion's own one-liner
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(source.subprocess, "run", run)


def _convert_ok(gguf_path: str, out: str) -> None:
    Path(out, "config.json").write_text(json.dumps({"from": Path(gguf_path).name}))


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir())


def test_conversion_lands_whole_and_is_reused(gguf, monkeypatch):
    _run_in_process(monkeypatch, _convert_ok)
    out = source.gguf_to_hf_dir(gguf, "ab" * 32)
    assert out.name == "tiny-" + "ab" * 6
    assert json.loads((out / "config.json").read_text()) == {"from": "tiny.gguf"}
    assert json.loads((out / ".complete").read_text())["sha256"] == "ab" * 32
    assert _siblings(out) == [out.name]  # no temp folder left beside it
    monkeypatch.setattr(source.subprocess, "run", lambda *a, **k: pytest.fail("reconverted"))
    assert source.gguf_to_hf_dir(gguf, "ab" * 32) == out


def test_an_unfinished_folder_is_replaced(gguf, monkeypatch):
    _run_in_process(monkeypatch, _convert_ok)
    stale = source.cache_dir() / "hf" / ("tiny-" + "cd" * 6)
    stale.mkdir(parents=True)
    (stale / "model-00001.safetensors").write_bytes(b"half")  # no .complete: a crash
    out = source.gguf_to_hf_dir(gguf, "cd" * 32)
    assert out == stale
    assert sorted(p.name for p in out.iterdir()) == [".complete", "config.json"]
    assert _siblings(out) == [out.name]


def test_failed_conversion_leaves_nothing_new(gguf, monkeypatch):
    def run(cmd, **kwargs):
        Path(cmd[4], "model.safetensors").write_bytes(b"partial")  # it got this far
        return subprocess.CompletedProcess(cmd, 1, "", "Traceback\nValueError: bad tensor")

    monkeypatch.setattr(source.subprocess, "run", run)
    old = source.cache_dir() / "hf" / ("tiny-" + "ef" * 6)
    old.mkdir(parents=True)
    (old / "keep.txt").write_text("old")
    with pytest.raises(ArtifactError, match=r"(?s)GGUF conversion of .*tiny.gguf failed:\n.*bad tensor"):
        source.gguf_to_hf_dir(gguf, "ef" * 32)
    assert sorted(p.name for p in old.iterdir()) == ["keep.txt"]  # the old folder, untouched
    assert _siblings(old) == [old.name]


def test_hf_folder_source_and_unknown_source(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    src = source.resolve_source(ckpt)
    assert (src.name, src.format, src.hf_dir) == ("ckpt", "hf_dir", ckpt)
    assert src.sha256 == source.dir_sha256(ckpt)
    (ckpt / "config.json").write_text('{"changed": 1}')
    assert source.dir_sha256(ckpt) != src.sha256
    with pytest.raises(ArtifactError, match="is not an asset"):
        source.resolve_source(tmp_path / "nothing-here")


def test_llm_still_offers_the_names_other_code_imports():
    # benchmarks/runner_bench.py, edge_moe/jobs and tests/ import these from exporters.llm
    import exporters.llm as llm
    from exporters.decoder_graph import load_causal_lm
    from exporters.tokenizer import load_tokenizer

    assert llm.resolve_source is source.resolve_source
    assert llm.load_causal_lm is load_causal_lm
    assert llm.load_tokenizer is load_tokenizer
    assert set(llm.__all__) >= {"export_decoder", "decoder_manifest_fields", "EXPORTER_VERSION"}
    assert all(hasattr(llm, n) for n in llm.__all__)
