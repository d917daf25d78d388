"""A three-host Ray cluster in network namespaces, with a client namespace beside it.

``cluster`` (module scope) makes the namespaces (:mod:`.netns`), runs ``ray start --head``
in ``head`` and ``ray start --address`` in ``w1`` and ``w2``, each with its node's custom
resource, its own ``RAY_TMPDIR`` and its own ``EDGE_MOE_CACHE`` (so each "host" has its own
artifact cache), and writes CURVE keys and toy planner inputs. Teardown stops every process
it started (by process group and private Ray temp dir, never ``ray stop``) and deletes the
namespaces, on every exit path. Skips, saying why, where namespaces cannot be made.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from .netns import Net, why_not

REPO = Path(__file__).resolve().parents[3]
PY = sys.executable
RAY = str(Path(sys.executable).with_name("ray"))
DIM = 16
HOSTS = ["head", "w1", "w2", "client"]
RAY_HOSTS = ["head", "w1", "w2"]
RAY_PORT = 26379
HEARTBEAT_S = 0.3
LIVENESS = 3


@dataclass
class Cluster:
    net: Net
    address: str
    keys: Path
    dir: Path
    calibration: Path
    profiles: Path
    gate: Path
    experts: tuple[str, ...]
    categories: tuple[str, ...]

    def ray_start(self, host: str, attempts: int = 2) -> None:
        """``ray start`` on ``host`` (the head or a worker joining it), waiting until it returns.

        ``ray start`` gives a raylet 30 s (fixed in Ray) to register with the GCS; on 2 busy
        cores that can fail once, so a failed try is stopped and retried."""
        for attempt in range(1, attempts + 1):
            try:
                return self._ray_start(host)
            except RuntimeError as exc:
                survivors = self.net.stop_host(host)
                if attempt == attempts or survivors:
                    raise RuntimeError(f"{exc}\n(survivors after stopping it: {survivors})") from None
                print(f"ray start on {host}: try {attempt} failed, retrying: {str(exc)[-300:]}")

    def _ray_start(self, host: str) -> None:
        h = self.net.hosts[host]
        common = ["--node-ip-address", h.ip, "--num-cpus", "1",
                  "--resources", json.dumps({f"edge_moe_node:{host}": 1}), "--disable-usage-stats",
                  "--object-store-memory", str(128 * 2**20), "--min-worker-port", "0",
                  "--max-worker-port", "0"]
        cmd = ([RAY, "start", "--head", "--port", str(RAY_PORT), "--include-dashboard=false", *common]
               if host == "head" else [RAY, "start", "--address", self.address, *common])
        log = self.dir / f"ray-{host}.log"
        p = self.net.popen(host, cmd, log)
        try:
            rc = p.wait(timeout=90)
        except Exception:
            rc = -1
        if rc != 0:
            raylet = sorted(Path(h.ray_tmpdir).glob("**/logs/raylet.out"), key=lambda p: p.stat().st_mtime)
            tail = raylet[-1].read_text(errors="replace")[-1500:] if raylet else "(no raylet.out)"
            raise RuntimeError(f"ray start on {host} failed ({rc}):\n{log.read_text()[-800:]}\n"
                               f"raylet.out:\n{tail}")

    def fleet(self, name: str, placement: dict[str, list[int]], artifacts: dict[int, str] | None = None,
              toy: bool = True, http: bool = False) -> Path:
        """A fleet YAML: ``placement`` host → expert indices; the coordinator on ``head``
        (``http``: with the OpenAI front on head's address, API key ``multihost-key``)."""
        ip = self.net.hosts["head"].ip
        body = {
            "name": name,
            "device_classes": {"cpu": {"power_idle_w": 5.0, "power_busy_w": 15.0, "source": "test"}},
            "nodes": [{"name": n, "device_class": "cpu", "host": self.net.hosts[n].ip} for n in placement],
            "experts": [{"name": self.experts[i], "node": n,
                         "artifact": (artifacts or {}).get(i, f"toy/{self.experts[i]}")}
                        for n, idx in placement.items() for i in idx],
            "categories": list(self.categories),
            "coordinator": {"node": "head", "frontend": f"tcp://{ip}:0", "backend": f"tcp://{ip}:0",
                            "heartbeat_s": HEARTBEAT_S, "liveness": LIVENESS, "reconnect_min_s": 0.2,
                            "reconnect_max_s": 1.0, "top_k": 4, "curve": True},
        }
        if http:
            keys = self.dir / "api_keys.txt"
            keys.write_text("multihost-key\n")
            body["coordinator"].update(http=f"{ip}:0", http_api_keys=str(keys))
        p = self.dir / f"{name}.yaml"
        p.write_text(yaml.safe_dump(body, sort_keys=False))
        return p

    def edge_moe(self, host: str, *args: str, timeout_s: float = 180) -> str:
        """Run ``edge-moe ARGS`` in ``host``'s namespace; its output (fails the test on exit != 0)."""
        r = self.net.run(host, [PY, "-m", "edge_moe.cli", *args], timeout_s, cwd=str(REPO))
        if r.returncode != 0:
            pytest.fail(f"edge-moe {' '.join(args)} on {host} exited {r.returncode}:\n"
                        f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r.stdout + r.stderr

    def deployment(self, name: str) -> dict[str, object]:
        """The state record deploy wrote on ``head``."""
        return json.loads((self.net.hosts["head"].root / "state" / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    why = why_not()
    if why:
        pytest.skip(f"multi-host test needs network namespaces: {why}")
    from edge_moe.fleet.head import ensure_auth_token
    from edge_moe.security import generate_keys
    from gating.offline.synthetic import write_toy_inputs

    d = tmp_path_factory.mktemp("multihost")
    table, cal, prof, gate = write_toy_inputs(d, n_experts=4, embedding_dim=DIM, seed=5, n_samples=400)
    keys = generate_keys(d / "keys", ("client", *RAY_HOSTS)).directory
    ensure_auth_token(RAY, str(d))  # every "host" shares ~/.ray/auth_token, as real hosts share one token
    net = Net(HOSTS, d)
    namespaces = list(net._namespaces)
    try:
        c = Cluster(net, f"{net.hosts['head'].ip}:{RAY_PORT}", keys, d, Path(cal), Path(prof), Path(gate),
                    table.experts, table.category_names)
        t0 = time.monotonic()
        c.ray_start("head")
        for h in RAY_HOSTS[1:]:
            c.ray_start(h)
        print(f"cluster of {len(RAY_HOSTS)} Ray hosts up in {time.monotonic() - t0:.1f} s")
        yield c
    finally:
        net.close()
        assert not any(Path(f"/run/netns/{ns}").exists() for ns in namespaces), "a namespace survived"
        leftover = [p for p in os.listdir("/proc") if p.isdigit() and _mentions(p, f"/tmp/em{net.tag}")]
        assert not leftover, f"processes of the test's Ray hosts survived: {leftover}"


def _mentions(pid: str, text: str) -> bool:
    try:
        return text in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
