"""Reproduce MoE²'s claims from a calibration table and profiles: REPORT.md, results.json, plots.

The gate is trained on the table's TRAIN split (early stopping on VALIDATION) and exported to
``OUT/gate.onnx``; every subset S is chosen on VALIDATION; every accuracy in the report is
measured on TEST. This is the planner's own pipeline (``gating.planner.load_inputs``,
``make_objective``, ``make_problem``, ``evaluate_test``), so the report measures what
``edge-moe plan`` ships. Sections of ``OUT/REPORT.md``:

1. Single experts: test accuracy per category (argmax of the raw log-probs, and after the
   per-expert prior correction the mixture uses), with each expert's latency and energy per
   category from the profiles, each figure tagged with its source.
2. Claim 1, optimality-preserving gate: ``gating.retrain_gap`` over R random subsets
   (masked θ* against a gate retrained on S alone; test NLL in nats, accuracy in points).
3. Claim 2, exact selection: ``select_experts`` against ``brute_force`` on the real objective
   at every point of the budget grid, for fixed k and adaptive k; evaluation counts; how often
   F is not monotone and whether that changed the best plan (definitions below).
4. Claim 3, trade-offs: test accuracy against the energy budget and against per-category
   latency budgets for MoE² (fixed k, adaptive k) and the baselines, a Pareto front in
   (expected energy, accuracy), and MoE²'s best and worst margin over the best single
   expert that fits the same budget.

**The budget grid.** Energy: ``--energy-points`` values, geometric from the cheapest
expert alone (its worst category's J) to every expert at once (the sum of each expert's worst
category: then every subset fits, even with all of S active). Latency: one scale s in [0, 1]
per ``--latency-points`` value and, per category c, ``T_c(s) = lo_c · (hi_c / lo_c)^s`` with
``lo_c`` / ``hi_c`` the fastest / slowest expert's ms in c plus the aggregation cost (linear in
s when some ``lo_c`` is 0). At s = 1 every expert fits; at s = 0 only the fastest of each
category does (and no plan exists when no single expert is fastest everywhere). Unless
``--no-expert-budgets``, each expert's own worst-case J and the scale s at which it starts to
fit are added, so every single-expert regime is on the grid (latency is separable: between
those scales the feasible family does not change). The grid is the product: energy-major,
latency-minor. The energy plot is the slice s = 1, the latency plot
the slice at the largest energy budget.

**Definitions.**

- *Selector equals brute force* at a point: same status and, when a plan exists,
  ``|F(selector) − F(brute force)| ≤ 1e-12`` (F = validation objective). *Same set*: the
  same experts (ties can give equal F with other sets).
- *Non-monotone F changed the plan* at a point: the best feasible set (brute force over all
  feasible subsets) scores strictly more than the best *maximal* feasible set (one that no
  further expert can join without breaking the budget). A method that trusts monotonicity
  searches only maximal sets; at such points it would miss the optimum. Counted with a full
  enumeration of the 2^N subsets (up to ``BRUTE_MAX_N`` experts).
- *Improvement over the best single expert at the same budget*, at a grid point: test
  accuracy of the MoE² plan minus the best test accuracy among the single experts that fit the
  budget alone (an oracle choice of the single expert, so the margin is conservative), in
  points. The best improvement is the maximum over the grid points where a plan exists (ties:
  first in grid order); the worst is the minimum. The same with the single expert chosen on
  validation (``baselines.best_single``), as a deployable baseline would, is reported too.
- *Expected energy / latency* of a plan: the mean over test samples of the J (sum) and ms (max
  plus aggregation) of the experts that actually answer the sample (top-k or adaptive k of S),
  at the sample's category. Worst-case energy is what the budget constrains.

Run::

    .venv/bin/python benchmarks/reproduce_moe2.py --table T.npz --profiles P.json --out DIR

Exit code 1 with ``ClassName: message`` when an input is missing or malformed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from anywhere
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from edge_moe.calibration import SPLIT_NAMES, TEST, CalibrationTable, load_calibration  # noqa: E402
from edge_moe.errors import ConfigError, EdgeMoEError, GateError  # noqa: E402
from edge_moe.profiles import load_profiles  # noqa: E402
from gating import baselines, planner  # noqa: E402
from gating.mixture import evaluate_subset, masked_gate_weights, select_top_k  # noqa: E402
from gating.selector import (  # noqa: E402
    INFEASIBLE,
    Budget,
    Selection,
    SelectionProblem,
    brute_force,
    select_experts,
    validate,
    within,
)

logger = logging.getLogger(__name__)

FORMAT = "edge-moe-moe2-report/1"
DEFAULT_OUT = Path("benchmarks/results/moe2")
BRUTE_MAX_N = planner.CROSSCHECK_MAX_N  # brute force and the 2^N enumeration up to this N
TIE = 1e-12  # objective differences at or below this are ties
FULL = {"subsets": 30, "energy_points": 10, "latency_points": 8, "random_draws": 5}
QUICK = {"subsets": 6, "energy_points": 5, "latency_points": 4, "random_draws": 2}
PNGS = ("accuracy_vs_energy.png", "accuracy_vs_latency.png", "pareto.png")
# method -> (label, colour, marker, line width); the order is the tables' column order
METHODS: dict[str, tuple[str, str, str, float]] = {
    "moe2": ("MoE² (top-k)", "tab:red", "o", 2.6),
    "moe2-adaptive": ("MoE² (adaptive k)", "tab:purple", "s", 2.0),
    "uniform-S": ("uniform over MoE²'s S (all of S)", "tab:olive", "v", 1.3),
    "uniform-S-adaptive": ("uniform over adaptive S", "goldenrod", "<", 1.1),
    "greedy-per-joule": ("greedy acc/J", "tab:blue", "^", 1.3),
    "random": ("random feasible (mean)", "tab:gray", "x", 1.1),
    "best-single-val": ("best single (chosen on val)", "tab:green", "D", 1.1),
    "best-single-test": ("best single (test oracle)", "darkgreen", "d", 1.1),
    "topk-all": ("top-k of all (ignores budget)", "black", "+", 1.0),
}
SOURCE_TAG = {"measured": "meas", "modelled": "mod", "projected": "proj"}


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Options:
    """What to report on and how finely. ``top_k=None`` lets every member of S answer."""

    table: Path
    profiles: Path
    out: Path = DEFAULT_OUT
    top_k: int | None = 2
    tau: float = planner.DEFAULT_TAU
    subsets: int = FULL["subsets"]
    seed: int = 0
    energy_points: int = FULL["energy_points"]
    latency_points: int = FULL["latency_points"]
    random_draws: int = FULL["random_draws"]
    quick: bool = False
    progress: bool = True
    expert_budgets: bool = True

    def check(self) -> None:
        """Raises ConfigError naming the option and the rule it breaks."""
        rules = [
            ("--top-k", self.top_k is None or self.top_k >= 1, ">= 1 (0 on the command line: all of S)"),
            ("--tau", 0.0 < self.tau <= 1.0, "in (0, 1]"),
            ("--subsets", self.subsets >= 1, ">= 1"),
            ("--energy-points", self.energy_points >= 1, ">= 1"),
            ("--latency-points", self.latency_points >= 1, ">= 1"),
            ("--random-draws", self.random_draws >= 1, ">= 1"),
        ]
        for name, ok, rule in rules:
            if not ok:
                value = getattr(self, name[2:].replace("-", "_"))
                raise ConfigError(f"{name}={value!r} must be {rule}")

    def command(self) -> str:
        """The command line that regenerates this report."""
        args = ["--table", str(self.table), "--profiles", str(self.profiles), "--out", str(self.out),
                "--top-k", str(self.top_k or 0), "--tau", repr(self.tau), "--subsets", str(self.subsets),
                "--seed", str(self.seed), "--energy-points", str(self.energy_points),
                "--latency-points", str(self.latency_points), "--random-draws", str(self.random_draws)]
        if self.quick:
            args.append("--quick")
        if not self.expert_budgets:
            args.append("--no-expert-budgets")
        return shlex.join([".venv/bin/python", "benchmarks/reproduce_moe2.py", *args])


def gate_config(opts: Options) -> Any:
    """The gate's training config: the library default, or a small fast one with ``quick``."""
    from gating.gate import GateConfig  # torch: only when a gate is trained

    if opts.quick:
        return GateConfig(hidden_dim=32, max_epochs=60, patience=10, seed=opts.seed)
    return GateConfig(seed=opts.seed)


