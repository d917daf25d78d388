"""The offline planner: calibration table + profiles + budget -> plan (and sweeps of plans).

A plan answers "which experts may answer, under this energy and latency budget?":

1. Load the calibration table and the profiles, and align them by expert and category
   (:func:`gating.planning.inputs.load_inputs`, re-exported here as ``planner.load_inputs``).
2. Get the gate: train it on the table's train split (early stopping on validation) and
   export ``gate.onnx``, or load a given ``gate.onnx``. The gate carries the per-expert
   option-prior correction, which is applied to the experts' log-probs before mixing.
3. Build the objective F(S), by name: the mean log-likelihood (``loglik``, the default) or
   the accuracy (``accuracy``) of the gate-masked, renormalised top-k mixture of the
   calibrated experts restricted to S, on the validation split or on k-fold
   cross-validation over train + validation (:func:`gating.planning.inputs.make_objective`, also
   re-exported).
4. Solve ``max F(S)`` under the budget with the exact selector (``gating.planning.selector``), then
   the paired guard (:mod:`gating.planning.guard`): a multi-expert S replaces the best single expert
   that fits only when the bootstrap lower bound of its gain on the selection data is > 0.
5. Report the chosen experts' accuracy on the *test* split, per category and overall.

``sweep`` repeats 3-5 over a budget grid for MoE² (fixed k and adaptive k) and every
baseline, and writes the plan table, the Pareto front and a plot.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_moe.atomic import write_text
from edge_moe.calibration import TEST
from edge_moe.errors import ConfigError, DataFormatError
from edge_moe.progress import ProgressCallback, reporter
from edge_moe.wire import json_float  # plan files: NaN as "nan", +-inf as "inf"/"-inf"
from gating.planning import baselines
from gating.planning.guard import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, apply_guard
from gating.planning.inputs import DEFAULT_OBJECTIVE, PlanInputs, make_objective, split_rows
from gating.planning.inputs import (
    load_inputs as load_inputs,  # re-exported: planner.load_inputs(...)
)
from gating.planning.mixture import evaluate_subset
from gating.planning.selector import (
    Budget,
    Selection,
    SelectionProblem,
    brute_force,
    select_experts,
)

logger = logging.getLogger(__name__)

PLAN_FORMAT = "edge-moe-plan/1"
DEFAULT_TAU = 0.8
CROSSCHECK_MAX_N = 14  # a sweep cross-checks the selector against brute force up to this N (the
# oracle itself, gating.planning.problem.BRUTE_FORCE_MAX_N, could go further but a sweep runs it per point)


@dataclass(frozen=True)
class Plan:
    """One budget's plan, with its test-split evaluation."""

    method: str
    budget_energy_j: float
    budget_latency_ms: list[float]
    top_k: int | None
    tau: float | None
    selection: Selection
    test: dict[str, Any]  # MixtureReport.to_json() on the test split, {} when infeasible
    extra: dict[str, Any] = field(default_factory=dict)
    validation_accuracy: float | None = None  # the plan's validation accuracy (None: sel.objective is it)

    def to_json(self) -> dict[str, Any]:
        sel = self.selection
        return {
            "method": self.method,
            "status": sel.status,
            "message": sel.message,
            "experts": list(sel.experts),
            "objective_value": json_float(sel.objective),  # F on the selection data (``selection`` says which)
            "objective_validation_accuracy": json_float(sel.objective if self.validation_accuracy is None
                                                        else self.validation_accuracy),
            "worst_energy_j": json_float(sel.worst_energy_j),
            "worst_latency_ms": [json_float(v) for v in np.atleast_1d(sel.worst_latency_ms)],
            "evaluations": sel.evaluations,
            "budget": {"energy_j": json_float(self.budget_energy_j),
                       "latency_ms": [json_float(v) for v in self.budget_latency_ms]},
            "top_k": self.top_k,
            "tau": self.tau,
            "test": self.test,
            **self.extra,
        }


def write_json(path: Path, data: Any) -> Path:
    """Write JSON atomically (temp file, then rename) so no partial file is left."""
    return write_text(path, json.dumps(data, indent=2) + "\n")


# ---------------------------------------------------------------- inputs
# Loading and aligning the inputs (load_inputs, PlanInputs) and building F(S) (make_objective)
# live in gating.planning.inputs, which the live router uses too; they are re-exported here.


