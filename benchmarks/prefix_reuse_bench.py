"""Prefix reuse in the llama.cpp runner (not a test): time to first token by ``prefix_reuse`` mode.

:class:`edge_moe.runtime.gguf.GgufRunner` keeps the last request's tokens in its KV cache and a
new prompt computes only what follows the part it shares with them (``nodes[].prefix_reuse``):
``exact`` (the default: whole 128-token chunks of an earlier prompt, replies bit for bit a fresh
context's), ``tokens`` (every shared token, as llama.cpp's own prompt cache) or ``off``. Here,
in one process, on the same GGUF with the same threads and spin: a runner per mode, and
**llama-cpp-python** (``llama_cpp.Llama.create_completion``, streamed, greedy, a 512-token
batch: how a Python user runs llama.cpp; it reuses any shared prefix token by token, as
``tokens``), given the same prompt text. Each request goes to all four, the order rotating;
``exact`` must give ``off``'s greedy tokens (a difference stops the run); how often ``tokens``
does is recorded. Three workloads, in this order, each prompt in the chat template (as a node
formats a chat request; a base model without one gets the raw text), ``--new-tokens`` greedy
tokens:

- **distinct**: short questions that share only the template;
- **system**: one ~180-token system prompt, then each question, as the HTTP front flattens a
  chat request's messages (``System: …\nUser: …\nAssistant:``);
- **conversation**: one conversation of ``--turns`` turns; each turn's prompt holds every
  earlier question and the model's own reply (the front's flattening of the whole history,
  which is what OpenAI chat clients send every turn).

Per workload and engine: the median TTFT (call to the first streamed text) and the share of
prompt tokens reused; ratios are medians of per-request ratios with a 95% bootstrap interval
(above 1: the second engine named is faster). The first request of a workload is a warm-up.

``--served`` adds the same workloads through a fleet: one ``edge-moe deploy`` (a local Ray head)
of three nodes on this host, each serving the GGUF with one ``prefix_reuse`` mode
(``nodes[].spin`` 300 on all, the same threads); each request is a streamed ``POST
/v1/chat/completions`` from the ``openai`` client with ``model`` pinning one node's expert, the
three rotating; the system prompt and the conversation are real ``messages`` (system, user,
assistant), flattened by the front. TTFT: request to the first chunk with text.

    .venv/bin/python benchmarks/prefix_reuse_bench.py [--models ...] [--threads 2] [--served]
        [--out benchmarks/results/prefix_reuse_bench]
"""

from __future__ import annotations

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


MODES = ("exact", "tokens", "off")
LLAMA = "llama-cpp-python"
RATIOS = (("off", "exact"), ("off", "tokens"), (LLAMA, "exact"), (LLAMA, "tokens"))  # (num, den) of TTFT


def _timed(runner: Any, prompt: str, new_tokens: int) -> dict[str, Any]:
    first: list[float] = []
    before = runner.reused_tokens
    t0 = time.perf_counter()
    g = runner.generate(prompt, new_tokens, on_text=lambda _: first.append(time.perf_counter()) if not first else None)
    return {"ttft_ms": ((first[0] if first else time.perf_counter()) - t0) * 1e3,
            "prompt_tokens": len(runner.prompt_ids(prompt)), "reused": runner.reused_tokens - before,
            "tokens": g.token_ids, "text": g.text}


def _llama(llm: Any, text: str, new_tokens: int) -> dict[str, Any]:
    """llama-cpp-python's own API: ms from the call to the first streamed text."""
    t0, first, out = time.perf_counter(), None, []
    for chunk in llm.create_completion(text, max_tokens=new_tokens, temperature=0.0, stream=True):
        if chunk["choices"][0]["text"]:
            first = first or time.perf_counter()
            out.append(chunk["choices"][0]["text"])
    return {"ttft_ms": ((first or time.perf_counter()) - t0) * 1e3, "text": "".join(out)}


def _request(call: dict[str, Any], prompt: Any, i: int) -> dict[str, dict[str, Any]]:
    """``prompt`` to every engine of ``call`` (name → fn(prompt)), the order rotating by ``i``;
    stops the run when ``exact`` and ``off`` answer differently."""
    names = list(call)
    k = i % len(names)
    got = {n: call[n](prompt) for n in names[k:] + names[:k]}
    if got["exact"]["text"] != got["off"]["text"]:
        raise SystemExit(f"exact and off disagree: {got['exact']['text']!r} vs {got['off']['text']!r}")
    got["tokens"]["same_as_off"] = got["tokens"]["text"] == got["off"]["text"]
    return got


