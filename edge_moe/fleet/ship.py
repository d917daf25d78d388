"""Shipping artifacts to the nodes' hosts through Ray: content-addressed, chunked, verified.

An artifact (a folder, or one file) is named by its **digest**: the sha256 of its listing,
one line per file in path order, ``"<sha256>  <size>  <relative path>\\n"`` (the format of
``sha256sum``, plus the size). A node's host keeps it in ``$EDGE_MOE_CACHE/artifacts/<digest>/``
(its own cache: :func:`edge_moe.paths.artifacts_dir` read *on that host*).

The receiving side, :class:`ArtifactStore`, never lets a node load half a file:

- :meth:`~ArtifactStore.begin` makes a temp folder ``.<digest>.<id>.partial`` beside the
  cache entries; :meth:`~ArtifactStore.write` takes chunks in order per file (an offset
  other than the bytes received so far is refused) and hashes them as they arrive;
- :meth:`~ArtifactStore.finish` checks every file's size and sha256 against the listing,
  writes the record ``.edge-moe-artifact.json`` and renames the folder to ``<digest>``.
  A short file is refused as *partial*, a wrong hash as *corrupt*, naming the file; the temp
  folder is removed, so nothing reaches ``<digest>/``;
- a transfer whose sender died leaves only its temp folder, never loaded, and removed by
  the next :meth:`~ArtifactStore.begin` of that digest once stale;
- :meth:`~ArtifactStore.lookup` finds a finished entry (record present, sizes right; with
  ``verify`` every hash too). A damaged entry is moved aside and shipped again.

The sending side, :func:`ship`, runs in the deploying driver. It lists and hashes each
artifact once, asks the node's host whether it has the digest (then it skips it), and
otherwise streams :data:`CHUNK_BYTES` chunks with at most :data:`WINDOW` in flight, reporting
progress through a callback. It talks to the store through a :class:`Channel`: over Ray
(:class:`RayChannel`, a :class:`ArtifactReceiver` actor pinned to the node's Ray node), or
in-process (:class:`LocalChannel`, for tests and a local head).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edge_moe.errors import ArtifactError

logger = logging.getLogger(__name__)

CHUNK_BYTES = 8 * 1024 * 1024  # one Ray argument; Ray moves it in its own 5 MB pieces
WINDOW = 4  # chunks in flight per artifact: bounds the driver's object store use to ~32 MB
STALE_S = 600.0  # a temp folder untouched this long is a dead transfer's
RECORD = ".edge-moe-artifact.json"
RECORD_FORMAT = "edge-moe-artifact/1"
SHIP_MODES = ("auto", "ray", "path")


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


# ---------------------------------------------------------------- channels to a store


class Channel(Protocol):
    """Calls on a host's :class:`ArtifactStore`: ``submit`` returns a handle, ``result`` its value."""

    def submit(self, method: str, *args: Any) -> Any: ...

    def result(self, handle: Any) -> Any: ...

    def close(self) -> None: ...


