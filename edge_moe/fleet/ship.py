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

The listings and the store live in :mod:`edge_moe.fleet.artifact_store`; their public names
are re-exported here.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_moe.errors import ArtifactError
from edge_moe.fleet.artifact_store import (
    RECORD,
    RECORD_FORMAT,
    STALE_S,
    ArtifactStore,
    FileEntry,
    Listing,
    digest_of,
    hash_file,
    list_artifact,
)

__all__ = ["CHUNK_BYTES", "RECORD", "RECORD_FORMAT", "SHIP_MODES", "STALE_S", "WINDOW", "ArtifactReceiver",
           "ArtifactStore", "Channel", "FileEntry", "Listing", "LocalChannel", "RayChannel", "ShipEvent", "Shipped",
           "digest_of", "hash_file", "list_artifact", "ship"]

logger = logging.getLogger(__name__)

CHUNK_BYTES = 8 * 1024 * 1024  # one Ray argument; Ray moves it in its own 5 MB pieces
WINDOW = 4  # chunks in flight per artifact: bounds the driver's object store use to ~32 MB
SHIP_MODES = ("auto", "ray", "path")


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
