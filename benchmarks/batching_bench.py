"""Node dynamic-batching benchmark (not a test): one node, ``max_batch`` 1 vs 8, side by side.

Each arm is a real node process (:class:`nodes.server.NodeServer` over an
:class:`edge_moe.runtime.decoder.OrtRunner` on the SmolLM2-135M artifact, 2 intra-op threads)
connected to this script's ROUTER, which plays the coordinator and keeps ``c`` TASKs in
flight (closed loop) for c = 1, 4, 8, 16:

- **scoring**: real MMLU questions in the zero-shot letter format (4 options);
- **generation**: short instructions, greedy, ``max_new_tokens`` tokens (chat template).

The arms run one after the other for every cell (so drift hits both alike) while the other
node process idles. Per cell: q/s, tok/s (generation), p50 / p99 latency (TASK sent → RESULT
read). The arms:

- ``serial``: ``max_batch: 1`` (one TASK at a time, as before batching);
- ``batch8``: ``max_batch: 8``, ``batch_wait_ms: 5``;
- ``batch8-noprepack`` (``--lean``): ``batch8`` with onnxruntime's weight prepacking off (MLAS
  then keeps no packed second copy of the MatMul weights: less memory, slower GEMMs).

With ``--gguf FILE`` the node serves that GGUF through :class:`edge_moe.runtime.gguf.GgufRunner`
instead (2 threads, spin 300 as a lone node, ``prefix_reuse: exact``): ``serial`` is one
sequence at a time (``llama_cpp_batch: off``), ``batch8`` decodes up to 8 together
(``llama_cpp_batch: exact``: a KV stream per sequence, no flash attention); option scoring is
one at a time in both. Writes ``batching_bench_gguf.*`` by default.

Every arm runs with the runtime's memory defaults otherwise (CPU arena off; the node trims
its heap after loading and after each batch when idle).

Each node's RSS (VmRSS) is read after load and after the run (idle), divided by the
artifact's bytes on disk, with its peak (VmHWM).

Run: ``.venv/bin/python benchmarks/batching_bench.py [--lean] [--artifact DIR] [--gguf FILE]`` (about
5 minutes on 2 cores); writes ``benchmarks/results/batching_bench.json`` and ``.md``.
Energy is not part of this benchmark.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GEN_PROMPTS = [
    "Name three colours.", "What is the capital of Italy?", "Write a haiku about rain.",
    "Give one tip for learning to cook.", "Explain what a CPU does in one sentence.",
    "List two animals that live in the sea.", "Say hello in French.", "Why is the sky blue?",
]


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _node_main(endpoint: str, artifact: str, max_batch: int, lean: bool) -> None:
    import logging

    from edge_moe.config import CoordinatorConfig, DeviceClass
    from nodes.server import HostedExpert, NodeServer

    logging.basicConfig(level=logging.WARNING)
    runner: Any
    if artifact.endswith(".gguf"):  # as nodes.build makes it for llama_cpp_batch off / exact
        from edge_moe.runtime.gguf import GgufRunner
        from nodes.build import SPIN_ALONE

        runner = GgufRunner(artifact, intra_op_threads=2, spin=SPIN_ALONE, n_seq=max_batch)
    else:
        from edge_moe.runtime.decoder import OrtRunner

        runner = OrtRunner(artifact, intra_op_threads=2, prepack=not lean)
    cfg = CoordinatorConfig(node="bench", heartbeat_s=1.0, liveness=1000)
    server = NodeServer("bench", endpoint, {"e": HostedExpert(runner)}, DeviceClass("cpu", 5.0, 15.0, "bench"),
                        cfg, max_batch=max_batch, batch_wait_ms=5.0)
    try:
        server.run()
    finally:
        server.close()


class Driver:
    """The ROUTER a node connects to; sends TASKs, reads RESULTs."""

    def __init__(self) -> None:
        import zmq

        self.zmq = zmq
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.identity: bytes | None = None

    def _recv(self, timeout_s: float) -> Any:
        from edge_moe.wire import decode

        if not self.sock.poll(timeout_s * 1000):
            raise TimeoutError("node silent")
        identity, *frames = self.sock.recv_multipart()
        return identity, decode(frames)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        from edge_moe.wire import Ready

        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            identity, msg = self._recv(end - time.monotonic())
            if isinstance(msg, Ready):
                self.identity = identity
                return
        raise TimeoutError("no READY")

    def run(self, tasks: list[Any], concurrency: int) -> dict[str, Any]:
        from edge_moe.wire import Error, Heartbeat, Result, encode

        assert self.identity is not None
        sent: dict[str, float] = {}
        lat: list[float] = []
        tokens = errors = 0
        todo = list(tasks)
        t0 = time.perf_counter()

        def send() -> None:
            task = todo.pop(0)
            sent[task.id] = time.perf_counter()
            self.sock.send_multipart([self.identity, *encode(task)])

        for _ in range(min(concurrency, len(todo))):
            send()
        while sent:
            _, msg = self._recv(600)
            if isinstance(msg, Heartbeat):
                continue
            if isinstance(msg, (Result, Error)) and msg.id in sent:
                lat.append((time.perf_counter() - sent.pop(msg.id)) * 1e3)
                if isinstance(msg, Result):
                    tokens += msg.n_tokens
                else:
                    errors += 1
                if todo:
                    send()
        wall = time.perf_counter() - t0
        return {"n": len(lat), "errors": errors, "wall_s": round(wall, 3), "qps": round(len(lat) / wall, 3),
                "tok_s": round(tokens / wall, 2), "p50_ms": round(float(np.percentile(lat, 50)), 1),
                "p99_ms": round(float(np.percentile(lat, 99)), 1)}

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def _tasks(kind: str, n: int, tag: str, mmlu: list[str], max_new: int) -> list[Any]:
    from edge_moe.wire import Task

    if kind == "scoring":
        return [Task(f"{tag}-{i}", "e", mmlu[i % len(mmlu)], 600_000, ("A", "B", "C", "D")) for i in range(n)]
    return [Task(f"{tag}-{i}", "e", GEN_PROMPTS[i % len(GEN_PROMPTS)], 600_000, None,
                 max_new_tokens=max_new) for i in range(n)]


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
DEFAULT_OUT = str(ROOT / "benchmarks" / "results" / "batching_bench")


@app.command(help=__doc__.split("\n")[0])
def main(
    artifact_opt: Annotated[str | None, typer.Option("--artifact", help="decoder artifact (default: SmolLM2 fp32 in the cache)")] = None,
    gguf: Annotated[Path | None, typer.Option(help="serve this GGUF through llama.cpp instead")] = None,
    lean: Annotated[bool, typer.Option("--lean", help="add the batch8-noprepack arm")] = False,
    concurrency: str = "1,4,8,16",
    max_new_tokens: int = 32,
    rounds: Annotated[int, typer.Option(help="requests per cell = rounds × max(c, 4)")] = 2,
    out_prefix: Annotated[str | None, typer.Option("--out")] = None,
) -> int:
    from edge_moe.calibration import letter_prompt
    from edge_moe.paths import artifacts_dir
    from exporters.assets import mmlu_rows

    artifact = gguf or Path(artifact_opt or artifacts_dir() / "smollm2-135m-instruct" / "fp32")
    out_prefix = out_prefix or DEFAULT_OUT + ("_gguf" if gguf else "")
    rows = mmlu_rows()[::97][:64]
    mmlu = [letter_prompt(r["question"], [r[f"answer_{c}"] for c in "abcd"], r["topic"]) for r in rows]
    arms = [("serial", 1, False), ("batch8", 8, False)] + ([("batch8-noprepack", 8, True)] if lean else [])
    ctx = mp.get_context("spawn")
    drivers: dict[str, Driver] = {}
    procs: dict[str, Any] = {}
    art_mb = (artifact.stat().st_size if artifact.is_file()
              else sum(f.stat().st_size for f in artifact.iterdir() if f.is_file())) / 2**20
    out: dict[str, Any] = {"artifact": str(artifact), "artifact_mb": round(art_mb, 1), "cpu": platform.processor()
                           or platform.machine(), "cores": os.cpu_count(), "max_new_tokens": max_new_tokens,
                           "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "cells": [], "rss": {}}
    try:
        for name, mb, arm_lean in arms:
            d = Driver()
            p = ctx.Process(target=_node_main, args=(d.endpoint, str(artifact), mb, arm_lean), daemon=True)
            p.start()
            d.wait_ready()
            drivers[name], procs[name] = d, p
            out["rss"][name] = {"after_load_mb": round(_rss_mb(p.pid), 1)}
        for name, d in drivers.items():  # warm-up: first runs allocate
            d.run(_tasks("scoring", 8, f"w{name}s", mmlu, max_new_tokens), 8)
            d.run(_tasks("generation", 8, f"w{name}g", mmlu, 8), 8)
        for kind in ("generation", "scoring"):
            for c in [int(x) for x in concurrency.split(",")]:
                n = rounds * max(c, 4) * (1 if kind == "generation" else 2)
                for name, d in drivers.items():
                    r = d.run(_tasks(kind, n, f"{name}-{kind}-{c}", mmlu, max_new_tokens), c)
                    cell = {"kind": kind, "concurrency": c, "arm": name, **r}
                    out["cells"].append(cell)
                    print(json.dumps(cell), flush=True)
        time.sleep(1.0)  # idle: the node trims its heap after a batch
        for name, p in procs.items():
            out["rss"][name]["after_run_mb"] = round(_rss_mb(p.pid), 1)
            out["rss"][name]["peak_mb"] = round(_rss_mb(p.pid, "VmHWM"), 1)
            out["rss"][name]["over_artifact"] = round(out["rss"][name]["after_run_mb"] / art_mb, 2)
    finally:
        for p in procs.values():
            p.terminate()
            p.join(10)
        for d in drivers.values():
            d.close()
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
    Path(out_prefix + ".json").write_text(json.dumps(out, indent=2) + "\n")
    Path(out_prefix + ".md").write_text(_table(out))
    print(_table(out))
    return 0


def _table(out: dict[str, Any]) -> str:
    cells = out["cells"]
    arms = list(dict.fromkeys(c["arm"] for c in cells))
    lines = [f"# batching_bench ({out['started']}; {out['artifact']}, {out['artifact_mb']} MB; "
             f"{out['cores']} cores; max_new_tokens {out['max_new_tokens']})", ""]
    for kind, metric in (("generation", "tok_s"), ("scoring", "qps")):
        lines += [f"## {kind}", "", "| c | " + " | ".join(f"{a} {metric} | {a} p50/p99 ms" for a in arms)
                  + " | " + " | ".join(f"{a}/serial" for a in arms[1:]) + " |",
                  "|" + "---|" * (1 + 2 * len(arms) + len(arms) - 1)]
        for c in dict.fromkeys(x["concurrency"] for x in cells if x["kind"] == kind):
            row = {x["arm"]: x for x in cells if x["kind"] == kind and x["concurrency"] == c}
            base = row["serial"][metric] or float("nan")
            lines.append(f"| {c} | " + " | ".join(f"{row[a][metric]} | {row[a]['p50_ms']}/{row[a]['p99_ms']}"
                                                  for a in arms)
                         + " | " + " | ".join(f"{row[a][metric] / base:.2f}x" for a in arms[1:]) + " |")
        lines.append("")
    lines += ["## node RSS", "", "| arm | after load MB | after run (idle) MB | ÷ artifact | peak MB |",
              "|---|---|---|---|---|"]
    for a, r in out["rss"].items():
        lines.append(f"| {a} | {r['after_load_mb']} | {r.get('after_run_mb', '-')} | {r.get('over_artifact', '-')} "
                     f"| {r.get('peak_mb', '-')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    app()