class LocalChannel:
    """A store in this process (tests, and a host that is this one)."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    def submit(self, method: str, *args: Any) -> Any:
        try:
            return ("ok", getattr(self.store, method)(*args))
        except BaseException as exc:
            return ("err", exc)

    def result(self, handle: Any) -> Any:
        kind, value = handle
        if kind == "err":
            raise value
        return value

    def close(self) -> None:
        pass


class ArtifactReceiver:
    """The Ray actor around a host's :class:`ArtifactStore` (the host's own cache)."""

    def __init__(self, root: str | None = None) -> None:
        self.store = ArtifactStore(root)

    def call(self, method: str, *args: Any) -> Any:
        if method not in ("lookup", "begin", "write", "finish", "abort"):
            raise ArtifactError(f"unknown store call '{method}'")
        return getattr(self.store, method)(*args)

    def where(self) -> dict[str, Any]:
        import socket

        return {"root": str(self.store.root), "host": socket.gethostname(), "pid": os.getpid()}


class RayChannel:
    """An :class:`ArtifactReceiver` actor pinned to Ray node ``node_id`` (killed by :meth:`close`)."""

    def __init__(self, node_id: str, namespace: str | None = None) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._ray = ray
        self.actor: Any = ray.remote(ArtifactReceiver).options(  # type: ignore[attr-defined]
            num_cpus=0, namespace=namespace, max_concurrency=1,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()

    def submit(self, method: str, *args: Any) -> Any:
        return self.actor.call.remote(method, *args)

    def result(self, handle: Any) -> Any:
        from edge_moe.fleet.driver import reason

        try:
            return self._ray.get(handle, timeout=600)
        except self._ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ArtifactError):  # the store's own words, without Ray's traceback
                raise ArtifactError(str(cause)) from None
            raise ArtifactError(reason(exc)) from exc
        except self._ray.exceptions.RayError as exc:  # the receiver or its host died
            raise ArtifactError(f"the artifact receiver failed: {reason(exc)}") from exc

    def close(self) -> None:
        try:
            self._ray.kill(self.actor)
        except Exception:  # already gone
            pass


# ---------------------------------------------------------------- the sending side


@dataclass(frozen=True)
class ShipEvent:
    """Progress of one artifact to one node: ``state`` is ``sending`` (``done_bytes`` so
    far), ``skipped`` (already there) or ``done``; ``seconds`` since it started."""

    node: str
    expert: str
    digest: str
    state: str
    done_bytes: int
    total_bytes: int
    seconds: float


@dataclass(frozen=True)
class Shipped:
    """One artifact on one node: where the node loads it, and what shipping it took."""

    node: str
    expert: str
    digest: str
    path: str
    bytes: int
    skipped: bool
    seconds: float
    hash_s: float


def ship(channel: Channel, node: str, expert: str, source: str | os.PathLike[str], *,
         listing: Listing | None = None, verify_cached: bool = False,
         progress: Callable[[ShipEvent], None] | None = None,
         chunk_bytes: int = CHUNK_BYTES, window: int = WINDOW) -> Shipped:
    """Make ``source`` available on ``node``'s host; returns where the node loads it.

    Args:
        channel: calls on the host's store (:class:`RayChannel` or :class:`LocalChannel`).
        node, expert: for messages and progress.
        source: the artifact folder or file on this machine.
        listing: ``source`` already listed (it is hashed once per deploy, not per node).
        verify_cached: re-hash a cached entry on the host instead of checking sizes only.
        progress: called at the start, after each chunk lands, and at the end.
        chunk_bytes, window: chunk size and chunks in flight.

    Raises:
        ArtifactError: the source is missing, or the host refused the artifact (partial or
            corrupt on arrival, a lost chunk), naming the node, the expert and the file.
    """
    t0 = time.monotonic()
    listing = listing or list_artifact(source)
    hash_s = time.monotonic() - t0
    src = Path(source)
    total = listing.total_bytes

    def tell(state: str, done: int) -> None:
        if progress is not None:
            progress(ShipEvent(node, expert, listing.digest, state, done, total,
                               round(time.monotonic() - t0, 3)))

    where = f"node {node}: expert '{expert}'"
    try:
        path = channel.result(channel.submit("lookup", listing, verify_cached))
        if path is not None:
            tell("skipped", total)
            return Shipped(node, expert, listing.digest, path, total, True,
                           round(time.monotonic() - t0, 3), round(hash_s, 3))
        tid = channel.result(channel.submit("begin", listing))
    except ArtifactError as exc:
        raise ArtifactError(f"{where}: {exc}") from exc
    tell("sending", 0)
    done = 0
    in_flight: deque[tuple[Any, int]] = deque()
    try:
        for i, f in enumerate(listing.files):
            with open(src if listing.single else src / f.path, "rb") as fh:
                offset = 0
                while offset < f.size:
                    data = fh.read(min(chunk_bytes, f.size - offset))
                    if not data:
                        raise ArtifactError(f"{f.path} shrank while being sent ({offset} of {f.size} bytes)")
                    in_flight.append((channel.submit("write", tid, i, offset, data), len(data)))
                    offset += len(data)
                    while len(in_flight) >= window:
                        handle, n = in_flight.popleft()
                        channel.result(handle)
                        done += n
                        tell("sending", done)
        while in_flight:
            handle, n = in_flight.popleft()
            channel.result(handle)
            done += n
            tell("sending", done)
        path = channel.result(channel.submit("finish", tid))
    except BaseException as exc:
        try:
            channel.result(channel.submit("abort", tid))
        except Exception:  # the host may be gone: its temp folder is never loaded
            pass
        if isinstance(exc, (ArtifactError, OSError)):
            raise ArtifactError(f"{where}: {exc}") from exc
        raise
    seconds = round(time.monotonic() - t0, 3)
    tell("done", total)
    logger.info("shipped %s (%s, %.0f MB) to node %s in %.1f s", expert, listing.digest[:12], total / 1e6,
                node, seconds)
    return Shipped(node, expert, listing.digest, path, total, False, seconds, round(hash_s, 3))
