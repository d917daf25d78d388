"""Engine benchmark (not a test): our served ONNX artifact (onnxruntime) vs llama.cpp on the source GGUF.

For each model, with the same threads: the ONNX artifact the demo serves
(``configs/fleet.demo.real.yaml``) against runner ``llama.cpp``
(:class:`edge_moe.runtime.gguf.GgufRunner`) on the GGUF that artifact was exported from, at
two levels (``--levels``, default both):

**runner level** (``runner``):

- **speed**, ``--rounds`` rounds (default 3), the two engines alternating (A B, B A, …), each
  run in a fresh process that loads the model, warms up once, then greedily generates
  ``--new-tokens`` tokens after a fixed ~110-token prompt (no chat template): prefill tok/s
  (prompt tokens / the prompt's forward pass), TTFT (call to first streamed text), decode
  tok/s (tokens after the first / decode time), load s, and the process's peak RSS
  (``VmHWM`` read by that child at its end: its ``ru_maxrss`` would include its parent's size at fork). Medians over rounds.
- **fidelity**, once per engine: letter-mode scoring of the first ``--questions`` questions of
  the committed MMLU table (``benchmarks/results/mmlu/work/samples.jsonl``); agreement of each
  engine's argmax with the table's fp32 ONNX column (the reference: the GGUF dequantised to
  fp32), accuracy, the mean of the largest per-question log-prob gap to it, and ms per question.

**served level** (``served``, :mod:`benchmarks.engine_served`): each engine's model behind a
one-node, one-expert fleet (``edge-moe deploy``, a fresh local Ray head per run), streamed
through the HTTP front's ``/v1/completions`` with the same prompt and ``--new-tokens``: TTFT,
decode tok/s and the node process's peak RSS, the engines alternating within each round after
the runner level's engines, medians over rounds. The reference rows "llama.cpp direct" and
"llama.cpp-spin direct" are the runner level's ``llama.cpp`` (the node's spin count) and
``llama.cpp-spin`` (llama.cpp's own spinning barrier) in the same run (with ``--levels served``
alone, only those engines' speed runs of the runner level are made, for these rows).

Writes ``benchmarks/results/engine_bench.{json,md}`` with the CPU flags (``lscpu``), the command
and llama.cpp's build (its system info, the CPU backend variant loaded, the Makefile's flags).

    .venv/bin/python benchmarks/engine_bench.py [--models smollm2-135m-instruct,gemma3-270m]
        [--levels runner,served] [--rounds 3] [--out benchmarks/results/engine_bench]
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

REPO = Path(__file__).resolve().parents[1]
FLEET = REPO / "configs" / "fleet.demo.real.yaml"
TABLE = REPO / "benchmarks" / "results" / "mmlu" / "calibration.npz"
SAMPLES = REPO / "benchmarks" / "results" / "mmlu" / "work" / "samples.jsonl"
OUT = REPO / "benchmarks" / "results" / "engine_bench"
ENGINES = ("onnxruntime", "llama.cpp", "llama.cpp-spin")
# llama.cpp direct allocates a context of this many tokens at load, as llama-server and
# llama-cli do by default (--ctx-size 4096); a node's runner starts smaller and grows
# (edge_moe/runtime/gguf.py, Memory). 512 is llama_cpp.Llama's default n_ctx.
DIRECT_CONTEXT = 4096
# llama.cpp-spin: the same runner with OMP_WAIT_POLICY=ACTIVE (libgomp's spinning barrier, what
# llama.cpp does by default) in place of the runner's bounded spin (edge_moe/runtime/gguf_start.py)
ENV = {"llama.cpp-spin": {"OMP_WAIT_POLICY": "ACTIVE"}}
FIDELITY = ("onnxruntime", "llama.cpp")  # the spin variant computes the same numbers
SERVED = ("onnxruntime", "llama.cpp")  # the engines of the served level
LEVELS = ("runner", "served")
# model (asset name, and the committed table's fp32 column) -> its expert in the demo fleet
MODELS = {"smollm2-135m-instruct": "smollm2-135m-instruct", "gemma3-270m": "gemma3-270m",
          "qwen2.5-coder-1.5b-instruct": "qwen2.5-coder-1.5b-int4"}
PROMPT = (
    "The history of computing spans several centuries, from mechanical calculators such as the "
    "abacus and Pascal's adding machine to the programmable electronic computers of the twentieth "
    "century. Charles Babbage designed the Analytical Engine, a general-purpose mechanical computer, "
    "and Ada Lovelace wrote what is often called the first computer program for it. During the "
    "Second World War, machines such as Colossus and ENIAC showed that electronic circuits could "
    "perform calculations thousands of times faster than people. In the decades that followed,"
)


# ---------------------------------------------------------------- inside one engine's process


def _runner(engine: str, artifact: str, threads: int, context: int = DIRECT_CONTEXT) -> Any:
    if engine == "onnxruntime":
        from edge_moe.runtime.decoder import OrtRunner

        return OrtRunner(artifact, intra_op_threads=threads)
    from edge_moe.runtime.gguf import GgufRunner
    from nodes.build import SPIN_ALONE

    # as the served level's node runs it: alone on its host (the environment's policy wins)
    # prefix reuse off: the warm-up runs the same prompt, and this measures the engine's prefill
    # (benchmarks/prefix_reuse_bench.py measures reuse)
    return GgufRunner(artifact, intra_op_threads=threads, spin=SPIN_ALONE, prefix_reuse="off",
                      initial_context=context, max_context=max(context, DIRECT_CONTEXT))


def _speed(runner: Any, new_tokens: int) -> dict[str, Any]:
    runner.generate(PROMPT, 4, chat=False)  # warm-up
    first: list[float] = []
    t0 = time.perf_counter()
    g = runner.generate(PROMPT, new_tokens, chat=False,
                        on_text=lambda _: first.append(time.perf_counter()) if not first else None)
    n_prompt = len(runner.prompt_ids(PROMPT, False))
    # the prompt as a node serves it (the model's chat template), the served level's reference
    chat_first: list[float] = []
    t1 = time.perf_counter()
    c = runner.generate(PROMPT, new_tokens,  # chat: the default, as a node calls it
                        on_text=lambda _: chat_first.append(time.perf_counter()) if not chat_first else None)
    return {"prompt_tokens": n_prompt, "new_tokens": g.n_tokens, "stop_reason": g.stop_reason,
            "prefill_tok_s": n_prompt / (g.prefill_ms / 1e3),
            "ttft_ms": (first[0] - t0) * 1e3 if first else None,
            "decode_tok_s": (g.n_tokens - 1) / (g.decode_ms / 1e3) if g.n_tokens > 1 else None,
            "text": g.text,
            "chat_prompt_tokens": len(runner.prompt_ids(PROMPT)), "chat_new_tokens": c.n_tokens,
            "chat_ttft_ms": (chat_first[0] - t1) * 1e3 if chat_first else None,
            "chat_decode_tok_s": (c.n_tokens - 1) / (c.decode_ms / 1e3) if c.n_tokens > 1 else None}


def _fidelity(runner: Any, questions: int) -> dict[str, Any]:
    rows = [json.loads(line) for line in SAMPLES.read_text().splitlines()[:questions]]
    logprobs, ms = [], []
    for q in rows:
        t0 = time.perf_counter()
        logprobs.append(runner.score_options(q["prompt"], q["options"], "letter").tolist())
        ms.append((time.perf_counter() - t0) * 1e3)
    return {"logprobs": logprobs, "ms": ms}


def worker(engine: str, artifact: str, threads: int, task: str, new_tokens: int, questions: int,
           out: Path, context: int = DIRECT_CONTEXT) -> None:
    """One engine, one task, in this process; the result goes to ``out`` as JSON."""
    t0 = time.perf_counter()
    runner = _runner(engine, artifact, threads, context)
    res: dict[str, Any] = {"load_s": time.perf_counter() - t0}
    if engine != "onnxruntime":
        import llama_cpp

        res["backend"] = runner.backend
        res["spin"] = runner.spin  # what its threads do at a barrier: a spin count or a wait policy
        res["system_info"] = llama_cpp.llama_print_system_info().decode()
    res.update(_speed(runner, new_tokens) if task == "speed" else _fidelity(runner, questions))
    res["loadavg_1min"] = os.getloadavg()[0]  # other processes on the machine show up here
    # this process's own peak: its ru_maxrss as the parent reads it includes the parent's
    # resident size at fork/exec, which can be larger than the engine's (a driver holding models)
    res["vm_hwm_mb"] = next(int(line.split()[1]) / 1024 for line in Path("/proc/self/status").read_text().splitlines()
                            if line.startswith("VmHWM:"))
    out.write_text(json.dumps(res))


# ---------------------------------------------------------------- the driver


def _child(engine: str, artifact: str, threads: int, task: str, new_tokens: int, questions: int,
           context: int = DIRECT_CONTEXT, env: dict[str, str] | None = None) -> dict:
    """Run :func:`worker` in a fresh process; its result and that process's peak RSS (MB).
    ``context``: llama.cpp's context allocated at load (tokens); ``env``: variables set in
    that process beside this one's and the engine's (:data:`ENV`)."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out.json"
        cmd = [sys.executable, __file__, "--worker", engine, "--artifact", artifact, "--threads",
               str(threads), "--task", task, "--new-tokens", str(new_tokens), "--questions",
               str(questions), "--worker-out", str(out), "--context", str(context)]
        with open(Path(d) / "log", "w+b") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ENV.get(engine, {}), **(env or {})})
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0 or not out.is_file():
                log.seek(0)
                raise RuntimeError(f"{engine} {task} failed ({proc.returncode}):\n"
                                   f"{log.read().decode(errors='replace')[-3000:]}")
        res = json.loads(out.read_text())
    res["peak_rss_mb"] = res.pop("vm_hwm_mb")  # the child's own (worker's comment)
    return res