def latency_budget(inputs: PlanInputs, latency: float | dict[str, float]) -> np.ndarray:
    """A (C,) latency budget from one value or a category -> ms mapping (missing: unbounded).

    Raises:
        ConfigError: a category is unknown or a value is NaN/negative.
    """
    cats = inputs.categories
    if isinstance(latency, dict):
        unknown = [c for c in latency if c not in cats]
        if unknown:
            raise ConfigError(f"--latency-ms: unknown categories {unknown} (known: {list(cats)})")
        out = np.array([latency.get(c, math.inf) for c in cats], dtype=float)
    else:
        out = np.full(len(cats), float(latency))
    if np.isnan(out).any() or (out < 0).any():
        raise ConfigError(f"--latency-ms: budgets must be numbers >= 0, got {out.tolist()}")
    return out


# ---------------------------------------------------------------- one plan


def make_problem(inputs: PlanInputs, objective: Callable[[np.ndarray], float],
                 top_k: int | None) -> SelectionProblem:
    return SelectionProblem(experts=list(inputs.experts), energy_j=inputs.energy_j,
                            latency_ms=inputs.latency_ms, objective=objective, top_k=top_k,
                            aggregation_ms=inputs.profiles.aggregation_ms,
                            categories=list(inputs.categories), monotone=False)


def evaluate_test(inputs: PlanInputs, mask: np.ndarray, top_k: int | None, tau: float | None,
                  uniform: bool = False) -> dict[str, Any]:
    """The test-split mixture report for a subset (empty dict for the empty set)."""
    if not np.asarray(mask).any():
        return {}
    logits, test = split_rows(inputs, TEST)
    if len(test.labels) == 0:
        raise DataFormatError(f"{inputs.calibration_path}: the test split (split == 2) is empty")
    if uniform:
        logits = np.zeros_like(logits)
    report = evaluate_subset(logits, test.logprobs, test.labels, test.categories,
                             test.category_names, np.asarray(mask, dtype=bool), top_k=top_k, tau=tau)
    return report.to_json()


def plan_one(inputs: PlanInputs, energy_j: float, latency_ms: np.ndarray, top_k: int | None,
             tau: float | None = None, objective: str = DEFAULT_OBJECTIVE, folds: int = 0,
             guard_confidence: float | None = DEFAULT_CONFIDENCE, seed: int = 0) -> Plan:
    """The MoE² plan for one budget: exact selection on the selection data, the guard, test.

    With ``tau`` (adaptive k) any member of S may be active, so the constraint is the
    worst case over all of S (``top_k=None`` in the problem).

    Args:
        objective: ``"loglik"`` or ``"accuracy"`` (:func:`gating.planning.inputs.make_objective`).
        folds: 0 selects on validation; k >= 2 on k-fold CV over train + validation.
        guard_confidence: the paired guard's confidence in (0, 1); None turns it off.
        seed: the folds' and the bootstrap's seed.

    The record's ``selection`` says what F was and on what data; ``guard`` what the guard did.
    """
    constraint_k = None if tau is not None else top_k
    k = None if tau is not None else top_k
    F = make_objective(inputs, k, tau, objective=objective, folds=folds, seed=seed)
    problem = make_problem(inputs, F, constraint_k)
    budget = Budget(energy_j=energy_j, latency_ms=latency_ms)
    sel = select_experts(problem, budget)
    guard: dict[str, Any] = {"enabled": False}
    if guard_confidence is not None:
        sel, report = apply_guard(problem, budget, sel, F, guard_confidence, DEFAULT_RESAMPLES, seed)
        guard = {"enabled": True, **report.to_json()}
    method = "moe2-adaptive" if tau is not None else "moe2"
    test = evaluate_test(inputs, sel.mask, k, tau) if sel.status == "optimal" else {}
    val_acc = make_objective(inputs, k, tau, objective="accuracy")(sel.mask) if sel.mask.any() else None
    extra = {"selection": selection_record(objective, folds, seed, F.metric), "guard": guard}
    return Plan(method, energy_j, latency_ms.tolist(), constraint_k, tau, sel, test, extra, val_acc)


def selection_record(objective: str, folds: int, seed: int, metric: str) -> dict[str, Any]:
    """What F was and the data it was measured on, for plan.json."""
    data = f"{folds}-fold cross-validation over train + validation" if folds else "validation split"
    return {"objective": objective, "metric": metric, "folds": folds, "seed": seed, "data": data,
            "calibration": "per-expert prior correction, then per-expert temperature (gate record)"}


