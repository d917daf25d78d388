"""The embedded Ray head: ``ray start --head`` on loopback, and stopping only its processes.

- :func:`start_local_head` runs ``ray start --head`` under
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` and a private ``RAY_TMPDIR`` (:func:`ray_env`;
  docs/design.md §6), in a new session, with every fleet node's custom resource. Its output goes
  to a file, not a pipe: the daemons inherit it and never close it.
- :func:`ensure_auth_token` creates Ray's token first on a fresh machine (token auth is on
  by default, and ``ray start`` refuses to create the token itself).
- Ports come from 20000-32000, below the ephemeral range (:func:`resolve_endpoint`).
- :func:`owned_processes` finds the head's processes again by the process group it
  recorded and by its private ``RAY_TMPDIR``; :func:`kill_pids` stops those and nothing
  else. Never ``ray stop``: that kills every Ray process on the machine.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from edge_moe.config import FleetConfig
from edge_moe.errors import FleetError
from edge_moe.fleet.state import Deployment

logger = logging.getLogger(__name__)

PORT_RANGE = (20000, 32000)  # below the ephemeral range (32768+): see free_port


# ---------------------------------------------------------------- ports


def free_port() -> int:
    """A free loopback port *below* the ephemeral range (32768+): a port the kernel hands
    out to outgoing connections can be taken again before the coordinator binds it.

    Raises:
        FleetError: 200 random tries found none free.
    """
    for _ in range(200):
        port = random.randint(*PORT_RANGE)
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
    return f"tcp://{m.group(1)}:{free_port()}" if m else endpoint


# ---------------------------------------------------------------- starting the head


def ray_env(tmpdir: str) -> dict[str, str]:
    """The environment for a loopback-only Ray head of our own (docs/design.md §6)."""
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_TMPDIR": tmpdir, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}


def ensure_auth_token(ray_cmd: str, tmpdir: str) -> None:
    """Make sure Ray's token exists before ``ray start --head`` (token auth is on by default).

    ``ray.init`` creates ``~/.ray/auth_token`` when it is missing, but ``ray start`` refuses
    to, so a fresh machine needs ``ray get-auth-token --generate`` first (it never
    overwrites a token). The token is not printed or logged.

    Raises:
        FleetError: the token could not be created.
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
    :func:`edge_moe.fleet.down` can signal without touching any other Ray on the machine.

    Raises:
        FleetError: ``ray start`` failed or did not finish in ``timeout_s`` (what it
            started is killed first).
    """
    # Short path: Ray puts unix sockets under RAY_TMPDIR (limit ~107 characters).
    tmpdir = tempfile.mkdtemp(prefix=f"emray-{re.sub(r'[^A-Za-z0-9]', '', fleet.name)[:12]}-", dir="/tmp")
    port = free_port()
    resources = {n.resource: 1 for n in fleet.nodes}
    ray_bin = Path(sys.executable).with_name("ray")
    cmd = [str(ray_bin) if ray_bin.exists() else "ray", "start", "--head", "--port", str(port),
           "--num-cpus", str(num_cpus or os.cpu_count() or 2), "--resources", json.dumps(resources),
           "--include-dashboard=false", "--disable-usage-stats",
           "--object-store-memory", str(object_store_mb * 1024 * 1024),
           "--dashboard-agent-listen-port", str(free_port()),
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
        kill_pids(sorted(set(procs_in_group(pgid)) | set(procs_mentioning(tmpdir))), pgid)
        raise FleetError(f"`ray start --head` did not finish in {timeout_s:.0f} s") from exc
    if proc.returncode != 0:
        kill_pids(sorted(set(procs_in_group(pgid)) | set(procs_mentioning(tmpdir))), pgid)
        raise FleetError(f"`ray start --head` failed (exit {proc.returncode}):\n{out[-2000:]}")
    pids = sorted(set(procs_in_group(pgid)) | set(procs_mentioning(tmpdir)))
    return f"127.0.0.1:{port}", pgid, pids, tmpdir


# ---------------------------------------------------------------- finding and stopping it


def procs_in_group(pgid: int) -> list[int]:
    """Live (non-zombie) PIDs in process group ``pgid``, read from /proc."""
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


def procs_mentioning(text: str) -> list[int]:
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
    pids = set(procs_mentioning(dep.ray_tmpdir)) if dep.ray_tmpdir else set()
    if dep.head_pgid:
        pids |= set(procs_in_group(dep.head_pgid))
    return sorted(p for p in pids if p != os.getpid())


def kill_pids(pids: Iterable[int], pgid: int | None, grace_s: float = 4.0) -> list[int]:
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
        alive = [p for p in pids if pid_alive(p)] + (procs_in_group(pgid) if pgid else [])
        if not alive:
            return []
        time.sleep(0.1)
    for p in set(alive):
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    time.sleep(0.3)
    return sorted({p for p in alive if pid_alive(p)})


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
