"""Served path against llama.cpp direct, request by request (not a test): what the fleet adds.

``benchmarks/engine_bench.py`` measures the served level and llama.cpp direct in separate
processes minutes apart; on a shared 2-core VM the machine's speed drifts by more than the
difference between them. Here each served request is paired with a direct one made just
before it, in the same minute:

- **direct**: llama.cpp in this process (:class:`edge_moe.runtime.gguf.GgufRunner` on the
  source GGUF, the same threads, the node's spin count: ``--spin``, by default a lone node's), greedy
  ``--new-tokens`` tokens after the prompt in the model's chat template, as a node formats
  it; TTFT is the call to its first streamed text, decode tok/s (tokens − 1) / decode time.
- **served**: the model behind a one-node fleet (``edge-moe deploy``; runner ``llama.cpp`` on
  the same GGUF, or ``onnxruntime`` on the demo's ONNX artifact), streamed through the HTTP
  front with the ``openai`` client (:func:`benchmarks.engine_served.served_run`: TTFT from
  the request to the first chunk with text, decode tok/s from the first to the last).

- **stock** (``--stock``, the default): ``llama_cpp.Llama`` as shipped, in a process of its own
  (``benchmarks/stock_llama.py``: its defaults but the threads, libgomp's default wait, the same
  prompt tokens), what a user of llama-cpp-python runs instead. Its threads poll about a
  thousand times longer at ggml's barriers than a node's by default (``--spin 300000`` gives
  the node and direct that policy).
- **served llama.cpp on a requantised GGUF** (``--gguf-type Q8_0``: the source GGUF through
  ``edge-moe export --gguf-type``, as the demo serves SmolLM2): each pair then has two direct
  runs, llama.cpp on the source GGUF (what a user would run instead) and on the same
  requantised file (the served path's own cost).

For each model and served engine: ``--pairs`` pairs after one warm-up of each; the medians, and
the median of the per-pair ratios served ÷ direct with a 95% bootstrap interval (2,000
resamples of the pairs). TTFT ratio < 1 and decode ratio > 1 favour the served path. Peak RSS:
the node process's ``VmHWM`` against a fresh direct process's own ``VmHWM`` on each GGUF
(``benchmarks/engine_bench.py``'s runner-level child, one run), twice: with llama.cpp's
context allocated at load as llama-server and llama-cli do (4,096 tokens), and as
``llama_cpp.Llama`` does (512). The node's context starts at 512 and grows as requests need.

    .venv/bin/python benchmarks/served_paired.py [--models ...] [--engines llama.cpp,onnxruntime]
        [--gguf-type Q8_0] [--spin N] [--no-stock] [--pairs 8] [--out benchmarks/results/served_paired]
"""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "served_paired"


def _direct(runner: Any, prompt: str, new_tokens: int) -> dict[str, Any]:
    first: list[float] = []
    t0 = time.perf_counter()
    g = runner.generate(prompt, new_tokens, on_text=lambda _: first.append(time.perf_counter()) if not first else None)
    return {"ttft_ms": (first[0] - t0) * 1e3, "decode_tok_s": (g.n_tokens - 1) / (g.decode_ms / 1e3),
            "n_tokens": g.n_tokens}


def _between(against: tuple[str, ...], directs: dict[str, Any], stock: Any, text: str,
             new_tokens: int) -> dict[str, Any]:
    """The direct runs paired with one served request: ``directs``' runners by key, and "stock"
    (``stock`` on ``text``, the prompt already formatted)."""
    from benchmarks.engine_bench import PROMPT

    return {k: stock.generate(text, new_tokens) if k == "stock" else _direct(directs[k], PROMPT, new_tokens)
            for k in against}


def _ratio_ci(served: list[float], direct: list[float], seed: int = 0) -> dict[str, float]:
    """Median of the per-pair ratios and its 95% bootstrap interval."""
    r = np.asarray(served, float) / np.asarray(direct, float)
    rng = np.random.default_rng(seed)
    boots = np.median(r[rng.integers(0, len(r), (2000, len(r)))], axis=1)
    return {"median": float(np.median(r)), "lo": float(np.quantile(boots, 0.025)),
            "hi": float(np.quantile(boots, 0.975))}


def _versus(served: list[dict], direct: list[dict], rss_mb: dict[int, float]) -> dict[str, Any]:
    """Served requests against their paired direct runs: medians and ratio CIs (``rss_mb``:
    the direct process's peak by the context it allocated)."""
    return {"direct": direct, "direct_rss_mb": rss_mb[max(rss_mb)], "direct_rss_mb_small": rss_mb[min(rss_mb)],
            "direct_ttft_ms": float(np.median([x["ttft_ms"] for x in direct])),
            "direct_decode_tok_s": float(np.median([x["decode_tok_s"] for x in direct])),
            "ttft_ratio": _ratio_ci([x["ttft_ms"] for x in served], [x["ttft_ms"] for x in direct]),
            "decode_ratio": _ratio_ci([x["decode_tok_s"] for x in served], [x["decode_tok_s"] for x in direct])}


