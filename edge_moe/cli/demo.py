"""``edge-moe demo``: the main job on the embedded default (what ``make demo`` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge_moe.cli.common import app, handles_errors
from edge_moe.paths import CONFIGS


@app.command()
@handles_errors
def demo(
    questions: Annotated[int, typer.Option(min=1, help="held-out MMLU questions per budget")] = 4,
    per_category: Annotated[int, typer.Option(min=3, help="MMLU questions per category to calibrate on (when no table is cached)")] = 12,
    recalibrate: Annotated[bool, typer.Option("--recalibrate", help="calibrate again even if a table is cached")] = False,
    config: Annotated[Path, typer.Option(help="fleet YAML (>= 3 nodes)")] = CONFIGS / "fleet.demo.yaml",
    seed: Annotated[int, typer.Option(help="seed for the question sample, split and gate")] = 0,
) -> None:
    """The main job: export SmolLM2 (fp32/int8/int4) and MiniLM, calibrate, deploy a 3-node
    fleet on embedded Ray, ask MMLU and free-form questions at three budgets, tear down."""
    from edge_moe.jobs.demo import run_demo

    run_demo(n_questions=questions, per_category=per_category, seed=seed, recalibrate=recalibrate,
             config=config)
