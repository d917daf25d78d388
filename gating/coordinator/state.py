"""What the two halves of the coordinator share: the attributes :class:`ClientSide`
(:mod:`gating.coordinator.clients`) and :class:`NodeSide` (:mod:`gating.coordinator.backend`)
read, declared once; :class:`gating.coordinator.loop.Coordinator` sets them."""

from __future__ import annotations

from typing import Any

import zmq

from edge_moe.config import CoordinatorConfig
from gating.coordinator.inflight import InFlight
from gating.coordinator.load import LoadTracker
from gating.coordinator.registry import Registry
from gating.coordinator.routing import Router


class CoordinatorState:
    """The coordinator's state, as its handler halves see it (a mixin base: no behaviour)."""

    router: Router
    config: CoordinatorConfig
    registry: Registry
    load: LoadTracker
    inflight: InFlight
    stats: dict[str, float]
    default_deadline_ms: float
    frontend: zmq.Socket
    metrics: Any
