"""Prefix reuse in the llama.cpp runner (not a test): time to first token with and without it.

:class:`edge_moe.runtime.gguf.GgufRunner` keeps the last request's tokens in its KV cache and
computes only what follows the whole 128-token chunks a new prompt shares with that request's
prompt (``nodes[].reuse_prefix``, on by default). Here two runners on the same GGUF, same
threads, in one process: ``reuse`` (the default) and ``whole`` (``reuse_prefix=False``). Each
request goes to both, one after the other, the order alternating; their greedy tokens must be
equal (the reuse is exact by construction; a difference stops the run). Three workloads, in
this order, each prompt in the chat template (as a node formats a chat request; a base model
without one gets the raw text), ``--new-tokens`` greedy tokens:

- **distinct**: short questions that share nothing but the template (nothing to reuse: the
  cost of the bookkeeping, expected ratio 1);
- **system**: one ~220-token system prompt, then each question, as the HTTP front flattens a
  chat request's messages (``System: …\\nUser: …\\nAssistant:``);
- **conversation**: one conversation of ``--turns`` turns; each turn's prompt holds every
  earlier question and the model's own reply (the front's flattening of the whole history,
  which is what OpenAI chat clients send every turn).

Per workload: median TTFT of each runner, prompt tokens, the share of prompt tokens reused, and
the median of per-request ratios whole ÷ reuse (above 1: reuse is faster) with a 95% bootstrap
interval. The first request of a workload is a warm-up (left out).

``--served`` adds the same workloads through a fleet: one ``edge-moe deploy`` (a local Ray head)
of two nodes on this host, each serving the GGUF (``nodes[].spin`` 300 on both, the same
threads), one with ``reuse_prefix: true`` and one with ``false``; each request is a streamed
``POST /v1/chat/completions`` from the ``openai`` client with ``model`` pinning one node's
expert, the two alternating; the system prompt and the conversation are real ``messages``
(system, user, assistant), flattened by the front. TTFT: request to the first chunk with text;
the two replies must be equal.

    .venv/bin/python benchmarks/prefix_reuse_bench.py [--models ...] [--threads 2] [--served]
        [--out benchmarks/results/prefix_reuse_bench]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "prefix_reuse_bench"
SYSTEM = (
    "You are the support assistant of a small bicycle repair shop. You answer questions from "
    "customers about repairs, prices and opening hours. The shop is open from Tuesday to Saturday, "
    "nine to six, and closed on Sundays and Mondays. A flat tyre repair costs twelve euros and takes "
    "about twenty minutes; a full service costs sixty euros and takes one day, so the bicycle must be "
    "left in the morning. Brake adjustments are free for bicycles bought in the shop during the "
    "first year. We do not repair electric motors, but we replace their batteries when the maker "
    "still sells them. Answer in one or two short sentences, politely, without lists, and say so "
    "when you do not know the answer instead of guessing. Never promise a date for a repair."
)
QUESTIONS = [
    "Are you open on Monday?", "How much is a flat tyre repair?", "Can you fix my e-bike motor?",
    "How long does a full service take?", "Do I pay for brake adjustments?", "When should I bring my bike in?",
    "Do you sell helmets?", "Can you replace my e-bike battery?",
]
DISTINCT = ["What is the capital of France?", "Name three prime numbers.", "Why is the sky blue?",
            "Write a haiku about rain.", "What is 17 times 3?", "Who wrote Hamlet?",
            "What does a CPU do?", "Translate 'good morning' into Spanish."]


def _timed(runner: Any, prompt: str, new_tokens: int) -> dict[str, Any]:
    first: list[float] = []
    before = runner.reused_tokens
    t0 = time.perf_counter()
    g = runner.generate(prompt, new_tokens, on_text=lambda _: first.append(time.perf_counter()) if not first else None)
    return {"ttft_ms": ((first[0] if first else time.perf_counter()) - t0) * 1e3, "prefill_ms": g.prefill_ms,
            "prompt_tokens": len(runner.prompt_ids(prompt)), "reused": runner.reused_tokens - before,
            "tokens": g.token_ids, "text": g.text}


def _pair(reuse: Any, whole: Any, prompt: str, new_tokens: int, i: int) -> tuple[dict[str, Any], dict[str, Any]]:
    if i % 2 == 0:
        a = _timed(reuse, prompt, new_tokens)
        b = _timed(whole, prompt, new_tokens)
    else:
        b = _timed(whole, prompt, new_tokens)
        a = _timed(reuse, prompt, new_tokens)
    if a["tokens"] != b["tokens"]:
        raise SystemExit(f"reuse and whole disagree on {prompt[-80:]!r}: {a['text']!r} vs {b['text']!r}")
    return a, b


def _workloads(reuse: Any, whole: Any, new_tokens: int, turns: int) -> dict[str, list[tuple[dict, dict]]]:
    out: dict[str, list[tuple[dict, dict]]] = {"distinct": [], "system": [], "conversation": []}
    for i, q in enumerate(DISTINCT):
        out["distinct"].append(_pair(reuse, whole, q, new_tokens, i))
    for i, q in enumerate(QUESTIONS):
        out["system"].append(_pair(reuse, whole, f"System: {SYSTEM}\nUser: {q}\nAssistant:", new_tokens, i))
    history = f"System: {SYSTEM}"
    for i in range(turns):
        history += f"\nUser: {QUESTIONS[i % len(QUESTIONS)]}\nAssistant:"
        a, b = _pair(reuse, whole, history, new_tokens, i)
        out["conversation"].append((a, b))
        history += a["text"]
    return out


def _served(model: str, gguf: Path, threads: int, new_tokens: int, turns: int) -> dict[str, list[tuple[dict, dict]]]:
    """The workloads through a two-node fleet (the module docstring)."""
    import tempfile

    import yaml
    from openai import OpenAI

    from benchmarks.engine_served import REQUEST_TIMEOUT_S, _cli, _down, planner_inputs

    names = {"reuse": f"{model}-reuse", "whole": f"{model}-whole"}
    fleet = {
        "name": "prefix-reuse-bench",
        "device_classes": {"cpu": {"power_idle_w": 5.0, "power_busy_w": 15.0,
                                   "source": "benchmarks/prefix_reuse_bench.py (energy is not measured here)"}},
        "nodes": [{"name": n, "device_class": "cpu", "threads": threads, "spin": 300, "reuse_prefix": n == "reuse"}
                  for n in names],
        "experts": [{"name": e, "node": n, "artifact": str(gguf), "runner": "llama.cpp", "precision": "int4"}
                    for n, e in names.items()],
        "categories": ["synth-cat-0", "synth-cat-1"],
        "coordinator": {"node": "reuse", "frontend": "tcp://127.0.0.1:0", "backend": "tcp://127.0.0.1:0",
                        "http": "127.0.0.1:0", "top_k": 1},
    }
    with tempfile.TemporaryDirectory(prefix="prefix-reuse-") as tmp:
        d = Path(tmp)
        env = {**os.environ, "EDGE_MOE_STATE": str(d / "state")}
        gate, cal, prof = planner_inputs(d, tuple(names.values()), tuple(names))
        (d / "fleet.yaml").write_text(yaml.safe_dump(fleet, sort_keys=False))
        try:
            _cli(["deploy", str(d / "fleet.yaml"), "--gate", str(gate), "--calibration", str(cal),
                  "--profiles", str(prof)], env, 900)
            url = _cli(["status", "--fleet", fleet["name"]], env, 120)["http"]
            client = OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=REQUEST_TIMEOUT_S, max_retries=0)

            def one(expert: str, messages: list[dict[str, str]]) -> dict[str, Any]:
                t0, first, text = time.perf_counter(), None, []
                for chunk in client.chat.completions.create(model=expert, messages=messages, max_tokens=new_tokens,
                                                            temperature=0, stream=True):
                    for c in chunk.choices:
                        if c.delta.content:
                            first = first or time.perf_counter()
                            text.append(c.delta.content)
                return {"ttft_ms": ((first or time.perf_counter()) - t0) * 1e3, "text": "".join(text),
                        "prompt_tokens": 0, "reused": 0}

            def pair(messages: list[dict[str, str]], i: int) -> tuple[dict, dict]:
                if i % 2 == 0:
                    a = one(names["reuse"], messages)
                    b = one(names["whole"], messages)
                else:
                    b = one(names["whole"], messages)
                    a = one(names["reuse"], messages)
                if a["text"] != b["text"]:
                    raise SystemExit(f"served reuse and whole disagree: {a['text']!r} vs {b['text']!r}")
                return a, b

            out: dict[str, list[tuple[dict, dict]]] = {"distinct": [], "system": [], "conversation": []}
            for i, q in enumerate(DISTINCT):
                out["distinct"].append(pair([{"role": "user", "content": q}], i))
            for i, q in enumerate(QUESTIONS):
                out["system"].append(pair([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}], i))
            history = [{"role": "system", "content": SYSTEM}]
            for i in range(turns):
                history.append({"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]})
                a, b = pair(list(history), i)
                out["conversation"].append((a, b))
                history.append({"role": "assistant", "content": a["text"]})
        except BaseException:
            _down(env, failed=True, fleet=fleet["name"])
            raise
        _down(env, failed=False, fleet=fleet["name"])
    return out


def _ratio_ci(num: list[float], den: list[float], seed: int = 0) -> dict[str, float]:
    r = np.asarray(num, float) / np.asarray(den, float)
    boots = np.median(r[np.random.default_rng(seed).integers(0, len(r), (2000, len(r)))], axis=1)
    return {"median": float(np.median(r)), "lo": float(np.quantile(boots, 0.025)),
            "hi": float(np.quantile(boots, 0.975))}


def _summary(pairs: list[tuple[dict, dict]]) -> dict[str, Any]:
    m = pairs[1:]  # the first is a warm-up
    on, off = [a["ttft_ms"] for a, _ in m], [b["ttft_ms"] for _, b in m]
    tokens = sum(a["prompt_tokens"] for a, _ in m)
    return {"requests": len(m), "prompt_tokens": float(np.median([a["prompt_tokens"] for a, _ in m])),
            "reused_share": sum(a["reused"] for a, _ in m) / tokens if tokens else None,
            "ttft_ms_reuse": float(np.median(on)), "ttft_ms_whole": float(np.median(off)),
            "ratio": _ratio_ci(off, on),
            "per_request": [{k: v for k, v in a.items() if k not in ("tokens", "text")} | {
                "whole_ttft_ms": b["ttft_ms"]} for a, b in m]}


def _markdown(res: dict[str, Any]) -> str:
    lines = ["# Prefix reuse in the llama.cpp runner: TTFT with and without it\n",
             f"{res['cpu']}, {res['threads']} threads, spin {res['spin']}, {res['new_tokens']} new tokens, greedy; "
             "two runners on the same GGUF in one process, each request to both, the order alternating; "
             "greedy tokens equal on every request (checked). Ratio: median of per-request whole ÷ reuse TTFT "
             "(above 1: reuse is faster), 95% bootstrap interval; the first request of each workload is a "
             "warm-up.\n",
             "| model | workload | requests | prompt tokens (median) | reused share | TTFT ms whole | TTFT ms reuse "
             "| whole ÷ reuse [95% CI] |", "|---|---|---|---|---|---|---|---|"]
    for level, key in (("runner", "models"), ("served", "served")):
        for model, wl in res.get(key, {}).items():
            for name, s in wl.items():
                r, share = s["ratio"], s["reused_share"]
                tokens = f"{s['prompt_tokens']:.0f}" if share is not None else "(as runner)"
                shared = f"{share:.2f}" if share is not None else "(as runner)"
                lines.append(f"| {model} ({level}) | {name} | {s['requests']} | {tokens} | {shared} | "
                             f"{s['ttft_ms_whole']:.0f} | {s['ttft_ms_reuse']:.0f} | {r['median']:.2f} "
                             f"[{r['lo']:.2f}, {r['hi']:.2f}] |")
    lines += ["", f"Run: `{res['command']}` on {res['date']}; 1-minute load average after each model: "
              + ", ".join(f"{v:.2f}" for v in res["loadavg"]) + ".", ""]
    return "\n".join(lines)


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(help=__doc__.splitlines()[0])
def main(
    models: Annotated[str, typer.Option(help="comma-separated asset names (their source GGUF)")] =
        "smollm2-135m-instruct,gemma3-270m,qwen2.5-coder-1.5b-instruct",
    threads: Annotated[int, typer.Option(help="llama.cpp threads of both runners")] = 2,
    new_tokens: Annotated[int, typer.Option(help="greedy tokens per request")] = 24,
    turns: Annotated[int, typer.Option(min=2, help="turns of the conversation workload")] = 6,
    served: Annotated[bool, typer.Option(help="also through a two-node fleet (the module docstring)")] = False,
    out: Annotated[Path, typer.Option(help="writes OUT.json and OUT.md")] = OUT,
) -> None:
    from benchmarks.engine_bench import _artifacts, _cpu
    from edge_moe.runtime.gguf import GgufRunner
    from nodes.build import SPIN_ALONE

    res: dict[str, Any] = {"command": " ".join([".venv/bin/python benchmarks/prefix_reuse_bench.py", *sys.argv[1:]]),
                           "date": time.strftime("%Y-%m-%d"), "cpu": _cpu()["model"], "threads": threads,
                           "spin": SPIN_ALONE, "new_tokens": new_tokens, "models": {}, "served": {}, "loadavg": []}
    for model in models.split(","):
        _, gguf, why = _artifacts(model)
        if gguf is None:
            print(f"{model}: skipped ({why})")
            continue
        with GgufRunner(gguf, intra_op_threads=threads, spin=SPIN_ALONE) as reuse, \
                GgufRunner(gguf, intra_op_threads=threads, spin=SPIN_ALONE, reuse_prefix=False) as whole:
            wl = _workloads(reuse, whole, new_tokens, turns)
        res["models"][model] = {k: _summary(v) for k, v in wl.items()}
        res["loadavg"].append(os.getloadavg()[0])
        for k, s in res["models"][model].items():
            print(f"{model} {k}: TTFT {s['ttft_ms_whole']:.0f} -> {s['ttft_ms_reuse']:.0f} ms "
                  f"(x{s['ratio']['median']:.2f}), reused {s['reused_share']:.0%} of {s['prompt_tokens']:.0f} tokens",
                  flush=True)
        if served:
            res["served"][model] = {k: _summary(v) for k, v in _served(model, gguf, threads, new_tokens, turns).items()}
            res["loadavg"].append(os.getloadavg()[0])
            for k, s in res["served"][model].items():
                print(f"{model} served {k}: TTFT {s['ttft_ms_whole']:.0f} -> {s['ttft_ms_reuse']:.0f} ms "
                      f"(x{s['ratio']['median']:.2f})", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(res, indent=1) + "\n")
    Path(f"{out}.md").write_text(_markdown(res))
    print(_markdown(res))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    app()
