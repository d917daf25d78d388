"""Operating a deployed fleet from any driver: its status, killing a node's actor, down.

Each call finds the deployment in its state file (:func:`~edge_moe.fleet.state.load_deployment`)
and the actors by name in the fleet's namespace, so it works from a process other than the
one that deployed. :func:`down` kills this fleet's actors and, only if
:func:`edge_moe.fleet.deploy` started the head, that head's processes by the process group
and PIDs it recorded (:func:`~edge_moe.fleet.head.owned_processes`). Never ``ray stop``:
that kills every Ray process on the machine.
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

from edge_moe.errors import FleetError
from edge_moe.fleet.actors import COORDINATOR_ACTOR, node_actor_name
from edge_moe.fleet.driver import disconnect, ensure_connected, reason
from edge_moe.fleet.head import kill_pids, owned_processes, pid_alive
from edge_moe.fleet.state import Deployment, load_deployment

logger = logging.getLogger(__name__)


def connect(name: str | None = None) -> Deployment:
    """Connect this driver to a deployed fleet's cluster and namespace."""
    dep = load_deployment(name)
    ensure_connected(dep.address, dep.namespace, dep.started_head)
    return dep


def node_actor(node: str, name: str | None = None) -> Any:
    """The handle of a node's Ray actor."""
    import ray

    dep = connect(name)
    return ray.get_actor(node_actor_name(node), namespace=dep.namespace)


def status(name: str | None = None, timeout_s: float = 10.0) -> dict[str, Any]:
    """The deployed fleet as the coordinator, the node actors and Ray see it (JSON-ready)."""
    dep = load_deployment(name)
    out: dict[str, Any] = {"fleet": dep.name, "config": dep.config, "address": dep.address,
                           "frontend": dep.frontend, "backend": dep.backend,
                           "started_head": dep.started_head, "deploy_s": dep.deploy_s}
    try:
        ensure_connected(dep.address, dep.namespace, dep.started_head)
    except Exception as exc:
        raise FleetError(f"cannot reach the Ray cluster at {dep.address}: {reason(exc)}") from exc
    import ray

    try:
        coord = ray.get_actor(COORDINATOR_ACTOR, namespace=dep.namespace)
        out["coordinator"] = ray.get(coord.status.remote(), timeout=timeout_s)
        out["http"] = out["coordinator"].get("http")
        out["metrics"] = out["coordinator"].get("metrics")
    except Exception as exc:
        out["coordinator"] = {"error": reason(exc)}
    seen = out["coordinator"].get("nodes", {})
    nodes = {}
    for n in dep.nodes:
        entry: dict[str, Any] = {"ready": n in seen, **seen.get(n, {})}
        try:
            handle: Any = ray.get_actor(node_actor_name(n), namespace=dep.namespace)
            info: Any = ray.get(handle.info.remote(), timeout=timeout_s)
            entry["actor"] = {k: info[k] for k in ("pid", "serving", "restarted", "stats")}
            entry["max_batch"] = info.get("max_batch")
            entry["threads"] = info.get("threads")
            if info.get("spin") is not None:  # llama.cpp experts: their threads' spin count
                entry["spin"] = info["spin"]
            if info.get("prefix") is not None:  # and their prompt reuse (mode, tokens asked, reused)
                entry["prefix"] = info["prefix"]
        except Exception as exc:
            entry["actor"] = {"error": reason(exc)}
        nodes[n] = entry
    out["nodes"] = nodes
    out["ray"] = {"nodes_alive": sum(1 for x in ray.nodes() if x.get("Alive")),
                  "cluster_resources": ray.cluster_resources(),
                  "available_resources": ray.available_resources()}
    return out


def down(name: str | None = None) -> dict[str, Any]:
    """Remove a deployed fleet: its actors, and its local head if :func:`deploy
    <edge_moe.fleet.launch.deploy>` started it.

    Returns:
        ``{"fleet", "actors_killed", "head_stopped", "survivors"}``.

    Raises:
        FleetError: processes we started survived SIGKILL (named by PID).
    """
    dep = load_deployment(name)
    killed = []
    try:
        if dep.started_head and not owned_processes(dep):
            raise FleetError("its head is gone")
        ensure_connected(dep.address, dep.namespace, dep.started_head)
        import ray

        for actor in [COORDINATOR_ACTOR, *(node_actor_name(n) for n in dep.nodes)]:
            try:
                ray.kill(ray.get_actor(actor, namespace=dep.namespace), no_restart=True)
                killed.append(actor)
            except ValueError:
                pass  # never created, or already gone
    except Exception as exc:
        logger.warning("could not reach Ray at %s to kill actors: %s", dep.address, reason(exc))
    finally:
        disconnect()
    survivors: list[int] = []
    if dep.started_head:
        survivors = kill_pids(owned_processes(dep), dep.head_pgid)
        survivors = [p for p in survivors if pid_alive(p)] or [p for p in owned_processes(dep) if pid_alive(p)]
        if not survivors and dep.ray_tmpdir.startswith("/tmp/emray-"):
            shutil.rmtree(dep.ray_tmpdir, ignore_errors=True)
    dep.state_path.unlink(missing_ok=True)
    if survivors:
        raise FleetError(f"fleet '{dep.name}': Ray processes we started survived SIGKILL: {survivors}")
    return {"fleet": dep.name, "actors_killed": killed, "head_stopped": dep.started_head,
            "survivors": survivors}


def kill_node(node: str, restart: bool = True, name: str | None = None) -> None:
    """``ray.kill`` a node's actor; with ``restart`` Ray starts it again (it re-sends READY)."""
    import ray

    ray.kill(node_actor(node, name), no_restart=not restart)
