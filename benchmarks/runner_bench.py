"""Runner benchmark (not a test): torch eager vs ORT fp32 / int8 / int4 on one model.

Prints, for each backend: prefill ms at T = 64 and 256 (batch 1, median of 5 after a
warm-up), greedy decode tok/s (64 steps after a 64-token prompt), and the peak RSS of
a fresh process that ran only that backend. Each backend runs in its own subprocess so
RSS figures do not mix.

    .venv/bin/python benchmarks/runner_bench.py [--asset smollm2-135m-instruct] [--threads 2]

Exports and variants come from the cache (made on first use; int4 without its parity
gate, so that it can be measured even where it fails the agreement tolerance).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BACKENDS = ("torch", "ort-fp32", "ort-int8", "ort-int4")
PREFILL_T = (64, 256)
DECODE_STEPS = 64
REPEATS = 5


def _prompt(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(100, 20000, (1, n), dtype=np.int64)


def _time(fn, repeats: int = REPEATS) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3)


def _bench_torch(asset: str, threads: int) -> dict:
    import torch
    from transformers import DynamicCache

    from exporters.llm import load_causal_lm, resolve_source

    torch.set_num_threads(threads)
    model = load_causal_lm(resolve_source(asset).hf_dir)
    out: dict = {}
    with torch.inference_mode():
        for t in PREFILL_T:
            ids = torch.from_numpy(_prompt(t))
            out[f"prefill_{t}_ms"] = _time(lambda ids=ids: model(input_ids=ids, use_cache=True))
        cache = DynamicCache()
        logits = model(
            input_ids=torch.from_numpy(_prompt(64)), past_key_values=cache, use_cache=True
        ).logits
        t0 = time.perf_counter()
        for _ in range(DECODE_STEPS):
            nxt = logits[:, -1:].argmax(-1)
            logits = model(input_ids=nxt, past_key_values=cache, use_cache=True).logits
        out["decode_tok_s"] = DECODE_STEPS / (time.perf_counter() - t0)
    return out


def _bench_ort(artifact: Path, threads: int) -> dict:
    from nodes.runners import OrtRunner

    r = OrtRunner(artifact, intra_op_threads=threads)
    out: dict = {}
    for t in PREFILL_T:
        ids = _prompt(t)
        out[f"prefill_{t}_ms"] = _time(lambda ids=ids: r.forward(ids))
    logits, past = r.forward(_prompt(64))
    t0 = time.perf_counter()
    for _ in range(DECODE_STEPS):
        nxt = logits[:, -1:].argmax(-1)
        logits, past = r.forward(nxt, None, past)
    out["decode_tok_s"] = DECODE_STEPS / (time.perf_counter() - t0)
    return out


def _artifact(asset: str, precision: str) -> Path:
    from exporters.llm import export_decoder

    base = export_decoder(asset)
    if precision == "fp32":
        return base
    from exporters.quantize import quantize_decoder

    return quantize_decoder(base, precision, check=precision != "int4")


def _one(backend: str, asset: str, threads: int) -> dict:
    if backend == "torch":
        res = _bench_torch(asset, threads)
    else:
        res = _bench_ort(_artifact(asset, backend.split("-")[1]), threads)
    res["rss_mb"] = _peak_rss_mb()
    return res


def _peak_rss_mb() -> float:
    # VmHWM is per address space and starts afresh at exec; ru_maxrss survives exec, so
    # a child would report its parent's peak.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--asset", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(_one(args.one, args.asset, args.threads)))
        return
    load_before = os.getloadavg()
    # Build artifacts first, outside the timed subprocesses.
    for b in args.backends.split(","):
        if b.startswith("ort-"):
            _artifact(args.asset, b.split("-")[1])
    results = {}
    for b in args.backends.split(","):
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                b,
                "--asset",
                args.asset,
                "--threads",
                str(args.threads),
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print(f"{b}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results[b] = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = results.get("torch")
    print(f"{args.asset}, {args.threads} threads, batch 1")
    print(
        f"{'backend':10} {'prefill64 ms':>13} {'prefill256 ms':>14} {'decode tok/s':>13} {'RSS MB':>8}  vs torch (prefill64 / decode)"
    )
    for b, r in results.items():
        rel = ""
        if ref and b != "torch":
            rel = f"{ref['prefill_64_ms'] / r['prefill_64_ms']:.2f}x / {r['decode_tok_s'] / ref['decode_tok_s']:.2f}x"
        print(
            f"{b:10} {r['prefill_64_ms']:13.1f} {r['prefill_256_ms']:14.1f} "
            f"{r['decode_tok_s']:13.1f} {r['rss_mb']:8.0f}  {rel}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "asset": args.asset,
                    "threads": args.threads,
                    "command": " ".join(
                        [".venv/bin/python", "benchmarks/runner_bench.py", *sys.argv[1:]]
                    ),
                    "loadavg_1_5_15_before": [round(x, 2) for x in load_before],
                    "loadavg_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
                    "cpus": os.cpu_count(),
                    "int4": "MatMulNBits block 32 asymmetric, sensitive MatMuls 8-bit",
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
