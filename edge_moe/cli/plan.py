"""``edge-moe plan``: the experts that may answer under a budget, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge_moe.cli.common import app, budget_number, handles_errors, parse_latency
from edge_moe.errors import ConfigError


@app.command()
@handles_errors
def plan(
    calibration: Annotated[Path, typer.Option(help="calibration table .npz (see README: formats)")],
    profiles: Annotated[Path, typer.Option(help="profiles JSON with latency_ms and energy_j per expert")],
    energy_j: Annotated[str, typer.Option("--energy-j", help="energy budget per request, J (worst case over the active experts); 'inf' for none")] = "inf",
    latency_ms: Annotated[list[str] | None, typer.Option("--latency-ms", help="latency budget in ms: one value for all categories, or CATEGORY=MS repeated")] = None,
    top_k: Annotated[int, typer.Option(min=0, help="experts active per request (top-k of the subset by gate weight); 0 = all of the subset")] = 2,
    tau: Annotated[float | None, typer.Option(help="adaptive k: the smallest k whose gate mass >= tau (overrides --top-k)")] = None,
    gate: Annotated[Path | None, typer.Option(help="use this gate.onnx instead of training one")] = None,
    out: Annotated[Path, typer.Option(help="output directory for plan.json (and the sweep files)")] = Path("plans"),
    sweep: Annotated[bool, typer.Option("--sweep", help="also plan a budget grid: plan table, Pareto front, PNG plot")] = False,
    retrain_check: Annotated[int, typer.Option(min=0, help="also measure the optimality-preserving gap on R random subsets")] = 0,
    seed: Annotated[int, typer.Option(help="seed for gate training and random baselines")] = 0,
) -> None:
    """Plan which experts may answer under an energy and latency budget.

    Trains the gate on the table's train split (or loads --gate), selects the subset on the
    validation split with the exact discrete monotonic optimiser, and reports accuracy on the
    test split. Writes OUT/plan.json. An infeasible budget exits 0 and says which budget binds.
    """
    if tau is not None and not (0.0 < tau <= 1.0):
        raise ConfigError(f"--tau={tau} must be in (0, 1]")
    from edge_moe.jobs.plan import run_plan

    run_plan(calibration, profiles, budget_number("--energy-j", energy_j), parse_latency(latency_ms),
             None if top_k == 0 else top_k, tau, gate, out, sweep, retrain_check, seed)