# --------------------------------------------------------------------------- helpers


def _num(v: Any) -> Any:
    """JSON-safe float: NaN becomes None, ±inf the strings "inf" / "-inf"."""
    if v is None:
        return None
    f = float(v)
    if math.isnan(f):
        return None
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    return f


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100.0 * x:.{digits}f}"


def _pts(x: float | None) -> str:
    return "–" if x is None else f"{x:+.1f}"


@contextmanager
def _bar(enabled: bool, label: str, total: int) -> Iterator[Callable[[], None]]:
    """A rich progress bar's advance(), or a no-op when disabled."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
    task = bar.add_task(label, total=total)
    with bar:
        yield lambda: bar.advance(task)


# --------------------------------------------------------------------------- the budget grid


@dataclass(frozen=True)
class BudgetGrid:
    """Energy budgets (J) x latency scales s, with per-category latency budgets ``T_c(s)``."""

    energies: np.ndarray  # (E,)
    scales: np.ndarray  # (L,) in [0, 1]
    lat_lo: np.ndarray  # (C,) fastest expert's ms + aggregation, per category
    lat_hi: np.ndarray  # (C,) slowest expert's ms + aggregation, per category

    @classmethod
    def make(cls, energy_j: np.ndarray, latency_ms: np.ndarray, aggregation_ms: float,
             n_energy: int, n_latency: int, expert_budgets: bool = True) -> BudgetGrid:
        """The regular grid; with ``expert_budgets`` also each expert's own worst-case J and the
        latency scale at which it starts to fit, so every single-expert regime is sampled
        (latency is separable: between those scales the feasible family does not change)."""
        alone = energy_j.max(axis=1)  # (N,) J of each expert alone, worst category
        lo, hi = float(alone.min()), float(alone.sum())
        energies = np.geomspace(lo, hi, n_energy) if n_energy > 1 and lo > 0 else np.linspace(lo, hi, n_energy)
        if n_energy == 1:
            energies = np.array([hi])
        energies[-1] = hi  # exact ends: no rounding at the edges
        if n_energy > 1:
            energies[0] = lo
        lat = latency_ms + aggregation_ms  # (N, C)
        scales = np.linspace(0.0, 1.0, n_latency) if n_latency > 1 else np.array([1.0])
        grid = cls(energies, scales, lat.min(axis=0), lat.max(axis=0))
        if not expert_budgets:
            return grid
        unlock = [grid.scale_needed(row) for row in lat]  # (N,) the s at which expert n fits
        return cls(np.unique(np.concatenate([energies, alone])), np.unique(np.concatenate([scales, unlock])),
                   grid.lat_lo, grid.lat_hi)

    @property
    def geometric(self) -> bool:
        return bool((self.lat_lo > 0).all())

    def latency_at(self, s: float) -> np.ndarray:
        """(C,) ms budget per category at scale s; exact ends at s = 0 and s = 1."""
        if s >= 1.0:
            return self.lat_hi.copy()
        if s <= 0.0:
            return self.lat_lo.copy()
        if self.geometric:
            return self.lat_lo * (self.lat_hi / self.lat_lo) ** s
        return self.lat_lo + s * (self.lat_hi - self.lat_lo)

    def scale_needed(self, latency: np.ndarray) -> float:
        """The smallest s at which a (C,) ms vector (aggregation included) fits every category."""
        span = self.lat_hi > self.lat_lo
        if not span.any():
            return 0.0
        if self.geometric:
            need = np.log(latency[span] / self.lat_lo[span]) / np.log(self.lat_hi[span] / self.lat_lo[span])
        else:
            need = (latency[span] - self.lat_lo[span]) / (self.lat_hi[span] - self.lat_lo[span])
        return float(np.clip(need.max(), 0.0, 1.0))

    def points(self) -> list[tuple[int, float, float, np.ndarray]]:
        """(index, energy J, scale, (C,) latency ms) in grid order: energy-major."""
        out: list[tuple[int, float, float, np.ndarray]] = []
        for e in self.energies:
            for s in self.scales:
                out.append((len(out), float(e), float(s), self.latency_at(float(s))))
        return out


# --------------------------------------------------------------------------- test evaluation


class TestEvaluator:
    """Test-split accuracy, NLL, expected J and ms of a plan (memoised by subset and mode)."""

    def __init__(self, inputs: planner.PlanInputs) -> None:
        idx = inputs.table.split == TEST
        self.rows = inputs.table.rows(idx)
        if self.rows.n_samples == 0:
            raise ConfigError(f"{inputs.calibration_path}: the test split (split == 2) is empty")
        self.logits = inputs.gate_logits[idx]  # (M, N)
        self.names = inputs.categories
        cats = self.rows.categories
        self.energy = inputs.energy_j[:, cats].T  # (M, N) J of expert n on sample i's category
        self.latency = inputs.latency_ms[:, cats].T  # (M, N) ms
        self.aggregation_ms = inputs.profiles.aggregation_ms
        self._cache: dict[tuple[bytes, int | None, float | None, bool], dict[str, Any]] = {}

    def __call__(self, mask: np.ndarray, top_k: int | None, tau: float | None,
                 uniform: bool = False) -> dict[str, Any] | None:
        """None for the empty set; else accuracy (fraction), per-category accuracy, NLL (nats),
        mean active experts, expected J and expected ms per request."""
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return None
        key = (mask.tobytes(), top_k, tau, uniform)
        if key not in self._cache:
            logits = np.zeros_like(self.logits) if uniform else self.logits
            rep = evaluate_subset(logits, self.rows.logprobs, self.rows.labels, self.rows.categories,
                                  self.names, mask, top_k=top_k, tau=tau)
            active = select_top_k(masked_gate_weights(logits, mask), top_k=top_k, tau=tau, mask=mask) > 0
            self._cache[key] = {
                "accuracy": rep.accuracy,
                "per_category": {c: s.accuracy for c, s in rep.per_category.items()},
                "nll": rep.nll,
                "mean_active_experts": rep.mean_active_experts,
                "expected_energy_j": float((active * self.energy).sum(axis=1).mean()),
                "expected_latency_ms": float((np.where(active, self.latency, 0.0).max(axis=1)
                                              + self.aggregation_ms).mean()),
            }
        return self._cache[key]


# --------------------------------------------------------------------------- subset enumeration


class Enumeration:
    """F on every subset once, and per budget the feasible and the *maximal* feasible sets.

    Only for N ≤ ``BRUTE_MAX_N``. The feasibility arithmetic is the selector's (top-k energy
    sum per category, latency separable), vectorised over all 2^N masks.
    """

    def __init__(self, objective: Callable[[np.ndarray], float], n: int) -> None:
        self.n = n
        self.ids = np.arange(1 << n, dtype=np.int64)  # (2^N,) bit j = expert j
        self.masks = ((self.ids[:, None] >> np.arange(n)) & 1).astype(bool)  # (2^N, N)
        self.values = np.full(1 << n, -math.inf)
        for i in range(1, 1 << n):
            self.values[i] = objective(self.masks[i])

    def _feasible(self, problem: SelectionProblem, budget: Budget) -> np.ndarray:
        inst = validate(problem, budget)
        alone = inst.alone_feasible()  # (N,)
        ok = ~(self.masks & ~alone).any(axis=1)  # latency (and energy) of each member alone
        for c in range(inst.energy_j.shape[1]):
            order = np.argsort(-inst.energy_j[:, c], kind="stable")  # costliest first
            members = self.masks[:, order]  # (2^N, N)
            if inst.top_k is not None:
                members = members & (np.cumsum(members, axis=1) <= inst.top_k)  # the k costliest
            ok &= within(members @ inst.energy_j[order, c], inst.energy_budget_j)
        return ok

    def analyse(self, problem: SelectionProblem, budget: Budget) -> dict[str, Any]:
        """Best F over feasible sets and over maximal feasible sets (-inf when none)."""
        feasible = self._feasible(problem, budget)
        feasible[0] = True  # the empty set always fits; it makes singletons extensions of it
        maximal = feasible.copy()
        for u in range(self.n):
            bit = 1 << u
            maximal &= ((self.ids & bit) != 0) | ~feasible[self.ids | bit]
        feasible[0] = maximal[0] = False  # no plan is the empty set
        best = float(self.values[feasible].max()) if feasible.any() else -math.inf
        best_max = float(self.values[maximal].max()) if maximal.any() else -math.inf
        return {"feasible_sets": int(feasible.sum()), "maximal_sets": int(maximal.sum()),
                "best_feasible": best, "best_maximal": best_max,
                "changed_plan": bool(best > best_max + TIE), "maximal": maximal}

    def index(self, mask: np.ndarray) -> int:
        return int((np.asarray(mask, dtype=np.int64) << np.arange(self.n)).sum())


# --------------------------------------------------------------------------- section 1


def single_experts(inputs: planner.PlanInputs, raw: CalibrationTable,
                   evaluate: TestEvaluator, top_k: int | None) -> dict[str, Any]:
    """Per expert: raw and prior-corrected test accuracy per category, its costs and sources."""
    test = raw.split_rows(TEST)
    out = {}
    for j, name in enumerate(inputs.experts):
        right = test.logprobs[:, j, :].argmax(axis=1) == test.labels  # (M,) raw argmax
        raw_cat = {c: float(right[test.categories == i].mean())
                   for i, c in enumerate(inputs.categories) if (test.categories == i).any()}
        mask = np.zeros(len(inputs.experts), dtype=bool)
        mask[j] = True
        corrected = evaluate(mask, top_k, None)
        assert corrected is not None
        prof = inputs.profiles.expert(name)
        out[name] = {
            "node": prof.node,
            "raw": {"accuracy": float(right.mean()), "per_category": raw_cat},
            "corrected": corrected,
            "validation_accuracy": planner.make_objective(inputs, top_k, None)(mask),
            "latency_ms": {c: asdict(prof.latency_ms[c]) for c in inputs.categories},
            "energy_j": {c: asdict(prof.energy_j[c]) for c in inputs.categories},
            "worst_energy_j": float(inputs.energy_j[j].max()),
            "worst_latency_ms": float(inputs.latency_ms[j].max() + inputs.profiles.aggregation_ms),
        }
    return out


# --------------------------------------------------------------------------- section 2


def retrain_section(raw: CalibrationTable, gate: Any, opts: Options) -> dict[str, Any]:
    """Claim 1 via ``gating.retrain_gap`` on the test split; a note when N is too small."""
    from gating.retrain_gap import retrain_gap

    try:
        report = retrain_gap(raw, gate, n_subsets=opts.subsets, seed=opts.seed, split=TEST,
                             progress=opts.progress)
    except GateError as exc:
        return {"ran": False, "reason": str(exc)}
    doc = report.to_json()
    gaps = np.array([r.gap_nll for r in report.rows])
    acc = np.array([r.gap_acc_points for r in report.rows])
    worst = max(report.rows, key=lambda r: r.gap_nll)
    return {"ran": True, "subsets": len(report.rows), "asked": opts.subsets,
            "min_gap_nll": float(gaps.min()), "min_gap_acc_points": float(acc.min()),
            "subsets_retraining_helps_nll": int((gaps > 0).sum()),
            "worst_subset": list(worst.experts), **doc}


# --------------------------------------------------------------------------- the sweep


@dataclass
class Context:
    """The objectives, problems and evaluators every grid point shares."""

    inputs: planner.PlanInputs
    opts: Options
    evaluate: TestEvaluator
    problems: dict[str, SelectionProblem] = field(default_factory=dict)
    objectives: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def make(cls, inputs: planner.PlanInputs, opts: Options) -> Context:
        ctx = cls(inputs, opts, TestEvaluator(inputs))
        ctx.objectives["moe2"] = planner.make_objective(inputs, opts.top_k, None)
        ctx.objectives["moe2-adaptive"] = planner.make_objective(inputs, None, opts.tau)
        ctx.problems["moe2"] = planner.make_problem(inputs, ctx.objectives["moe2"], opts.top_k)
        # adaptive k may activate any member of S: its constraint is all of S (as plan_one)
        ctx.problems["moe2-adaptive"] = planner.make_problem(inputs, ctx.objectives["moe2-adaptive"], None)
        return ctx


def _entry(sel: Selection | None, test: dict[str, Any] | None, within_budget: bool,
           worst_energy_j: float | None = None, **extra: Any) -> dict[str, Any]:
    if sel is None:
        return {"status": INFEASIBLE, "experts": [], "test": None, "within_budget": True, **extra}
    return {"status": sel.status, "experts": list(sel.experts),
            "validation_objective": _num(sel.objective),
            "worst_energy_j": _num(sel.worst_energy_j if worst_energy_j is None else worst_energy_j),
            "evaluations": sel.evaluations, "within_budget": within_budget, "test": test, **extra}


def plan_point(ctx: Context, index: int, energy: float, scale: float,
               latency: np.ndarray) -> dict[str, Any]:
    """Every method's plan at one budget, evaluated on test."""
    opts, inputs, ev = ctx.opts, ctx.inputs, ctx.evaluate
    k, tau = opts.top_k, opts.tau
    budget = Budget(energy_j=energy, latency_ms=latency)
    prob_k = ctx.problems["moe2"]
    all_active = validate(replace(prob_k, top_k=None), budget)  # every member of S answers
    methods: dict[str, dict[str, Any]] = {}
    sels: dict[str, Selection] = {}

    def add(name: str, sel: Selection, test: dict[str, Any] | None, **extra: Any) -> None:
        sels[name] = sel
        methods[name] = _entry(sel, test, sel.status != "violates", **extra)

    sel = select_experts(prob_k, budget)
    add("moe2", sel, ev(sel.mask, k, None), message=sel.message)
    sel = select_experts(ctx.problems["moe2-adaptive"], budget)
    add("moe2-adaptive", sel, ev(sel.mask, None, tau), message=sel.message)
    for name, src in (("uniform-S", "moe2"), ("uniform-S-adaptive", "moe2-adaptive")):
        mask = sels[src].mask
        if mask.any():
            worst = float(all_active.energy_by_category(mask).max())
            methods[name] = _entry(sels[src], ev(mask, None, None, uniform=True), all_active.feasible(mask),
                                   worst_energy_j=worst, validation_objective=None,
                                   violations=all_active.violations(mask))
        else:
            methods[name] = _entry(None, None, True)
    sel = baselines.greedy_per_joule(prob_k, budget)
    add("greedy-per-joule", sel, ev(sel.mask, k, None))
    draws = [baselines.random_feasible(prob_k, budget, seed=opts.seed * 100_003 + index * opts.random_draws + d)
             for d in range(opts.random_draws)]
    tests = [ev(s.mask, k, None) for s in draws]
    if tests[0] is None:
        methods["random"] = _entry(None, None, True)
    else:
        mean: dict[str, Any] = {key: float(np.mean([t[key] for t in tests if t]))
                for key in ("accuracy", "nll", "mean_active_experts", "expected_energy_j", "expected_latency_ms")}
        mean["per_category"] = {c: float(np.mean([t["per_category"][c] for t in tests if t]))
                                for c in tests[0]["per_category"]}
        mean["draws"] = [t["accuracy"] for t in tests if t]
        methods["random"] = _entry(draws[0], mean, True, draw_experts=[list(s.experts) for s in draws])
    sel = baselines.best_single(prob_k, budget)
    add("best-single-val", sel, ev(sel.mask, k, None))
    fits = [inputs.experts[j] for j in np.flatnonzero(all_active.alone_feasible())]
    if fits:
        single_tests = {name: ev(np.array([e == name for e in inputs.experts]), k, None) for name in fits}
        best = max(fits, key=lambda name: single_tests[name]["accuracy"])  # type: ignore[index]
        mask = np.array([e == best for e in inputs.experts])
        methods["best-single-test"] = {"status": "feasible", "experts": [best], "within_budget": True,
                                       "worst_energy_j": float(all_active.energy_by_category(mask).max()),
                                       "test": single_tests[best]}
    else:
        methods["best-single-test"] = _entry(None, None, True)
    sel = baselines.topk_all(prob_k, budget)
    add("topk-all", sel, ev(sel.mask, k, None), message=sel.message)
    return {"index": index, "energy_j": energy, "latency_scale": scale,
            "latency_ms": [float(v) for v in latency], "singles_fit": fits, "methods": methods,
            "_selections": {name: sels[name] for name in ("moe2", "moe2-adaptive")}}


