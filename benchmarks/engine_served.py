"""The served level of the engine benchmark (``benchmarks/engine_bench.py``): one model behind a
fleet, through its OpenAI-compatible HTTP front.

One run (:func:`served_run`) deploys a ONE-node, ONE-expert fleet with ``edge-moe deploy``
(a subprocess; a local Ray head on loopback; a private ``EDGE_MOE_STATE``; the real cache):
``nodes[0].threads`` as the runner level, the expert the demo's ONNX artifact (runner
``onnxruntime``) or the source GGUF (runner ``llama.cpp``), the coordinator's HTTP front on a
free loopback port. The coordinator loads the real MiniLM encoder, as the demo does (a pinned
query's prompt is not embedded: its one expert answers with weight 1); its
gate, calibration table and profiles are synthetic, made here for that one expert (with one
expert every plan is that expert, and the reply must name it). Then, with the ``openai``
client, :data:`WARMUPS` requests and :data:`REQUESTS` measured ones, one at a time, each
streaming ``POST /v1/completions`` (``model`` pins the expert; ``max_tokens`` new tokens,
temperature 0 = greedy; ``stream_options.include_usage``):

- **TTFT** ms: the request sent → the first chunk with text;
- **decode tok/s**: (completion tokens − 1) / (last chunk with text − first chunk with text);
  the completion tokens are the stream's usage chunk (the node's token count; cross-checked
  with the decision's ``n_tokens``);
- **node peak RSS** MB: ``VmHWM`` of the node actor's process (its PID from ``edge-moe status
  --json``), read after the requests and before ``edge-moe down``; a Ray worker process, so
  it holds Ray's own memory beside the runner's.

Both endpoints hand the prompt to the node as is, and the node formats it with the model's chat
template when the model has one (``chat=None`` at ``runner.generate``): the served prompt is
the runner level's prompt inside the chat template, longer by the template's tokens (each run
records both counts). Medians over the measured requests; :func:`served_run` raises
``RuntimeError`` when a step fails or Ray processes survive ``edge-moe down``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
EDGE_MOE = REPO / ".venv" / "bin" / "edge-moe"
FLEET_NAME = "engine-bench-served"
NODE = "node-1"
MINILM_DIM = 384  # the embedding width of the cached MiniLM encoder (all-MiniLM-L6-v2)
WARMUPS = 2
REQUESTS = 3
DEPLOY_TIMEOUT_S = 600
REQUEST_TIMEOUT_S = 300
METRICS = (("ttft_ms", "TTFT ms", False), ("decode_tok_s", "decode tok/s", True),
           ("node_peak_rss_mb", "node peak RSS MB", False))  # (key, label, higher is better)


def planner_inputs(d: Path, expert: str | tuple[str, ...],
                   nodes: tuple[str, ...] | None = None) -> tuple[Path, Path, Path]:
    """Synthetic gate, calibration table and profiles for a fleet whose experts are ``expert``
    (one name or several), on ``nodes`` (one per expert; default all on :data:`NODE`), over
    MiniLM's embedding width; (gate, calibration, profiles)."""
    from edge_moe.calibration import save_calibration
    from edge_moe.profiles import save_profiles
    from edge_moe.runtime.toy import write_linear_gate
    from gating.offline.synthetic import make_synthetic_profiles, make_synthetic_table

    names = (expert,) if isinstance(expert, str) else tuple(expert)
    table, size = make_synthetic_table(n_samples=200, n_experts=len(names), n_categories=2,
                                       embedding_dim=MINILM_DIM, seed=0)
    table = dataclasses.replace(table, experts=names)
    prof = make_synthetic_profiles(table, size, seed=0)
    where = nodes or (NODE,) * len(names)
    prof = dataclasses.replace(prof, experts=tuple(dataclasses.replace(e, node=n)
                                                   for e, n in zip(prof.experts, where, strict=True)))
    return (write_linear_gate(d / "gate.onnx", table.experts, MINILM_DIM),
            Path(save_calibration(table, d / "calibration.npz")), Path(save_profiles(prof, d / "profiles.json")))


def write_fleet(path: Path, expert: str, artifact: str, runner: str, precision: str, threads: int,
                spin: int | None = None) -> Path:
    """The one-node, one-expert fleet YAML, with the HTTP front on a free loopback port
    (``spin``: the node's ``nodes[].spin``, None: its default)."""
    fleet = {
        "name": FLEET_NAME,
        "device_classes": {"cpu": {"power_idle_w": 5.0, "power_busy_w": 15.0,
                                   "source": "benchmarks/engine_served.py (energy is not measured here)"}},
        "nodes": [{"name": NODE, "device_class": "cpu", "threads": threads,
                   **({"spin": spin} if spin is not None else {}),
                   # every request repeats one prompt: measure the engine's prefill, not the
                   # prompt cache (benchmarks/prefix_reuse_bench.py measures that)
                   **({"prefix_reuse": "off"} if runner == "llama.cpp" else {})}],
        "experts": [{"name": expert, "node": NODE, "artifact": artifact, "runner": runner,
                     "precision": precision}],
        "categories": ["synth-cat-0", "synth-cat-1"],  # planner_inputs' table
        "coordinator": {"node": NODE, "frontend": "tcp://127.0.0.1:0", "backend": "tcp://127.0.0.1:0",
                        "http": "127.0.0.1:0", "top_k": 1},
    }
    path.write_text(yaml.safe_dump(fleet, sort_keys=False))
    return path