def _demo_expert(model: str) -> dict[str, Any]:
    """``model``'s expert entry in the demo fleet (name, artifact, precision)."""
    import yaml

    return {e["name"]: e for e in yaml.safe_load(FLEET.read_text())["experts"]}[MODELS[model]]


def _artifacts(model: str) -> tuple[Path | None, Path | None, str]:
    """(served ONNX artifact, source GGUF, why one is missing)."""
    from edge_moe.paths import artifacts_dir
    from exporters.assets import fetch_asset

    e = _demo_expert(model)
    onnx = artifacts_dir() / e["artifact"]
    why = "" if (onnx / "manifest.json").is_file() else f"no ONNX artifact at {onnx}"
    try:
        gguf: Path | None = fetch_asset(model, install=False)
    except Exception as exc:  # not installed / does not assemble
        gguf, why = None, f"the GGUF does not assemble: {exc}"
    return (onnx if not why.startswith("no ONNX") else None), gguf, why


def _cpu() -> dict[str, Any]:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    keep = sorted(f for f in flags if re.match(r"(avx|amx|fma|f16c|sse4|bmi2)", f))
    return {"model": fields.get("Model name", "").strip(), "cpus": os.cpu_count(), "flags": keep}


def _median(xs: list[Any]) -> float | None:
    v = [x for x in xs if x is not None]
    return float(np.median(v)) if v else None


