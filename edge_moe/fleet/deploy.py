"""Deploy a fleet through Ray: one detached actor per node, one for the coordinator.

Ray only *places* processes; queries never go through it (ZeroMQ is the data path).

- :func:`deploy` starts a local Ray head on loopback (``ray start --head`` under
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` and its own ``RAY_TMPDIR``; DESIGN.md §6) or
  joins ``address``. It checks that every node's custom resource
  (``edge_moe_node:<name>``) is in the cluster, then starts:

  - the coordinator as a detached actor pinned to the Ray node that holds the
    coordinator node's resource (node affinity, so it takes none of that resource);
  - one detached :class:`NodeActor` per node with ``num_cpus=0`` (a custom-resource actor
    otherwise takes a CPU, and the third of three never starts on 2 cores),
    ``resources={node.resource: 1}`` and ``max_restarts=-1``. It builds the node's runners
    and runs :class:`nodes.server.NodeServer`, which connects *out* to the coordinator.

  It returns once the coordinator's registry holds every node (each sent READY), or
  raises :class:`FleetError` naming the nodes that did not and why, after removing what
  it started.
- :func:`status` asks the coordinator actor for its registry (liveness, last heartbeat,
  per-expert ms and J so far) and each node actor for its process, plus Ray's own view.
- :func:`down` kills this fleet's actors and, only if :func:`deploy` started the head,
  that head's processes by the process group and PIDs it recorded. Never ``ray stop``:
  that kills every Ray process on the machine.

A deployment is recorded in a JSON state file, ``$EDGE_MOE_STATE/<fleet>.json``
(default ``$EDGE_MOE_CACHE/fleet``), so ``status`` and ``down`` work from another process.

This is the only module that imports ``ray``, and it does so lazily: Ray reads
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when it is imported, and a driver for a loopback
head must have it set to 0 first (else it advertises the eth0 address and never reaches
the head; DESIGN.md §6).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_moe.config import FleetConfig, load_fleet
from edge_moe.errors import EdgeMoEError, FleetError
from edge_moe.paths import state_dir

logger = logging.getLogger(__name__)

COORDINATOR_ACTOR = "coordinator"
STATE_FORMAT = "edge-moe-fleet/1"


def node_actor_name(node: str) -> str:
    return f"node:{node}"


# ---------------------------------------------------------------- the actors


class NodeActor:
    """A fleet node inside a Ray actor: builds its runners, serves on a thread.

    Constructed again by Ray after a crash or ``ray.kill(no_restart=False)``; the new
    server connects out and sends READY, so the coordinator uses the node again.
    """

    def __init__(self, fleet: FleetConfig, node: str, endpoint: str, artifacts: str | None,
                 toy: bool, toy_delay_ms: float, threads: int, meter: str) -> None:
        from edge_moe.energy import make_meter
        from nodes.server import NodeServer, build_experts

        logging.basicConfig(level=logging.WARNING)
        kwargs = {"intra_op_threads": threads} if threads and not toy else {}
        experts = build_experts(fleet, node, artifacts, toy, toy_delay_ms, kwargs)
        dc = fleet.device_class_of(node)
        self.node = node
        self.started = time.time()
        self.server = NodeServer(node, endpoint, experts, dc, fleet.coordinator,
                                 meter=make_meter(dc, meter))
        self.thread = threading.Thread(target=self._serve, name=f"edge-moe-{node}", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.server.run()
        finally:
            self.server.close()

    def info(self) -> dict[str, Any]:
        import ray

        ctx = ray.get_runtime_context()
        return {"node": self.node, "pid": os.getpid(), "started": self.started,
                "serving": self.thread.is_alive(), "experts": list(self.server.experts),
                "stats": dict(self.server.stats), "restarted": ctx.was_current_actor_reconstructed,
                "ray_node_id": ctx.get_node_id()}


class CoordinatorActor:
    """The gating coordinator inside a Ray actor; :meth:`status` reads its registry."""

    def __init__(self, fleet: FleetConfig, gate: str, calibration: str, profiles: str,
                 encoder: str | None, toy_encoder_dim: int | None, frontend: str,
                 backend: str) -> None:
        from gating.coordinator import Coordinator, _encoder
        from gating.routing import load_router

        logging.basicConfig(level=logging.WARNING)
        cfg = fleet.coordinator
        router = load_router(gate, calibration, profiles, fleet.budget, cfg.top_k, None)
        embedder: Any
        if toy_encoder_dim:
            from edge_moe.runtime.toy import ToyEncoder

            embedder = ToyEncoder(toy_encoder_dim)
        else:
            embedder = _encoder(encoder)
        self.totals: dict[str, dict[str, float]] = {}
        totals = self.totals

        class _Counting(Coordinator):  # per-expert ms and J so far, for status()
            def _reply(self, envelope: list[bytes], msg: Any) -> None:
                super()._reply(envelope, msg)
                for u in getattr(msg, "experts", ()):
                    t = totals.setdefault(u.name, {"answers": 0, "compute_ms": 0.0, "energy_j": 0.0,
                                                   "failures": 0})
                    if u.status == "ok":
                        t["answers"] += 1
                        t["compute_ms"] += u.compute_ms
                        t["energy_j"] += u.energy_j
                    else:
                        t["failures"] += 1

        self.started = time.time()
        self.coordinator = _Counting(router, embedder, cfg, frontend, backend)
        self.thread = threading.Thread(target=self._serve, name="edge-moe-coordinator", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.coordinator.run()
        finally:
            self.coordinator.close()

    def endpoints(self) -> tuple[str, str]:
        return self.coordinator.frontend_endpoint, self.coordinator.backend_endpoint

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        for _ in range(5):  # the serving thread may change the registry while we copy it
            try:
                entries = list(self.coordinator.registry.nodes)
                break
            except RuntimeError:
                time.sleep(0.001)
        else:
            entries = []
        nodes = {e.name: {"experts": list(e.experts), "device_class": e.ready.device_class,
                          "energy_source": e.ready.energy_source,
                          "last_heartbeat_s_ago": round(now - e.liveness.last_seen, 3),
                          "live": not e.liveness.expired(now)} for e in entries}
        return {"pid": os.getpid(), "started": self.started, "serving": self.thread.is_alive(),
                "frontend": self.coordinator.frontend_endpoint,
                "backend": self.coordinator.backend_endpoint, "nodes": nodes,
                "live_experts": list(self.coordinator.registry.live_experts),
                "in_flight": len(self.coordinator._pending),
                "stats": dict(self.coordinator.stats),
                "experts_so_far": {k: dict(v) for k, v in self.totals.items()}}


# ---------------------------------------------------------------- state


@dataclass
class Deployment:
    """What :func:`deploy` started, as recorded in the state file."""

    name: str
    config: str
    namespace: str
    address: str
    frontend: str
    backend: str
    started_head: bool
    head_pgid: int | None = None
    head_pids: list[int] = field(default_factory=list)
    ray_tmpdir: str = ""
    nodes: list[str] = field(default_factory=list)
    deploy_s: float = 0.0
    created: float = 0.0
    format: str = STATE_FORMAT

    @property
    def state_path(self) -> Path:
        return state_dir() / f"{self.name}.json"

    def save(self) -> Path:
        p = self.state_path
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(p)
        return p


def load_deployment(name: str | None = None) -> Deployment:
    """The recorded deployment ``name``, or the only one recorded.

    Raises:
        FleetError: none recorded, or several and no name given.
    """
    d = state_dir()
    if name is not None:
        p = d / f"{name}.json"
        if not p.is_file():
            raise FleetError(f"no deployed fleet '{name}' (no {p})")
        paths = [p]
    else:
        paths = sorted(d.glob("*.json")) if d.is_dir() else []
        if not paths:
            raise FleetError(f"no deployed fleet recorded in {d} (run `edge-moe deploy CONFIG`)")
        if len(paths) > 1:
            raise FleetError(f"several fleets are deployed ({', '.join(p.stem for p in paths)}); "
                             "name one with --name")
    raw = json.loads(paths[0].read_text())
    if raw.get("format") != STATE_FORMAT:
        raise FleetError(f"{paths[0]}: format {raw.get('format')!r}, expected {STATE_FORMAT!r}")
    return Deployment(**raw)


# ---------------------------------------------------------------- the local head


def _free_port() -> int:
    """A free loopback port *below* the ephemeral range (32768+): a port the kernel hands
    out to outgoing connections can be taken again before the coordinator binds it."""
    import random

    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise FleetError("no free loopback port in 20000-32000")


def resolve_endpoint(endpoint: str) -> str:
    """``tcp://127.0.0.1:0`` or ``:*`` → a concrete free port, so a restarted coordinator
    binds the address the nodes already know."""
    m = re.fullmatch(r"tcp://([^:]+):(0|\*)", endpoint)
    return f"tcp://{m.group(1)}:{_free_port()}" if m else endpoint


def ray_env(tmpdir: str) -> dict[str, str]:
    """The environment for a loopback-only Ray head of our own (DESIGN.md §6)."""
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_TMPDIR": tmpdir, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}


def _procs_in_group(pgid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
            out.append(int(d.name))
    return sorted(out)


def _procs_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (our private RAY_TMPDIR)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            out.append(int(d.name))
    return sorted(out)


def owned_processes(dep: Deployment) -> list[int]:
    """Live processes of the head that ``dep`` started (none when it joined a cluster)."""
    if not dep.started_head:
        return []
    pids = set(_procs_mentioning(dep.ray_tmpdir)) if dep.ray_tmpdir else set()
    if dep.head_pgid:
        pids |= set(_procs_in_group(dep.head_pgid))
    return sorted(p for p in pids if p != os.getpid())


def ensure_auth_token(ray_cmd: str, tmpdir: str) -> None:
    """Make sure Ray's token exists before ``ray start --head`` (token auth is on by default).

    ``ray.init`` creates ``~/.ray/auth_token`` when it is missing, but ``ray start`` refuses
    to, so a fresh machine needs ``ray get-auth-token --generate`` first (it never
    overwrites a token). The token is not printed or logged.
    """
    env = ray_env(tmpdir)
    if env.get("RAY_AUTH_MODE", "token").lower() != "token" or env.get("RAY_AUTH_TOKEN"):
        return
    path = Path(env.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    if path.is_file() and path.stat().st_size > 0:
        return
    proc = subprocess.run([ray_cmd, "get-auth-token", "--generate"], env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120)
    if proc.returncode != 0 or not path.is_file():
        raise FleetError(f"could not create Ray's auth token at {path} (`ray get-auth-token --generate` exit "
                         f"{proc.returncode}): {proc.stderr.strip()[-500:]}")
    logger.info("created Ray's auth token at %s", path)


def start_local_head(fleet: FleetConfig, num_cpus: int | None = None,
                     object_store_mb: int = 256, timeout_s: float = 60.0) -> tuple[str, int, list[int], str]:
    """``ray start --head`` on loopback with every node's resource; (address, pgid, pids, tmpdir).

    It runs in a new session, so the head's daemons share one process group that
    :func:`down` can signal without touching any other Ray on the machine.
    """
    # Short path: Ray puts unix sockets under RAY_TMPDIR (limit ~107 characters).
    tmpdir = tempfile.mkdtemp(prefix=f"emray-{re.sub(r'[^A-Za-z0-9]', '', fleet.name)[:12]}-", dir="/tmp")
    port = _free_port()
    resources = {n.resource: 1 for n in fleet.nodes}
    ray_bin = Path(sys.executable).with_name("ray")
    cmd = [str(ray_bin) if ray_bin.exists() else "ray", "start", "--head", "--port", str(port),
           "--num-cpus", str(num_cpus or os.cpu_count() or 2), "--resources", json.dumps(resources),
           "--include-dashboard=false", "--disable-usage-stats",
           "--object-store-memory", str(object_store_mb * 1024 * 1024),
           "--dashboard-agent-listen-port", str(_free_port()),
           "--min-worker-port", "0", "--max-worker-port", "0"]
    ensure_auth_token(str(ray_bin) if ray_bin.exists() else "ray", tmpdir)
    logger.info("starting a local Ray head: %s", " ".join(cmd))
    log = Path(tmpdir) / "ray-start.log"
    with log.open("w") as fh:  # a file, not a pipe: the daemons inherit it and never close it
        proc = subprocess.Popen(cmd, env=ray_env(tmpdir), start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)
    pgid = proc.pid
    try:
        proc.wait(timeout=timeout_s)
        out = log.read_text(errors="replace")
    except subprocess.TimeoutExpired as exc:
        _kill_pids(sorted(set(_procs_in_group(pgid)) | set(_procs_mentioning(tmpdir))), pgid)
        raise FleetError(f"`ray start --head` did not finish in {timeout_s:.0f} s") from exc
    if proc.returncode != 0:
        _kill_pids(sorted(set(_procs_in_group(pgid)) | set(_procs_mentioning(tmpdir))), pgid)
        raise FleetError(f"`ray start --head` failed (exit {proc.returncode}):\n{out[-2000:]}")
    pids = sorted(set(_procs_in_group(pgid)) | set(_procs_mentioning(tmpdir)))
    return f"127.0.0.1:{port}", pgid, pids, tmpdir


def _kill_pids(pids: Iterable[int], pgid: int | None, grace_s: float = 4.0) -> list[int]:
    """SIGTERM our process group and PIDs, then SIGKILL what remains; returns survivors."""
    pids = list(pids)
    if pgid:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    end = time.monotonic() + grace_s
    alive = pids
    while time.monotonic() < end:
        alive = [p for p in pids if _alive(p)] + (_procs_in_group(pgid) if pgid else [])
        if not alive:
            return []
        time.sleep(0.1)
    for p in set(alive):
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    time.sleep(0.3)
    return sorted({p for p in alive if _alive(p)})


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ---------------------------------------------------------------- connecting


def _connect(address: str, namespace: str, local: bool = True) -> None:
    if local and "ray" not in sys.modules:  # see the module docstring
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # the head's token (~/.ray/auth_token)
    import ray

    hostport = address.split("://")[-1]
    if address != "auto" and ":" in hostport and not address.startswith("ray://"):
        host, port = hostport.rsplit(":", 1)
        try:  # fail in a second, not after ray.init's long retries
            socket.create_connection((host, int(port)), timeout=2).close()
        except OSError as exc:
            raise FleetError(f"the Ray cluster at {address} does not answer: {exc}") from exc
    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        if ctx.namespace == namespace and ctx.gcs_address.endswith(address.split(":")[-1]):
            return
        ray.shutdown()
    ray.init(address=address, namespace=namespace, logging_level=logging.WARNING,
             log_to_driver=False)


def disconnect() -> None:
    """Disconnect this driver (the cluster and the detached actors stay)."""
    if "ray" not in sys.modules:
        return
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _reason(exc: BaseException) -> str:
    """The useful line of a Ray error (the first of our own exceptions in its text)."""
    text = str(exc)
    m = re.search(r"\b(\w+Error|\w+Exception): (.+)", text.split("Traceback")[-1]) or \
        re.search(r"\b(\w+Error|\w+Exception): (.+)", text)
    if m:
        return f"{m.group(1)}: {m.group(2).strip()}"[:500]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:500]


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


# ---------------------------------------------------------------- deploy


def deploy(fleet: FleetConfig, address: str | None = None, *, gate: str | os.PathLike[str],
           calibration: str | os.PathLike[str], profiles: str | os.PathLike[str],
           encoder: str | None = None, toy_encoder_dim: int | None = None, toy: bool = False,
           toy_delay_ms: float = 0.0, artifacts: str | None = None, threads: int = 1,
           meter: str = "auto", num_cpus: int | None = None, object_store_mb: int = 256,
           ready_timeout_s: float = 120.0, replace: bool = False,
           check_artifacts: bool = True) -> Deployment:
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
        threads: onnxruntime intra-op threads per runner.
        num_cpus, object_store_mb: for a local head.
        ready_timeout_s: how long to wait for every READY.
        replace: remove a deployment of the same name first.
        check_artifacts: with a local head, check artifact paths before starting anything
            (nodes check them again when they build their runners).

    Returns:
        The :class:`Deployment`, also saved to the state file.

    Raises:
        FleetError: a node's resource is not in the cluster, an artifact is missing, an
            actor failed to start, or READY did not arrive in time; it names the nodes
            and why, and removes what this call started.
    """
    t0 = time.monotonic()
    existing = state_dir() / f"{fleet.name}.json"
    if existing.is_file():
        if not replace:
            raise FleetError(f"fleet '{fleet.name}' is already deployed ({existing}); "
                             "run `edge-moe down` first")
        down(fleet.name)
    if address is None and not toy and check_artifacts:
        bad = _precheck_artifacts(fleet, artifacts)
        if bad:
            raise FleetError("cannot deploy: " + "; ".join(f"node {n}: {why}" for n, why in bad.items()))
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
        _connect(dep.address, namespace, dep.started_head)
        _place(dep, fleet, gate, calibration, profiles, encoder, toy_encoder_dim, toy, toy_delay_ms,
               artifacts, threads, meter, ready_timeout_s)
    except BaseException:
        try:
            down(fleet.name)
        except Exception:
            logger.exception("cleaning up after a failed deploy")
        raise
    dep.deploy_s = round(time.monotonic() - t0, 2)
    dep.save()
    return dep