def _cli(args: list[str], env: dict[str, str], timeout_s: float) -> Any:
    """``edge-moe ARGS --json``'s result; RuntimeError with its stderr when it fails."""
    p = subprocess.run([str(EDGE_MOE), *args, "--json"], capture_output=True, text=True, env=env,
                       timeout=timeout_s)
    if p.returncode != 0:
        raise RuntimeError(f"edge-moe {' '.join(args)} exited {p.returncode}:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout)


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/{pid}/status has no VmHWM")


def stream_once(client: Any, expert: str, prompt: str, new_tokens: int) -> dict[str, Any]:
    """One streamed greedy completion; its TTFT, decode tok/s, tokens, chunks and decision."""
    stamps: list[float] = []
    text, usage, decision = [], None, None
    t0 = time.perf_counter()
    stream = client.completions.create(model=expert, prompt=prompt, max_tokens=new_tokens, temperature=0,
                                       stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        now = time.perf_counter()
        for c in chunk.choices:
            if c.text:
                stamps.append(now)
                text.append(c.text)
        usage = chunk.usage or usage
        decision = (chunk.model_extra or {}).get("edge_moe") or decision
    if not stamps or usage is None or decision is None:
        raise RuntimeError(f"the stream lacked text, usage or its decision: usage {usage}, decision {decision}")
    used = [u["name"] for u in decision["experts"]]
    if used != [expert]:
        raise RuntimeError(f"the reply was answered by {used}, expected [{expert!r}]")
    n = usage.completion_tokens
    span = stamps[-1] - stamps[0]
    return {"ttft_ms": (stamps[0] - t0) * 1e3, "decode_tok_s": (n - 1) / span if n > 1 and span > 0 else None,
            "completion_tokens": n, "node_n_tokens": decision["experts"][0]["n_tokens"],
            "text_chunks": len(stamps), "node_compute_ms": decision["experts"][0]["compute_ms"],
            "stage_ms": decision["stage_ms"], "finish": "".join(text)[-40:]}


def _down(env: dict[str, str], failed: bool, fleet: str = FLEET_NAME) -> None:
    """``edge-moe down``; RuntimeError when it fails or Ray processes survive it (after a
    ``failed`` run only logged: a deploy that failed has removed what it started)."""
    try:
        down = _cli(["down", "--fleet", fleet], env, 300)
        if down.get("survivors"):
            raise RuntimeError(f"Ray processes survived edge-moe down: {down['survivors']}")
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        if not failed:
            raise
        logger.warning("edge-moe down after a failed run: %s", exc)


def _median(xs: list[Any]) -> float | None:
    v = [x for x in xs if x is not None]
    return float(np.median(v)) if v else None


def served_run(expert: str, artifact: str, runner: str, precision: str, threads: int, prompt: str,
               new_tokens: int, spin: int | None = None, requests: int = REQUESTS,
               between: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Deploy, measure and tear down one engine's fleet (the module docstring); the medians of
    the measured requests, each request, the node's peak RSS, and how long each step took.
    ``between``: called before each measured request (a paired reference run, e.g. the same
    generation in this process); its results are ``res["between"]``, in order."""
    from openai import OpenAI

    with tempfile.TemporaryDirectory(prefix="engine-served-") as tmp:
        d = Path(tmp)
        env = {**os.environ, "EDGE_MOE_STATE": str(d / "state")}
        gate, cal, prof = planner_inputs(d, expert)
        fleet = write_fleet(d / "fleet.yaml", expert, artifact, runner, precision, threads, spin)
        t0 = time.perf_counter()
        res: dict[str, Any] = {}
        try:
            _cli(["deploy", str(fleet), "--gate", str(gate), "--calibration", str(cal), "--profiles", str(prof),
                  "--timeout-s", str(DEPLOY_TIMEOUT_S)], env, DEPLOY_TIMEOUT_S + 60)
            res["deploy_s"] = time.perf_counter() - t0
            st = _cli(["status", "--fleet", FLEET_NAME], env, 120)
            pid, url = st["nodes"][NODE]["actor"]["pid"], st["http"]
            res.update(node_pid=pid, http=url, node_threads=st["nodes"][NODE].get("threads"),
                       node_spin=st["nodes"][NODE].get("spin"))
            client = OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=REQUEST_TIMEOUT_S, max_retries=0)
            for _ in range(WARMUPS):
                stream_once(client, expert, prompt, new_tokens)
            reqs, res["between"] = [], []
            for _ in range(requests):
                if between is not None:
                    res["between"].append(between())
                reqs.append(stream_once(client, expert, prompt, new_tokens))
            res["node_peak_rss_mb"] = _vm_hwm_mb(pid)
        except BaseException:
            _down(env, failed=True)
            raise
        t1 = time.perf_counter()
        _down(env, failed=False)
        res["down_s"] = time.perf_counter() - t1
    res.update({k: _median([r[k] for r in reqs]) for k in ("ttft_ms", "decode_tok_s")},
               requests=reqs, warmups=WARMUPS, loadavg_1min=os.getloadavg()[0])
    return res