def _makefile_flags() -> str:
    m = re.search(r"^GGUF_CMAKE_ARGS \?= (.*)$", (REPO / "Makefile").read_text(), re.M)
    return m.group(1) if m else ""


def _fidelity_summary(res: dict, model: str, n: int) -> dict[str, float]:
    from edge_moe.calibration import load_calibration

    table = load_calibration(TABLE)
    col = table.experts.index(model)
    agree, correct, gaps = [], [], []
    for i, lp in enumerate(res["logprobs"]):
        k = len(lp)
        ref = table.logprobs[i, col, :k].astype(np.float64)
        agree.append(int(np.argmax(lp)) == int(np.argmax(ref)))
        correct.append(int(np.argmax(lp)) == int(table.labels[i]))
        gaps.append(float(np.abs(np.asarray(lp) - ref).max()))
    return {"questions": n, "agreement": float(np.mean(agree)), "accuracy": float(np.mean(correct)),
            "mean_max_gap_nats": float(np.mean(gaps)), "ms_per_question": float(np.median(res["ms"]))}


METRICS = (("prefill_tok_s", "prefill tok/s", True), ("ttft_ms", "TTFT ms", False),
           ("decode_tok_s", "decode tok/s", True), ("load_s", "load s", False),
           ("peak_rss_mb", "peak RSS MB", False))
