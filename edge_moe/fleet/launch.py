"""Launching a fleet on Ray: one detached actor per node, one for the coordinator.

:func:`deploy` starts a local Ray head on loopback (:func:`edge_moe.fleet.head.start_local_head`)
or joins ``address``. It checks that every node's custom resource (``edge_moe_node:<name>``)
is in the cluster and free. When shipping (``ship="ray"``, the default when joining a
cluster) it then sends each expert's artifact to its node's host (:mod:`edge_moe.fleet.ship`:
sha256-addressed, verified, cached there, skipped when there) and hands each node actor the
path of its verified copy. With ``coordinator.curve`` it reads the keys folder here and hands
each actor its keys. Then it starts:

- the coordinator as a detached :class:`~edge_moe.fleet.actors.CoordinatorActor` pinned to
  the Ray node that holds the coordinator node's resource (node affinity, so it takes none
  of that resource);
- one detached :class:`~edge_moe.fleet.actors.NodeActor` per node with ``num_cpus=0`` (a
  custom-resource actor otherwise takes a CPU, and the third of three never starts on 2
  cores), ``resources={node.resource: 1}`` and ``max_restarts=-1``. It builds the node's
  runners and runs :class:`nodes.server.NodeServer`, which connects *out* to the coordinator.

Both run at the priority of an ordinary process (:func:`serving_env`; ``EDGE_MOE_NICENESS``,
default 0): Ray renices its worker processes to 15 (its ``worker_niceness``), and at 15 an
expert's compute threads yield to every busier process on the host (measured: 2 cores, two
busy processes, no scheduler autogroups: a 64-token SmolLM2 stream missed its 30 s deadline
at 15, took 2.2 s at 0; ``benchmarks/busy_host.py``).

It returns once the coordinator's registry holds every node (each sent READY), or raises
:class:`~edge_moe.errors.FleetError` naming the nodes that did not and why, after removing
what it started (:func:`edge_moe.fleet.ops.down`). The deployment is recorded
(:class:`~edge_moe.fleet.state.Deployment`) before anything starts, so ``down`` can undo a
deploy that died half way.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_moe.config import FleetConfig, load_fleet
from edge_moe.errors import ArtifactError, ConfigError, FleetError
from edge_moe.fleet.actors import COORDINATOR_ACTOR, CoordinatorActor, NodeActor, node_actor_name
from edge_moe.fleet.driver import ensure_connected, reason
from edge_moe.fleet.head import resolve_endpoint, start_local_head
from edge_moe.fleet.ops import down
from edge_moe.fleet.ship import SHIP_MODES, Listing, RayChannel, ShipEvent, list_artifact
from edge_moe.fleet.ship import ship as ship_one
from edge_moe.fleet.state import Deployment
from edge_moe.paths import state_dir

logger = logging.getLogger(__name__)

NICENESS_ENV = "EDGE_MOE_NICENESS"  # the serving actors' niceness (default 0; Ray's own is 15)


def serving_env() -> dict[str, Any]:
    """The serving actors' ``runtime_env``. Ray's core worker reads ``RAY_worker_niceness``
    when it starts and renices the worker to it (default 15); here it is ``$EDGE_MOE_NICENESS``
    or 0, the priority of any process on the host. It is the actor's own environment, so it
    holds on a ``ray start`` cluster too.

    Raises:
        ConfigError: ``EDGE_MOE_NICENESS`` is not an integer in -20..19.
    """
    raw = os.environ.get(NICENESS_ENV, "0").strip()
    try:
        nice = int(raw)
    except ValueError:
        nice = None
    if nice is None or not -20 <= nice <= 19:
        raise ConfigError(f"{NICENESS_ENV}={raw!r}: expected an integer niceness from -20 to 19 "
                          "(0, the default: an ordinary process's priority; Ray's own default is 15)")
    return {"env_vars": {"RAY_worker_niceness": str(nice)}}


def deploy(fleet: FleetConfig, address: str | None = None, *, gate: str | os.PathLike[str],
           calibration: str | os.PathLike[str], profiles: str | os.PathLike[str],
           encoder: str | None = None, toy_encoder_dim: int | None = None, toy: bool = False,
           toy_delay_ms: float = 0.0, artifacts: str | None = None, threads: int | None = None,
           meter: str = "auto", num_cpus: int | None = None, object_store_mb: int = 256,
           ready_timeout_s: float = 120.0, replace: bool = False,
           check_artifacts: bool = True, ship: str = "auto", verify_cached: bool = False,
           curve_keys: str | os.PathLike[str] | None = None,
           progress: Callable[[ShipEvent], None] | None = None) -> Deployment:
    """Deploy ``fleet`` and return once every node sent READY to the coordinator.

    Args:
        fleet: the loaded fleet config.
        address: None starts a local head on loopback; ``"auto"`` or ``host:port`` (or
            ``ray://host:port``) joins an existing cluster.
        gate, calibration, profiles: the coordinator's inputs (paths readable where the
            coordinator actor runs).
        encoder / toy_encoder_dim: the MiniLM artifact folder (default in the cache), or a
            toy encoder of that dimension (tests).
        toy / toy_delay_ms: serve :class:`edge_moe.runtime.toy.ToyExpert` instead of artifacts.
        artifacts: root for relative artifact paths (default ``$EDGE_MOE_CACHE/artifacts``).
        threads: onnxruntime intra-op threads per runner on every node, overriding the fleet's
            ``nodes[].threads`` (None: each node's, else the cores of its host).
        num_cpus, object_store_mb: for a local head.
        ready_timeout_s: how long to wait for every READY.
        replace: remove a deployment of the same name first.
        check_artifacts: check artifact paths on this machine before starting anything
            (with a local head, or when shipping; nodes check them again when they build
            their runners).
        ship: ``"ray"`` ships each expert's artifact from this machine to its node's host
            through Ray (:mod:`edge_moe.fleet.ship`: sha256-addressed, verified, cached in
            that host's ``$EDGE_MOE_CACHE/artifacts/<sha256>/``, skipped when there);
            ``"path"`` has every node load the fleet file's path on its own disk (the same
            path mode); ``"auto"``: ``"ray"`` when joining a cluster (``address``), else
            ``"path"``.
        verify_cached: re-hash artifacts a host already has (default: sizes only).
        curve_keys: the folder from ``edge-moe keys``, read here, when
            ``coordinator.curve`` is on: the coordinator gets ``server.key_secret`` and
            ``authorized/``, each node ``server.key`` and its key pair (``<node>.key_secret``,
            else ``client.key_secret``). They travel in Ray's actor arguments.
        progress: called with each :class:`~edge_moe.fleet.ship.ShipEvent`.

    Returns:
        The :class:`Deployment`, also saved to the state file.

    Raises:
        ConfigError: ``EDGE_MOE_NICENESS`` is not a niceness (:func:`serving_env`).
        FleetError: a node's resource is not in the cluster, an artifact is missing, an
            actor failed to start, or READY did not arrive in time; it names the nodes
            and why, and removes what this call started.
    """
    t0 = time.monotonic()
    runtime_env = serving_env()  # read once; a bad EDGE_MOE_NICENESS fails before anything starts
    existing = state_dir() / f"{fleet.name}.json"
    if existing.is_file():
        if not replace:
            raise FleetError(f"fleet '{fleet.name}' is already deployed ({existing}); "
                             "run `edge-moe down` first")
        down(fleet.name)
    if ship not in SHIP_MODES:
        raise FleetError(f"unknown ship mode '{ship}'; choose one of {list(SHIP_MODES)}")
    mode = ("ray" if address is not None else "path") if ship == "auto" else ship
    mismatch = inputs_mismatch(fleet, gate, calibration, profiles)
    if mismatch:
        raise FleetError("cannot deploy: " + "; ".join(mismatch))
    if not toy and check_artifacts and (address is None or mode == "ray"):
        bad = _precheck_artifacts(fleet, artifacts)
        if bad:
            raise FleetError("cannot deploy: " + "; ".join(f"node {n}: {why}" for n, why in bad.items()))
    keys = _curve_bundle(fleet, curve_keys) if fleet.coordinator.curve else None
    frontend = resolve_endpoint(fleet.coordinator.frontend)
    backend = resolve_endpoint(fleet.coordinator.backend)
    namespace = f"edge-moe-{fleet.name}"
    if address is None:
        addr, pgid, pids, tmpdir = start_local_head(fleet, num_cpus, object_store_mb)
        dep = Deployment(fleet.name, fleet.path, namespace, addr, frontend, backend, True, pgid, pids,
                         tmpdir, [n.name for n in fleet.nodes], created=time.time())
    else:
        dep = Deployment(fleet.name, fleet.path, namespace, address, frontend, backend, False,
                         nodes=[n.name for n in fleet.nodes], created=time.time())
    dep.save()  # from here on, `down` can undo whatever happens next
    try:
        ensure_connected(dep.address, namespace, dep.started_head)
        _place(dep, fleet, gate, calibration, profiles, encoder, toy_encoder_dim, toy, toy_delay_ms,
               artifacts, threads, meter, ready_timeout_s,
               _Shipping(mode == "ray" and not toy, verify_cached, progress), keys, runtime_env)
    except BaseException:
        try:
            down(fleet.name)
        except Exception:
            logger.exception("cleaning up after a failed deploy")
        raise
    dep.deploy_s = round(time.monotonic() - t0, 2)
    dep.save()
    return dep


@dataclass(frozen=True)
class _Shipping:
    on: bool
    verify_cached: bool
    progress: Callable[[ShipEvent], None] | None


def _place(dep: Deployment, fleet: FleetConfig, gate: Any, calibration: Any, profiles: Any,
           encoder: str | None, toy_encoder_dim: int | None, toy: bool, toy_delay_ms: float,
           artifacts: str | None, threads: int | None, meter: str, ready_timeout_s: float,
           shipping: _Shipping, keys: tuple[dict[str, Any], dict[str, Any]] | None,
           runtime_env: dict[str, Any]) -> None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    have = ray.cluster_resources()
    missing = {n.name: n.resource for n in fleet.nodes if have.get(n.resource, 0) < 1}
    if missing:
        raise FleetError("cannot deploy: " + "; ".join(
            f"node {n}: Ray resource '{r}' is not in the cluster (start its Ray node with "
            f"--resources='{{\"{r}\": 1}}')" for n, r in missing.items()))
    free = ray.available_resources()
    busy = {n.name: n.resource for n in fleet.nodes if free.get(n.resource, 0) < 1}
    if busy:
        raise FleetError("cannot deploy: " + "; ".join(
            f"node {n}: Ray resource '{r}' is in use (is another fleet with this node deployed "
            "on this cluster?)" for n, r in busy.items()))
    hosts = {n.name: next((r for r in ray.nodes() if r.get("Alive") and r["Resources"].get(n.resource, 0) >= 1),
                          None) for n in fleet.nodes}
    coord_res = fleet.node(fleet.coordinator.node).resource
    host = hosts[fleet.coordinator.node]
    if host is None:
        raise FleetError(f"cannot deploy: no live Ray node holds '{coord_res}' for the coordinator")
    paths: dict[str, dict[str, str]] = {}
    if shipping.on:
        dep.shipped = _ship_all(dep, fleet, artifacts, {k: v["NodeID"] for k, v in hosts.items() if v},
                                shipping)
        for rec in dep.shipped:
            paths.setdefault(rec["node"], {})[rec["expert"]] = rec["path"]
        dep.save()
    coord_keys, node_keys = keys if keys else (None, {})
    coord: Any = ray.remote(CoordinatorActor).options(  # type: ignore[attr-defined]
        name=COORDINATOR_ACTOR, namespace=dep.namespace, lifetime="detached", num_cpus=0,
        max_restarts=-1, max_concurrency=4, runtime_env=runtime_env,
        scheduling_strategy=NodeAffinitySchedulingStrategy(host["NodeID"], soft=False),
    ).remote(fleet, str(gate), str(calibration), str(profiles), encoder, toy_encoder_dim,
             dep.frontend, dep.backend, coord_keys)
    try:
        ray.get(coord.endpoints.remote(), timeout=ready_timeout_s)
    except Exception as exc:
        raise FleetError(f"the coordinator did not start on node {fleet.coordinator.node}: "
                         f"{reason(exc)}") from exc
    actors = {}
    for n in fleet.nodes:
        actors[n.name] = ray.remote(NodeActor).options(  # type: ignore[attr-defined]
            name=node_actor_name(n.name), namespace=dep.namespace, lifetime="detached",
            num_cpus=0, resources={n.resource: 1}, max_restarts=-1, max_concurrency=4,
            runtime_env=runtime_env,
        ).remote(fleet, n.name, dep.backend, artifacts, toy, toy_delay_ms, threads, meter,
                 paths.get(n.name), node_keys.get(n.name))
    _wait_ready(coord, actors, ready_timeout_s)


def _wait_ready(coord: Any, actors: dict[str, Any], timeout_s: float) -> None:
    import ray

    probes = {a.info.remote(): name for name, a in actors.items()}
    failed: dict[str, str] = {}
    end = time.monotonic() + timeout_s
    ready: set[str] = set()
    while time.monotonic() < end:
        if probes:
            done, _ = ray.wait(list(probes), num_returns=len(probes), timeout=0.2)
            for ref in done:
                name = probes.pop(ref)
                try:
                    ray.get(ref)
                except Exception as exc:
                    failed[name] = reason(exc)
        else:
            time.sleep(0.1)
        ready = set(ray.get(coord.status.remote(), timeout=10)["nodes"])
        if ready >= set(actors):
            return
        if failed and not probes:  # every actor is up or dead: no point waiting on
            break
    why = {n: failed.get(n, f"no READY within {timeout_s:.0f} s") for n in actors if n not in ready}
    raise FleetError("nodes did not become ready: " + "; ".join(f"node {n}: {r}" for n, r in why.items()))


def _ship_all(dep: Deployment, fleet: FleetConfig, artifacts: str | None, ray_nodes: dict[str, str],
              shipping: _Shipping) -> list[dict[str, Any]]:
    """Ship every expert's artifact to its node's Ray node; one record per expert.

    Each artifact is hashed once here, however many nodes take it; one receiver actor
    per Ray node, removed afterwards. A node on this driver's own Ray node (this host's
    disk) loads the source path: ``local`` in its record.
    """
    import ray

    from edge_moe.paths import artifacts_dir

    root = Path(artifacts) if artifacts else artifacts_dir()
    listings: dict[str, Listing] = {}
    channels: dict[str, RayChannel] = {}
    out: list[dict[str, Any]] = []
    here = ray.get_runtime_context().get_node_id()
    try:
        for e in fleet.experts:
            src = Path(e.artifact) if Path(e.artifact).is_absolute() else root / e.artifact
            key = str(src)
            t0 = time.monotonic()
            if key not in listings:
                listings[key] = list_artifact(src)
            hash_s = time.monotonic() - t0
            rid = ray_nodes[e.node]
            if rid == here:
                out.append({"node": e.node, "expert": e.name, "digest": listings[key].digest, "path": key,
                            "bytes": listings[key].total_bytes, "skipped": False, "local": True,
                            "seconds": 0.0, "hash_s": round(hash_s, 3)})
                continue
            if rid not in channels:
                channels[rid] = RayChannel(rid, dep.namespace)
            rec = ship_one(channels[rid], e.node, e.name, src, listing=listings[key],
                           verify_cached=shipping.verify_cached, progress=shipping.progress)
            out.append({**asdict(rec), "local": False, "hash_s": round(hash_s, 3)})
    except ArtifactError as exc:
        raise FleetError(f"cannot deploy: {exc}") from exc
    finally:
        for ch in channels.values():
            ch.close()
    return out


def _curve_bundle(fleet: FleetConfig, directory: str | os.PathLike[str] | None
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The coordinator's keys and each node's, read from ``edge-moe keys``' folder here."""
    from edge_moe.security import load_client_keys, load_server_keys

    if directory is None:
        raise FleetError(f"{fleet.path}: coordinator.curve is on: give the keys folder (--curve-keys)")
    server = load_server_keys(directory)
    authorized = {p.stem: p.read_text() for p in sorted(server.authorized_dir.glob("*.key"))}
    coord = {"public": server.public, "secret": server.secret, "authorized": authorized}
    nodes = {}
    for n in fleet.nodes:
        name = n.name if (Path(directory) / f"{n.name}.key_secret").is_file() else "client"
        if name not in authorized:
            raise FleetError(f"{directory}: node {n.name}'s key '{name}.key' is not in authorized/ "
                             f"(run `edge-moe keys --client {n.name}`)")
        nodes[n.name] = load_client_keys(directory, name)
    if fleet.coordinator.http:  # the HTTP front beside the coordinator is one of its clients
        name = "http" if (Path(directory) / "http.key_secret").is_file() else "client"
        if name not in authorized:
            raise FleetError(f"{directory}: the HTTP front's key '{name}.key' is not in authorized/ "
                             "(run `edge-moe keys --client http`)")
        coord["http_client"] = load_client_keys(directory, name)
    return coord, nodes


