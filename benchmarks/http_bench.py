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

``--baseline-tree DIR`` (an older checkout, e.g. ``git worktree add /tmp/edge-moe-old
<commit>``) runs the whole fleet from each tree in turn, alternating ``--rounds`` times, and
prints the new ÷ old ratios of the HTTP and ZeroMQ p50s (``http_bench_side_by_side.json``).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import httpx
import numpy as np
import typer
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
    def __init__(self, args: list[str], ready: str, tree: Path = ROOT) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
        self.p = subprocess.Popen([sys.executable, "-m", *args], cwd=tree, env=env, text=True,
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


def entry_points(tree: Path) -> dict[str, list[str]]:
    """How ``tree`` starts each process: the one CLI, or the per-module mains of older trees."""
    if (tree / "gating" / "coordinator.py").exists():
        return {"coordinator": ["gating.coordinator"], "node": ["nodes.server"], "http": ["gating.http"]}
    return {k: ["edge_moe.cli", k] for k in ("coordinator", "node", "http")}


def node_backend_flag(tree: Path) -> str:
    """The node's option for the coordinator's backend: ``--backend`` (the one CLI's name
    since its conventions), ``--endpoint`` in older trees."""
    cli = tree / "edge_moe" / "cli" / "node.py"
    return "--backend" if cli.exists() and "backend: Annotated" in cli.read_text() else "--endpoint"


def fleet_run(n: int, tree: Path = ROOT) -> dict[str, object]:
    """Start the toy fleet and the front from ``tree``'s code, and :func:`run` the pairs."""
    cmd = entry_points(tree)
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
            coord = Proc([*cmd["coordinator"], "--config", str(d / "fleet.yaml"), "--gate", str(gate),
                          "--calibration", str(cal), "--profiles", str(prof), "--toy-encoder", str(DIM),
                          "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*"],
                         "coordinator frontend", tree)
            procs.append(coord)
            frontend, backend = coord.line.split()[2], coord.line.split()[4]
            for name in NODES:
                procs.append(Proc([*cmd["node"], "--config", str(d / "fleet.yaml"), "--node", name, "--toy",
                                   node_backend_flag(tree), backend, "--meter", "modelled"],
                                  f"node {name} serving", tree))
            front = Proc([*cmd["http"], "--endpoint", frontend, "--listen", "127.0.0.1:0",
                          "--config", str(d / "fleet.yaml")], "http front ", tree)
            procs.append(front)
            url = front.line.split()[2]
            return run(frontend, url, n)
        finally:
            for p in reversed(procs):
                p.stop()


def side_by_side(baseline: Path, n: int, rounds: int) -> dict[str, object]:
    """Old tree and this one, alternating; medians over rounds and new ÷ old per figure."""
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    for r in range(rounds):
        order = (("old", baseline), ("new", ROOT)) if r % 2 == 0 else (("new", ROOT), ("old", baseline))
        for name, tree in order:
            print(f"round {r + 1}: {name} tree", flush=True)
            runs[name].append(fleet_run(n, tree)["results"])  # type: ignore[arg-type]
    summary: dict[str, dict[str, float]] = {}
    for kind in runs["new"][0]:
        for fig in ("zmq_p50_ms", "http_p50_ms", "added_p50_ms", "http_p99_ms"):
            old = float(np.median([x[kind][fig] for x in runs["old"]]))
            new = float(np.median([x[kind][fig] for x in runs["new"]]))
            summary[f"{kind} {fig}"] = {"old": old, "new": new, "new_over_old": new / old if old else float("nan")}
    return {"baseline_tree": str(baseline), "rounds": rounds, "runs": runs, "summary": summary}


def main(
    n: Annotated[int, typer.Option("--n", help="query pairs per kind")] = 300,
    json_out: Annotated[Path, typer.Option("--json", help="results JSON")] = ROOT / "benchmarks" / "results" / "http_bench.json",
    baseline_tree: Annotated[Path | None, typer.Option(help="an older checkout to measure side by side")] = None,
    rounds: Annotated[int, typer.Option(help="alternating rounds per tree with --baseline-tree")] = 4,
) -> None:
    """HTTP front benchmark: the latency the front adds over ZeroMQ, and an older tree."""
    machine = {"nproc": os.cpu_count(), "cpu": platform.processor() or platform.machine()}
    if baseline_tree is not None:
        res = side_by_side(baseline_tree.resolve(), n, rounds)
        print(f"old tree {baseline_tree} vs this tree, {rounds} alternating rounds of {n} pairs "
              "(medians over rounds; new/old):")
        for k, v in res["summary"].items():  # type: ignore[union-attr]
            print(f"  {k:34s} old {v['old']:7.3f}  new {v['new']:7.3f}  new/old {v['new_over_old']:.3f}")
        res["machine"] = machine
        side = json_out.with_name(json_out.stem + "_side_by_side.json")
        side.write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {side}")
        return
    out = fleet_run(n)
    out["machine"] = machine
    json_out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {json_out}")


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
    typer.run(main)