# served metric -> llama.cpp direct's, on the same prompt as served (the chat template)
SERVED_VS_DIRECT = (("ttft_ms", "chat_ttft_ms"), ("decode_tok_s", "chat_decode_tok_s"),
                    ("node_peak_rss_mb", "peak_rss_mb"))
SPEED_VS_DIRECT = SERVED_VS_DIRECT[:2]  # also against llama.cpp-spin (its RSS is the same)


def _markdown(result: dict) -> str:
    cpu = result["cpu"]
    lines = ["# Engines side by side: onnxruntime (our served ONNX) vs llama.cpp (the source GGUF)\n"]
    if "runner" in result["levels"]:
        lines += _runner_table(result)
    if "served" in result["levels"]:
        lines += _served_table(result)
    loads = [x["loadavg_1min"] for r in result["models"].values() if "skipped" not in r
             for e in ENGINES if e in r for x in r[e]["runs"]]
    loads += [x["loadavg_1min"] for r in result["models"].values() for e in r.get("served", {})
              for x in r["served"][e]["runs"]]
    if loads:
        lines += ["", f"1-minute load average at the end of the speed runs: {min(loads):.2f} to {max(loads):.2f} "
                  f"(a run of {result['threads']} threads alone adds about {result['threads']}): other processes "
                  "shared these cores at times, which hurts the spinning engines most; every run is in the JSON."]
    if "runner" in result["levels"]:
        lines += ["", f"Fidelity: the first {result['questions']} questions of the committed MMLU table; the "
                  "reference is its fp32 ONNX column (each GGUF dequantised to fp32)."]
    lines += ["", f"Run: `{result['command']}` on {result['date']}.", "",
              f"CPU flags: {' '.join(cpu['flags'])}", "",
              f"llama.cpp: llama-cpp-python {result['llama_cpp_version']}, CPU backend variant "
              f"`{result['llama_cpp_backend']}`, built with `CMAKE_ARGS=\"{result['build_flags']}\"`; "
              f"system info: `{result['llama_cpp_system_info']}`", ""]
    return "\n".join(lines)