def _place(dep: Deployment, fleet: FleetConfig, gate: Any, calibration: Any, profiles: Any,
           encoder: str | None, toy_encoder_dim: int | None, toy: bool, toy_delay_ms: float,
           artifacts: str | None, threads: int, meter: str, ready_timeout_s: float) -> None:
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
    coord_res = fleet.node(fleet.coordinator.node).resource
    host = next((n for n in ray.nodes() if n.get("Alive") and n["Resources"].get(coord_res, 0) >= 1), None)
    if host is None:
        raise FleetError(f"cannot deploy: no live Ray node holds '{coord_res}' for the coordinator")
    coord: Any = ray.remote(CoordinatorActor).options(  # type: ignore[attr-defined]
        name=COORDINATOR_ACTOR, namespace=dep.namespace, lifetime="detached", num_cpus=0,
        max_restarts=-1, max_concurrency=4,
        scheduling_strategy=NodeAffinitySchedulingStrategy(host["NodeID"], soft=False),
    ).remote(fleet, str(gate), str(calibration), str(profiles), encoder, toy_encoder_dim,
             dep.frontend, dep.backend)
    try:
        ray.get(coord.endpoints.remote(), timeout=ready_timeout_s)
    except Exception as exc:
        raise FleetError(f"the coordinator did not start on node {fleet.coordinator.node}: "
                         f"{_reason(exc)}") from exc
    actors = {}
    for n in fleet.nodes:
        actors[n.name] = ray.remote(NodeActor).options(  # type: ignore[attr-defined]
            name=node_actor_name(n.name), namespace=dep.namespace, lifetime="detached",
            num_cpus=0, resources={n.resource: 1}, max_restarts=-1, max_concurrency=4,
        ).remote(fleet, n.name, dep.backend, artifacts, toy, toy_delay_ms, threads, meter)
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
                    failed[name] = _reason(exc)
        else:
            time.sleep(0.1)
        ready = set(ray.get(coord.status.remote(), timeout=10)["nodes"])
        if ready >= set(actors):
            return
        if failed and not probes:  # every actor is up or dead: no point waiting on
            break
    why = {n: failed.get(n, f"no READY within {timeout_s:.0f} s") for n in actors if n not in ready}
    raise FleetError("nodes did not become ready: " + "; ".join(f"node {n}: {r}" for n, r in why.items()))