def _flatten(msgs: list[dict[str, str]]) -> str:
    """OpenAI ``messages`` as the HTTP front hands them to a node (``gating/http/protocol.py``)."""
    if len(msgs) == 1 and msgs[0]["role"] == "user":
        return msgs[0]["content"]
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in msgs) + "\nAssistant:"


def _workloads(call: dict[str, Any], turns: int, chat: bool) -> dict[str, list[dict[str, dict[str, Any]]]]:
    """The three workloads (the module docstring); ``chat``: prompts are OpenAI ``messages``."""
    def prompt(msgs: list[dict[str, str]]) -> Any:
        return msgs if chat else _flatten(msgs)

    out: dict[str, list[dict[str, dict[str, Any]]]] = {"distinct": [], "system": [], "conversation": []}
    for i, q in enumerate(DISTINCT):
        out["distinct"].append(_request(call, prompt([{"role": "user", "content": q}]), i))
    for i, q in enumerate(QUESTIONS):
        out["system"].append(_request(call, prompt([{"role": "system", "content": SYSTEM},
                                                     {"role": "user", "content": q}]), i))
    history = [{"role": "system", "content": SYSTEM}]
    for i in range(turns):
        history.append({"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]})
        got = _request(call, prompt(history), i)
        out["conversation"].append(got)
        history.append({"role": "assistant", "content": got["exact"]["text"]})
    return out


def _served(model: str, gguf: Path, threads: int, new_tokens: int, turns: int,
            llama: Any) -> dict[str, list[dict]]:
    """The workloads through a three-node fleet (the module docstring); ``llama``: fn(text) of
    llama-cpp-python in this process, given each request's flattened, formatted prompt."""
    import tempfile

    import yaml
    from openai import OpenAI

    from benchmarks.engine_served import REQUEST_TIMEOUT_S, _cli, _down, planner_inputs

    names = {m: f"{model}-{m}" for m in MODES}
    fleet = {
        "name": "prefix-reuse-bench",
        "device_classes": {"cpu": {"power_idle_w": 5.0, "power_busy_w": 15.0,
                                   "source": "benchmarks/prefix_reuse_bench.py (energy is not measured here)"}},
        "nodes": [{"name": m, "device_class": "cpu", "threads": threads, "spin": 300, "prefix_reuse": m}
                  for m in MODES],
        "experts": [{"name": e, "node": m, "artifact": str(gguf), "runner": "llama.cpp", "precision": "int4"}
                    for m, e in names.items()],
        "categories": ["synth-cat-0", "synth-cat-1"],
        "coordinator": {"node": "exact", "frontend": "tcp://127.0.0.1:0", "backend": "tcp://127.0.0.1:0",
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
                return {"ttft_ms": ((first or time.perf_counter()) - t0) * 1e3, "text": "".join(text)}

            call: dict[str, Any] = {m: (lambda msgs, e=e: one(e, msgs)) for m, e in names.items()}
            call[LLAMA] = lambda msgs: llama(_flatten(msgs))
            out = _workloads(call, turns, chat=True)
        except BaseException:
            _down(env, failed=True, fleet=fleet["name"])
            raise
        _down(env, failed=False, fleet=fleet["name"])
    return out


def _summary(reqs: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    from benchmarks.served_paired import _ratio_ci  # median of per-request ratios, bootstrap CI

    m = reqs[1:]  # the first is a warm-up
    engines = list(m[0])
    out: dict[str, Any] = {"requests": len(m), "ttft_ms": {}, "reused_share": {}, "ratios": {},
                           "tokens_same_as_off": sum(r["tokens"]["same_as_off"] for r in m)}
    for e in engines:
        out["ttft_ms"][e] = float(np.median([r[e]["ttft_ms"] for r in m]))
        if "prompt_tokens" in m[0][e]:
            out["prompt_tokens"] = float(np.median([r[e]["prompt_tokens"] for r in m]))
            out["reused_share"][e] = sum(r[e]["reused"] for r in m) / sum(r[e]["prompt_tokens"] for r in m)
    for num, den in RATIOS:
        if num in engines:
            out["ratios"][f"{num} / {den}"] = _ratio_ci([r[num]["ttft_ms"] for r in m], [r[den]["ttft_ms"] for r in m])
    out["per_request"] = [{e: {k: v for k, v in r[e].items() if k != "tokens"} for e in engines} for r in m]
    return out


def _markdown(res: dict[str, Any]) -> str:
    lines = ["# Prefix reuse in the llama.cpp runner: TTFT by `prefix_reuse` mode\n",
             f"{res['cpu']}, {res['threads']} threads, spin {res['spin']}, {res['new_tokens']} new tokens, greedy; "
             "`exact`, `tokens`, `off`: our llama.cpp runner in each mode (served: a node in each mode, through "
             "the HTTP front); llama-cpp-python: `Llama.create_completion` in the benchmark's process on the same "
             "GGUF, threads and spin, given the prompt a node formats (at the served level too). Each request to every engine, the order "
             "rotating; `exact` gave `off`'s greedy reply on every request (checked; the run stops otherwise). "
             "TTFT ratios: medians of per-request ratios, 95% bootstrap interval; above 1, the second named is "
             "faster. The first request of each workload is a warm-up.\n",
             "| model | level | workload | requests | prompt tokens | reused: exact / tokens | TTFT ms: off / exact / "
             "tokens / llama-cpp-python | off ÷ exact | off ÷ tokens | llama-cpp-python ÷ exact | llama-cpp-python ÷ "
             "tokens | `tokens` replies = `off`'s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def ci(s: dict[str, Any], key: str) -> str:
        r = s["ratios"].get(key)
        return f"{r['median']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}]" if r else ""

    for level, key in (("runner", "models"), ("served", "served")):
        for model, wl in res.get(key, {}).items():
            for name, s in wl.items():
                t, sh = s["ttft_ms"], s["reused_share"]
                ttft = " / ".join(f"{t[e]:.0f}" for e in ("off", "exact", "tokens", LLAMA))
                tokens = f"{s['prompt_tokens']:.0f}" if "prompt_tokens" in s else "(as runner)"
                lines.append(f"| {model} | {level} | {name} | {s['requests']} | {tokens} | "
                             + (f"{sh['exact']:.2f} / {sh['tokens']:.2f}" if sh else "(as runner)")
                             + f" | {ttft} | {ci(s, 'off / exact')} | {ci(s, 'off / tokens')} | "
                             f"{ci(s, LLAMA + ' / exact')} | {ci(s, LLAMA + ' / tokens')} | "
                             f"{s['tokens_same_as_off']}/{s['requests']} |")
    lines += ["", f"Run: `{res['command']}` on {res['date']}; 1-minute load average after each part: "
              + ", ".join(f"{v:.2f}" for v in res["loadavg"]) + ".", ""]
    return "\n".join(lines)


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(help=__doc__.splitlines()[0])
def main(
    models: Annotated[str, typer.Option(help="comma-separated asset names (their source GGUF)")] =
        "smollm2-135m-instruct,gemma3-270m,qwen2.5-coder-1.5b-instruct",
    threads: Annotated[int, typer.Option(help="llama.cpp threads of every engine")] = 2,
    new_tokens: Annotated[int, typer.Option(help="greedy tokens per request")] = 24,
    turns: Annotated[int, typer.Option(min=2, help="turns of the conversation workload")] = 6,
    served: Annotated[bool, typer.Option(help="also through a three-node fleet (the module docstring)")] = False,
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
        runners = {m: GgufRunner(gguf, intra_op_threads=threads, spin=SPIN_ALONE, prefix_reuse=m) for m in MODES}
        from llama_cpp import Llama  # after the runners: their spin is in the environment

        llm = Llama(str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=4096, n_batch=512, verbose=False)
        fmt = runners["exact"]
        call: dict[str, Any] = {m: (lambda p, r=r: _timed(r, p, new_tokens)) for m, r in runners.items()}
        def llama(text: str, llm: Any = llm, fmt: Any = fmt) -> dict[str, Any]:
            return _llama(llm, fmt.format_prompt(text, fmt.has_chat), new_tokens)

        call[LLAMA] = llama
        res["models"][model] = {k: _summary(v) for k, v in _workloads(call, turns, chat=False).items()}
        for r in runners.values():
            r.close()
        res["loadavg"].append(os.getloadavg()[0])
        for k, s in res["models"][model].items():
            print(f"{model} {k}: TTFT ms " + ", ".join(f"{e} {v:.0f}" for e, v in s["ttft_ms"].items()), flush=True)
        if served:
            res["served"][model] = {k: _summary(v) for k, v in
                                    _served(model, gguf, threads, new_tokens, turns, llama).items()}
            res["loadavg"].append(os.getloadavg()[0])
            for k, s in res["served"][model].items():
                print(f"{model} served {k}: TTFT ms " + ", ".join(f"{e} {v:.0f}" for e, v in s["ttft_ms"].items()),
                      flush=True)
        llm.close()
    from benchmarks.results_io import write_results

    write_results(out, res, _markdown(res))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    app()
