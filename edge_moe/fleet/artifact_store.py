"""A host's content-addressed artifact cache: listings, digests and the receiving store.

An artifact (a folder, or one file) is named by the sha256 of its listing
(:func:`list_artifact`, :func:`digest_of`); :class:`ArtifactStore` takes its chunks in order
into a temp folder beside the cache entries, checks every file's size and sha256 against the
listing and only then renames the folder to ``<digest>``, so a node never loads half a file.
The sending side and the channels to a store are in :mod:`edge_moe.fleet.ship` (which
re-exports these names); the whole protocol is described there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_moe.errors import ArtifactError

logger = logging.getLogger(__name__)

STALE_S = 600.0  # a temp folder untouched this long is a dead transfer's
RECORD = ".edge-moe-artifact.json"
RECORD_FORMAT = "edge-moe-artifact/1"


# ---------------------------------------------------------------- listings and digests


@dataclass(frozen=True)
class FileEntry:
    """One file of an artifact: its path relative to the artifact, size (bytes) and sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Listing:
    """What an artifact holds; ``digest`` names it. ``single`` is set for a one-file artifact
    (the file's name: the node loads ``<digest>/<single>``)."""

    digest: str
    files: tuple[FileEntry, ...]
    single: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "single": self.single, "files": [asdict(f) for f in self.files]}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Listing:
        return cls(raw["digest"], tuple(FileEntry(**f) for f in raw["files"]), raw.get("single"))