def plan_record(inputs: PlanInputs, plan: Plan, gate_path: str) -> dict[str, Any]:
    """The plan.json document: the plan plus where its inputs came from."""
    return {
        "format": PLAN_FORMAT,
        **plan.to_json(),
        "categories": list(inputs.categories),
        "gate": gate_path,
        "temperature": [float(t) for t in inputs.gate.temperature],
        "calibration": {"path": inputs.calibration_path, "sha256": inputs.calibration_sha256},
        "profiles": {"path": inputs.profiles_path, "sources": inputs.profiles.sources(),
                     "aggregation_ms": inputs.profiles.aggregation_ms},
    }


# ---------------------------------------------------------------- monotonicity


def monotonicity_report(objective: Callable[[np.ndarray], float], n: int, max_pairs: int = 4096,
                        seed: int = 0) -> dict[str, Any]:
    """How often adding an expert *lowers* F: over all (S, n) pairs when small, else sampled.

    The selector's bound F(I ∪ U) is exact only for monotone F, so the planner reports this.
    """
    rng = np.random.default_rng(seed)
    total = n * 2 ** (n - 1)
    exhaustive = total <= max_pairs
    drops, worst, pairs = 0, 0.0, 0
    if exhaustive:
        it = ((np.array([(s >> j) & 1 for j in range(n)], dtype=bool), e)
              for s in range(2 ** n) for e in range(n) if not (s >> e) & 1)
    else:
        it = ((rng.random(n) < rng.random(), int(rng.integers(n))) for _ in range(max_pairs))
    for mask, e in it:
        if mask[e]:
            continue
        bigger = mask.copy()
        bigger[e] = True
        d = objective(bigger) - objective(mask)
        pairs += 1
        if d < -1e-12:
            drops += 1
            worst = min(worst, d)
    return {"pairs": pairs, "exhaustive": exhaustive, "drops": drops,
            "drop_rate": drops / max(pairs, 1), "worst_drop": -worst}


# ---------------------------------------------------------------- sweeps