def _markdown(result: dict[str, Any]) -> str:
    from nodes.build import SPIN_ALONE

    lines = ["# Served path vs llama.cpp direct, paired request by request\n",
             f"{result['cpu']}, {result['threads']} threads, {result['pairs']} pairs per row (a direct "
             "generation in the driver process, then a streamed request through the fleet, alternating), "
             f"{result['new_tokens']} new tokens, greedy, the prompt of `benchmarks/engine_bench.py` in the model's "
             f"chat template. llama.cpp direct and the node: spin {result['spin']}"
             + (" (a lone node's default)" if result["spin"] == SPIN_ALONE else "") + ", direct on the source GGUF "
             "unless the row says otherwise"
             + (f"; `llama.cpp {result['gguf_type']}`: served on the source GGUF requantised to "
                f"{result['gguf_type']} (`edge-moe export --gguf-type`)" if result.get("gguf_type") else "")
             + ". Ratios: the median of per-pair served ÷ direct, with a 95% bootstrap interval; TTFT below 1 and "
             "decode above 1 favour the served path. Peak RSS: the node process's VmHWM (a Ray worker; a llama.cpp "
             "node's context starts at 512 tokens and grows as requests need) against a fresh direct process's own "
             "VmHWM, with llama.cpp's context allocated at load: 4,096 tokens (llama-server's and llama-cli's "
             "default `--ctx-size`) / 512 (llama_cpp.Llama's default `n_ctx`, enough for this prompt)."
             + (" Rows \"vs stock\": the direct side is `llama_cpp.Llama` as shipped, on the source GGUF (its "
                "defaults but the threads, libgomp's default wait, a process of its own, `create_completion` streamed on the same "
                "tokens: `benchmarks/stock_llama.py`), what a user of llama-cpp-python runs instead; its RSS column: "
                "that process's VmHWM / served." if result.get("stock") else "") + "\n",
             "| model | served engine | TTFT ms direct / served | TTFT ratio [95% CI] | decode tok/s direct / served "
             "| decode ratio [95% CI] | peak RSS MB direct 4,096 / 512 / served (ratios) |", "|---|---|---|---|---|---|---|"]
    for model, rows in result["models"].items():
        for engine, row in rows.items():
            for vs in row["versus"]:
                r = row["vs"][vs]
                t, d = r["ttft_ratio"], r["decode_ratio"]
                small = r.get("direct_rss_mb_small")
                rss = (f"{r['direct_rss_mb']:.0f} / {small:.0f} / {row['served_rss_mb']:.0f} "
                       f"({row['served_rss_mb'] / r['direct_rss_mb']:.2f}x / {row['served_rss_mb'] / small:.2f}x)"
                       if vs != "stock" else
                       f"{r['direct_rss_mb']:.0f} / {row['served_rss_mb']:.0f} "
                       f"({row['served_rss_mb'] / r['direct_rss_mb']:.2f}x)")
                who = {"source": engine, "stock": f"{engine} vs stock `llama_cpp.Llama`"}.get(
                    vs, f"{engine}, direct on the {vs} file")
                lines.append(f"| {model} | {who} | {r['direct_ttft_ms']:.0f} / {row['served_ttft_ms']:.0f} | "
                             f"{t['median']:.2f} [{t['lo']:.2f}, {t['hi']:.2f}] | {r['direct_decode_tok_s']:.1f} / "
                             f"{row['served_decode_tok_s']:.1f} | {d['median']:.2f} [{d['lo']:.2f}, {d['hi']:.2f}] "
                             f"| {rss} |")
    lines += ["", f"Run: `{result['command']}` on {result['date']}; 1-minute load average after each row: "
              + ", ".join(f"{v:.2f}" for v in result["loadavg"]) + ".", ""]
    return "\n".join(lines)


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(help=__doc__.splitlines()[0])
def main(
    models: Annotated[str, typer.Option(help="comma-separated asset names")] =
        "smollm2-135m-instruct,gemma3-270m,qwen2.5-coder-1.5b-instruct",
    engines: Annotated[str, typer.Option(help="served engines: llama.cpp, onnxruntime")] = "llama.cpp,onnxruntime",
    threads: Annotated[int, typer.Option(help="threads of both")] = 2,
    pairs: Annotated[int, typer.Option(min=2, help="measured pairs per model and engine")] = 8,
    new_tokens: Annotated[int, typer.Option(help="greedy tokens per run")] = 64,
    gguf_type: Annotated[str | None, typer.Option(
        help="also serve llama.cpp on the source GGUF requantised to this type (edge-moe export --gguf-type), "
             "paired with llama.cpp direct on the source and on the requantised file")] = None,
    spin: Annotated[int | None, typer.Option(min=0, help=(
        "the llama.cpp node's nodes[].spin and llama.cpp direct's (default: a lone node's, 300); libgomp's own "
        "default, as stock llama.cpp polls, is 300000"))] = None,
    with_stock: Annotated[bool, typer.Option("--stock/--no-stock", help=(
        "also pair each served request with llama_cpp.Llama as shipped, in a process of its own "
        "(benchmarks/stock_llama.py)"))] = True,
    out: Annotated[Path, typer.Option(help="writes OUT.json and OUT.md")] = OUT,
) -> None:
    import os

    from benchmarks.engine_bench import (
        DIRECT_CONTEXT,
        PROMPT,
        _artifacts,
        _child,
        _cpu,
        _demo_expert,
    )
    from benchmarks.engine_served import served_run
    from benchmarks.stock_llama import StockLlama
    from edge_moe.runtime.gguf import GgufRunner
    from exporters.gguf_requant import gguf_precision
    from nodes.build import SPIN_ALONE

    spin = SPIN_ALONE if spin is None else spin

    result: dict[str, Any] = {"command": " ".join([".venv/bin/python benchmarks/served_paired.py", *sys.argv[1:]]),
                              "date": time.strftime("%Y-%m-%d"), "cpu": _cpu()["model"], "threads": threads,
                              "pairs": pairs, "new_tokens": new_tokens, "spin": spin, "gguf_type": gguf_type, "stock": with_stock,
                              "models": {},
                              "loadavg": []}
    for model in models.split(","):
        onnx, gguf, why = _artifacts(model)
        if gguf is None:
            print(f"{model}: skipped ({why})")
            continue
        ggufs = {"source": gguf}  # llama.cpp direct on each, paired with the served requests
        if gguf_type:
            from exporters.gguf_requant import requantize_gguf

            ggufs[gguf_type] = requantize_gguf(gguf, gguf_type)
        directs = {k: GgufRunner(p, intra_op_threads=threads, spin=spin, prefix_reuse="off",
                                 initial_context=DIRECT_CONTEXT) for k, p in ggufs.items()}
        for r in directs.values():
            r.generate(PROMPT, 4)
        text = directs["source"].format_prompt(PROMPT, directs["source"].has_chat)  # the tokens the node computes
        stock = StockLlama(gguf, threads) if with_stock else None
        rss = {k: {c: _child("llama.cpp", str(p), threads, "speed", 8, 0, context=c)["peak_rss_mb"]
                   for c in (DIRECT_CONTEXT, 512)} for k, p in ggufs.items()}
        expert = _demo_expert(model)
        rows: dict[str, Any] = {}
        also = ("stock",) if stock else ()
        todo = [(e, e, onnx if e == "onnxruntime" else gguf, ("source", *also)) for e in engines.split(",")]
        todo += [(f"llama.cpp {gguf_type}", "llama.cpp", ggufs[gguf_type], (*ggufs, *also))] if gguf_type else []
        for engine, runner, artifact, against in todo:
            precision = expert["precision"] if runner == "onnxruntime" else gguf_precision(Path(artifact))[0]
            res = served_run(expert["name"], str(artifact), runner, precision, threads, PROMPT, new_tokens, spin=spin,
                             requests=pairs + 1,
                             between=partial(_between, against, directs, stock, text, new_tokens))
            s = res["requests"][1:]  # the first pair is a warm-up
            vs = {k: [b[k] for b in res["between"][1:]] for k in against}
            if stock:  # its peak so far: the same requests for every row
                rss["stock"] = {512: stock.peak_rss_mb()}
            rows[engine] = {"served": s, "node_spin": res.get("node_spin"), "served_rss_mb": res["node_peak_rss_mb"],
                            "served_ttft_ms": float(np.median([x["ttft_ms"] for x in s])),
                            "served_decode_tok_s": float(np.median([x["decode_tok_s"] for x in s])),
                            "versus": list(vs), "vs": {k: _versus(s, d, rss[k]) for k, d in vs.items()}}
            result["loadavg"].append(os.getloadavg()[0])
            for k, r in rows[engine]["vs"].items():
                print(f"{model} {engine} vs direct on {k}: TTFT {r['direct_ttft_ms']:.0f} -> "
                      f"{rows[engine]['served_ttft_ms']:.0f} ms (ratio {r['ttft_ratio']['median']:.2f}), decode "
                      f"{r['direct_decode_tok_s']:.1f} -> {rows[engine]['served_decode_tok_s']:.1f} tok/s "
                      f"(ratio {r['decode_ratio']['median']:.2f}), RSS {r['direct_rss_mb']:.0f} "
                      f"(512-token context: {r['direct_rss_mb_small']:.0f}) -> "
                      f"{rows[engine]['served_rss_mb']:.0f} MB", flush=True)
        for r in directs.values():
            r.close()
        if stock:
            stock.close()
        result["models"][model] = rows
    from benchmarks.results_io import write_results

    write_results(out, result, _markdown(result))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    app()
