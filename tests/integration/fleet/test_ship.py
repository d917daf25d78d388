"""Artifact shipping without Ray: the sender's loop and a host's store through a LocalChannel.

Faults are injected in the channel (a flipped byte, a dropped chunk, a chunk that never
comes), so each test breaks the transfer on its way and checks that the store refuses it,
names the file, and leaves nothing in the cache but finished entries.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from edge_moe.errors import ArtifactError
from edge_moe.fleet.ship import (
    RECORD,
    ArtifactStore,
    LocalChannel,
    ShipEvent,
    list_artifact,
    ship,
)

CHUNK = 1000


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    d = tmp_path / "src" / "tiny" / "fp32"
    (d / "sub").mkdir(parents=True)
    rng = __import__("random").Random(7)
    (d / "model.onnx").write_bytes(bytes(rng.randrange(256) for _ in range(5 * CHUNK + 17)))
    (d / "manifest.json").write_text(json.dumps({"name": "tiny"}))
    (d / "sub" / "tokenizer.json").write_text("{}" * 700)
    return d


class Faulty(LocalChannel):
    """A LocalChannel that damages the ``n``-th write on its way."""

    def __init__(self, store: ArtifactStore, n: int, fault: str) -> None:
        super().__init__(store)
        self.n, self.fault, self.writes = n, fault, 0

    def submit(self, method: str, *args: Any) -> Any:
        if method == "write":
            self.writes += 1
            if self.writes == self.n:
                tid, i, off, data = args
                if self.fault == "flip":
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                elif self.fault == "drop":
                    return ("ok", off + len(data))  # never reaches the store
                args = (tid, i, off, data)
        if method == "finish" and self.fault == "truncate":
            t = next(iter(self.store._open.values()))
            t.received[0] -= 1  # as if the last byte of the first file never arrived
        return super().submit(method, *args)


def cache_entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_listing_digest_is_content_addressed(artifact: Path, tmp_path: Path) -> None:
    a = list_artifact(artifact)
    assert [f.path for f in a.files] == ["manifest.json", "model.onnx", "sub/tokenizer.json"]
    assert a.total_bytes == sum(p.stat().st_size for p in artifact.rglob("*") if p.is_file())
    copy = tmp_path / "elsewhere"
    os.system(f"cp -r {artifact} {copy}")  # same content at another path: same digest
    assert list_artifact(copy).digest == a.digest
    (copy / "manifest.json").write_text(json.dumps({"name": "tinY"}))
    assert list_artifact(copy).digest != a.digest
    one = list_artifact(artifact / "model.onnx")
    assert one.single == "model.onnx" and len(one.files) == 1
    with pytest.raises(ArtifactError, match="does not exist"):
        list_artifact(tmp_path / "nowhere")


def test_ship_verifies_caches_and_second_ship_skips(artifact: Path, tmp_path: Path) -> None:
    root = tmp_path / "host" / "artifacts"
    events: list[ShipEvent] = []
    first = ship(LocalChannel(ArtifactStore(root)), "w1", "tiny", artifact, progress=events.append,
                 chunk_bytes=CHUNK, window=2)
    digest = list_artifact(artifact).digest
    assert not first.skipped and first.digest == digest and first.path == str(root / digest)
    assert cache_entries(root) == [digest]  # no temp folder left
    assert list_artifact(first.path).digest == digest  # the record file is not part of the listing…
    assert (Path(first.path) / RECORD).is_file()
    states = [e.state for e in events]
    assert states[0] == "sending" and states[-1] == "done" and states.count("sending") >= 7
    sent = [e.done_bytes for e in events if e.state == "sending"]
    assert sent == sorted(sent) and sent[-1] == first.bytes
    events.clear()
    second = ship(LocalChannel(ArtifactStore(root)), "w1", "tiny", artifact, progress=events.append)
    assert second.skipped and second.path == first.path and [e.state for e in events] == ["skipped"]


def test_ship_single_file_loads_the_file(artifact: Path, tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    out = ship(LocalChannel(ArtifactStore(root)), "w1", "engine", artifact / "model.onnx", chunk_bytes=CHUNK)
    assert Path(out.path).name == "model.onnx" and Path(out.path).read_bytes() == (artifact / "model.onnx").read_bytes()


@pytest.mark.parametrize("fault, match", [
    ("flip", r"node w1: expert 'tiny': artifact \w+: model\.onnx is corrupt: sha256"),
    ("drop", r"node w1: expert 'tiny': artifact \w+: model\.onnx: a chunk of \d+ bytes at byte \d+, .*lost or out of order"),
    ("truncate", r"node w1: expert 'tiny': artifact \w+: manifest\.json is partial: \d+ of \d+ bytes"),
])
def test_corrupt_or_partial_artifact_is_refused_and_nothing_kept(artifact: Path, tmp_path: Path,
                                                                 fault: str, match: str) -> None:
    root = tmp_path / "artifacts"
    store = ArtifactStore(root)
    with pytest.raises(ArtifactError, match=match):
        ship(Faulty(store, 3, fault), "w1", "tiny", artifact, chunk_bytes=CHUNK, window=1)
    assert cache_entries(root) == [], "a refused transfer left files in the cache"
    assert store.lookup(list_artifact(artifact)) is None
    good = ship(LocalChannel(store), "w1", "tiny", artifact, chunk_bytes=CHUNK)  # the next try ships it
    assert not good.skipped and cache_entries(root) == [good.digest]


def test_damaged_cache_entry_is_shipped_again(artifact: Path, tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    first = ship(LocalChannel(ArtifactStore(root)), "w1", "tiny", artifact, chunk_bytes=CHUNK)
    model = Path(first.path) / "model.onnx"
    with model.open("r+b") as fh:  # truncated at rest: the size check finds it
        fh.truncate(100)
    again = ship(LocalChannel(ArtifactStore(root)), "w1", "tiny", artifact, chunk_bytes=CHUNK)
    assert not again.skipped and model.stat().st_size == (artifact / "model.onnx").stat().st_size
    with model.open("r+b") as fh:  # same size, other bytes: only verify_cached finds it
        fh.write(b"\0" * 10)
    assert ship(LocalChannel(ArtifactStore(root)), "w1", "tiny", artifact).skipped
    fixed = ship(LocalChannel(ArtifactStore(root)), "w1", "tiny", artifact, verify_cached=True)
    assert not fixed.skipped and list_artifact(fixed.path).digest == fixed.digest
    assert cache_entries(root) == [fixed.digest]


def test_store_refuses_paths_outside_the_artifact(tmp_path: Path) -> None:
    from edge_moe.fleet.ship import FileEntry, Listing, digest_of

    files = (FileEntry("../evil", 1, "0" * 64),)
    with pytest.raises(ArtifactError, match="leaves the artifact"):
        ArtifactStore(tmp_path / "a").begin(Listing(digest_of(files), files))
    assert cache_entries(tmp_path / "a") == []


def test_interrupted_transfer_leaves_no_entry_and_its_stale_temp_is_removed(artifact: Path, tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    listing = list_artifact(artifact)
    dead = ArtifactStore(root)  # a sender that died after one chunk: its store never finishes
    tid = dead.begin(listing)
    dead.write(tid, 1, 0, (artifact / "model.onnx").read_bytes()[:CHUNK])
    (partial,) = root.iterdir()
    assert partial.name.endswith(".partial") and ArtifactStore(root).lookup(listing) is None
    young = ArtifactStore(root).begin(listing)  # a young temp folder may be a live transfer: kept
    assert partial.exists()
    os.utime(partial, (0, 0))  # now stale
    out = ship(LocalChannel(ArtifactStore(root)), "w1", "tiny", artifact, chunk_bytes=CHUNK)
    assert not partial.exists() and out.digest in cache_entries(root)
    assert young  # (its folder is the other live transfer's)