def hash_file(path: str | os.PathLike[str], block: int = 1 << 20) -> str:
    """The sha256 of a file, read in ``block``-byte pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def digest_of(files: tuple[FileEntry, ...]) -> str:
    """The sha256 of the listing lines (see the module docstring)."""
    text = "".join(f"{f.sha256}  {f.size}  {f.path}\n" for f in sorted(files, key=lambda f: f.path))
    return hashlib.sha256(text.encode()).hexdigest()


def list_artifact(path: str | os.PathLike[str]) -> Listing:
    """List and hash an artifact folder (every regular file under it but a cache
    entry's :data:`RECORD`) or a single file.

    Raises:
        ArtifactError: ``path`` does not exist, or the folder holds no file.
    """
    p = Path(path)
    if p.is_file():
        files: tuple[FileEntry, ...] = (FileEntry(p.name, p.stat().st_size, hash_file(p)),)
        return Listing(digest_of(files), files, single=p.name)
    if not p.is_dir():
        raise ArtifactError(f"artifact {p} does not exist")
    found = sorted(q for q in p.rglob("*") if q.is_file() and q != p / RECORD)  # a cache entry lists as itself
    if not found:
        raise ArtifactError(f"artifact {p} is an empty folder")
    files = tuple(FileEntry(q.relative_to(p).as_posix(), q.stat().st_size, hash_file(q)) for q in found)
    return Listing(digest_of(files), files)


# ---------------------------------------------------------------- the receiving side


@dataclass
class _Transfer:
    listing: Listing
    tmp: Path
    received: list[int]
    hashers: list[Any]
    started: float = field(default_factory=time.monotonic)


class ArtifactStore:
    """The content-addressed artifact cache of one host (see the module docstring).

    Args:
        root: the cache folder (default :func:`edge_moe.paths.artifacts_dir` of this host).
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        from edge_moe.paths import artifacts_dir

        self.root = Path(root) if root is not None else artifacts_dir()
        self._open: dict[str, _Transfer] = {}

    def entry(self, digest: str) -> Path:
        return self.root / digest

    def load_path(self, listing: Listing) -> str:
        """The path a node loads: the entry folder, or the one file in it."""
        d = self.entry(listing.digest)
        return str(d / listing.single) if listing.single else str(d)

    def lookup(self, listing: Listing, verify: bool = False) -> str | None:
        """The load path of a finished entry for ``listing``, or None (ship it).

        A damaged entry (no record, another listing, a file of the wrong size, or with
        ``verify`` a wrong sha256) is moved aside, logged, and None is returned.
        """
        d = self.entry(listing.digest)
        if not d.is_dir():
            return None
        why = self._damage(d, listing, verify)
        if why is None:
            return self.load_path(listing)
        logger.warning("cached artifact %s is damaged (%s): shipping it again", d, why)
        aside = d.with_name(f".{d.name}.{uuid.uuid4().hex[:8]}.damaged")
        os.replace(d, aside)
        shutil.rmtree(aside, ignore_errors=True)
        return None

    @staticmethod
    def _damage(d: Path, listing: Listing, verify: bool) -> str | None:
        try:
            rec = json.loads((d / RECORD).read_text())
        except (OSError, ValueError):
            return f"no readable {RECORD}"
        if rec.get("format") != RECORD_FORMAT or rec.get("listing", {}).get("digest") != listing.digest:
            return f"{RECORD} is for another artifact"
        for f in listing.files:
            p = d / f.path
            size = p.stat().st_size if p.is_file() else -1
            if size != f.size:
                return f"{f.path}: {size} bytes, expected {f.size}"
            if verify and hash_file(p) != f.sha256:
                return f"{f.path}: sha256 differs from the listing"
        return None

    def begin(self, listing: Listing) -> str:
        """Open a transfer into a fresh temp folder; returns its id.

        Temp folders of this digest older than :data:`STALE_S` (a sender that died mid-way)
        are removed first; younger ones may belong to a transfer still running.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        for old in self.root.glob(f".{listing.digest}.*.partial"):
            try:
                if time.time() - old.stat().st_mtime > STALE_S:
                    logger.info("removing %s, left by an interrupted transfer", old)
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        tid = uuid.uuid4().hex[:12]
        tmp = self.root / f".{listing.digest}.{tid}.partial"
        tmp.mkdir()
        for f in listing.files:
            if Path(f.path).is_absolute() or ".." in Path(f.path).parts:
                shutil.rmtree(tmp, ignore_errors=True)
                raise ArtifactError(f"artifact {listing.digest[:12]}: file path {f.path!r} leaves the artifact")
            target = tmp / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        self._open[tid] = _Transfer(listing, tmp, [0] * len(listing.files),
                                    [hashlib.sha256() for _ in listing.files])
        return tid

    def write(self, tid: str, index: int, offset: int, data: bytes) -> int:
        """Append ``data`` to file ``index`` of transfer ``tid`` at ``offset``; returns its bytes so far.

        Raises:
            ArtifactError: unknown transfer, an offset other than the bytes received so far
                (a lost or reordered chunk), or more bytes than the listing says; the
                transfer is aborted.
        """
        t = self._transfer(tid)
        f = t.listing.files[index]
        if offset != t.received[index] or offset + len(data) > f.size:
            self.abort(tid)
            raise ArtifactError(
                f"artifact {t.listing.digest[:12]}: {f.path}: a chunk of {len(data)} bytes at byte {offset}, "
                f"but {t.received[index]} of {f.size} bytes were received so far (lost or out of order); "
                "transfer aborted, nothing kept")
        with open(t.tmp / f.path, "r+b") as fh:
            fh.seek(offset)
            fh.write(data)
        t.hashers[index].update(data)
        t.received[index] += len(data)
        return t.received[index]

    def finish(self, tid: str) -> str:
        """Verify every file and move the temp folder to ``<digest>``; returns the load path.

        Raises:
            ArtifactError: a file is partial (fewer bytes than listed) or corrupt (another
                sha256), naming the file; the temp folder is removed and nothing is kept.
        """
        t = self._transfer(tid)
        try:
            for i, f in enumerate(t.listing.files):
                on_disk = (t.tmp / f.path).stat().st_size
                if t.received[i] != f.size or on_disk != f.size:
                    raise ArtifactError(f"artifact {t.listing.digest[:12]}: {f.path} is partial: "
                                        f"{t.received[i]} of {f.size} bytes received; refused, nothing kept")
                got = t.hashers[i].hexdigest()
                if got != f.sha256:
                    raise ArtifactError(f"artifact {t.listing.digest[:12]}: {f.path} is corrupt: sha256 {got[:16]}… "
                                        f"!= {f.sha256[:16]}… from the sender; refused, nothing kept")
            rec = {"format": RECORD_FORMAT, "listing": t.listing.to_json(), "received": time.time(),
                   "seconds": round(time.monotonic() - t.started, 3)}
            (t.tmp / RECORD).write_text(json.dumps(rec, indent=1))
            final = self.entry(t.listing.digest)
            try:
                os.rename(t.tmp, final)  # atomic; fails if another transfer finished first
            except OSError:
                if self._damage(final, t.listing, False) is not None:
                    raise
                shutil.rmtree(t.tmp, ignore_errors=True)
        except BaseException:
            self.abort(tid)
            raise
        self._open.pop(tid, None)
        return self.load_path(t.listing)

    def abort(self, tid: str) -> None:
        """Drop transfer ``tid`` and its temp folder (no-op when unknown)."""
        t = self._open.pop(tid, None)
        if t is not None:
            shutil.rmtree(t.tmp, ignore_errors=True)

    def _transfer(self, tid: str) -> _Transfer:
        if tid not in self._open:
            raise ArtifactError(f"no open artifact transfer '{tid}' on this host (aborted, or the receiver restarted)")
        return self._open[tid]