def _runner_table(result: dict) -> list[str]:
    lines = ["## Runner level\n",
             f"{result['cpu']['model']}, {result['threads']} threads each, {result['rounds']} rounds, engines in "
             f"rotating order, medians; prompt ~110 tokens, {result['new_tokens']} new tokens, greedy. `llama.cpp`: "
             f"runner `llama.cpp` as the served level's node runs it (its threads poll {_spin(result, 'llama.cpp')} "
             "times at ggml's barrier, then sleep: `nodes[].spin`'s default for a node alone on its host; prefix reuse off, at both levels); "
             "`llama.cpp-spin`: the same with "
             "OMP_WAIT_POLICY=ACTIVE (libgomp's spinning barrier, llama.cpp's own default).\n",
             "| model | metric | onnxruntime | llama.cpp | llama.cpp-spin | llama.cpp / onnxruntime | "
             "llama.cpp-spin / onnxruntime |", "|---|---|---|---|---|---|---|"]
    for model, r in result["models"].items():
        if "skipped" in r:
            lines.append(f"| {model} | skipped: {r['skipped']} | | | | | |")
            continue
        med = {e: r[e]["median"] for e in ENGINES}
        for key, label, _ in METRICS:
            o = med["onnxruntime"].get(key)
            ratios = [f"{med[e][key] / o:.2f}x" if o and med[e].get(key) else "–" for e in ENGINES[1:]]
            lines.append(f"| {model} | {label} | " + " | ".join(_fmt(med[e].get(key)) for e in ENGINES)
                         + " | " + " | ".join(ratios) + " |")
        fo, fg = r["onnxruntime"]["fidelity"], r["llama.cpp"]["fidelity"]
        for key, label in (("agreement", "agreement with fp32 letter"), ("accuracy", "MMLU accuracy"),
                           ("mean_max_gap_nats", "mean max log-prob gap to fp32"),
                           ("ms_per_question", "ms / question (letter)")):
            ratio = f"{fg[key] / fo[key]:.2f}x" if key == "ms_per_question" else ""
            lines.append(f"| {model} | {label} | {_fmt(fo[key])} | {_fmt(fg[key])} | (same) | {ratio} | |")
        lines.append(f"| {model} | artifact | `{r['onnxruntime']['artifact']}` | `{r['llama.cpp']['artifact']}` "
                     "| (same) | | |")
    return lines


