"""Deploy a fleet through Ray: one detached actor per node, one for the coordinator.

Ray only *places* processes; queries never go through it (ZeroMQ is the data path).

- :func:`deploy` starts a local Ray head on loopback, or joins ``address``, places the
  actors and returns once every node sent READY to the coordinator (:mod:`.launch`).
- :func:`status` asks the coordinator actor for its registry (liveness, last heartbeat,
  per-expert ms and J so far) and each node actor for its process, plus Ray's own view;
  :func:`down` kills this fleet's actors and, only if :func:`deploy` started the head, that
  head's processes; :func:`kill_node` kills one node's actor (:mod:`.ops`).

The modules, one concept each:

- :mod:`.state`: the JSON deployment record in :func:`edge_moe.paths.state_dir`;
- :mod:`.head`: the embedded ``ray start --head``, its auth token and ports, and stopping
  only its own process group;
- :mod:`.driver`: this process as a Ray driver (Ray's environment before the import);
- :mod:`.actors`: the node and coordinator actors;
- :mod:`.launch` and :mod:`.ops`: deploy; status, kill and down;
- :mod:`.ship`: artifacts shipped to the nodes' hosts through Ray (sha256-addressed,
  chunked, verified, cached on the host, skipped when there);
- :mod:`.remote`: runners on the deployed fleet, for ``calibrate --fleet``.

This package is the only importer of ``ray``, and it does so lazily (inside functions):
Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when it is imported, and a driver for a
loopback head must have it set to 0 first (docs/design.md §6; :mod:`.driver`).
"""

from __future__ import annotations

import logging

from edge_moe.errors import FleetError
from edge_moe.fleet.actors import COORDINATOR_ACTOR, CoordinatorActor, NodeActor, node_actor_name
from edge_moe.fleet.driver import disconnect
from edge_moe.fleet.head import (
    ensure_auth_token,
    owned_processes,
    ray_env,
    resolve_endpoint,
    start_local_head,
)
from edge_moe.fleet.launch import deploy, deploy_from_path
from edge_moe.fleet.ops import connect, down, kill_node, node_actor, status
from edge_moe.fleet.remote import FleetRunner, fleet_runners
from edge_moe.fleet.ship import ArtifactStore, Listing, ShipEvent, Shipped, list_artifact
from edge_moe.fleet.state import STATE_FORMAT, Deployment, load_deployment

logger = logging.getLogger(__name__)

__all__ = [
    "COORDINATOR_ACTOR", "STATE_FORMAT", "ArtifactStore", "CoordinatorActor", "Deployment", "FleetError",
    "FleetRunner", "Listing", "NodeActor", "ShipEvent", "Shipped",
    "connect", "deploy", "deploy_from_path", "disconnect", "down", "ensure_auth_token", "fleet_runners",
    "kill_node", "list_artifact", "load_deployment", "node_actor", "node_actor_name", "owned_processes",
    "ray_env", "resolve_endpoint", "start_local_head", "status",
]
