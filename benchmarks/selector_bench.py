"""Selector benchmark (not a test): exact B&B vs brute force, in F evaluations and seconds.

For N = 8, 12, 16, 20, 24, 40 experts it builds a seeded synthetic calibration table and
profiles (``gating.offline.synthetic``), trains the gate on the table's train split
(``gating.planning.gate.train_gate``; with ``--gate category`` or without torch, a category-prior
gate: logits = 8 x each expert's train accuracy in the sample's category), corrects the
experts' letter priors, and times :func:`gating.planning.selector.select_experts` against
:func:`gating.planning.selector.brute_force` (up to ``--brute-max-n``, default 20) on three objectives:

- ``mix-acc k=2``: validation accuracy of the gate-masked, renormalised top-2 mixture
  (``gating.planning.mixture.MixtureObjective``), constraint top_k=2: the planner's objective. It is
  not monotone, so the selector is not guaranteed exact here; the table says when it matched.
- ``mix-acc all``: the same mixture over all of S (no top-k), constraint over all of S.
- ``max-p (mono)``: ``mean_i max_{n∈S} p_n(y_i)``, the soft accuracy of a perfect router
  inside S; monotone, so the selector must equal brute force exactly.

Budgets: energy at 15% / 35% / 60% of the worst-case energy of all experts (tight / medium /
loose); latency per category at the slowest expert's latency plus aggregation, so every
expert fits it and N is the real search size (latency is separable: it only pre-filters). Every call gets a fresh objective, so no cache is shared between calls.
``mono`` says "seen" when the selector saw F drop on a superset during its search.

    .venv/bin/python benchmarks/selector_bench.py [--sizes 8,12,16,20,24,40] [--json out.json]

Targets: >= 100x fewer evaluations than brute force at N=20; N=40 exact in <= 1 s.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from edge_moe.calibration import TRAIN, VALIDATION, CalibrationTable  # noqa: E402
from gating.offline.synthetic import make_synthetic_profiles, make_synthetic_table  # noqa: E402
from gating.planning.mixture import MixtureObjective, apply_prior_correction, fit_prior_correction  # noqa: E402
from gating.planning.selector import (  # noqa: E402
    Budget,
    Selection,
    SelectionProblem,
    brute_force,
    select_experts,
)

FRACTIONS = {"tight": 0.15, "medium": 0.35, "loose": 0.60}
Objective = Callable[[np.ndarray], float]


def gate_logits(table: CalibrationTable, kind: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(validation gate logits (M, N), prior (N, K), gate kind actually used)."""
    val = table.split_rows(VALIDATION)
    if kind == "trained":
        try:
            from gating.planning.gate import GateConfig, train_gate
        except ImportError:  # no torch: fall back, and say so in the table
            kind = "category"
        else:
            gate = train_gate(table, GateConfig(seed=0))
            return gate.logits(val.embeddings).astype(np.float64), gate.prior, kind
    train = table.split_rows(TRAIN)
    prior = fit_prior_correction(train.logprobs)
    lp = apply_prior_correction(train.logprobs, prior)  # (Mt, N, K)
    right = lp.argmax(axis=2) == train.labels[:, None]  # (Mt, N)
    acc = np.stack([right[train.categories == c].mean(axis=0) for c in range(table.n_categories)])  # (C, N)
    return 8.0 * acc[val.categories], prior, kind


def objectives(table: CalibrationTable, gate: str) -> tuple[dict[str, tuple[Callable[[], Objective], int | None]], str]:
    """name -> (fresh-objective factory, constraint top_k)."""
    val = table.split_rows(VALIDATION)
    logits, prior, used = gate_logits(table, gate)
    lp = apply_prior_correction(val.logprobs, prior)  # (M, N, K)
    p_label = np.ascontiguousarray(np.exp(lp[np.arange(val.n_samples), :, val.labels]).T.astype(np.float64))  # (N, M)

    def max_p() -> Objective:
        return lambda mask: float(p_label[mask].max(axis=0).mean())

    return {
        "mix-acc k=2": (lambda: MixtureObjective(logits, lp, val.labels, top_k=2), 2),
        "mix-acc all": (lambda: MixtureObjective(logits, lp, val.labels, top_k=None), None),
        "max-p (mono)": (max_p, None),
    }, used


def timed(solver: Callable[[SelectionProblem, Budget], Selection], problem: SelectionProblem,
          budget: Budget) -> tuple[Selection, float]:
    t0 = time.perf_counter()
    sel = solver(problem, budget)
    return sel, time.perf_counter() - t0