# ---------------------------------------------------------------- status and down


def connect(name: str | None = None) -> Deployment:
    """Connect this driver to a deployed fleet's cluster and namespace."""
    dep = load_deployment(name)
    _connect(dep.address, dep.namespace, dep.started_head)
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
        _connect(dep.address, dep.namespace, dep.started_head)
    except Exception as exc:
        raise FleetError(f"cannot reach the Ray cluster at {dep.address}: {_reason(exc)}") from exc
    import ray

    try:
        coord = ray.get_actor(COORDINATOR_ACTOR, namespace=dep.namespace)
        out["coordinator"] = ray.get(coord.status.remote(), timeout=timeout_s)
    except Exception as exc:
        out["coordinator"] = {"error": _reason(exc)}
    import ray

    seen = out["coordinator"].get("nodes", {})
    nodes = {}
    for n in dep.nodes:
        entry: dict[str, Any] = {"ready": n in seen, **seen.get(n, {})}
        try:
            handle: Any = ray.get_actor(node_actor_name(n), namespace=dep.namespace)
            info: Any = ray.get(handle.info.remote(), timeout=timeout_s)
            entry["actor"] = {k: info[k] for k in ("pid", "serving", "restarted", "stats")}
        except Exception as exc:
            entry["actor"] = {"error": _reason(exc)}
        nodes[n] = entry
    out["nodes"] = nodes
    out["ray"] = {"nodes_alive": sum(1 for x in ray.nodes() if x.get("Alive")),
                  "cluster_resources": ray.cluster_resources(),
                  "available_resources": ray.available_resources()}
    return out


