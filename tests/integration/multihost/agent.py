"""Helpers the multi-host test runs *inside* a namespace (``python -m tests.integration.multihost.agent``).

- ``load``: ``--concurrency`` client threads, each with its own CURVE DEALER, query the
  coordinator until ``--stop-file`` appears; one JSON line per answer (wall time, REPLY or
  ERROR, experts used with their status, degraded) or per client failure (a lost request).
- ``info``: prints every node actor's ``info()`` (what it loaded, from where) as JSON.
- ``watch``: polls the coordinator actor's registry every ``--every-s`` seconds and writes
  one JSON line per poll (wall time, the live experts) until ``--stop-file`` appears. It
  asks the coordinator only: a node actor behind a downed link would stall the poll.

Both write with a flush per line, so the test reads progress while they run. Wall time
(``time.time()``) is one clock across the namespaces of one machine.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

OPTIONS = ["red", "green", "blue", "black"]

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="markdown",
                  help=__doc__, no_args_is_help=True)


@app.callback()
def setup() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@app.command("load")
def load(
    endpoint: Annotated[str, typer.Option()],
    out: Annotated[str, typer.Option()],
    stop_file: Annotated[str, typer.Option()],
    keys: str | None = None,
    concurrency: int = 4,
    top_k: int = 4,
    deadline_ms: float = 2000,
    timeout_s: float = 6.0,
) -> None:
    from edge_moe.client import EdgeMoEClient
    from edge_moe.security import load_client_keys
    from edge_moe.wire import Reply

    curve = load_client_keys(keys, "client") if keys else None
    fh = open(out, "a", buffering=1)
    lock = threading.Lock()
    stop = Path(stop_file)

    def emit(rec: dict[str, Any]) -> None:
        with lock:
            fh.write(json.dumps(rec) + "\n")

    def worker(w: int) -> None:
        i = 0
        with EdgeMoEClient(endpoint, timeout_s=timeout_s, retries=0, curve=curve) as c:
            while not stop.exists():
                t0 = time.time()
                try:
                    r = c.query(f"w{w} item {i}: which colour?", OPTIONS, top_k=top_k,
                                deadline_ms=deadline_ms)
                except Exception as exc:  # a lost request: no answer within timeout_s
                    emit({"t0": t0, "t": time.time(), "kind": "lost", "why": repr(exc)[:300]})
                    continue
                finally:
                    i += 1
                if isinstance(r, Reply):
                    emit({"t0": t0, "t": time.time(), "kind": "reply", "degraded": bool(r.degraded),
                          "experts": {u.name: u.status for u in r.experts}})
                else:
                    emit({"t0": t0, "t": time.time(), "kind": "error", "code": str(r.code),
                          "message": r.message[:300]})

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fh.close()


@app.command("watch")
def watch(
    name: Annotated[str, typer.Option()],
    out: Annotated[str, typer.Option()],
    stop_file: Annotated[str, typer.Option()],
    every_s: float = 0.1,
) -> None:
    import ray

    from edge_moe import fleet as F

    dep = F.connect(name)
    coord = ray.get_actor(F.COORDINATOR_ACTOR, namespace=dep.namespace)
    stop = Path(stop_file)
    with open(out, "a", buffering=1) as fh:
        while not stop.exists():
            t = time.time()
            try:
                st: Any = ray.get(coord.status.remote(), timeout=5)
                fh.write(json.dumps({"t": t, "live": sorted(st["live_experts"]),
                                     "nodes": {n: v["live"] for n, v in st["nodes"].items()}}) + "\n")
            except Exception as exc:
                fh.write(json.dumps({"t": t, "error": repr(exc)[:300]}) + "\n")
            time.sleep(max(0.0, every_s - (time.time() - t)))
    F.disconnect()


@app.command("info")
def info(name: Annotated[str, typer.Option()]) -> None:
    """Print each node actor's ``info()`` as one JSON object (node → info)."""
    import ray

    from edge_moe import fleet as F

    dep = F.connect(name)
    out = {n: ray.get(F.node_actor(n, name).info.remote(), timeout=30) for n in dep.nodes}
    print(json.dumps(out, default=str))
    F.disconnect()


if __name__ == "__main__":
    app(prog_name="python -m tests.integration.multihost.agent")
