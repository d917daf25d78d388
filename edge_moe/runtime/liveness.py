"""Paranoid Pirate liveness bookkeeping: heartbeats, expiry and reconnect backoff.

The zguide's Paranoid Pirate pattern (``ppworker.py``), with time passed in as ``now``
(seconds, any monotonic clock) so tests step it by hand:

- each side sends a HEARTBEAT every ``heartbeat_s`` (:class:`HeartbeatTimer`; the
  message itself is :class:`edge_moe.wire.Heartbeat`);
- each side counts its peer dead when nothing at all arrived for ``liveness`` heartbeat
  intervals (:class:`Liveness`);
- a node that lost its coordinator reconnects after a delay that doubles from
  ``reconnect_min_s`` to ``reconnect_max_s``, reset by any message (:class:`Backoff`).

The settings live in the fleet config (``coordinator.heartbeat_s``, ``liveness``,
``reconnect_min_s``, ``reconnect_max_s``).
"""

from __future__ import annotations

import logging

from edge_moe.config import CoordinatorConfig
from edge_moe.errors import ConfigError

logger = logging.getLogger(__name__)


class Liveness:
    """Is the peer alive? Any message from it is a sign of life.

    Args:
        heartbeat_s: the peer's heartbeat interval.
        liveness: missed intervals before the peer counts as dead.
        now: the time of the first sign of life (e.g. READY).
    """

    def __init__(self, heartbeat_s: float, liveness: int, now: float) -> None:
        if not heartbeat_s > 0 or liveness < 1:
            raise ConfigError(f"heartbeat_s={heartbeat_s} must be > 0 and liveness={liveness} >= 1")
        self.window_s = heartbeat_s * liveness
        self.last_seen = now

    def beat(self, now: float) -> None:
        """Record a sign of life at ``now``."""
        self.last_seen = max(self.last_seen, now)

    @property
    def expires_at(self) -> float:
        return self.last_seen + self.window_s

    def expired(self, now: float) -> bool:
        """True when nothing arrived for ``heartbeat_s × liveness`` seconds."""
        return now > self.expires_at


class HeartbeatTimer:
    """When to send the next HEARTBEAT."""

    def __init__(self, heartbeat_s: float, now: float) -> None:
        if not heartbeat_s > 0:
            raise ConfigError(f"heartbeat_s={heartbeat_s} must be > 0")
        self.interval_s = heartbeat_s
        self.next_at = now + heartbeat_s

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def sent(self, now: float) -> None:
        self.next_at = now + self.interval_s


class Backoff:
    """Exponential reconnect delay: min, 2·min, 4·min, … capped at max; reset on success."""

    def __init__(self, min_s: float, max_s: float) -> None:
        if not 0 < min_s <= max_s:
            raise ConfigError(f"reconnect_min_s={min_s} must be > 0 and <= reconnect_max_s={max_s}")
        self.min_s, self.max_s = min_s, max_s
        self._next = min_s

    def delay(self) -> float:
        """The delay before this reconnect attempt; the next one waits twice as long."""
        d = self._next
        self._next = min(self.max_s, self._next * 2)
        return d

    def reset(self) -> None:
        self._next = self.min_s


def from_config(config: CoordinatorConfig, now: float) -> tuple[Liveness, HeartbeatTimer, Backoff]:
    """The three pieces a node needs, from the fleet's coordinator section."""
    return (Liveness(config.heartbeat_s, config.liveness, now),
            HeartbeatTimer(config.heartbeat_s, now),
            Backoff(config.reconnect_min_s, config.reconnect_max_s))