def inputs_mismatch(fleet: FleetConfig, gate: str | os.PathLike[str], calibration: str | os.PathLike[str],
                    profiles: str | os.PathLike[str]) -> list[str]:
    """Why the coordinator's inputs do not fit ``fleet``: each of the gate, the calibration
    table and the profiles must know every expert of the fleet (a gate made for other
    experts would refuse every query with ``no_experts``). They may know more: the gate is
    trained once on all experts and masked to the ones deployed. One problem per file,
    naming both lists and the missing experts; a file that cannot be read is a problem too.
    Empty when they fit."""
    from edge_moe.calibration import load_calibration
    from edge_moe.errors import EdgeMoEError
    from edge_moe.profiles import load_profiles
    from edge_moe.runtime.gate import OnnxGate

    want = sorted(e.name for e in fleet.experts)
    readers = {"gate": (gate, lambda p: OnnxGate.load(p).experts),
               "calibration table": (calibration, lambda p: load_calibration(p).experts),
               "profiles": (profiles, lambda p: load_profiles(p).names)}
    out = []
    for what, (path, read) in readers.items():
        try:
            have = sorted(read(path))
        except EdgeMoEError as exc:
            out.append(f"the {what} {path} cannot be read: {exc}")
            continue
        missing = sorted(set(want) - set(have))
        if missing:
            out.append(f"the {what} {path} is for experts {have}, the fleet '{fleet.name}' has {want} "
                       f"(unknown to it: {missing})")
    return out


def _precheck_artifacts(fleet: FleetConfig, artifacts: str | None) -> dict[str, str]:
    """Node → why it cannot start, for artifacts missing on *this* machine (local heads)."""
    from edge_moe.paths import artifacts_dir

    root = Path(artifacts) if artifacts else artifacts_dir()
    bad: dict[str, str] = {}
    for e in fleet.experts:
        if not e.artifact:
            bad.setdefault(e.node, f"expert '{e.name}' has no artifact")
            continue
        p = Path(e.artifact)
        p = p if p.is_absolute() else root / p
        if not p.exists():
            bad.setdefault(e.node, f"expert '{e.name}': artifact {p} does not exist "
                                   f"(export it: `edge-moe export ...`)")
    return bad


def deploy_from_path(config: str | os.PathLike[str], address: str | None = None, **kw: Any) -> Deployment:
    """:func:`deploy` for a fleet YAML path (the CLI)."""
    return deploy(load_fleet(config), address, **kw)
