"""Coordinator benchmark (not a test): serving overhead, routing rate, and a Ray peer.

With 3 node processes on loopback, each serving a trivial ONNX expert
(:class:`edge_moe.runtime.toy.ToyExpert`, ~0.05 ms of compute), and the coordinator in its own
process, it prints:

1. the coordinator's overhead per options query at k = 3: client-measured end-to-end time
   minus the slowest chosen expert's compute ms (as the node reported it), p50 and p99;
2. routing decisions per second with the embedding excluded: :meth:`gating.coordinator.routing.Router.route`
   (the query checks, gate logits (ORT), the cached plan over the live set and the top-k
   weights) with an embedder that hands back prepared embeddings;
3. the same 3-way fan-out as Ray actor calls from one driver (``ray.get`` of three
   ``.remote`` calls to actors holding the same toy experts), in the same run: end-to-end
   minus the slowest compute, p50 and p99.

Targets (issue 5): overhead p50 <= 0.5 ms, p99 <= 2 ms; >= 5x lower than Ray; >= 20k
decisions/s.

With ``--baseline-tree DIR`` (a checkout of an older commit, e.g.
``git worktree add /tmp/edge-moe-old <commit>``), 1 and 2 are measured for both trees side by
side in one run, alternating ``--rounds`` times (each tree's coordinator and nodes run from
its own code), and the new ÷ old ratios are printed: a refactor is "no slower" when they sit
within the round-to-round spread.

    .venv/bin/python benchmarks/coordinator_bench.py [--queries 2000] [--no-ray]
    .venv/bin/python benchmarks/coordinator_bench.py --baseline-tree /tmp/edge-moe-old --no-ray

Writes ``benchmarks/results/coordinator_bench.json``.
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

import numpy as np
import typer
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_moe.client import EdgeMoEClient  # noqa: E402
from edge_moe.config import BudgetConfig  # noqa: E402
from edge_moe.runtime.toy import ToyEncoder, ToyExpert  # noqa: E402
from edge_moe.wire import Query, Reply  # noqa: E402
from gating.coordinator.routing import Status, load_router  # noqa: E402
from gating.offline.synthetic import write_toy_inputs  # noqa: E402

DIM = 16
OPTIONS = ["red", "green", "blue", "black"]


def prompt(i: int) -> str:
    return f"Question {i}: which colour is item {i * 7919 % 101} of the set? Answer:"


def make_assets(d: Path) -> tuple[Path, Path, Path, Path, tuple[str, ...]]:
    """Synthetic 3-expert planner inputs, a fitted linear gate, a fleet with top_k = 3."""
    table, cal, prof, gate = write_toy_inputs(d, n_experts=3, embedding_dim=DIM, seed=0)
    fleet = {
        "name": "bench",
        "device_classes": {"cpu": {"power_idle_w": 5.0, "power_busy_w": 15.0, "source": "bench"}},
        "nodes": [{"name": f"node-{i}", "device_class": "cpu"} for i in range(3)],
        "experts": [{"name": e, "node": f"node-{i}"} for i, e in enumerate(table.experts)],
        "categories": list(table.category_names),
        "coordinator": {"node": "node-0", "heartbeat_s": 1.0, "liveness": 3, "top_k": 3},
    }
    fleet_path = d / "fleet.yaml"
    fleet_path.write_text(yaml.safe_dump(fleet))
    return Path(cal), Path(prof), gate, fleet_path, table.experts


def pct(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "mean": float(a.mean()), "n": int(a.size)}


def entry_points(tree: Path) -> tuple[list[str], list[str]]:
    """How ``tree`` starts a coordinator and a node: ``edge-moe coordinator|node`` (the one
    CLI), or the per-module mains of trees older than it."""
    if (tree / "gating" / "coordinator.py").exists():
        return ["gating.coordinator"], ["nodes.server"]
    return ["edge_moe.cli", "coordinator"], ["edge_moe.cli", "node"]


def node_backend_flag(tree: Path) -> str:
    """The node's option for the coordinator's backend: ``--backend`` (the one CLI's name
    since its conventions), ``--endpoint`` in older trees."""
    cli = tree / "edge_moe" / "cli" / "node.py"
    return "--backend" if cli.exists() and "backend: Annotated" in cli.read_text() else "--endpoint"


def bench_zmq(d: Path, n_queries: int, tree: Path = REPO) -> dict:
    cal, prof, gate, fleet, experts = make_assets(d)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
    coord_cmd, node_cmd = entry_points(tree)
    coord = subprocess.Popen([sys.executable, "-m", *coord_cmd, "--config", str(fleet),
                              "--gate", str(gate), "--calibration", str(cal), "--profiles", str(prof),
                              "--toy-encoder", str(DIM), "--frontend", "tcp://127.0.0.1:*",
                              "--backend", "tcp://127.0.0.1:*"],
                             cwd=tree, env=env, stdout=subprocess.PIPE, text=True)
    procs = [coord]
    try:
        assert coord.stdout is not None
        words = coord.stdout.readline().split()
        frontend, backend = words[2], words[4]
        for i in range(3):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", *node_cmd, "--config", str(fleet), "--node", f"node-{i}",
                 "--toy", node_backend_flag(tree), backend, "--meter", "modelled"],
                cwd=tree, env=env, stdout=subprocess.DEVNULL))
        with EdgeMoEClient(frontend, timeout_s=5) as client:
            end = time.monotonic() + 30
            while time.monotonic() < end:
                r = client.query("warm up", OPTIONS)
                if isinstance(r, Reply) and len(r.plan.live) == 3:
                    break
                time.sleep(0.1)
            for i in range(200):  # warm caches (plans, ORT, sockets)
                client.query(prompt(i), OPTIONS)
            e2e, overhead, k, stages = [], [], [], {}
            for i in range(n_queries):
                t0 = time.perf_counter()
                r = client.query(prompt(i), OPTIONS)
                ms = (time.perf_counter() - t0) * 1e3
                assert isinstance(r, Reply), r
                e2e.append(ms)
                overhead.append(ms - max(u.compute_ms for u in r.experts))
                k.append(len(r.experts))
                for s, v in r.stage_ms.items():
                    stages.setdefault(s, []).append(v)
        return {"end_to_end_ms": pct(e2e), "overhead_ms": pct(overhead),
                "experts_per_query": float(np.mean(k)),
                "stage_ms_p50": {s: float(np.median(v)) for s, v in stages.items()},
                "plan": list(r.plan.experts)}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)


class Prepared:
    """An embedder that hands back prepared embeddings in turn, so the embedding is excluded."""

    def __init__(self, embeddings: np.ndarray) -> None:
        self.embeddings, self.i = embeddings, 0

    def embed(self, texts: list[str]) -> np.ndarray:
        e = self.embeddings[self.i % len(self.embeddings)][None]  # (1, D)
        self.i += 1
        return e


def bench_decisions(d: Path, seconds: float = 2.0) -> dict:
    cal, prof, gate, _, experts = make_assets(d)
    queries = [Query(f"q{i}", prompt(i), tuple(OPTIONS)) for i in range(256)]
    embedder = Prepared(ToyEncoder(DIM).embed([q.prompt for q in queries]))
    router = load_router(gate, cal, prof, BudgetConfig(), top_k=3, embedder=embedder)
    live = tuple(experts)
    assert router.route(queries[0], live).status == Status.OK  # and the plan is cached
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for q in queries:
            router.route(q, live)
        n += len(queries)
    dt = time.perf_counter() - t0
    return {"decisions_per_s": n / dt, "us_per_decision": dt / n * 1e6}


def bench_ray(n_queries: int) -> dict:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    tmp = tempfile.mkdtemp(prefix="ray-bench-")
    os.environ["RAY_TMPDIR"] = tmp
    import ray

    ray.init(num_cpus=3, object_store_memory=80 * 1024 * 1024, include_dashboard=False,
             log_to_driver=False)
    try:
        @ray.remote(num_cpus=0)
        class Expert:
            def __init__(self, name: str) -> None:
                sys.path.insert(0, str(REPO))
                from edge_moe.runtime.toy import ToyExpert as _Toy

                self.expert = _Toy(name)

            def score(self, p: str, options: list[str]) -> tuple[list[float], float]:
                t0 = time.perf_counter()
                lp = self.expert.score_options(p, options)
                return lp.tolist(), (time.perf_counter() - t0) * 1e3

        actors = [Expert.remote(f"ray-expert-{i}") for i in range(3)]  # type: ignore[attr-defined]
        for i in range(200):
            ray.get([a.score.remote(prompt(i), OPTIONS) for a in actors])
        e2e, overhead = [], []
        for i in range(n_queries):
            t0 = time.perf_counter()
            out = ray.get([a.score.remote(prompt(i), OPTIONS) for a in actors])
            ms = (time.perf_counter() - t0) * 1e3
            e2e.append(ms)
            overhead.append(ms - max(c for _, c in out))
        return {"end_to_end_ms": pct(e2e), "overhead_ms": pct(overhead)}
    finally:
        ray.shutdown()


def decisions_in(tree: Path, seconds: float = 2.0) -> dict:
    """:func:`bench_decisions` with ``tree``'s router, in a process of its own."""
    code = ("import json, pathlib, sys, tempfile; sys.path.insert(0, sys.argv[1]); "
            "import coordinator_bench as cb; "
            "print(json.dumps(cb.bench_decisions(pathlib.Path(tempfile.mkdtemp()), float(sys.argv[2]))))")
    out = subprocess.run([sys.executable, "-c", code, str(tree / "benchmarks"), str(seconds)], cwd=tree,
                         env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True,
                         check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def side_by_side(baseline: Path, n_queries: int, rounds: int) -> dict:
    """Old tree and this one, alternating: ZeroMQ overhead and routing decisions per round."""
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    for r in range(rounds):
        for name, tree in (("old", baseline), ("new", REPO)) if r % 2 == 0 else (("new", REPO), ("old", baseline)):
            with tempfile.TemporaryDirectory() as d:
                z = bench_zmq(Path(d), n_queries, tree)
            dec = decisions_in(tree)
            runs[name].append({"overhead_ms": z["overhead_ms"], "end_to_end_ms": z["end_to_end_ms"],
                               "decisions_per_s": dec["decisions_per_s"]})
            print(f"  round {r + 1} {name}: overhead p50 {z['overhead_ms']['p50']:.3f} ms "
                  f"p99 {z['overhead_ms']['p99']:.3f} ms; {dec['decisions_per_s']:,.0f} decisions/s",
                  flush=True)

    def med(name: str, f) -> float:  # type: ignore[no-untyped-def]
        return float(np.median([f(x) for x in runs[name]]))

    keys = {"overhead_p50_ms": lambda x: x["overhead_ms"]["p50"],
            "overhead_p99_ms": lambda x: x["overhead_ms"]["p99"],
            "end_to_end_p50_ms": lambda x: x["end_to_end_ms"]["p50"],
            "decisions_per_s": lambda x: x["decisions_per_s"]}
    summary = {k: {"old": med("old", f), "new": med("new", f), "new_over_old": med("new", f) / med("old", f)}
               for k, f in keys.items()}
    return {"baseline_tree": str(baseline), "rounds": rounds, "runs": runs, "summary": summary}


def main(
    queries: Annotated[int, typer.Option(help="timed queries per measurement")] = 2000,
    no_ray: Annotated[bool, typer.Option("--no-ray", help="skip the Ray actor comparison")] = False,
    out: Annotated[Path, typer.Option(help="results JSON")] = REPO / "benchmarks" / "results" / "coordinator_bench.json",
    baseline_tree: Annotated[Path | None, typer.Option(help="an older checkout to measure side by side")] = None,
    rounds: Annotated[int, typer.Option(help="alternating rounds per tree with --baseline-tree")] = 4,
) -> None:
    """Coordinator benchmark: serving overhead, routing rate, a Ray peer, and an older tree."""
    ToyExpert("warm")  # import ORT once here, not inside a timing
    if baseline_tree is not None:
        res = side_by_side(baseline_tree.resolve(), queries, rounds)
        print(f"old tree {baseline_tree} vs this tree, {rounds} alternating rounds of {queries} queries "
              "(medians over rounds; new/old):")
        for k, v in res["summary"].items():
            print(f"  {k:20s} old {v['old']:12,.3f}  new {v['new']:12,.3f}  new/old {v['new_over_old']:.3f}")
        res["machine"] = f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
        res["command"] = "benchmarks/coordinator_bench.py " + " ".join(sys.argv[1:])
        side = out.with_name(out.stem + "_side_by_side.json")
        side.write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {side}")
        return
    with tempfile.TemporaryDirectory() as d:
        zmq_res = bench_zmq(Path(d), queries)
        dec = bench_decisions(Path(d))
    ray_res = None if no_ray else bench_ray(queries)
    result = {"machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
              "command": "benchmarks/coordinator_bench.py " + " ".join(sys.argv[1:]),
              "zmq": zmq_res, "routing": dec, "ray": ray_res}
    o = zmq_res["overhead_ms"]
    print(f"ZeroMQ coordinator, k={zmq_res['experts_per_query']:.2f} experts/query, "
          f"{o['n']} queries on loopback")
    print(f"  end-to-end  p50 {zmq_res['end_to_end_ms']['p50']:.3f} ms  p99 {zmq_res['end_to_end_ms']['p99']:.3f} ms")
    print(f"  overhead    p50 {o['p50']:.3f} ms  p99 {o['p99']:.3f} ms   (target p50 <= 0.5, p99 <= 2)")
    print("  coordinator stages p50 (ms): " + "  ".join(f"{s}={v:.3f}" for s, v in zmq_res["stage_ms_p50"].items()))
    print(f"routing decisions/s (embedding excluded): {dec['decisions_per_s']:,.0f} "
          f"({dec['us_per_decision']:.1f} us each; target >= 20k/s)")
    if ray_res is not None:
        r = ray_res["overhead_ms"]
        print(f"Ray actor fan-out (3 actors, one driver): overhead p50 {r['p50']:.3f} ms  p99 {r['p99']:.3f} ms")
        print(f"  ZeroMQ path is {r['p50'] / o['p50']:.1f}x lower at p50, {r['p99'] / o['p99']:.1f}x at p99 "
              "(target >= 5x)")
        result["ratio_p50"] = r["p50"] / o["p50"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
