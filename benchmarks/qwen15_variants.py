"""Which Qwen2.5-Coder-1.5B artifact the real demo serves: every CPU build side by side.

    .venv/bin/python benchmarks/qwen15_variants.py            # ~20 min on 2 cores
    .venv/bin/python benchmarks/qwen15_variants.py --questions 5   # a quick look

Each variant scores the real demo's fidelity set (the committed MMLU table's *train*
split, 15 fixed questions per category, :func:`edge_moe.jobs.demo_real.pick`) with the
runner the node uses (``OrtRunner``, 2 threads, letter scoring, one question at a time).
Per variant: size on disk, load seconds, RSS after the run, accuracy, argmax agreement with
the committed fp32 column that plans for the 1.5B, and ms per question. All variants run in
one process, one after the other, so the ms are side by side on the same machine state.

Variants (built when missing, except the builder's int4, which is measured only if present:
it peaks near 13 GB RSS while building):
- ``ortgenai-fp32``: onnxruntime-genai's builder, fp32;
- ``ortgenai-int8``: the builder's int8 (8-bit MatMulNBits, accuracy_level 4);
- ``ortgenai-int4``: the builder's int4 (k_quant_mixed);
- ``fp32-int4 asym acc4``: :func:`exporters.quantize.quantize_decoder` on the fp32 build
  with :data:`exporters.quantize.FAST_CPU_INT4` (the demo's);
- ``fp32-int4 sym acc4``: the same, symmetric;
- ``fp32-int4 default``: quantize_decoder's default (asymmetric, fp32 activations,
  attention-out / MLP-down / output MatMuls 8-bit).

Writes ``benchmarks/results/qwen15_variants.{json,md}``.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

RESULTS = Path(__file__).resolve().parent / "results"
ASSET = "qwen2.5-coder-1.5b-instruct"


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file()) / 1e6


def variants() -> list[tuple[str, Any]]:
    """(label, a function returning the artifact folder or None when it is not built)."""
    from edge_moe.paths import artifacts_dir
    from exporters.ortgenai import export_ortgenai
    from exporters.quantize import FAST_CPU_INT4, Int4Options, quantize_decoder

    def fp32() -> Path:
        return export_ortgenai(ASSET, precision="fp32", parity=False)

    def derived(opts: dict[str, Any], suffix: str) -> Any:
        return lambda: quantize_decoder(fp32(), "int4", fp32().parent / f"ortgenai-fp32-{suffix}", check=False,
                                        int4=Int4Options(**opts))

    def builder_int4() -> Path | None:
        d = artifacts_dir() / ASSET / "ortgenai-int4"
        return d if (d / "manifest.json").is_file() else None

    return [
        ("ortgenai-fp32 (builder)", fp32),
        ("ortgenai-int8 (builder, 8-bit MatMulNBits, acc 4)",
         lambda: export_ortgenai(ASSET, precision="int8", parity=False)),
        ("ortgenai-int4 (builder, k_quant_mixed)", builder_int4),
        ("fp32 -> int4 asym, acc 4, all 4-bit (the demo's)", derived(dataclasses.asdict(FAST_CPU_INT4), "int4")),
        ("fp32 -> int4 sym, acc 4, all 4-bit", derived({**dataclasses.asdict(FAST_CPU_INT4), "symmetric": True},
                                                       "int4-sym")),
        ("fp32 -> int4 quantize_decoder default (acc 0, sensitive 8-bit)",
         derived({}, "int4-default")),
    ]


def measure(art: Path, questions: list[Any], ref: np.ndarray, threads: int) -> dict[str, Any]:
    from edge_moe.runtime.runners import OrtRunner

    t0 = time.perf_counter()
    runner = OrtRunner(art, intra_op_threads=threads)
    load_s = time.perf_counter() - t0
    lp = np.zeros((len(questions), 4))
    ms = np.zeros(len(questions))
    for i, s in enumerate(questions):
        t = time.perf_counter()
        lp[i] = runner.score_options(s.prompt, list(s.options))
        ms[i] = (time.perf_counter() - t) * 1e3
    labels = np.array([s.label for s in questions])
    del runner
    return {"artifact": str(art), "size_mb": round(_size_mb(art), 1), "load_s": round(load_s, 1),
            "accuracy": float(np.mean(lp.argmax(-1) == labels)),
            "reference_accuracy": float(np.mean(ref.argmax(-1) == labels)),
            "agreement": float(np.mean(lp.argmax(-1) == ref.argmax(-1))),
            "mean_ms": float(ms.mean()), "p50_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95))}


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(
    n_questions: Annotated[int, typer.Option("--questions", help="fidelity questions per category (the demo's: 15)")] = 15,
    threads: int = 2,
    only: Annotated[str, typer.Option(help="comma-separated substrings of the variant labels to run")] = "",
) -> None:

    from edge_moe.calibration import TRAIN, load_calibration
    from edge_moe.jobs import demo_real

    samples = demo_real.load_samples()
    questions = demo_real.pick(samples, TRAIN, n_questions, seed=0)
    table = load_calibration(demo_real.COMMITTED_TABLE)
    ref = table.logprobs[[s.row for s in questions], table.experts.index(ASSET)]
    rows: list[dict[str, Any]] = []
    for label, build in variants():
        if only and not any(k in label for k in only.split(",")):
            continue
        art = build()
        if art is None:
            print(f"{label}: not built (skipped)", flush=True)
            rows.append({"variant": label, "artifact": None})
            continue
        r = {"variant": label, **measure(Path(art), questions, ref, threads),
             "rss_gb_peak_so_far": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)}
        print(json.dumps(r), flush=True)
        rows.append(r)
    RESULTS.mkdir(exist_ok=True)
    out = {"questions": len(questions), "split": "train", "threads": threads,
           "reference": f"committed column {ASSET} (the dequantised Q4_K_M checkpoint in fp32)", "rows": rows}
    (RESULTS / "qwen15_variants.json").write_text(json.dumps(out, indent=1))
    fast = next((r for r in rows if r.get("artifact") and "int8" in r["variant"]), None)
    lines = [f"# Qwen2.5-Coder-1.5B builds on this machine ({len(questions)} train-split MMLU questions, "
             f"{threads} threads, letter scoring, one at a time)", "",
             "| variant | size MB | load s | accuracy | committed fp32 acc | argmax agreement | mean ms | p95 ms |"
             + (" speed vs builder int8 |" if fast else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if fast else "")]
    for r in rows:
        if not r.get("artifact"):
            lines.append(f"| {r['variant']} | not built | | | | | | |" + (" |" if fast else ""))
            continue
        lines.append(f"| {r['variant']} | {r['size_mb']:.0f} | {r['load_s']:.1f} | {r['accuracy']:.3f} | "
                     f"{r['reference_accuracy']:.3f} | {r['agreement']:.3f} | {r['mean_ms']:.0f} | {r['p95_ms']:.0f} |"
                     + (f" {fast['mean_ms'] / r['mean_ms']:.2f}x |" if fast else ""))
    (RESULTS / "qwen15_variants.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    app()
