"""HTTP front benchmark (not a test): the same queries through the OpenAI-compatible HTTP front
and through the ZeroMQ client, side by side in one run; the latency the front adds.

Starts, as real processes on loopback: the coordinator (toy encoder), three toy-expert nodes
(no compute delay, so the coordinator path dominates) and the HTTP front
(``edge-moe http``). Then, alternating one query over ZeroMQ (``EdgeMoEClient``) and
the same query over HTTP (``httpx`` with keep-alive, the body the openai client sends), it
measures end-to-end ms at the client for ``--n`` pairs, for an options query (top-2 mixture)
and a generation (top-1). It prints p50 / p99 per path and the added ms (HTTP − ZeroMQ), and
writes ``benchmarks/results/http_bench.json``.

Run: ``.venv/bin/python benchmarks/http_bench.py [--n 300]`` (about 30 s on 2 cores).
Target (issue 13): at most 1 ms added at p50 on loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_moe.client import EdgeMoEClient  # noqa: E402
from edge_moe.wire import Reply  # noqa: E402
from gating.offline.synthetic import write_toy_inputs  # noqa: E402

DIM = 16
NODES = {"node-a": [0, 1], "node-b": [2], "node-c": [3]}
OPTIONS = ["red", "green", "blue", "black"]


class Proc:
    def __init__(self, args: list[str], ready: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self.p = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        end = time.monotonic() + 60
        assert self.p.stdout is not None
        while time.monotonic() < end:
            line = self.p.stdout.readline()
            if line.startswith(ready):
                self.line = line
                return
            if not line and self.p.poll() is not None:
                break
        raise RuntimeError(f"{args[0]} did not start (wanted {ready!r})")

    def stop(self) -> None:
        self.p.terminate()
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            self.p.kill()


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300, help="query pairs per kind")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "http_bench.json"))
    args = ap.parse_args(argv)
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        table, cal, prof, gate = write_toy_inputs(d, n_experts=4, embedding_dim=DIM, seed=3)
        fleet = {"name": "http-bench",
                 "device_classes": {"cpu": {"power_idle_w": 5.0, "power_busy_w": 15.0, "source": "bench"}},
                 "nodes": [{"name": n, "device_class": "cpu"} for n in NODES],
                 "experts": [{"name": table.experts[i], "node": n, "artifact": f"toy/{table.experts[i]}"}
                             for n, idx in NODES.items() for i in idx],
                 "categories": list(table.category_names),
                 "coordinator": {"node": "node-a", "heartbeat_s": 0.5, "liveness": 4, "top_k": 2}}
        (d / "fleet.yaml").write_text(yaml.safe_dump(fleet))
        try:
            coord = Proc(["edge_moe.cli", "coordinator", "--config", str(d / "fleet.yaml"), "--gate", str(gate),
                          "--calibration", str(cal), "--profiles", str(prof), "--toy-encoder", str(DIM),
                          "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*"],
                         "coordinator frontend")
            procs.append(coord)
            frontend, backend = coord.line.split()[2], coord.line.split()[4]
            for n in NODES:
                procs.append(Proc(["edge_moe.cli", "node", "--config", str(d / "fleet.yaml"), "--node", n, "--toy",
                                   "--endpoint", backend, "--meter", "modelled"], f"node {n} serving"))
            front = Proc(["edge_moe.cli", "http", "--endpoint", frontend, "--listen", "127.0.0.1:0",
                          "--config", str(d / "fleet.yaml")], "http front ")
            procs.append(front)
            url = front.line.split()[2]
            out = run(frontend, url, args.n)
        finally:
            for p in reversed(procs):
                p.stop()
    out["machine"] = {"nproc": os.cpu_count(), "cpu": platform.processor() or platform.machine()}
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


def run(frontend: str, url: str, n: int) -> dict[str, object]:
    kinds = {
        "options top-2": ({"options": OPTIONS, "top_k": 2}, dict(options=OPTIONS, top_k=2)),
        "generation top-1": ({"top_k": 1}, dict(top_k=1, max_new_tokens=4)),
    }
    results: dict[str, object] = {}
    with EdgeMoEClient(frontend, timeout_s=10) as z, httpx.Client(base_url=f"{url}/v1", timeout=10) as h:
        end = time.monotonic() + 20
        while time.monotonic() < end:  # every node ready
            r = z.query("warm up", OPTIONS, top_k=4)
            if isinstance(r, Reply) and len(r.plan.live) == 4:
                break
            time.sleep(0.1)
        for kind, (ext, zmq_kw) in kinds.items():
            zmq_ms: list[float] = []
            http_ms: list[float] = []
            for i in range(n + 20):  # the first 20 pairs warm both paths and are dropped
                prompt = f"question {i}: which colour is item {i * 31 % 97}? Answer:"
                t0 = time.perf_counter()
                r = z.query(prompt, **zmq_kw)
                t1 = time.perf_counter()
                resp = h.post("/chat/completions", json={
                    "model": "edge-moe", "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": 4, "edge_moe": ext})
                t2 = time.perf_counter()
                assert isinstance(r, Reply) and resp.status_code == 200, (r, resp.text)
                if i >= 20:
                    zmq_ms.append((t1 - t0) * 1e3)
                    http_ms.append((t2 - t1) * 1e3)
            row = {"n": n, "zmq_p50_ms": pct(zmq_ms, 50), "zmq_p99_ms": pct(zmq_ms, 99),
                   "http_p50_ms": pct(http_ms, 50), "http_p99_ms": pct(http_ms, 99)}
            row["added_p50_ms"] = row["http_p50_ms"] - row["zmq_p50_ms"]
            row["added_p99_ms"] = row["http_p99_ms"] - row["zmq_p99_ms"]
            results[kind] = row
            print(f"{kind:18s} ZeroMQ p50 {row['zmq_p50_ms']:6.2f} p99 {row['zmq_p99_ms']:6.2f} ms | "
                  f"HTTP p50 {row['http_p50_ms']:6.2f} p99 {row['http_p99_ms']:6.2f} ms | "
                  f"added p50 {row['added_p50_ms']:+.2f} p99 {row['added_p99_ms']:+.2f} ms "
                  f"(target: p50 added <= 1 ms)")
    return {"results": results, "note": "toy experts, no compute delay; loopback; alternating pairs"}


if __name__ == "__main__":
    raise SystemExit(main())
