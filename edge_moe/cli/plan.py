"""``edge-moe plan``: the experts that may answer under a budget, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from edge_moe.cli.common import (
    EXIT_REFUSED,
    JSON_HELP,
    app,
    budget_number,
    deprecated,
    handles_errors,
    parse_latency,
    print_json,
    stdout_to_stderr,
)
from edge_moe.errors import ConfigError

Objective = Literal["loglik", "accuracy"]


@app.command()
@handles_errors
def plan(
    calibration: Annotated[Path | None, typer.Option(help="calibration table .npz (see docs/formats.md)")] = None,
    profiles: Annotated[Path | None, typer.Option(help="profiles JSON with latency_ms and energy_j per expert")] = None,
    example: Annotated[bool, typer.Option("--example", help="plan on the shipped synthetic example table and profiles (no files needed)")] = False,
    energy_j: Annotated[str, typer.Option("--energy-j", metavar="J", help="energy budget per request, J (worst case over the active experts); 'inf' for none")] = "inf",
    latency_ms: Annotated[list[str] | None, typer.Option("--latency-ms", metavar="MS|CATEGORY=MS", help="latency budget in ms: one value for all categories, or CATEGORY=MS repeated")] = None,
    top_k: Annotated[int, typer.Option(min=0, help="experts active per request (top-k of the subset by gate weight); 0 = all of the subset")] = 2,
    tau: Annotated[float | None, typer.Option(help="adaptive k: the smallest k whose gate mass >= tau (overrides --top-k)")] = None,
    gate: Annotated[Path | None, typer.Option(help="use this gate.onnx instead of training one")] = None,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="folder for plan.json, the trained gate.onnx and the sweep files")] = Path("plans"),
    sweep: Annotated[bool, typer.Option("--sweep", help="also plan a budget grid: plan table, Pareto front, PNG plot")] = False,
    retrain_check: Annotated[int, typer.Option(min=0, help="also measure the optimality-preserving gap on R random subsets")] = 0,
    seed: Annotated[int, typer.Option(help="seed for gate training, folds, the guard's bootstrap and random baselines")] = 0,
    objective: Annotated[Objective, typer.Option(help="F(S) to maximise: loglik (mean log-likelihood of the mixture) or accuracy")] = "loglik",
    folds: Annotated[int, typer.Option(min=0, help="select on k-fold cross-validation over train + validation (k >= 2); 0 = the validation split")] = 0,
    guard_confidence: Annotated[float, typer.Option(help="paired guard: a multi-expert plan replaces the best single expert only when the bootstrap lower bound of its gain is > 0 at this confidence; 0 = no guard")] = 0.95,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP + ": the plan record written to plan.json")] = False,
    old_out: Annotated[Path | None, typer.Option("--out", hidden=True, callback=deprecated("plan --out", "--out-dir"))] = None,
) -> None:
    """Plan which experts may answer under an energy and latency budget, and write OUT_DIR/plan.json. The gate is trained on the table's train split (or loaded with --gate), the subset is chosen on the validation split (or k-fold CV) by the exact selector and replaces the best single expert only when the paired guard admits it, and accuracy is reported on the test split. An infeasible budget is an answer: it says which budget binds and exits 2.

    Example: edge-moe plan --example --energy-j 2 --latency-ms 400 --out-dir plans/
    """
    out_dir = old_out if old_out is not None else out_dir
    if example:
        from edge_moe.paths import CONFIGS

        calibration = calibration or CONFIGS / "example" / "calibration.synthetic.npz"
        profiles = profiles or CONFIGS / "example" / "profiles.synthetic.json"
    if calibration is None or profiles is None:
        raise ConfigError("give --calibration and --profiles (or --example for the shipped example)")
    if tau is not None and not (0.0 < tau <= 1.0):
        raise ConfigError(f"--tau={tau} must be in (0, 1]")
    if folds == 1:
        raise ConfigError("--folds=1 cannot cross-validate: give 0 (the validation split) or k >= 2")
    if not 0.0 <= guard_confidence < 1.0:
        raise ConfigError(f"--guard-confidence={guard_confidence} must be in [0, 1) (0: no guard)")
    from edge_moe.jobs.plan import run_plan

    with stdout_to_stderr(as_json):
        record = run_plan(calibration, profiles, budget_number("--energy-j", energy_j), parse_latency(latency_ms),
                          None if top_k == 0 else top_k, tau, gate, out_dir, sweep, retrain_check, seed,
                          objective=objective, folds=folds, guard_confidence=guard_confidence or None)
    if as_json:
        print_json(record)
    if record["status"] == "infeasible":
        raise typer.Exit(EXIT_REFUSED)