def run(sizes: list[int], brute_max_n: int, gate: str) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        table, size = make_synthetic_table(n_experts=n, seed=0)
        profiles = make_synthetic_profiles(table, size, seed=0)
        latency, energy = profiles.arrays(table.experts, table.category_names)  # (N, C) each
        lat_budget = latency.max(axis=0) + profiles.aggregation_ms  # (C,) everyone fits
        objs, used = objectives(table, gate)
        for name, (make, top_k) in objs.items():
            k = n if top_k is None else min(top_k, n)
            worst_all = float(np.sort(energy, axis=0)[-k:].sum(axis=0).max())
            for level, frac in FRACTIONS.items():
                budget = Budget(energy_j=frac * worst_all, latency_ms=lat_budget)
                problem = SelectionProblem(list(table.experts), energy, latency, make(), top_k=top_k,
                                           aggregation_ms=profiles.aggregation_ms,
                                           categories=table.category_names)
                sel, t_sel = timed(select_experts, problem, budget)
                row: dict[str, Any] = {
                    "n": n, "objective": name, "gate": used, "budget": level, "energy_j": budget.energy_j,
                    "status": sel.status, "size": len(sel.experts), "f": sel.objective,
                    "evals": sel.evaluations, "seconds": t_sel,
                    "non_monotone_seen": "not monotone" in sel.message,
                }
                if n <= brute_max_n:
                    fresh = dataclasses.replace(problem, objective=make())  # no shared cache
                    ref, t_ref = timed(brute_force, fresh, budget)
                    row.update(f_brute=ref.objective, evals_brute=ref.evaluations, seconds_brute=t_ref,
                               match=ref.status == sel.status and (
                                   sel.status != "optimal" or abs(ref.objective - sel.objective) <= 1e-12))
                rows.append(row)
                print_row(row, flush=True)
    return rows


HEADER = (f"{'N':>3} {'objective':<13} {'budget':<6} {'|S|':>3} {'F select':>9} {'F brute':>9} {'match':>5} "
          f"{'mono':>4} {'evals':>7} {'brute':>8} {'ratio':>7} {'t select':>9} {'t brute':>8} {'speedup':>8}")


def print_row(r: dict[str, Any], flush: bool = False) -> None:
    brute = "evals_brute" in r
    ratio = f"{r['evals_brute'] / max(r['evals'], 1):.0f}x" if brute else "-"
    speed = f"{r['seconds_brute'] / r['seconds']:.0f}x" if brute else "-"
    f_ref = f"{r['f_brute']:.4f}" if brute and not math.isnan(r["f_brute"]) else "-"
    print(f"{r['n']:>3} {r['objective']:<13} {r['budget']:<6} {r['size']:>3} {r['f']:>9.4f} {f_ref:>9} "
          f"{('yes' if r['match'] else 'NO') if brute else '-':>5} {'seen' if r['non_monotone_seen'] else '-':>4} "
          f"{r['evals']:>7} {r['evals_brute'] if brute else '-':>8} {ratio:>7} {r['seconds']:>8.3f}s "
          f"{(str(round(r['seconds_brute'], 2)) + 's') if brute else '-':>8} {speed:>8}", flush=flush)


def summary(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    at20 = [r for r in rows if r["n"] == 20 and "evals_brute" in r]
    if at20:
        ratios = sorted(r["evals_brute"] / max(r["evals"], 1) for r in at20)
        lines.append(f"N=20: brute/selector evaluations from {ratios[0]:.0f}x to {ratios[-1]:.0f}x "
                     f"(median {ratios[len(ratios) // 2]:.0f}x) over {len(at20)} points")
    checked = [r for r in rows if "match" in r]
    for kind in sorted({r["objective"] for r in checked}):
        sub = [r for r in checked if r["objective"] == kind]
        lines.append(f"{kind}: matched brute force at {sum(r['match'] for r in sub)}/{len(sub)} points")
    at40 = [r for r in rows if r["n"] == 40]
    for kind in sorted({r["objective"] for r in at40}):
        sub = [r for r in at40 if r["objective"] == kind]
        lines.append(f"N=40 {kind}: {max(r['seconds'] for r in sub):.2f} s worst, "
                     f"{max(r['evals'] for r in sub)} evaluations worst")
    return lines


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="markdown")


@app.command(help=__doc__.splitlines()[0])
def main(
    sizes: str = "8,12,16,20,24,40",
    brute_max_n: int = 20,
    gate: Literal["trained", "category"] = "trained",
    json_path: Annotated[Path | None, typer.Option("--json", help="also write the rows here")] = None,
) -> None:
    ns = [int(s) for s in sizes.split(",")]
    print(f"selector bench: {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"numpy {np.__version__}; synthetic table seed 0; gate {gate}")
    print(HEADER)
    rows = run(ns, brute_max_n, gate)
    for line in summary(rows):
        print(line)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"command": " ".join(["benchmarks/selector_bench.py", *sys.argv[1:]]), "rows": rows}
        json_path.write_text(json.dumps(doc, indent=1, default=float))


if __name__ == "__main__":
    app()
