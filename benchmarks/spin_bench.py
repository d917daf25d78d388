"""How long llama.cpp's threads poll at ggml's barriers, quiet host and busy host (not a test).

A llama.cpp node's threads meet at an OpenMP barrier after every op; one that arrives first
polls ``GOMP_SPINCOUNT`` times, then sleeps (``edge_moe/runtime/gguf_start.py``). A node alone on
its host polls 300 times by default (``nodes[].spin``); a stock llama.cpp process sets nothing,
so libgomp polls 300,000 times (its documented default where ``OMP_WAIT_POLICY`` is unset).
For each model and spin count, a fresh process (``benchmarks/engine_bench.py``'s runner-level
child: :class:`~edge_moe.runtime.gguf.GgufRunner` on the model's source GGUF, 2 threads, prefix
reuse off, a 512-token context) warms up, then greedily generates ``--new-tokens`` tokens after
the ~110-token prompt (no chat template): TTFT and decode tok/s. Spin counts alternate in
rotating order, ``--rounds`` rounds, medians; first on a quiet host, then beside one busy
process (``python -c "while True: pass"``, nice 0, started by this script: the same
autogroup), as on a board where another service holds a core.

    .venv/bin/python benchmarks/spin_bench.py [--models smollm2-135m-instruct,qwen2.5-coder-1.5b-instruct]
        [--spins 300,3000,30000,300000] [--threads 2] [--rounds 3] [--out benchmarks/results/spin_bench]

``--threads 1 --spins 300,300000 --out benchmarks/results/spin_bench_1thread``: one thread, no
barrier to wait at (what ``nodes[].threads: 1`` gives a node on a busy host).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "spin_bench"
LIBGOMP_DEFAULT = 300_000
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _cell(gguf: Path, spin: int, threads: int, new_tokens: int) -> dict[str, Any]:
    from benchmarks.engine_bench import _child

    # the child's runner leaves a count set in its environment alone
    return _child("llama.cpp", str(gguf), threads, "speed", new_tokens, 0, context=512,
                  env={"GOMP_SPINCOUNT": str(spin)})


def _markdown(res: dict[str, Any]) -> str:
    lines = ["# llama.cpp's barrier polling: quiet host and busy host\n",
             f"{res['cpu']}, {res['threads']} thread{'s' if res['threads'] != 1 else ''}, {res['rounds']} rounds (spin counts in rotating order, a "
             f"fresh process each), medians; greedy, {res['new_tokens']} new tokens after a ~110-token prompt. "
             f"Spin {LIBGOMP_DEFAULT:,}: libgomp's default, what a stock llama.cpp process does; 300: a node alone "
             "on its host (`nodes[].spin`). Busy: one `while True: pass` process at nice 0 beside it.\n",
             "| model | host | " + " | ".join(f"spin {s:,}" for s in res["spins"]) + " |",
             "|---|---|" + "---|" * len(res["spins"])]
    for model, hosts in res["models"].items():
        for host, cells in hosts.items():
            lines.append(f"| {model} | {host} (TTFT ms / decode tok/s) | " + " | ".join(
                f"{cells[str(s)]['ttft_ms']:.0f} / {cells[str(s)]['decode_tok_s']:.1f}" for s in res["spins"]) + " |")
    lines += ["", f"Run: `{res['command']}` on {res['date']}.", ""]
    return "\n".join(lines)


@app.command(help=__doc__.splitlines()[0])
def main(
    models: Annotated[str, typer.Option(help="comma-separated asset names")] =
        "smollm2-135m-instruct,qwen2.5-coder-1.5b-instruct",
    spins: Annotated[str, typer.Option(help="comma-separated GOMP_SPINCOUNT values")] = f"300,3000,30000,{LIBGOMP_DEFAULT}",
    threads: Annotated[int, typer.Option(min=1)] = 2,
    rounds: Annotated[int, typer.Option(min=1)] = 3,
    new_tokens: Annotated[int, typer.Option(min=2)] = 64,
    out: Annotated[Path, typer.Option(help="writes OUT.json and OUT.md")] = OUT,
) -> None:
    from benchmarks.engine_bench import _cpu
    from exporters.assets import fetch_asset

    counts = [int(s) for s in spins.split(",")]
    res: dict[str, Any] = {"command": " ".join([".venv/bin/python benchmarks/spin_bench.py", *sys.argv[1:]]),
                           "date": time.strftime("%Y-%m-%d"), "cpu": _cpu()["model"], "threads": threads,
                           "rounds": rounds, "new_tokens": new_tokens, "spins": counts, "models": {}}
    for model in models.split(","):
        gguf = fetch_asset(model, install=False)
        res["models"][model] = {}
        for host in ("quiet", "busy"):
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if host == "busy" else None
            runs: dict[int, list[dict[str, Any]]] = {s: [] for s in counts}
            try:
                for r in range(rounds):
                    for s in counts[r % len(counts):] + counts[:r % len(counts)]:
                        runs[s].append(_cell(gguf, s, threads, new_tokens))
            finally:
                if hog:
                    hog.kill()
                    hog.wait()
            res["models"][model][host] = {str(s): {
                "ttft_ms": float(np.median([x["ttft_ms"] for x in v])),
                "decode_tok_s": float(np.median([x["decode_tok_s"] for x in v])),
                "runs": [{k: x[k] for k in ("ttft_ms", "decode_tok_s", "spin", "loadavg_1min")} for x in v]}
                for s, v in runs.items()}
            print(model, host, {s: (round(c["ttft_ms"]), round(c["decode_tok_s"], 1))
                                for s, c in res["models"][model][host].items()}, flush=True)
    from benchmarks.results_io import write_results

    write_results(out, res, _markdown(res))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    app()