def budget_grid(inputs: PlanInputs, top_k: int | None, n_energy: int = 8,
                n_latency: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Energy and latency grids spanning 'only the cheapest fits' to 'everything fits'."""
    e_worst = inputs.energy_j.max(axis=1)  # (N,) worst category per expert
    k = len(e_worst) if top_k is None else min(top_k, len(e_worst))
    e_lo, e_hi = float(e_worst.min()), float(np.sort(e_worst)[-k:].sum())
    l_worst = inputs.latency_ms.max(axis=1) + inputs.profiles.aggregation_ms
    l_lo, l_hi = float(l_worst.min()), float(l_worst.max())
    energies = np.unique(np.geomspace(max(e_lo, 1e-9) * 0.9, e_hi * 1.05, n_energy))
    latencies = np.unique(np.geomspace(max(l_lo, 1e-9) * 0.95, l_hi * 1.05, n_latency))
    return energies, latencies


def sweep(inputs: PlanInputs, top_k: int | None, tau: float = DEFAULT_TAU, seed: int = 0,
          n_energy: int = 8, n_latency: int = 6, progress: ProgressCallback | None = None,
          objective: str = DEFAULT_OBJECTIVE) -> dict[str, Any]:
    """Plans for every (energy, latency) grid point: MoE² (fixed and adaptive k) and baselines.

    Every method maximises the named ``objective`` on validation (no guard: this sweep
    checks the selector); each row's ``objective_value`` is F, ``objective_validation_accuracy``
    the plan's validation accuracy.

    Returns a JSON-ready document with the plan rows, the single experts, the Pareto front of
    MoE² and the selector-vs-brute-force cross-check (up to ``CROSSCHECK_MAX_N`` experts).
    ``progress`` hears ``("sweep", grid points done, grid points in all)``.
    """
    energies, latencies = budget_grid(inputs, top_k, n_energy, n_latency)
    n, n_cat = len(inputs.experts), len(inputs.categories)
    obj_k = make_objective(inputs, top_k, None, objective=objective)
    obj_tau = make_objective(inputs, None, tau, objective=objective)
    obj_uniform = make_objective(inputs, None, None, uniform=True, objective=objective)
    acc = {(top_k, None, False): make_objective(inputs, top_k, None, objective="accuracy"),
           (None, tau, False): make_objective(inputs, None, tau, objective="accuracy"),
           (None, None, True): make_objective(inputs, None, None, uniform=True, objective="accuracy")}
    prob_k = make_problem(inputs, obj_k, top_k)
    prob_tau = make_problem(inputs, obj_tau, None)
    prob_uniform = make_problem(inputs, obj_uniform, None)
    rows: list[dict[str, Any]] = []
    checks = {"points": 0, "equal": 0, "selector_evaluations": 0, "brute_force_evaluations": 0}

    def add(method: str, sel: Selection, e: float, lat: np.ndarray, k: int | None, t: float | None,
            uniform: bool = False, **extra: Any) -> None:
        test = evaluate_test(inputs, sel.mask, k, t, uniform) if sel.mask.any() else {}
        val_acc = acc[(k, t, uniform)](sel.mask) if sel.mask.any() and (k, t, uniform) in acc else None
        rows.append(Plan(method, e, lat.tolist(), k, t, sel, test, extra, val_acc).to_json())

    points = [(float(e), float(lt)) for e in energies for lt in latencies]
    tell = reporter(progress)
    tell("sweep", 0, len(points))
    for i, (e, lt) in enumerate(points):
        lat = np.full(n_cat, lt)
        b = Budget(energy_j=e, latency_ms=lat)
        sel = select_experts(prob_k, b)
        extra: dict[str, Any] = {}
        if n <= CROSSCHECK_MAX_N:
            ref = brute_force(prob_k, b)
            same = ref.status == sel.status and (
                sel.status != "optimal" or abs(ref.objective - sel.objective) <= 1e-12)
            checks["points"] += 1
            checks["equal"] += int(same)
            checks["selector_evaluations"] += sel.evaluations
            checks["brute_force_evaluations"] += ref.evaluations
            extra = {"brute_force_objective": json_float(ref.objective), "matches_brute_force": same}
        add("moe2", sel, e, lat, top_k, None, **extra)
        add("moe2-adaptive", select_experts(prob_tau, b), e, lat, None, tau)
        add("uniform", select_experts(prob_uniform, b), e, lat, None, None, uniform=True)
        add("best-single", baselines.best_single(prob_k, b), e, lat, top_k, None)
        add("random", baselines.random_feasible(prob_k, b, seed=seed + i), e, lat, top_k, None)
        add("greedy-per-joule", baselines.greedy_per_joule(prob_k, b), e, lat, top_k, None)
        add("topk-all", baselines.topk_all(prob_k, b), e, lat, top_k, None)
        tell("sweep", i + 1, len(points))
    singles = []
    for j, name in enumerate(inputs.experts):
        mask = np.zeros(n, dtype=bool)
        mask[j] = True
        singles.append({"expert": name, "energy_j": float(inputs.energy_j[j].max()),
                        "latency_ms": float(inputs.latency_ms[j].max()),
                        "validation_accuracy": acc[(top_k, None, False)](mask),
                        "validation_objective": obj_k(mask),
                        "test": evaluate_test(inputs, mask, top_k, None)})
    return {
        "format": PLAN_FORMAT + "/sweep",
        "experts": list(inputs.experts),
        "categories": list(inputs.categories),
        "top_k": top_k,
        "tau": tau,
        "objective": objective,
        "energy_grid_j": energies.tolist(),
        "latency_grid_ms": latencies.tolist(),
        "plans": rows,
        "single_experts": singles,
        "pareto_front": pareto_front([r for r in rows if r["method"] == "moe2"]),
        "brute_force_check": checks,
        "monotonicity": monotonicity_report(obj_k, n),
        "profiles_sources": inputs.profiles.sources(),
    }


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Non-dominated plans: lower worst-case J, lower worst-case ms, higher test accuracy."""
    pts = []
    for r in rows:
        if r["status"] != "optimal" or not r["test"]:
            continue
        pts.append((float(r["worst_energy_j"]), max(float(v) for v in r["worst_latency_ms"]),
                    float(r["test"]["accuracy"]), r))
    front, seen = [], set()
    for e, lat, acc, r in pts:
        dominated = any(e2 <= e and l2 <= lat and a2 >= acc and (e2, l2, a2) != (e, lat, acc)
                        for e2, l2, a2, _ in pts)
        key = tuple(r["experts"])
        if not dominated and key not in seen:
            seen.add(key)
            front.append({"experts": r["experts"], "worst_energy_j": e, "worst_latency_ms": lat,
                          "test_accuracy": acc, "validation_accuracy": r["objective_validation_accuracy"]})
    return sorted(front, key=lambda p: (p["worst_energy_j"], p["worst_latency_ms"]))