def _served_table(result: dict) -> list[str]:
    from benchmarks.engine_served import REQUESTS, WARMUPS

    lines = ["", "## Served path: a one-node, one-expert fleet through the HTTP front\n",
             f"`edge-moe deploy` (a local Ray head, `nodes[].threads: {result['threads']}`; llama.cpp nodes `prefix_reuse: off`, as every request repeats one prompt: this measures prefill, `benchmarks/prefix_reuse_bench.py` the prompt cache), then streamed "
             f"`POST /v1/completions` (the `openai` client; `model` pins the expert; `max_tokens` "
             f"{result['new_tokens']}, temperature 0: greedy): {WARMUPS} warm-up and {REQUESTS} measured requests "
             f"per deployment (their median), one deployment per engine per round, engines alternating, "
             f"{result['rounds']} rounds, medians. TTFT: request sent → first chunk with text; decode tok/s: "
             "(the stream's usage completion tokens − 1) / (last − first chunk with text); node peak RSS: VmHWM "
             "of the node actor's process (a Ray worker: Ray's own memory is in it), read before `edge-moe down`. "
             "The coordinator loads the real MiniLM encoder, but a pinned query's prompt is not embedded (since commit "
             "43e9aca; before it, ~33 ms of MiniLM was in TTFT); its gate is a trivial one over the one expert. "
             "**llama.cpp direct**: the runner level's `llama.cpp` process of this run (the node's spin "
             "count), generating from the "
             "same prompt as served (a node formats it with the model's chat template, on both endpoints), "
             "after its raw-prompt run (a fresh process; peak RSS its own `VmHWM`); ratios are served ÷ "
             "direct; **÷ spin**: served ÷ `llama.cpp-spin` direct (llama.cpp's own spinning barrier). "
             "A node sends a stream's first piece at once and the rest at most every "
             "`nodes[].stream_flush_ms` (30 ms). `prompt tokens` (llama.cpp's tokenizer) and `new tokens` "
             "are medians.\n",
             "| model | engine | prompt tokens | new tokens | TTFT ms | decode tok/s | node peak RSS MB | "
             "TTFT ÷ direct | decode tok/s ÷ direct | peak RSS ÷ direct | TTFT ÷ spin | decode ÷ spin |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, r in result["models"].items():
        if "skipped" in r:
            lines.append(f"| {model} | skipped: {r['skipped']} | | | | | | | | | | |")
            continue
        runs = r["llama.cpp"]["runs"]
        direct = {d: _median([x.get(d) for x in runs]) for _, d in SERVED_VS_DIRECT}
        spin_runs = r.get("llama.cpp-spin", {}).get("runs", [])
        spin = {d: _median([x.get(d) for x in spin_runs]) for _, d in SPEED_VS_DIRECT}
        chat_tokens = _median([x.get("chat_prompt_tokens") for x in runs])
        for engine, m in r["served"].items():
            med = m["median"]
            lines.append(f"| {model} | {engine} (served) | {_fmt(chat_tokens)} | {_fmt(med.get('completion_tokens'))} | "
                         + " | ".join(_fmt(med.get(k)) for k, _ in SERVED_VS_DIRECT) + " | "
                         + " | ".join(_ratios(med, direct, SERVED_VS_DIRECT) + _ratios(med, spin, SPEED_VS_DIRECT)) + " |")
        new = _median([x.get("chat_new_tokens") for x in runs])
        lines.append(f"| {model} | llama.cpp direct | {_fmt(chat_tokens)} | {_fmt(new)} | "
                     + " | ".join(_fmt(direct.get(d)) for _, d in SERVED_VS_DIRECT) + " | 1.00x | 1.00x | 1.00x | "
                     + " | ".join(_ratios({k: direct[d] for k, d in SPEED_VS_DIRECT}, spin, SPEED_VS_DIRECT)) + " |")
        if spin_runs:
            lines.append(f"| {model} | llama.cpp-spin direct | {_fmt(chat_tokens)} | "
                         f"{_fmt(_median([x.get('chat_new_tokens') for x in spin_runs]))} | "
                         + " | ".join(_fmt(spin.get(d)) for _, d in SPEED_VS_DIRECT) + " | (same) | | | | 1.00x | 1.00x |")
    return lines


def _ratios(med: dict, ref: dict, pairs: tuple) -> list[str]:
    """``med[k] / ref[d]`` for each pair, formatted (– where either is missing)."""
    return [f"{med[k] / ref[d]:.2f}x" if med.get(k) and ref.get(d) else "–" for k, d in pairs]


def _spin(result: dict, engine: str) -> str:
    """The spin count (or wait policy) ``engine``'s runs had, as the workers recorded it."""
    seen = {str(x.get("spin")) for r in result["models"].values() if engine in r for x in r[engine]["runs"]}
    return "/".join(sorted(seen)) or "?"


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.0f}"


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(help=__doc__.splitlines()[0])
def main(
    models: Annotated[str, typer.Option(help="comma-separated asset names")] = ",".join(MODELS),
    levels: Annotated[str, typer.Option(help="comma-separated levels: runner, served")] = ",".join(LEVELS),
    threads: Annotated[int, typer.Option(help="threads of each engine")] = 2,
    rounds: Annotated[int, typer.Option(help="speed rounds (engines alternate)")] = 3,
    new_tokens: Annotated[int, typer.Option(help="greedy tokens per speed run")] = 64,
    questions: Annotated[int, typer.Option(help="MMLU questions for the fidelity pass")] = 100,
    out: Annotated[Path, typer.Option(help="writes OUT.json and OUT.md")] = OUT,
    worker_engine: Annotated[str | None, typer.Option("--worker", hidden=True)] = None,
    artifact: Annotated[str, typer.Option(hidden=True)] = "",
    task: Annotated[str, typer.Option(hidden=True)] = "speed",
    worker_out: Annotated[Path | None, typer.Option(hidden=True)] = None,
    context: Annotated[int, typer.Option(hidden=True)] = DIRECT_CONTEXT,
) -> None:
    if worker_engine is not None:
        assert worker_out is not None
        worker(worker_engine, artifact, threads, task, new_tokens, questions, worker_out, context)
        return
    import llama_cpp

    wanted = tuple(lv.strip() for lv in levels.split(","))
    if not wanted or set(wanted) - set(LEVELS):
        raise typer.BadParameter(f"--levels {levels!r}: choose from {list(LEVELS)}")
    # without the runner level, only llama.cpp's speed runs: the served table's reference rows
    engines = ENGINES if "runner" in wanted else ("llama.cpp", "llama.cpp-spin")
    served = SERVED if "served" in wanted else ()
    result: dict[str, Any] = {
        "command": " ".join([".venv/bin/python benchmarks/engine_bench.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"), "levels": [lv for lv in LEVELS if lv in wanted],
        "cpu": _cpu(), "python": platform.python_version(), "threads": threads, "rounds": rounds,
        "new_tokens": new_tokens, "questions": questions, "llama_cpp_version": llama_cpp.__version__,
        "build_flags": _makefile_flags(), "models": {}}
    for model in models.split(","):
        onnx, gguf, why = _artifacts(model)
        if onnx is None or gguf is None:
            print(f"{model}: skipped ({why})")
            result["models"][model] = {"skipped": why}
            continue
        paths = {e: str(onnx) if e == "onnxruntime" else str(gguf) for e in ENGINES}
        runs: dict[str, list[dict]] = {e: [] for e in (*engines, *(f"served {e}" for e in served))}
        for r in range(rounds):
            for engine in engines[r % len(engines):] + engines[:r % len(engines)]:  # rotating order
                res = _child(engine, paths[engine], threads, "speed", new_tokens, questions)
                runs[engine].append(res)
                result["llama_cpp_backend"] = res.get("backend", result.get("llama_cpp_backend"))
                result["llama_cpp_system_info"] = res.get("system_info", result.get("llama_cpp_system_info", "")).strip()
                print(f"{model} round {r + 1} {engine}: " + ", ".join(
                    f"{k} {_fmt(res.get(k))}" for k, _, _ in METRICS), flush=True)
            for engine in (served[r % 2:] + served[:r % 2]) if served else ():  # alternating
                res = _served(model, engine, paths[engine], threads, new_tokens)
                runs[f"served {engine}"].append(res)
                print(f"{model} round {r + 1} {engine} served: " + ", ".join(
                    f"{k} {_fmt(res.get(k))}" for k, _ in SERVED_VS_DIRECT) + f" (deploy {res['deploy_s']:.0f} s)",
                    flush=True)
        entry: dict[str, Any] = {}
        for engine in engines:
            entry[engine] = {"artifact": paths[engine], "runs": runs[engine],
                             "median": {k: _median([x.get(k) for x in runs[engine]]) for k, _, _ in METRICS}}
            if engine not in FIDELITY or "runner" not in wanted:
                continue
            fid = _child(engine, paths[engine], threads, "fidelity", new_tokens, questions)
            entry[engine].update(fidelity=_fidelity_summary(fid, model, questions),
                                 fidelity_peak_rss_mb=fid["peak_rss_mb"])
            print(f"{model} {engine} fidelity: {entry[engine]['fidelity']}", flush=True)
        if served:
            entry["served"] = {e: {"artifact": paths[e], "runner": e, "runs": runs[f"served {e}"],
                                   "median": {k: _median([x.get(k) for x in runs[f"served {e}"]])
                                              for k in ("ttft_ms", "decode_tok_s", "node_peak_rss_mb",
                                                        "completion_tokens", "deploy_s")}}
                               for e in served}
        result["models"][model] = entry
        print(f"{model}: " + "; ".join(f"{label} " + " vs ".join(_fmt(entry[e]["median"][k]) for e in engines)
                                       for k, label, _ in METRICS), flush=True)
    result.setdefault("llama_cpp_backend", None)
    result.setdefault("llama_cpp_system_info", "")
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(result, indent=1) + "\n")
    Path(f"{out}.md").write_text(_markdown(result))
    print(_markdown(result))


def _served(model: str, engine: str, artifact: str, threads: int, new_tokens: int) -> dict[str, Any]:
    """One served-level run (:func:`benchmarks.engine_served.served_run`) of ``model`` on ``engine``."""
    from benchmarks.engine_served import served_run

    expert = _demo_expert(model)
    precision = expert["precision"] if engine == "onnxruntime" else "int4"  # the GGUFs are 4-bit
    res = served_run(expert["name"], artifact, engine, precision, threads, PROMPT, new_tokens)
    res["completion_tokens"] = _median([x["completion_tokens"] for x in res["requests"]])
    return res


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    app()