def down(name: str | None = None) -> dict[str, Any]:
    """Remove a deployed fleet: its actors, and its local head if :func:`deploy` started it.

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
        _connect(dep.address, dep.namespace, dep.started_head)
        import ray

        for actor in [COORDINATOR_ACTOR, *(node_actor_name(n) for n in dep.nodes)]:
            try:
                ray.kill(ray.get_actor(actor, namespace=dep.namespace), no_restart=True)
                killed.append(actor)
            except ValueError:
                pass  # never created, or already gone
    except Exception as exc:
        logger.warning("could not reach Ray at %s to kill actors: %s", dep.address, _reason(exc))
    finally:
        disconnect()
    survivors: list[int] = []
    if dep.started_head:
        survivors = _kill_pids(owned_processes(dep), dep.head_pgid)
        survivors = [p for p in survivors if _alive(p)] or [p for p in owned_processes(dep) if _alive(p)]
        if not survivors and dep.ray_tmpdir.startswith("/tmp/emray-"):
            shutil.rmtree(dep.ray_tmpdir, ignore_errors=True)
    dep.state_path.unlink(missing_ok=True)
    if survivors:
        raise FleetError(f"fleet '{dep.name}': Ray processes we started survived SIGKILL: {survivors}")
    return {"fleet": dep.name, "actors_killed": killed, "head_stopped": dep.started_head,
            "survivors": survivors}


def deploy_from_path(config: str | os.PathLike[str], address: str | None = None, **kw: Any) -> Deployment:
    """:func:`deploy` for a fleet YAML path (the CLI)."""
    return deploy(load_fleet(config), address, **kw)


def kill_node(node: str, restart: bool = True, name: str | None = None) -> None:
    """``ray.kill`` a node's actor; with ``restart`` Ray starts it again (it re-sends READY)."""
    import ray

    ray.kill(node_actor(node, name), no_restart=not restart)
