"""Fleet benchmark (not a test): end-to-end queries on a local 3-node Ray fleet.

Deploys three toy-expert nodes (trivial ONNX experts with a fixed compute delay) and the
coordinator on an embedded Ray head, then, in one run:

1. closed-loop load at concurrency 1, 4 and 16 (one client socket per worker): queries/s,
   end-to-end p50/p99 ms, and the coordinator's share (its own stage time over end to end);
2. the same load at concurrency 4 while one node actor is killed (Ray restarts it) every
   10 s for 60 s: answered, degraded, errors, lost (a query with no REPLY and no ERROR).

Run: ``.venv/bin/python benchmarks/fleet_bench.py [--seconds 8] [--chaos-s 60] [--json PATH]``.
Stops only what it deployed (``edge_moe.fleet.down``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration" / "fleet"))

from edge_moe import fleet as F  # noqa: E402
from edge_moe.client import EdgeMoEClient  # noqa: E402
from edge_moe.config import load_fleet  # noqa: E402
from edge_moe.wire import Error, Reply  # noqa: E402

OPTIONS = ["red", "green", "blue", "yellow"]


def make_assets(d: Path) -> tuple[Path, dict[str, object]]:
    """The fleet tests' toy inputs (synthetic table, fitted linear gate, 3-node YAML)."""
    from conftest import DIM, write_fleet  # tests/integration/fleet/conftest.py

    from gating.offline.synthetic import write_toy_inputs

    table, cal, prof, gate = write_toy_inputs(d, n_experts=4, embedding_dim=DIM, seed=5, n_samples=400)
    fleet = write_fleet(d / "fleet.yaml", table.experts, table.category_names, "fleet-bench")
    kw = {"gate": gate, "calibration": cal, "profiles": prof, "toy_encoder_dim": DIM, "toy": True,
          "num_cpus": 2, "object_store_mb": 80, "ready_timeout_s": 60}
    return fleet, kw


def load(endpoint: str, workers: int, seconds: float, deadline_ms: float = 1000.0) -> dict[str, object]:
    """Closed-loop load; returns throughput, latency percentiles and outcome counts."""
    lat: list[float] = []
    share: list[float] = []
    counts = {"answered": 0, "degraded": 0, "errors": 0, "lost": 0}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(w: int) -> None:
        with EdgeMoEClient(endpoint, timeout_s=3.0, retries=1) as c:
            i = 0
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    r = c.query(f"w{w} item {i} colour?", OPTIONS, top_k=3, deadline_ms=deadline_ms)
                except Exception:
                    with lock:
                        counts["lost"] += 1
                    continue
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    if isinstance(r, Reply):
                        counts["answered"] += 1
                        counts["degraded"] += int(r.degraded)
                        lat.append(ms)
                        slowest = max((u.compute_ms for u in r.experts), default=0.0)
                        share.append(max(0.0, r.total_ms - slowest) / ms)
                    elif isinstance(r, Error):
                        counts["errors"] += 1
                i += 1

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(workers)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    wall = time.monotonic() - t0
    a = np.array(lat) if lat else np.array([np.nan])
    return {"concurrency": workers, "qps": len(lat) / wall, "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "coordinator_share": float(np.mean(share)) if share else None,
            **counts}


def chaos(endpoint: str, seconds: float, every_s: float, node: str) -> dict[str, object]:
    """Load at concurrency 4 while ``node``'s actor is killed (and restarted) every ``every_s``."""
    result: dict[str, object] = {}
    t = threading.Thread(target=lambda: result.update(load(endpoint, 4, seconds, deadline_ms=500.0)))
    t.start()
    kills = 0
    end = time.monotonic() + seconds
    while time.monotonic() + every_s <= end:
        time.sleep(every_s)
        F.kill_node(node, restart=True)
        kills += 1
    t.join()
    return {**result, "kills": kills, "node": node}


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(
    seconds: Annotated[float, typer.Option(help="seconds per concurrency level")] = 8.0,
    chaos_s: Annotated[float, typer.Option(help="seconds of load with kills")] = 60.0,
    kill_every_s: float = 10.0,
    json_path: Annotated[str | None, typer.Option("--json", help="also write the results here")] = None,
) -> None:
    os.environ.setdefault("EDGE_MOE_STATE", tempfile.mkdtemp(prefix="edge-moe-bench-state-"))
    with tempfile.TemporaryDirectory(prefix="edge-moe-fleet-bench-") as tmp:
        fleet_path, kw = make_assets(Path(tmp))
        t0 = time.monotonic()
        dep = F.deploy(load_fleet(fleet_path), **kw)  # type: ignore[arg-type]
        out: dict[str, object] = {"deploy_s": time.monotonic() - t0, "machine": f"{os.cpu_count()} cores"}
        try:
            rows = []
            for c in (1, 4, 16):
                rows.append(load(dep.frontend, c, seconds))
                r = rows[-1]
                print(f"concurrency {c:2d}: {r['qps']:7.1f} q/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:7.2f} ms"
                      f"  coordinator share {r['coordinator_share']:.2f}  answered {r['answered']} degraded "
                      f"{r['degraded']} errors {r['errors']} lost {r['lost']}", flush=True)
            out["load"] = rows
            ch = chaos(dep.frontend, chaos_s, kill_every_s, "node-c")
            out["chaos"] = ch
            print(f"kill {ch['node']} every {kill_every_s:g} s for {chaos_s:g} s ({ch['kills']} kills) at "
                  f"concurrency 4: answered {ch['answered']}, degraded {ch['degraded']}, errors {ch['errors']}, "
                  f"lost {ch['lost']}; p50 {ch['p50_ms']:.2f} ms p99 {ch['p99_ms']:.2f} ms", flush=True)
        finally:
            F.down(dep.name)
        print(f"deploy {out['deploy_s']:.1f} s; torn down")
        if json_path:
            Path(json_path).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    app()
