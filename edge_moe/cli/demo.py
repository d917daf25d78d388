"""``edge-moe demo``: the main job on the embedded default (what ``make demo`` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from edge_moe.cli.common import app, deprecated, handles_errors


def quiet_third_party() -> None:
    """Filter third-party warnings and progress bars (here and in the processes the demo
    starts, which inherit the environment); the demo prints its own status lines and bars.
    The third-party loggers are already quiet (the ``edge-moe`` callback, below ``-vv``)."""
    import os
    import warnings

    for key, value in {"PYTHONWARNINGS": "ignore", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1",
                       "HF_HUB_DISABLE_PROGRESS_BARS": "1", "ORT_LOGGING_LEVEL": "3", "RAY_DEDUP_LOGS": "1",
                       "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore")


DemoFleet = Literal["real", "smollm2"]


@app.command()
@handles_errors
def demo(
    demo_fleet: Annotated[DemoFleet, typer.Option(help="real: SmolLM2-135M, Gemma-3-270M and Qwen2.5-Coder-1.5B int4, three "
                                                       "families, one well above chance (configs/fleet.demo.real.yaml); "
                                                       "smollm2: SmolLM2-135M fp32/int8/int4, small and at chance "
                                                       "(configs/fleet.demo.yaml, what CI runs)")] = "real",
    questions: Annotated[int | None, typer.Option(min=1, help="held-out MMLU questions per budget (smollm2: in all, "
                                                             "default 4; real: per category, default 10 (40 per tier))")] = None,
    per_category: Annotated[int, typer.Option(min=3, help="smollm2: MMLU questions per category to calibrate on (when no table is cached)")] = 12,
    recalibrate: Annotated[bool, typer.Option("--recalibrate", help="smollm2: calibrate again even if a table is cached")] = False,
    config: Annotated[Path | None, typer.Option(help="fleet YAML (>= 3 nodes; default: the --demo-fleet's file in configs/)")] = None,
    seed: Annotated[int, typer.Option(help="seed for the question sample, split and gate")] = 0,
    threads: Annotated[int | None, typer.Option(min=1, help="onnxruntime threads per node (smollm2: 1, real: 2)")] = None,
    old_fleet: Annotated[DemoFleet | None, typer.Option("--fleet", hidden=True, callback=deprecated("demo --fleet", "--demo-fleet"))] = None,
) -> None:
    """Run the main job end to end on embedded Ray. It exports the fleet's experts and MiniLM, plans three energy budgets, deploys a 3-node fleet, asks held-out MMLU test questions at each budget, tears down, and prints accuracy with its 95% CI, ms (measured) and J (modelled) per budget. Its plans, Pareto front and plot go to out/demo/ under the current folder. Exports and measurements are cached under $EDGE_MOE_CACHE: a cold run takes about 20 min and a 9.7 GB peak on 2 cores, a warm one about 3.5 min.

    Example: edge-moe demo --demo-fleet smollm2
    """
    fleet = old_fleet or demo_fleet
    quiet_third_party()
    from edge_moe.jobs.demo import run_demo

    n = questions if questions is not None else (10 if fleet == "real" else 4)
    run_demo(n_questions=n, per_category=per_category, seed=seed, recalibrate=recalibrate,
             config=config, fleet_kind=fleet, threads=threads)