# --------------------------------------------------------------------------- section 3


def selection_check(ctx: Context, grid: list[tuple[int, float, float, np.ndarray]],
                    points: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """Selector vs brute force (and the maximal-set analysis) at every grid point."""
    n = len(ctx.inputs.experts)
    problem, objective = ctx.problems[name], ctx.objectives[name]
    pairs = n * 2 ** (n - 1)
    mono = planner.monotonicity_report(objective, n, max_pairs=max(4096, pairs if n <= BRUTE_MAX_N else 0),
                                       seed=ctx.opts.seed)
    out: dict[str, Any] = {"objective": name, "constraint_top_k": problem.top_k, "points": len(points),
                           "monotonicity": mono}
    if n > BRUTE_MAX_N:
        out.update(ran=False, reason=f"N={n} > {BRUTE_MAX_N}: brute force (2^N subsets) not run")
        sel_evals = [p["_selections"][name].evaluations for p in points]
        out.update(selector_evaluations=int(sum(sel_evals)),
                   selector_evaluations_mean=float(np.mean(sel_evals)))
        return out
    enum = Enumeration(objective, n)
    rows = []
    with _bar(ctx.opts.progress, f"brute force check ({name})", len(points)) as advance:
        for (i, e, s, lat), point in zip(grid, points, strict=True):
            budget = Budget(energy_j=e, latency_ms=lat)
            sel = point["_selections"][name]
            ref = brute_force(problem, budget)
            info = enum.analyse(problem, budget)
            optimal = sel.status == "optimal" and ref.status == "optimal"
            diff = abs(sel.objective - ref.objective) if optimal else 0.0
            rows.append({
                "index": i, "energy_j": e, "latency_scale": s,
                "status": sel.status, "brute_force_status": ref.status,
                "equal": sel.status == ref.status and diff <= TIE, "abs_diff": diff,
                "same_set": sel.experts == ref.experts,
                "selector": list(sel.experts), "selector_objective": _num(sel.objective),
                "brute_force": list(ref.experts), "brute_force_objective": _num(ref.objective),
                "selector_evaluations": sel.evaluations, "brute_force_evaluations": ref.evaluations,
                "feasible_sets": info["feasible_sets"], "maximal_sets": info["maximal_sets"],
                "best_maximal_objective": _num(info["best_maximal"]),
                "nonmonotone_changed_plan": info["changed_plan"],
                "enumeration_agrees": (not optimal) or abs(info["best_feasible"] - ref.objective) <= TIE,
                "selector_set_maximal": bool(sel.mask.any() and info["maximal"][enum.index(sel.mask)]),
                "brute_force_set_maximal": bool(ref.mask.any() and info["maximal"][enum.index(ref.mask)]),
                "selector_saw_nonmonotone": "not monotone" in sel.message,
            })
            advance()
    planned = [r for r in rows if r["status"] == "optimal"]
    sel_e = [r["selector_evaluations"] for r in rows]
    ref_e = [r["brute_force_evaluations"] for r in rows]
    out.update(
        ran=True,
        equal=sum(r["equal"] for r in rows),
        same_set=sum(r["same_set"] for r in rows),
        with_plan=len(planned),
        max_abs_diff=float(max((r["abs_diff"] for r in rows), default=0.0)),
        selector_evaluations=int(sum(sel_e)), brute_force_evaluations=int(sum(ref_e)),
        selector_evaluations_mean=float(np.mean(sel_e)), brute_force_evaluations_mean=float(np.mean(ref_e)),
        nonmonotone_changed_plan=sum(r["nonmonotone_changed_plan"] for r in rows),
        changed_plan_selector_equal=sum(r["nonmonotone_changed_plan"] and r["equal"] for r in rows),
        selector_saw_nonmonotone=sum(r["selector_saw_nonmonotone"] for r in rows),
        selector_non_maximal=sum(1 for r in planned if not r["selector_set_maximal"]),
        brute_force_non_maximal=sum(1 for r in planned if not r["brute_force_set_maximal"]),
        enumeration_agrees=all(r["enumeration_agrees"] for r in rows),
        rows=rows,
    )
    return out


# --------------------------------------------------------------------------- section 4


def _acc(point: dict[str, Any], method: str, category: str | None = None) -> float | None:
    test = point["methods"][method]["test"]
    if not test:
        return None
    return float(test["accuracy"] if category is None else test["per_category"].get(category, math.nan))


def compare(points: list[dict[str, Any]], method: str, against: str) -> dict[str, Any]:
    """Margins of ``method`` over ``against`` (accuracy points) at the grid points where both have
    a plan; ``points`` counts those grid points."""
    diffs = [(100.0 * (_acc(p, method) - _acc(p, against)), p) for p in points  # type: ignore[operator]
             if _acc(p, method) is not None and _acc(p, against) is not None]
    if not diffs:
        return {"points": 0}
    values = np.array([d for d, _ in diffs])
    best = max(diffs, key=lambda t: t[0])  # max() and min() keep the first of ties: grid order
    worst = min(diffs, key=lambda t: t[0])

    def where(t: tuple[float, dict[str, Any]]) -> dict[str, Any]:
        d, p = t
        return {"margin_points": d, "index": p["index"], "energy_j": p["energy_j"], "latency_scale": p["latency_scale"],
                "latency_ms": p["latency_ms"], "method_experts": p["methods"][method]["experts"],
                "against_experts": p["methods"][against]["experts"],
                "method_accuracy": _acc(p, method), "against_accuracy": _acc(p, against)}

    return {"points": len(diffs), "wins": int((values > 1e-9).sum()), "ties": int((np.abs(values) <= 1e-9).sum()),
            "losses": int((values < -1e-9).sum()), "mean_points": float(values.mean()),
            "best": where(best), "worst": where(worst)}


def per_category_margins(points: list[dict[str, Any]], categories: tuple[str, ...],
                         method: str) -> dict[str, Any]:
    """Per category: MoE²'s best and worst margin over the best *per-category* single expert
    among those that fit the budget (test oracle, per category)."""
    out = {}
    for c in categories:
        diffs = []
        for p in points:
            mine = _acc(p, method, c)
            singles = [p["_singles"][name]["per_category"].get(c) for name in p["singles_fit"]]
            singles = [v for v in singles if v is not None]
            if mine is None or not singles:
                continue
            diffs.append((100.0 * (mine - max(singles)), p))
        if diffs:
            best, worst = max(diffs, key=lambda t: t[0]), min(diffs, key=lambda t: t[0])
            out[c] = {"best_points": best[0], "best_index": best[1]["index"],
                      "worst_points": worst[0], "worst_index": worst[1]["index"],
                      "losses": sum(1 for d, _ in diffs if d < -1e-9), "points": len(diffs)}
    return out


def pareto(points: list[dict[str, Any]], singles: dict[str, Any]) -> dict[str, Any]:
    """Plans in (expected J on test, test accuracy): MoE²'s front and the front of all methods."""
    plans: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
    for p in points:
        for method, m in p["methods"].items():
            if m["test"] and method not in ("random", "best-single-test", "best-single-val"):
                plans.setdefault((method, tuple(m["experts"])), {
                    "method": method, "experts": m["experts"], "accuracy": m["test"]["accuracy"],
                    "expected_energy_j": m["test"]["expected_energy_j"],
                    "worst_energy_j": m["worst_energy_j"], "first_index": p["index"]})
    for name, s in singles.items():
        plans[("single", (name,))] = {"method": "single", "experts": [name],
                                      "accuracy": s["corrected"]["accuracy"],
                                      "expected_energy_j": s["corrected"]["expected_energy_j"],
                                      "worst_energy_j": s["worst_energy_j"], "first_index": None}
    rows = list(plans.values())

    def front(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
        keep = [a for a in candidates if not any(
            b["expected_energy_j"] <= a["expected_energy_j"] and b["accuracy"] >= a["accuracy"]
            and (b["expected_energy_j"], b["accuracy"]) != (a["expected_energy_j"], a["accuracy"])
            for b in candidates)]
        return sorted(keep, key=lambda r: (r["expected_energy_j"], -r["accuracy"]))

    moe2 = front([r for r in rows if r["method"] in ("moe2", "moe2-adaptive")])
    merged: dict[tuple[float, float, tuple[str, ...]], dict[str, Any]] = {}
    for r in front(rows):  # one row per point and expert set, with every method that reached it
        key = (r["expected_energy_j"], r["accuracy"], tuple(r["experts"]))
        merged.setdefault(key, {**r, "methods": []})["methods"].append(r["method"])
    every = list(merged.values())
    share = sum(any(m.startswith("moe2") for m in r["methods"]) for r in every) / max(len(every), 1)
    return {"plans": rows, "moe2_front": moe2, "global_front": every, "moe2_share_of_global_front": share}


# --------------------------------------------------------------------------- plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    from matplotlib.ticker import NullFormatter

    from edge_moe.atomic import atomic_path

    for ax in fig.axes:
        if ax.get_xscale() == "log":
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on short log axes
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    _plt().close(fig)
    return path


def plot_energy(results: dict[str, Any], points: list[dict[str, Any]], path: Path) -> Path:
    plt = _plt()
    top = max(p["latency_scale"] for p in points)
    row = sorted((p for p in points if p["latency_scale"] == top), key=lambda p: p["energy_j"])
    xs = [p["energy_j"] for p in row]
    fig, ax = plt.subplots(figsize=(9.5, 5.8))
    for method, (label, colour, marker, lw) in METHODS.items():
        if method in ("best-single-val", "best-single-test"):
            continue
        ys = [_acc(p, method) for p in row]
        ys = [math.nan if y is None else y for y in ys]
        style = "--" if method == "topk-all" else "-"
        ax.plot(xs, ys, style, marker=marker, color=colour, lw=lw, label=label, alpha=0.9)
        if method == "topk-all":
            bad = [(x, y) for x, y, p in zip(xs, ys, row, strict=True) if not p["methods"][method]["within_budget"]]
            if bad:
                ax.scatter(*zip(*bad, strict=True), facecolors="none", edgecolors="black", s=70,
                           label="top-k of all breaks the budget")
    for name, s in results["single_experts"].items():
        ax.hlines(s["corrected"]["accuracy"], s["worst_energy_j"], xs[-1], colors="tab:orange", lw=1, alpha=0.8)
        ax.annotate(name, (s["worst_energy_j"], s["corrected"]["accuracy"]), fontsize=7,
                    xytext=(2, 3), textcoords="offset points", color="tab:orange")
    ax.plot([], [], color="tab:orange", lw=1, label="single expert (from where it fits)")
    ax.set_xscale("log")
    ax.set_xlabel("energy budget per request (J, worst case over what may answer)")
    ax.set_ylabel("test accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"{results['header']['table']['path']}: accuracy vs energy budget (latency scale s={top:g}: "
                 f"every expert fits)\nenergy source: {', '.join(results['header']['profiles']['sources']['energy_j'])}",
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_latency(results: dict[str, Any], points: list[dict[str, Any]], grid: BudgetGrid,
                 categories: tuple[str, ...], path: Path) -> Path:
    plt = _plt()
    top = max(p["energy_j"] for p in points)
    row = sorted((p for p in points if p["energy_j"] == top), key=lambda p: p["latency_scale"])
    cols = min(len(categories), 3)
    nrows = math.ceil(len(categories) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 4.0 * nrows), squeeze=False)
    singles = results["single_experts"]
    for ci, c in enumerate(categories):
        ax = axes[ci // cols][ci % cols]
        xs = [p["latency_ms"][ci] for p in row]
        for method, (label, colour, marker, lw) in METHODS.items():
            if method in ("best-single-val", "best-single-test"):
                continue
            ys = [_acc(p, method, c) for p in row]
            ax.plot(xs, [math.nan if y is None else y for y in ys], "--" if method == "topk-all" else "-",
                    marker=marker, color=colour, lw=lw, label=label, alpha=0.9, ms=4)
        for name, s in singles.items():
            lat = np.array([s["latency_ms"][cc]["value"] for cc in categories]) + results["header"]["aggregation_ms"]
            start = float(grid.latency_at(grid.scale_needed(lat))[ci])
            acc = s["corrected"]["per_category"].get(c)
            if acc is not None and start <= xs[-1] * (1 + 1e-9):
                ax.hlines(acc, start, xs[-1], colors="tab:orange", lw=1, alpha=0.8)
                ax.annotate(name, (start, acc), fontsize=6, xytext=(2, 3), textcoords="offset points",
                            color="tab:orange")
        if grid.geometric:
            ax.set_xscale("log")
        ax.set_title(c, fontsize=9)
        ax.set_xlabel(f"latency budget in {c} (ms, p95 + aggregation)", fontsize=8)
        ax.set_ylabel("test accuracy in category", fontsize=8)
        ax.grid(True, alpha=0.3)
    for ci in range(len(categories), nrows * cols):
        axes[ci // cols][ci % cols].axis("off")
    axes[0][0].plot([], [], color="tab:orange", lw=1, label="single expert (from where it fits)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=4)
    src = results["header"]["profiles"]["sources"]["latency_ms"]
    fig.suptitle(f"accuracy vs per-category latency budget T_c(s) (energy budget {top:.3g} J: every expert fits); "
                 f"latency source: {', '.join(src)}", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    return _save(fig, path)


def plot_pareto(front: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9.0, 5.8))
    styles = {**METHODS, "single": ("single expert", "tab:orange", "*", 1.0)}
    for method, (label, colour, marker, _) in styles.items():
        rows = [r for r in front["plans"] if r["method"] == method]
        if rows:
            ax.scatter([r["expected_energy_j"] for r in rows], [r["accuracy"] for r in rows], color=colour,
                       marker=marker, s=60 if method == "single" else 30, alpha=0.75, label=label)
    f = front["moe2_front"]
    ax.step([r["expected_energy_j"] for r in f], [r["accuracy"] for r in f], where="post", color="tab:red",
            lw=2, label="MoE² Pareto front")
    g = front["global_front"]
    ax.scatter([r["expected_energy_j"] for r in g], [r["accuracy"] for r in g], facecolors="none",
               edgecolors="black", s=140, lw=1.2, label="front of all plans")
    ax.set_xscale("log")
    ax.set_xlabel("expected energy per request on the test split (J; experts that actually answer)")
    ax.set_ylabel("test accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("chosen plans over the whole budget grid: accuracy vs expected energy", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- the report


def _tag(fig: dict[str, Any], unit: str, digits: str) -> str:
    return f"{fig['value']:{digits}} {unit} [{SOURCE_TAG.get(fig['source'], fig['source'])}]"


def render(results: dict[str, Any]) -> str:
    """REPORT.md from results.json: every number here is in results.json."""
    h = results["header"]
    cats = h["categories"]
    out: list[str] = []
    w = out.append
    w("# MoE² reproduction report\n")
    w(f"- table: `{h['table']['path']}`, sha256 `{h['table']['sha256']}`")
    w("- samples per split: " + ", ".join(f"{k} {v}" for k, v in h["table"]["samples"].items())
      + "; test samples per category: " + ", ".join(f"{c} {n}" for c, n in h["table"]["test_per_category"].items()))
    w(f"- experts ({len(h['experts'])}): " + ", ".join(f"`{e}`" for e in h["experts"]))
    w(f"- profiles: `{h['profiles']['path']}`; sources: latency "
      f"{', '.join(h['profiles']['sources']['latency_ms'])}, energy {', '.join(h['profiles']['sources']['energy_j'])}; "
      f"aggregation {h['aggregation_ms']:g} ms; note: {h['profiles']['note'] or '(none)'}")
    w(f"- gate: trained on train, early-stopped on validation (best epoch {h['gate']['best_epoch']}, "
      f"val NLL {h['gate']['best_val_nll']:.4f}), exported to `{h['gate']['path']}`; config "
      f"`{json.dumps(h['gate']['config'])}`")
    w(f"- fine level: top_k = {h['top_k'] if h['top_k'] is not None else 'all of S'}, adaptive tau = {h['tau']}; "
      f"seed {h['seed']}; subsets S chosen on validation, every accuracy measured on test")
    w(f"- command: `{h['command']}`")
    w(f"- runtime: {h['runtime_s']:.1f} s" + (" (**--quick**: small gate, coarse grid, few subsets)" if h["quick"] else ""))
    w("\nSource tags: [meas] measured, [mod] modelled, [proj] projected. Accuracies are percent.\n")

    # 1
    w("## 1. Single experts\n")
    w("Test accuracy (%) after the per-expert prior correction the mixture uses; raw argmax in brackets.\n")
    w("| expert | node | " + " | ".join(cats) + " | overall | val (corr.) |")
    w("|---|---|" + "---|" * (len(cats) + 2))
    for name, s in results["single_experts"].items():
        cells = [f"{_pct(s['corrected']['per_category'].get(c))} ({_pct(s['raw']['per_category'].get(c))})" for c in cats]
        w(f"| `{name}` | {s['node']} | " + " | ".join(cells)
          + f" | **{_pct(s['corrected']['accuracy'])}** ({_pct(s['raw']['accuracy'])}) | {_pct(s['validation_accuracy'])} |")
    w("\nLatency (p95 ms per request) and energy (J per request) from the profiles:\n")
    w("| expert | " + " | ".join(cats) + " |")
    w("|---|" + "---|" * len(cats))
    for name, s in results["single_experts"].items():
        cells = [f"{_tag(s['latency_ms'][c], 'ms', '.4g')}, {_tag(s['energy_j'][c], 'J', '.4g')}" for c in cats]
        w(f"| `{name}` | " + " | ".join(cells) + " |")

    # 2
    r = results["claim1_retrain_gap"]
    w("\n## 2. Claim 1: the masked gate θ* is as good as a gate retrained on S\n")
    if not r["ran"]:
        w(f"Not run: {r['reason']}\n")
    else:
        many = "" if r["subsets"] >= 30 else f" (**fewer than 30**: {r['asked']} asked" + (
            ", all that exist)" if r["subsets"] < r["asked"] else ")")
        w(f"{r['subsets']} random proper subsets (|S| ≥ 2){many}, test split (n = {r['n_samples']}). "
          "Gap = masked θ* − retrained on S; positive means retraining helps, so the claim holds when the gap "
          "is ≈ 0. Masked: the full gate's softmax restricted to S, all of S mixed (no top-k).\n")
        w("| gap | mean | max | min |")
        w("|---|---|---|---|")
        w(f"| test NLL (nats) | {r['mean_gap_nll']:+.4f} | {r['max_gap_nll']:+.4f} | {r['min_gap_nll']:+.4f} |")
        w(f"| accuracy (points) | {r['mean_gap_acc_points']:+.2f} | {r['max_gap_acc_points']:+.2f} | "
          f"{r['min_gap_acc_points']:+.2f} |")
        w(f"\nRetraining lowered the NLL on {r['subsets_retraining_helps_nll']} of {r['subsets']} subsets; the largest "
          f"gap is on {', '.join(f'`{e}`' for e in r['worst_subset'])}. Gate config: subset_dropout = "
          f"{r['config']['subset_dropout']} (the one training run also trains on random subsets).")

    # 3
    w("\n## 3. Claim 2: the selector is exact on the real objective\n")
    g = results["grid"]
    w(f"Budget grid: {len(g['energies_j'])} energy budgets ({g['energies_j'][0]:.4g} … {g['energies_j'][-1]:.4g} J) × "
      f"{len(g['latency_scales'])} latency scales s (T_c(s) from {', '.join(f'{v:.4g}' for v in g['latency_lo_ms'])} to "
      f"{', '.join(f'{v:.4g}' for v in g['latency_hi_ms'])} ms per category) = {g['points']} points"
      + (" (the regular grid plus each expert's own J and the scale where it starts to fit)" if g["expert_budgets"] else "")
      + ". F is the validation "
      "accuracy of the gate-masked mixture (fixed k: the top-k of S with the k-largest energy sum as the constraint; "
      "adaptive: the fewest experts with gate mass ≥ tau, all of S in the constraint).\n")
    w("| objective | equal F / points | max abs ΔF | same set | points with a plan | selector evals (total, mean) | "
      "brute-force evals (total, mean) | F drops on adding an expert | non-monotone F changed the best plan | "
      "selector returned a non-maximal set |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for name in ("moe2", "moe2-adaptive"):
        s = results["claim2_selection"][name]
        mono = s["monotonicity"]
        drops = (f"{mono['drops']}/{mono['pairs']} pairs{' (all)' if mono['exhaustive'] else ' (sampled)'}, "
                 f"worst {100 * mono['worst_drop']:.1f} pts")
        if not s["ran"]:
            w(f"| {METHODS[name][0]} | not run | – | – | – | {s['selector_evaluations']}, {s['selector_evaluations_mean']:.1f} "
              f"| – | {drops} | – | – |")
            continue
        w(f"| {METHODS[name][0]} | **{s['equal']}/{s['points']}** | {s['max_abs_diff']:.2g} | {s['same_set']}/{s['points']} | "
          f"{s['with_plan']} | {s['selector_evaluations']}, {s['selector_evaluations_mean']:.1f} | "
          f"{s['brute_force_evaluations']}, {s['brute_force_evaluations_mean']:.1f} | {drops} | "
          f"{s['nonmonotone_changed_plan']}/{s['points']} | {s['selector_non_maximal']}/{s['with_plan']} |")
    w("\nDefinitions. *Equal F*: same status and |F(selector) − F(brute force)| ≤ 1e-12. *F drops*: pairs (S, n ∉ S) "
      "with F(S ∪ {n}) < F(S) (`planner.monotonicity_report`). *Non-monotone F changed the best plan*: the best feasible "
      "set scores strictly more than every maximal feasible set (one no expert can join within budget), so a search "
      "that trusts monotonicity and looks only at maximal sets would miss it; counted by enumerating all 2^N subsets. "
      "The selector's polish step (local search) is what recovers such optima.")
    for name in ("moe2", "moe2-adaptive"):
        s = results["claim2_selection"][name]
        if s.get("ran"):
            bad = [x for x in s["rows"] if not x["equal"]]
            w(f"\n{METHODS[name][0]}: at the {s['nonmonotone_changed_plan']} points where non-monotone F changed the best "
              f"plan, the selector still found the optimum at {s['changed_plan_selector_equal']}; "
              f"brute force's optimum is a non-maximal set at {s['brute_force_non_maximal']} points; "
              f"the selector saw F fall on a superset at {s['selector_saw_nonmonotone']} points; the enumeration "
              f"{'agrees' if s['enumeration_agrees'] else '**disagrees**'} with brute force everywhere.")
            for x in bad:
                w(f"- **mismatch** at {x['energy_j']:.4g} J, s={x['latency_scale']:.3g}: selector "
                  f"{x['selector']} F={x['selector_objective']} vs brute force {x['brute_force']} F={x['brute_force_objective']}")

    # 4
    t = results["claim3_tradeoffs"]
    w("\n## 4. Claim 3: accuracy under energy and latency budgets\n")
    w("Plots: `accuracy_vs_energy.png` (slice s = 1), `accuracy_vs_latency.png` (one panel per category, slice at the "
      "largest energy budget), `pareto.png`. *uniform over MoE²'s S* mixes all of MoE²'s S with equal weights, so it "
      "activates all of S and can break the fixed-k energy budget (counted below); over the adaptive S it never does. "
      "*random* is the mean of several seeded random maximal feasible subsets. *top-k of all* ignores the budget.\n")
    imp = t["improvement_vs_best_single"]
    for name in ("moe2", "moe2-adaptive"):
        d = imp[name]
        if d["points"] == 0:
            continue
        b, wst = d["best"], d["worst"]
        w(f"**{METHODS[name][0]} vs the best single expert that fits the same budget (test oracle):** best "
          f"**{_pts(b['margin_points'])} points** at {b['energy_j']:.4g} J and latency "
          f"{', '.join(f'{c} {v:.4g} ms' for c, v in zip(cats, b['latency_ms'], strict=True))} (s={b['latency_scale']:.3g}): "
          f"{_pct(b['method_accuracy'])}% with {b['method_experts']} vs {_pct(b['against_accuracy'])}% for "
          f"{b['against_experts']}. Worst {_pts(wst['margin_points'])} points at {wst['energy_j']:.4g} J, s={wst['latency_scale']:.3g} "
          f"({_pct(wst['method_accuracy'])}% with {wst['method_experts']} vs {_pct(wst['against_accuracy'])}% for "
          f"{wst['against_experts']}). Over {d['points']} points: {d['wins']} better, {d['ties']} equal, "
          f"{d['losses']} worse, mean {_pts(d['mean_points'])}.\n")
    v = imp["moe2_vs_val_single"]
    if v["points"]:
        w(f"Against the single expert chosen on validation (`baselines.best_single`): best {_pts(v['best']['margin_points'])} points "
          f"at {v['best']['energy_j']:.4g} J, s={v['best']['latency_scale']:.3g}; worst {_pts(v['worst']['margin_points'])}; "
          f"{v['wins']} better / {v['ties']} equal / {v['losses']} worse. Paper: \"up to +14.4%\" on MMLU.\n")
    w("MoE² (top-k) against every method over the grid points where both have a plan; margins are MoE² − method, in "
      "points of test accuracy:\n")
    w("| method | points with a plan | mean test acc | MoE² better / equal / worse | mean margin | MoE²'s worst margin (where) | within budget |")
    w("|---|---|---|---|---|---|---|")
    for name, s in t["summary"].items():
        c = s["vs_moe2"]
        where = (f"{_pts(c['worst']['margin_points'])} ({c['worst']['energy_j']:.3g} J, s={c['worst']['latency_scale']:.2g})"
                 if c["points"] else "–")
        w(f"| {METHODS[name][0]} | {s['points_with_plan']} | {_pct(s['mean_accuracy'])} | "
          + (f"{c['wins']} / {c['ties']} / {c['losses']} | {_pts(c['mean_points'])} | {where}" if c["points"] else "– | – | –")
          + f" | {s['within_budget']}/{s['points_with_plan']} |")
    w("\nPer category, MoE² (top-k) against the best single expert *in that category* among those that fit (test oracle):\n")
    w("| category | best margin (point #) | worst margin (point #) | points worse / with a plan |")
    w("|---|---|---|---|")
    for c, m in t["per_category_vs_best_single"].items():
        w(f"| {c} | {_pts(m['best_points'])} (#{m['best_index']}) | {_pts(m['worst_points'])} (#{m['worst_index']}) | "
          f"{m['losses']} / {m['points']} |")
    w("\nEnergy slice (latency scale s = 1), test accuracy %:\n")
    cols = list(METHODS)
    w("| energy budget J | " + " | ".join(METHODS[m][0] for m in cols) + " | MoE² S |")
    w("|---|" + "---|" * (len(cols) + 1))
    for row in t["energy_slice"]:
        w(f"| {row['energy_j']:.4g} | " + " | ".join(_pct(row[m]) for m in cols) + f" | {row['moe2_experts']} |")
    w("\nLatency slice (largest energy budget), overall test accuracy %:\n")
    w("| s | " + " | ".join(f"T_{c} ms" for c in cats) + " | " + " | ".join(METHODS[m][0] for m in cols) + " | MoE² S |")
    w("|---|" + "---|" * (len(cats) + len(cols) + 1))
    for row in t["latency_slice"]:
        w(f"| {row['latency_scale']:.3g} | " + " | ".join(f"{v:.4g}" for v in row["latency_ms"]) + " | "
          + " | ".join(_pct(row[m]) for m in cols) + f" | {row['moe2_experts']} |")
    p = results["pareto"]
    w(f"\n**Pareto front** (expected J on test vs test accuracy, over {len(p['plans'])} distinct plans of all methods and "
      f"the single experts): MoE² front of {len(p['moe2_front'])} plans; MoE² plans are "
      f"{100 * p['moe2_share_of_global_front']:.0f}% of the front of all plans (a front point reached by a MoE² plan counts "
      "as MoE²'s, also when a baseline reaches it too).\n")
    w("| methods reaching it | experts | expected J | worst-case J | test acc |")
    w("|---|---|---|---|---|")
    for r in p["global_front"]:
        w(f"| {', '.join(r['methods'])} | {', '.join(r['experts'])} | {r['expected_energy_j']:.4g} | "
          f"{r['worst_energy_j']:.4g} | {_pct(r['accuracy'])} |")
    w("")
    return "\n".join(out)


# --------------------------------------------------------------------------- the run


def _slices(points: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    top_s = max(p["latency_scale"] for p in points)
    top_e = max(p["energy_j"] for p in points)

    def row(p: dict[str, Any]) -> dict[str, Any]:
        return {"index": p["index"], "energy_j": p["energy_j"], "latency_scale": p["latency_scale"],
                "latency_ms": p["latency_ms"], "moe2_experts": p["methods"]["moe2"]["experts"],
                **{m: _acc(p, m) for m in METHODS}}

    energy = [row(p) for p in points if p["latency_scale"] == top_s]
    latency = [row(p) for p in points if p["energy_j"] == top_e]
    return energy, latency


def run_report(opts: Options) -> dict[str, Any]:
    """Compute everything, write OUT/results.json, OUT/REPORT.md and the PNGs; return results.

    Raises:
        DataFormatError: the table or profiles file is missing or malformed (names the file).
        ConfigError: an option breaks its rule.
        GateError: the gate cannot be trained or exported.
    """
    start = time.perf_counter()
    opts.check()
    load_calibration(opts.table)  # fail fast, before any training, naming the file
    load_profiles(opts.profiles)
    opts.out.mkdir(parents=True, exist_ok=True)
    inputs = planner.load_inputs(opts.table, opts.profiles, None, opts.out, gate_config(opts),
                                 progress=opts.progress)
    raw = load_calibration(opts.table).select_experts(list(inputs.experts))  # uncorrected, gate order
    if opts.top_k is not None and opts.top_k > len(inputs.experts):
        logger.warning("--top-k %d > %d experts: every member of S answers", opts.top_k, len(inputs.experts))
    ctx = Context.make(inputs, opts)
    timing: dict[str, float] = {"load_and_train_gate": time.perf_counter() - start}

    t = time.perf_counter()
    singles = single_experts(inputs, raw, ctx.evaluate, opts.top_k)
    gap = retrain_section(raw, inputs.trained_gate, opts)
    timing["retrain_gap"] = time.perf_counter() - t

    t = time.perf_counter()
    grid = BudgetGrid.make(inputs.energy_j, inputs.latency_ms, inputs.profiles.aggregation_ms,
                           opts.energy_points, opts.latency_points, opts.expert_budgets)
    where = grid.points()
    points = []
    with _bar(opts.progress, "plans over the budget grid", len(where)) as advance:
        for i, e, s, lat in where:
            points.append(plan_point(ctx, i, e, s, lat))
            advance()
    for p in points:
        p["_singles"] = {name: singles[name]["corrected"] for name in inputs.experts}
    timing["plans"] = time.perf_counter() - t

    t = time.perf_counter()
    selection = {name: selection_check(ctx, where, points, name) for name in ("moe2", "moe2-adaptive")}
    timing["selection_check"] = time.perf_counter() - t

    summary = {}
    for name in METHODS:
        accs = [a for a in (_acc(p, name) for p in points) if a is not None]
        summary[name] = {"points_with_plan": len(accs), "mean_accuracy": float(np.mean(accs)) if accs else None,
                         "within_budget": sum(1 for p in points if p["methods"][name]["test"]
                                              and p["methods"][name]["within_budget"]),
                         "vs_moe2": compare(points, "moe2", name) if name != "moe2" else {"points": 0}}
    energy_slice, latency_slice = _slices(points)
    tradeoffs = {
        "improvement_vs_best_single": {"moe2": compare(points, "moe2", "best-single-test"),
                                       "moe2-adaptive": compare(points, "moe2-adaptive", "best-single-test"),
                                       "moe2_vs_val_single": compare(points, "moe2", "best-single-val")},
        "per_category_vs_best_single": per_category_margins(points, inputs.categories, "moe2"),
        "summary": summary, "energy_slice": energy_slice, "latency_slice": latency_slice,
    }
    front = pareto(points, singles)
    test_cats = raw.split_rows(TEST).categories
    gate = inputs.trained_gate
    results: dict[str, Any] = {
        "format": FORMAT,
        "header": {
            "table": {"path": str(opts.table), "sha256": inputs.calibration_sha256,
                      "samples": {SPLIT_NAMES[k]: int((raw.split == k).sum()) for k in sorted(SPLIT_NAMES)},
                      "test_per_category": {c: int((test_cats == i).sum()) for i, c in enumerate(inputs.categories)}},
            "profiles": {"path": str(opts.profiles), "sources": inputs.profiles.sources(),
                         "note": inputs.profiles.note},
            "aggregation_ms": inputs.profiles.aggregation_ms,
            "experts": list(inputs.experts), "categories": list(inputs.categories),
            "gate": {"path": str(opts.out / "gate.onnx"), "config": asdict(gate.config),
                     "best_epoch": gate.best_epoch, "best_val_nll": gate.best_val_nll},
            "top_k": opts.top_k, "tau": opts.tau, "seed": opts.seed, "quick": opts.quick,
            "random_draws": opts.random_draws, "command": opts.command(),
        },
        "single_experts": singles,
        "claim1_retrain_gap": gap,
        "grid": {"energies_j": grid.energies.tolist(), "latency_scales": grid.scales.tolist(),
                 "latency_lo_ms": grid.lat_lo.tolist(), "latency_hi_ms": grid.lat_hi.tolist(),
                 "geometric_latency": grid.geometric, "points": len(points),
                 "expert_budgets": opts.expert_budgets},
        "claim2_selection": selection,
        "claim3_tradeoffs": tradeoffs,
        "pareto": front,
        "points": [{k: v for k, v in p.items() if not k.startswith("_")} for p in points],
    }
    t = time.perf_counter()
    plot_energy(results, points, opts.out / PNGS[0])
    plot_latency(results, points, grid, inputs.categories, opts.out / PNGS[1])
    plot_pareto(front, opts.out / PNGS[2])
    timing["plots"] = time.perf_counter() - t
    results["header"]["runtime_s"] = time.perf_counter() - start
    results["timing_s"] = timing  # the only figures that vary between identical runs
    from edge_moe.atomic import write_text

    # one line: the per-point records make an indented file several times larger
    write_text(opts.out / "results.json", json.dumps(_jsonable(results), allow_nan=False) + "\n")

    write_text(opts.out / "REPORT.md", render(results))
    return results


def _jsonable(v: Any) -> Any:
    """Plain JSON: numpy scalars to Python, NaN to null, inf to strings."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return _num(v)
    return v


def parse_args(argv: list[str] | None = None) -> Options:
    ap = argparse.ArgumentParser(
        prog="reproduce_moe2.py",
        description="Reproduce MoE²'s claims (optimality-preserving gate, exact selection, accuracy/cost "
                    "trade-offs) from a calibration table and profiles. Trains the gate on train, selects "
                    "on validation, reports on test. Writes OUT/REPORT.md, OUT/results.json (every figure "
                    "of the report), OUT/gate.onnx and OUT/{accuracy_vs_energy,accuracy_vs_latency,pareto}.png.",
        epilog="The module docstring defines the budget grid, 'non-monotone F changed the plan' and the "
               "improvement over the best single expert. Example: .venv/bin/python benchmarks/reproduce_moe2.py "
               "--table configs/example/calibration.synthetic.npz --profiles configs/example/profiles.synthetic.json "
               "--out /tmp/moe2",
    )
    ap.add_argument("--table", type=Path, required=True, help="calibration table .npz (README: formats)")
    ap.add_argument("--profiles", type=Path, required=True, help="profiles JSON: latency_ms and energy_j per expert and category")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    ap.add_argument("--top-k", type=int, default=2, help="experts that answer inside S, fixed k (0: all of S; default 2)")
    ap.add_argument("--tau", type=float, default=planner.DEFAULT_TAU,
                    help=f"adaptive k: fewest experts holding gate mass >= tau (default {planner.DEFAULT_TAU})")
    ap.add_argument("--subsets", type=int, default=None,
                    help=f"random subsets for the retrain-gap check (default {FULL['subsets']}; --quick {QUICK['subsets']})")
    ap.add_argument("--seed", type=int, default=0, help="seed of the gate, the subsets and the random baseline (default 0)")
    ap.add_argument("--energy-points", type=int, default=None,
                    help=f"energy budgets in the grid (default {FULL['energy_points']}; --quick {QUICK['energy_points']})")
    ap.add_argument("--latency-points", type=int, default=None,
                    help=f"latency scales in the grid (default {FULL['latency_points']}; --quick {QUICK['latency_points']})")
    ap.add_argument("--random-draws", type=int, default=None,
                    help=f"random feasible subsets averaged per budget (default {FULL['random_draws']}; --quick {QUICK['random_draws']})")
    ap.add_argument("--quick", action="store_true", help="small gate, coarse grid, few subsets: for tests and smoke runs")
    ap.add_argument("--no-expert-budgets", action="store_true",
                    help="grid of exactly energy-points x latency-points; by default each expert's own J and the "
                         "latency scale where it starts to fit are added, so every single-expert regime is sampled")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    preset = QUICK if a.quick else FULL
    return Options(table=a.table, profiles=a.profiles, out=a.out, top_k=a.top_k or None, tau=a.tau,
                   subsets=a.subsets if a.subsets is not None else preset["subsets"], seed=a.seed,
                   energy_points=a.energy_points if a.energy_points is not None else preset["energy_points"],
                   latency_points=a.latency_points if a.latency_points is not None else preset["latency_points"],
                   random_draws=a.random_draws if a.random_draws is not None else preset["random_draws"],
                   quick=a.quick, progress=not a.no_progress, expert_budgets=not a.no_expert_budgets)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        opts = parse_args(argv)
        results = run_report(opts)
    except EdgeMoEError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    sel = results["claim2_selection"]["moe2"]
    imp = results["claim3_tradeoffs"]["improvement_vs_best_single"]["moe2"]
    print(f"wrote {opts.out / 'REPORT.md'}, results.json and {', '.join(PNGS)} in {results['header']['runtime_s']:.1f} s")
    if sel.get("ran"):
        print(f"selector == brute force at {sel['equal']}/{sel['points']} points")
    if imp["points"]:
        print(f"best MoE² margin over the best single expert at the same budget: {imp['best']['margin_points']:+.1f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
