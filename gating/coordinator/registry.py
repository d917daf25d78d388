"""The coordinator's registry of live nodes and the experts they host.

Paranoid Pirate, queue side (zguide ``ppqueue.py``): a node joins with READY, any message
from it is a sign of life, and it leaves the live set when it was silent for
``heartbeat_s × liveness`` seconds (:class:`edge_moe.runtime.liveness.Liveness`; the
coordinator times its own HEARTBEATs with :class:`edge_moe.runtime.liveness.HeartbeatTimer`,
as the nodes do). Time is passed in as ``now`` so tests step it by hand.

A node that reconnects gets a new socket identity and sends READY again; the entry under
its name is replaced. If two nodes claim one expert, the latest READY routes it.

Trust (the Majordomo broker's rule: check each worker command against what is known).
With a *placement* (node name → the experts the fleet file places on it),
:meth:`Registry.refusal` says why a READY must not be admitted:

- its node is not in the fleet, or it claims an expert not placed on that node;
- its node is live from another socket identity that was heard from less than
  :data:`TAKEOVER_SILENCE_BEATS` × ``heartbeat_s`` ago. A healthy node beats every
  ``heartbeat_s``, so it cannot be taken over; a node that died (or gave up on that
  socket) falls silent, and its successor's READY is then admitted and replaces it,
  well inside the liveness window (a refused node hears ``not_ready`` on its next
  HEARTBEAT and sends READY again).

Without a placement every READY is admitted, as before. :meth:`Registry.strike` counts a
node's bad RESULTs; ``quarantine_after`` of them within ``quarantine_s`` seconds take the
node's experts out of :attr:`live_experts` for ``quarantine_s`` seconds (it stays
connected, and comes back by itself). Strikes and quarantine are kept by node name, so a
reconnect does not clear them.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from edge_moe.runtime.liveness import Liveness
from edge_moe.wire import Ready

logger = logging.getLogger(__name__)

TAKEOVER_SILENCE_BEATS = 1.5  # a READY replaces a live identity silent this many intervals
MAX_STRUCK_NODES = 1024  # names with recent strikes kept; beyond it, expired ones are dropped


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
        placement: node name → the expert names the fleet places on it; None admits any
            READY (tests, ad hoc runs).
        quarantine_after: bad RESULTs within ``quarantine_s`` that quarantine a node.
        quarantine_s: the strike window and the quarantine's length, in seconds.
    """

    def __init__(self, heartbeat_s: float, liveness: int,
                 placement: Mapping[str, Collection[str]] | None = None,
                 quarantine_after: int = 3, quarantine_s: float = 30.0) -> None:
        self.heartbeat_s = heartbeat_s
        self.liveness = liveness
        self.placement = None if placement is None else {n: frozenset(e) for n, e in placement.items()}
        self.quarantine_after = quarantine_after
        self.quarantine_s = quarantine_s
        self._by_identity: dict[bytes, NodeEntry] = {}
        self._by_name: dict[str, NodeEntry] = {}
        self._experts: dict[str, NodeEntry] = {}
        self._live: tuple[str, ...] = ()
        self._node_names: tuple[str, ...] = ()
        self._strikes: dict[str, list[float]] = {}  # node name → times of its bad RESULTs
        self._quarantined: dict[str, float] = {}  # node name → until

    def refusal(self, identity: bytes, msg: Ready, now: float) -> str | None:
        """Why the READY from ``identity`` must not be admitted; None to admit it.

        Always None without a placement. The text is the ERROR ``refused`` message.
        """
        if self.placement is None:
            return None
        placed = self.placement.get(msg.node)
        if placed is None:
            return (f"node {msg.node!r} is not in the fleet "
                    f"(known: {', '.join(sorted(self.placement))})")
        claimed = [e.name for e in msg.experts]
        extra = sorted(set(claimed) - placed)
        if extra:
            return (f"node {msg.node!r} claims experts {extra} that the fleet does not place "
                    f"on it (placed: {sorted(placed)})")
        old = self._by_name.get(msg.node)
        if old is not None and old.identity != identity:
            silent = now - old.liveness.last_seen
            need = TAKEOVER_SILENCE_BEATS * self.heartbeat_s
            if silent < need:
                return (f"node {msg.node!r} is live on another connection (heard {silent:.2f} s "
                        f"ago); a new connection takes over once the old one is silent for "
                        f"{need:g} s")
        return None

    def ready(self, identity: bytes, msg: Ready, now: float) -> NodeEntry:
        """Add (or replace) the node that sent READY from ``identity`` (check :meth:`refusal`
        first: this admits it)."""
        old = self._by_name.get(msg.node)
        if old is not None:
            self._by_identity.pop(old.identity, None)
            if old.identity != identity:
                logger.warning("node %s: a new connection replaces the old one (silent %.2f s)",
                               msg.node, now - old.liveness.last_seen)
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
        """Drop and return the nodes silent past their liveness window; end quarantines
        whose time is up."""
        dead = [e for e in self._by_identity.values() if e.liveness.expired(now)]
        for e in dead:
            self.remove(e.identity)
            logger.warning("node %s missed %d heartbeats; left the live set", e.name, self.liveness)
        done = [n for n, until in self._quarantined.items() if until <= now]
        for n in done:
            del self._quarantined[n]
            logger.warning("node %s: quarantine over; its experts are planned again", n)
        if done:
            self._rebuild()
        return dead

    def strike(self, name: str, now: float) -> bool:
        """Count one bad RESULT from node ``name``; True when it has just been quarantined."""
        if name in self._quarantined:
            return False
        horizon = now - self.quarantine_s
        if len(self._strikes) > MAX_STRUCK_NODES:  # bounded: forget the strikes out of the window
            self._strikes = {n: t for n, t in self._strikes.items() if t[-1] > horizon}
        times = [t for t in self._strikes.get(name, ()) if t > horizon] + [now]
        if len(times) < self.quarantine_after:
            self._strikes[name] = times
            return False
        self._strikes.pop(name, None)
        self._quarantined[name] = now + self.quarantine_s
        logger.warning("node %s sent %d bad RESULTs within %g s; quarantined for %g s", name,
                       len(times), self.quarantine_s, self.quarantine_s)
        self._rebuild()
        return True

    def quarantined_until(self, name: str) -> float | None:
        """When node ``name``'s quarantine ends; None when it is not quarantined."""
        return self._quarantined.get(name)

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
            if entry.name in self._quarantined:
                continue
            for name in entry.experts:
                if name in self._experts and self._experts[name] is not entry:
                    logger.warning("expert %s is on nodes %s and %s; routing to %s", name,
                                   self._experts[name].name, entry.name, entry.name)
                self._experts[name] = entry
        self._live = tuple(sorted(self._experts))
        self._node_names = tuple(e.name for e in self._by_identity.values())

    def next_expiry(self) -> float:
        """The earliest time a node could expire or leave quarantine (inf when none)."""
        return min([e.liveness.expires_at for e in self._by_identity.values()]
                   + list(self._quarantined.values()), default=float("inf"))

    def entry(self, name: str) -> NodeEntry | None:
        """The live node called ``name`` (quarantined or not)."""
        return self._by_name.get(name)

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
