"""The coordinator's registry of live nodes and the experts they host.

Paranoid Pirate, queue side (zguide ``ppqueue.py``): a node joins with READY, any message
from it is a sign of life, and it leaves the live set when it was silent for
``heartbeat_s × liveness`` seconds (:class:`edge_moe.runtime.liveness.Liveness`; the
coordinator times its own HEARTBEATs with :class:`edge_moe.runtime.liveness.HeartbeatTimer`,
as the nodes do). Time is passed in as ``now`` so tests step it by hand.

A node that reconnects gets a new socket identity and sends READY again; the entry under
its name is replaced. If two nodes claim one expert, the latest READY routes it.
``version`` changes whenever the live set does, so plans can be cached by it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from edge_moe.runtime.liveness import Liveness
from edge_moe.wire import Ready

logger = logging.getLogger(__name__)


@dataclass
class NodeEntry:
    """A live node: its socket identity, its READY, and its liveness."""

    name: str
    identity: bytes
    ready: Ready
    liveness: Liveness

    @property
    def experts(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.ready.experts)


class Registry:
    """Live nodes by identity and by name; live experts by name.

    Args:
        heartbeat_s: the nodes' heartbeat interval.
        liveness: missed intervals before a node is dropped.
    """

    def __init__(self, heartbeat_s: float, liveness: int) -> None:
        self.heartbeat_s = heartbeat_s
        self.liveness = liveness
        self._by_identity: dict[bytes, NodeEntry] = {}
        self._by_name: dict[str, NodeEntry] = {}
        self._experts: dict[str, NodeEntry] = {}
        self._live: tuple[str, ...] = ()
        self._node_names: tuple[str, ...] = ()
        self.version = 0

    def ready(self, identity: bytes, msg: Ready, now: float) -> NodeEntry:
        """Add (or replace) the node that sent READY from ``identity``."""
        old = self._by_name.get(msg.node)
        if old is not None:
            self._by_identity.pop(old.identity, None)
        prev = self._by_identity.get(identity)
        if prev is not None and prev.name != msg.node:
            self._by_name.pop(prev.name, None)
        entry = NodeEntry(msg.node, identity, msg, Liveness(self.heartbeat_s, self.liveness, now))
        self._by_identity[identity] = entry
        self._by_name[msg.node] = entry
        self._rebuild()
        logger.info("node %s ready with experts %s", msg.node, list(entry.experts))
        return entry

    def beat(self, identity: bytes, now: float) -> NodeEntry | None:
        """Record a sign of life; None when the identity never sent READY."""
        entry = self._by_identity.get(identity)
        if entry is not None:
            entry.liveness.beat(now)
        return entry

    def expire(self, now: float) -> list[NodeEntry]:
        """Drop and return the nodes silent past their liveness window."""
        dead = [e for e in self._by_identity.values() if e.liveness.expired(now)]
        for e in dead:
            self.remove(e.identity)
            logger.warning("node %s missed %d heartbeats; left the live set", e.name, self.liveness)
        return dead

    def remove(self, identity: bytes) -> NodeEntry | None:
        entry = self._by_identity.pop(identity, None)
        if entry is not None:
            if self._by_name.get(entry.name) is entry:
                del self._by_name[entry.name]
            self._rebuild()
        return entry

    def _rebuild(self) -> None:
        self._experts = {}
        for entry in sorted(self._by_identity.values(), key=lambda e: e.liveness.last_seen):
            for name in entry.experts:
                if name in self._experts and self._experts[name] is not entry:
                    logger.warning("expert %s is on nodes %s and %s; routing to %s", name,
                                   self._experts[name].name, entry.name, entry.name)
                self._experts[name] = entry
        self._live = tuple(sorted(self._experts))
        self._node_names = tuple(e.name for e in self._by_identity.values())
        self.version += 1

    def next_expiry(self) -> float:
        """The earliest time a node could expire (inf when none is live)."""
        return min((e.liveness.expires_at for e in self._by_identity.values()), default=float("inf"))

    def node_of(self, expert: str) -> NodeEntry | None:
        return self._experts.get(expert)

    @property
    def live_experts(self) -> tuple[str, ...]:
        return self._live

    @property
    def nodes(self) -> tuple[NodeEntry, ...]:
        return tuple(self._by_identity.values())

    @property
    def node_names(self) -> tuple[str, ...]:
        """The live nodes' names, in the order of :attr:`nodes`."""
        return self._node_names

    def __contains__(self, identity: bytes) -> bool:
        return identity in self._by_identity
