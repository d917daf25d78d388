"""Helpers the multi-host test runs *inside* a namespace (``python -m tests.multihost.agent``).

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

import argparse
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

OPTIONS = ["red", "green", "blue", "black"]


def load(args: argparse.Namespace) -> int:
    from edge_moe.client import EdgeMoEClient
    from edge_moe.security import load_client_keys
    from edge_moe.wire import Reply

    curve = load_client_keys(args.keys, "client") if args.keys else None
    out = open(args.out, "a", buffering=1)
    lock = threading.Lock()
    stop = Path(args.stop_file)

    def emit(rec: dict[str, Any]) -> None:
        with lock:
            out.write(json.dumps(rec) + "\n")

    def worker(w: int) -> None:
        i = 0
        with EdgeMoEClient(args.endpoint, timeout_s=args.timeout_s, retries=0, curve=curve) as c:
            while not stop.exists():
                t0 = time.time()
                try:
                    r = c.query(f"w{w} item {i}: which colour?", OPTIONS, top_k=args.top_k,
                                deadline_ms=args.deadline_ms)
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

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.close()
    return 0


def watch(args: argparse.Namespace) -> int:
    import ray

    from edge_moe import fleet as F

    dep = F.connect(args.name)
    coord = ray.get_actor(F.COORDINATOR_ACTOR, namespace=dep.namespace)
    stop = Path(args.stop_file)
    with open(args.out, "a", buffering=1) as out:
        while not stop.exists():
            t = time.time()
            try:
                st: Any = ray.get(coord.status.remote(), timeout=5)
                out.write(json.dumps({"t": t, "live": sorted(st["live_experts"]),
                                      "nodes": {n: v["live"] for n, v in st["nodes"].items()}}) + "\n")
            except Exception as exc:
                out.write(json.dumps({"t": t, "error": repr(exc)[:300]}) + "\n")
            time.sleep(max(0.0, args.every_s - (time.time() - t)))
    F.disconnect()
    return 0


def info(args: argparse.Namespace) -> int:
    """Print each node actor's ``info()`` as one JSON object (node → info)."""
    import ray

    from edge_moe import fleet as F

    dep = F.connect(args.name)
    out = {n: ray.get(F.node_actor(n, args.name).info.remote(), timeout=30) for n in dep.nodes}
    print(json.dumps(out, default=str))
    F.disconnect()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.multihost.agent")
    sub = ap.add_subparsers(dest="cmd", required=True)
    lp = sub.add_parser("load")
    lp.add_argument("--endpoint", required=True)
    lp.add_argument("--keys")
    lp.add_argument("--concurrency", type=int, default=4)
    lp.add_argument("--top-k", type=int, default=4)
    lp.add_argument("--deadline-ms", type=float, default=2000)
    lp.add_argument("--timeout-s", type=float, default=6.0)
    lp.add_argument("--out", required=True)
    lp.add_argument("--stop-file", required=True)
    wp = sub.add_parser("watch")
    wp.add_argument("--name", required=True)
    wp.add_argument("--every-s", type=float, default=0.1)
    wp.add_argument("--out", required=True)
    wp.add_argument("--stop-file", required=True)
    ip = sub.add_parser("info")
    ip.add_argument("--name", required=True)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return {"load": load, "watch": watch, "info": info}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
