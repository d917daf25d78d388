"""The plan workflow behind ``edge-moe plan`` (and the demo's offline step).

Load the inputs (training the gate when none is given), plan one budget, write plan.json
and print it; optionally sweep a budget grid (plan table, Pareto front, PNG) and measure
the retrain gap on random subsets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edge_moe.calibration import load_calibration
from edge_moe.jobs.progress_bar import progress_bar

console = Console(soft_wrap=True)


def print_plan(record: dict[str, Any]) -> None:
    if record["status"] != "optimal":
        console.print(f"[bold yellow]{record['message']}[/]", highlight=False)
        return
    t = Table(title=f"plan ({record['method']}): {', '.join(record['experts'])}")
    t.add_column("category")
    t.add_column("test acc", justify="right")
    t.add_column("test NLL", justify="right")
    t.add_column("n", justify="right")
    t.add_column("worst ms", justify="right")
    for (cat, stats), ms in zip(record["test"]["per_category"].items(), record["worst_latency_ms"], strict=False):
        t.add_row(cat, f"{stats['accuracy']:.3f}", f"{stats['nll']:.3f}", str(stats["n"]), f"{float(ms):.0f}")
    t.add_row("[bold]all[/]", f"[bold]{record['test']['accuracy']:.3f}[/]", f"{record['test']['nll']:.3f}",
              str(record["test"]["n"]), "")
    console.print(t)
    src = record["profiles"]["sources"]
    sel = record.get("selection", {})
    console.print(
        f"objective {sel.get('objective', '?')} on the {sel.get('data', 'validation split')}: "
        f"{float(record['objective_value']):.4f}; validation accuracy "
        f"{float(record['objective_validation_accuracy']):.3f}; "
        f"worst-case energy {float(record['worst_energy_j']):.3f} J ({'/'.join(src['energy_j'])}); "
        f"selector evaluations {record['evaluations']}; gate {record['gate']}",
        highlight=False,
    )
    guard = record.get("guard", {})
    if guard.get("enabled") and guard.get("gain") is not None:
        verdict = "kept the single expert" if guard["replaced"] else "kept the mixture"
        console.print(f"guard ({guard['confidence']:g}): {list(guard['candidate'])} vs {list(guard['single'])}, "
                      f"gain {guard['gain']:+.4f}, lower bound {guard['lower_bound']:+.4f}: {verdict}",
                      highlight=False)


def run_plan(calibration: Path, profiles: Path, energy_j: float, latency: float | dict[str, float],
             top_k: int | None, tau: float | None, gate: Path | None, out: Path, sweep: bool,
             retrain_check: int, seed: int, progress: bool = True, objective: str = "loglik",
             folds: int = 0, guard_confidence: float | None = 0.95) -> dict[str, Any]:
    """The work behind ``edge-moe plan``: one plan, then the optional sweep and retrain check.

    Args:
        calibration / profiles: the planner's inputs; gate: a gate.onnx, or None to train one
            on the table's train split (written to ``out/gate.onnx``).
        energy_j / latency: the budget (J; ms for every category, or per category).
        top_k / tau: the fine level (give one).
        out: folder for plan.json and the sweep's plans.json, pareto.json, tradeoffs.png.
        sweep: also plan a budget grid; retrain_check: measure the claim-1 gap on R subsets.
        objective: ``"loglik"`` or ``"accuracy"``; folds: 0 selects on validation, k >= 2 on
            k-fold CV over train + validation; guard_confidence: the paired guard's
            confidence (None: no guard). All three are recorded in plan.json.

    Returns:
        The plan record written to ``out/plan.json``.

    Raises:
        DataFormatError / GateError: an input file is missing or the inputs disagree.
    """
    from gating.planning import planner
    from gating.planning.gate import GateConfig

    out.mkdir(parents=True, exist_ok=True)
    console.print(f"loading {calibration} and {profiles}" + ("" if gate else "; training the gate"))
    with progress_bar(progress) as bar:
        inputs = planner.load_inputs(calibration, profiles, gate, out, GateConfig(seed=seed), progress=bar)
    gate_path = str(gate) if gate else str(out / "gate.onnx")
    plan = planner.plan_one(inputs, energy_j, planner.latency_budget(inputs, latency), top_k, tau,
                            objective=objective, folds=folds, guard_confidence=guard_confidence, seed=seed)
    record = planner.plan_record(inputs, plan, gate_path)
    planner.write_json(out / "plan.json", record)
    print_plan(record)
    console.print(f"wrote {out / 'plan.json'}")
    if sweep:
        _sweep(inputs, top_k, out, calibration.name, seed, progress, objective)
    if retrain_check > 0:
        _retrain_check(inputs, calibration, out, retrain_check, seed, progress)
    return record


def _sweep(inputs: Any, top_k: int | None, out: Path, title: str, seed: int, progress: bool,
           objective: str) -> None:
    """A budget grid: the plan table, its Pareto front and the trade-off plot."""
    from gating.offline.plot import plot_sweep
    from gating.planning import planner

    with progress_bar(progress) as bar:
        doc = planner.sweep(inputs, top_k, seed=seed, progress=bar, objective=objective)
    planner.write_json(out / "plans.json", doc)
    planner.write_json(out / "pareto.json", doc["pareto_front"])
    png = plot_sweep(doc, out / "tradeoffs.png", title=title)
    chk, mono = doc["brute_force_check"], doc["monotonicity"]
    console.print(
        f"sweep: {len(doc['plans'])} plans over {len(doc['energy_grid_j'])}x{len(doc['latency_grid_ms'])} "
        f"budgets; Pareto front {len(doc['pareto_front'])} plans; selector == brute force at "
        f"{chk['equal']}/{chk['points']} points ({chk['selector_evaluations']} vs "
        f"{chk['brute_force_evaluations']} evaluations); objective drops when adding an expert in "
        f"{mono['drops']}/{mono['pairs']} pairs (worst {mono['worst_drop']:.4f})",
        highlight=False,
    )
    console.print(f"wrote {out / 'plans.json'}, {out / 'pareto.json'}, {png}")


def _retrain_check(inputs: Any, calibration: Path, out: Path, n_subsets: int, seed: int,
                   progress: bool) -> None:
    """Claim 1: the masked full-set gate against a gate retrained on each random subset."""
    from gating.offline.retrain_gap import retrain_gap
    from gating.planning import planner
    from gating.planning.gate import GateConfig, train_gate

    console.print(f"retrain check: {n_subsets} random subsets (masked θ* vs gate retrained on S)")
    raw = load_calibration(calibration)
    full = inputs.trained_gate or train_gate(raw, GateConfig(seed=seed))
    with progress_bar(progress) as bar:
        report = retrain_gap(raw, full, n_subsets=n_subsets, seed=seed, progress=bar)
    planner.write_json(out / "retrain_gap.json", report.to_json())
    console.print(report.summary(), highlight=False)
