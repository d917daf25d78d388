"""A multi-host network on one machine: Linux network namespaces joined by veth pairs.

::

    hub namespace:  bridge br0 ── one veth end per host (the test takes a link down here)
    host namespaces: <prefix>-head 10.77.0.1, <prefix>-w1 10.77.0.2, ... each with eth0 + lo

Only these namespaces see the 10.77.0.0/24 traffic: nothing is routed to or from the
machine's own network. :class:`Net` creates them and removes them (and every process it
started in them, by process group and private ``RAY_TMPDIR``) in :meth:`Net.close`, which
the fixture calls on every exit path. Needs root (CAP_NET_ADMIN); :func:`why_not` says why
not when namespaces cannot be made.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from edge_moe.fleet.head import kill_pids, procs_in_group, procs_mentioning

SUBNET = "10.77.0"
REPO = Path(__file__).resolve().parents[3]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=20)


def why_not() -> str | None:
    """None when this process can make network namespaces, else the reason."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"emprobe{uuid.uuid4().hex[:6]}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        return f"cannot create a network namespace (needs root / CAP_NET_ADMIN): {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=20)
    return None


@dataclass
class Host:
    """One namespace: its name, address, veth ends and private folders."""

    name: str
    ns: str
    ip: str
    veth_host: str
    veth_hub: str
    root: Path
    procs: list[tuple[int, str]] = field(default_factory=list)  # (pgid, marker)

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def ray_tmpdir(self) -> str:
        return str(self.root / "ray")


class Net:
    """The hub, the hosts, and what was started in them; :meth:`close` removes it all."""

    def __init__(self, names: list[str], workdir: Path) -> None:
        self.tag = uuid.uuid4().hex[:5]
        self.hub = f"em{self.tag}-hub"
        self.hosts: dict[str, Host] = {}
        self.workdir = workdir
        self._namespaces: list[str] = []
        try:
            self._add_ns(self.hub)
            _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.hub, "link", "set", "br0", "up")
            for i, name in enumerate(names):
                self._add_host(i, name)
        except BaseException:
            self.close()
            raise

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def _add_host(self, i: int, name: str) -> None:
        ns = f"em{self.tag}-{name}"
        # a short tmp root: Ray's unix sockets live under RAY_TMPDIR (limit ~107 characters)
        root = Path(f"/tmp/em{self.tag}{name}")
        root.mkdir(parents=True)
        h = Host(name, ns, f"{SUBNET}.{i + 1}", f"em{self.tag}{i}h", f"em{self.tag}{i}b", root)
        self._add_ns(ns)
        _ip("link", "add", h.veth_host, "netns", ns, "type", "veth", "peer", "name", h.veth_hub,
            "netns", self.hub)
        _ip("-n", ns, "addr", "add", f"{h.ip}/24", "dev", h.veth_host)
        _ip("-n", ns, "link", "set", h.veth_host, "up")
        _ip("-n", self.hub, "link", "set", h.veth_hub, "master", "br0")
        _ip("-n", self.hub, "link", "set", h.veth_hub, "up")
        self.hosts[name] = h

    # ------------------------------------------------------------ processes

    def env(self, host: str, **extra: str) -> dict[str, str]:
        """The environment of a process on ``host``: its own cache, state and Ray temp dir."""
        h = self.hosts[host]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
        # this checkout first, for the raylets' workers too (not only where the venv points)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
        env.update({"EDGE_MOE_CACHE": str(h.cache), "EDGE_MOE_STATE": str(h.root / "state"),
                    "RAY_TMPDIR": h.ray_tmpdir, "RAY_AUTH_MODE": "token",
                    "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
                    "OMP_NUM_THREADS": "1"}, **extra)
        return env

    def popen(self, host: str, args: list[str], log: Path, env: dict[str, str] | None = None,
              cwd: str | None = None) -> subprocess.Popen[bytes]:
        """Start ``args`` inside ``host``'s namespace, in a new session, output to ``log``."""
        h = self.hosts[host]
        with log.open("ab") as fh:  # a file, not a pipe: Ray's daemons inherit it
            p = subprocess.Popen(["ip", "netns", "exec", h.ns, *args], env=env or self.env(host),
                                 cwd=cwd, start_new_session=True, stdin=subprocess.DEVNULL,
                                 stdout=fh, stderr=subprocess.STDOUT)
        h.procs.append((p.pid, h.ray_tmpdir))
        return p

    def run(self, host: str, args: list[str], timeout_s: float, env: dict[str, str] | None = None,
            cwd: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``args`` in ``host``'s namespace to completion (output captured)."""
        h = self.hosts[host]
        return subprocess.run(["ip", "netns", "exec", h.ns, *args], env=env or self.env(host), cwd=cwd,
                              capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)

    def stop_host(self, host: str) -> list[int]:
        """SIGTERM then SIGKILL every process started on ``host`` (its groups and Ray temp dir)."""
        h = self.hosts[host]
        survivors: list[int] = []
        for pgid, marker in h.procs:
            pids = set(procs_in_group(pgid)) | set(procs_mentioning(marker))
            survivors += kill_pids(sorted(pids - {os.getpid()}), pgid, grace_s=3.0)
        h.procs.clear()
        return survivors

    def link(self, host: str, up: bool) -> None:
        """Take ``host``'s link up or down (its veth end on the hub's bridge)."""
        _ip("-n", self.hub, "link", "set", self.hosts[host].veth_hub, "up" if up else "down")

    # ------------------------------------------------------------ teardown

    def close(self) -> None:
        """Stop every process started here, then delete the namespaces (their veths go too)."""
        for name in list(self.hosts):
            try:
                self.stop_host(name)
            except Exception:  # keep tearing down
                pass
        for ns in reversed(self._namespaces):
            # a process still inside would keep the namespace alive: kill what remains
            r = _ip("netns", "pids", ns, check=False)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", ns, check=False)
        self._namespaces.clear()
        time.sleep(0.2)
        for h in self.hosts.values():
            shutil.rmtree(h.root, ignore_errors=True)
