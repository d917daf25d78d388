"""Reproduce MoE²'s claims from a calibration table and profiles: REPORT.md, results.json, plots.

The gate is trained on the table's TRAIN split (early stopping on VALIDATION) and exported to
``OUT/gate.onnx``; every subset S is chosen on VALIDATION; every accuracy in the report is
measured on TEST. This is the planner's own pipeline (``gating.planning.planner.load_inputs``,
``make_objective``, ``make_problem``, ``evaluate_test``), so the report measures what
``edge-moe plan`` ships. Sections of ``OUT/REPORT.md``:

1. Single experts: test accuracy per category (argmax of the raw log-probs, and after the
   per-expert prior correction the mixture uses), with each expert's latency and energy per
   category from the profiles, each figure tagged with its source.
2. Claim 1, optimality-preserving gate: ``gating.offline.retrain_gap`` over R random subsets
   (masked θ* against a gate retrained on S alone; test NLL in nats, accuracy in points),
   summarised by ``gating.offline.retrain_summary``.
3. Claim 2, exact selection: ``select_experts`` against ``brute_force`` on the real objective
   at every point of the budget grid, for fixed k and adaptive k; evaluation counts; how often
   F is not monotone and whether that changed the best plan (definitions below;
   ``gating.offline.crosscheck``, ``gating.offline.enumeration``).
4. Claim 3, trade-offs: test accuracy against the energy budget and against per-category
   latency budgets for MoE² (fixed k, adaptive k) and the baselines, a Pareto front in
   (expected energy, accuracy), and MoE²'s best and worst margin over the best single
   expert that fits the same budget (``gating.offline.budget_sweep``, ``gating.offline.margins``,
   ``gating.offline.pareto``). MoE² here is the planner's default: ``--objective`` (loglik), on
   validation (or ``--folds`` k-fold CV), with the paired guard at ``--guard-confidence``.
5. Robust selection (docs/design.md §2.8): every objective variant (accuracy, loglik, loglik on
   ``--cv-folds``-fold CV; each without and with the guard) against its fair baseline, the
   single expert chosen on the same selection data by the same objective, with paired 95%
   bootstrap intervals on test per budget point and over the grid (``gating.offline.variants``);
   the test-chosen single expert and fixed subset as ceilings, and the per-question oracle
   with its random-guesser control (``gating.offline.ceilings``).

**The budget grid** (``gating.offline.budget_grid``). Energy: ``--energy-points`` values, geometric
from the cheapest expert alone (its worst category's J) to every expert at once (the sum of
each expert's worst category: then every subset fits, even with all of S active). Latency: one scale s in [0, 1]
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
  enumeration of the 2^N subsets (up to ``planner.CROSSCHECK_MAX_N`` experts).
- *Improvement over the best single expert at the same budget*, at a grid point: test
  accuracy of the MoE² plan minus the best test accuracy among the single experts that fit the
  budget alone (an oracle choice of the single expert, so the margin is conservative), in
  points. The best improvement is the maximum over the grid points where a plan exists (ties:
  first in grid order); the worst is the minimum. The same with the single expert chosen on
  validation (``baselines.best_single``), as a deployable baseline would, is reported too.
- *Expected energy / latency* of a plan: the mean over test samples of the J (sum) and ms (max
  plus aggregation) of the experts that actually answer the sample (top-k or adaptive k of S),
  at the sample's category (``gating.offline.evaluation``). Worst-case energy is what the budget
  constrains.

This script is the driver: options, the order of the steps, timing, the files. The numbers
come from the ``gating`` modules named above, REPORT.md from ``benchmarks/moe2_report.py``
(a pure function of results.json) and the plots from ``benchmarks/moe2_figures.py``.

Run::

    .venv/bin/python benchmarks/reproduce_moe2.py --table T.npz --profiles P.json --out DIR

Exit code 1 with ``ClassName: message`` when an input is missing or malformed.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks.moe2_figures import PNGS, plot_all  # noqa: E402
from benchmarks.moe2_report import render  # noqa: E402
from edge_moe.calibration import SPLIT_NAMES, TEST, CalibrationTable, load_calibration  # noqa: E402
from edge_moe.errors import ConfigError, EdgeMoEError  # noqa: E402
from edge_moe.jobs.logs import configure_logging  # noqa: E402
from edge_moe.jobs.progress_bar import progress_bar  # noqa: E402
from edge_moe.profiles import load_profiles  # noqa: E402
from edge_moe.progress import reporter  # noqa: E402
from gating.offline.budget_grid import BudgetGrid, GridPoint  # noqa: E402
from gating.offline.budget_sweep import (  # noqa: E402
    METHODS,
    MOE2,
    MethodSweep,
    PlannedPoint,
    energy_slice,
    latency_slice,
)
from gating.offline.ceilings import oracle, subset_ceilings  # noqa: E402
from gating.offline.crosscheck import MAX_N, crosscheck  # noqa: E402
from gating.offline.evaluation import single_experts  # noqa: E402
from gating.offline.json_values import jsonable  # noqa: E402
from gating.offline.margins import compare, method_summary, per_category_margins  # noqa: E402
from gating.offline.pareto import pareto  # noqa: E402
from gating.offline.retrain_summary import retrain_gap_summary  # noqa: E402
from gating.offline.variants import Variant, default_variants, run_variants  # noqa: E402
from gating.planning import planner  # noqa: E402

logger = logging.getLogger(__name__)

FORMAT = "edge-moe-moe2-report/2"
DEFAULT_OUT = Path("benchmarks/results/moe2")
FULL = {"subsets": 30, "energy_points": 10, "latency_points": 8, "random_draws": 5}
QUICK = {"subsets": 6, "energy_points": 5, "latency_points": 4, "random_draws": 2}


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
    objective: str = "loglik"
    folds: int = 0
    guard_confidence: float | None = 0.95
    cv_folds: int = 5

    def check(self) -> None:
        """Raises ConfigError naming the option and the rule it breaks."""
        rules = [
            ("--top-k", self.top_k is None or self.top_k >= 1, ">= 1 (0 on the command line: all of S)"),
            ("--tau", 0.0 < self.tau <= 1.0, "in (0, 1]"),
            ("--subsets", self.subsets >= 1, ">= 1"),
            ("--energy-points", self.energy_points >= 1, ">= 1"),
            ("--latency-points", self.latency_points >= 1, ">= 1"),
            ("--random-draws", self.random_draws >= 1, ">= 1"),
            ("--objective", self.objective in ("accuracy", "loglik"), "accuracy or loglik"),
            ("--folds", self.folds == 0 or self.folds >= 2, "0 or >= 2"),
            ("--cv-folds", self.cv_folds >= 2, ">= 2"),
            ("--guard-confidence", self.guard_confidence is None or 0.0 < self.guard_confidence < 1.0,
             "in (0, 1), or 0 for no guard"),
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
                "--latency-points", str(self.latency_points), "--random-draws", str(self.random_draws),
                "--objective", self.objective, "--folds", str(self.folds),
                "--guard-confidence", repr(self.guard_confidence or 0.0), "--cv-folds", str(self.cv_folds)]
        if self.quick:
            args.append("--quick")
        if not self.expert_budgets:
            args.append("--no-expert-budgets")
        return shlex.join([".venv/bin/python", "benchmarks/reproduce_moe2.py", *args])


def gate_config(opts: Options) -> Any:
    """The gate's training config: the library default, or a small fast one with ``quick``."""
    from gating.planning.gate import GateConfig  # torch: only when a gate is trained

    if opts.quick:
        return GateConfig(hidden_dim=32, max_epochs=60, patience=10, seed=opts.seed)
    return GateConfig(seed=opts.seed)


# --------------------------------------------------------------------------- helpers


@contextmanager
def _bar(enabled: bool, label: str, total: int) -> Iterator[Callable[[], None]]:
    """An advance() for one bar of :func:`~edge_moe.jobs.progress_bar.progress_bar`, or a
    no-op when disabled (for callers that count one step at a time)."""
    with progress_bar(enabled) as bar:
        tell, done = reporter(bar), [0]
        tell(label, 0, total)

        def advance() -> None:
            done[0] += 1
            tell(label, done[0], total)

        yield advance


@contextmanager
def _timed(timing: dict[str, float], step: str) -> Iterator[None]:
    """Record the step's wall-clock seconds in ``timing[step]``."""
    t = time.perf_counter()
    yield
    timing[step] = time.perf_counter() - t


# --------------------------------------------------------------------------- the steps


def _plan_grid(sweep: MethodSweep, where: list[GridPoint], progress: bool) -> list[PlannedPoint]:
    with _bar(progress, "plans over the budget grid", len(where)) as advance:
        planned = []
        for point in where:
            planned.append(sweep.plan_point(point))
            advance()
    return planned


def _crosscheck(sweep: MethodSweep, name: str, where: list[GridPoint], planned: list[PlannedPoint],
                opts: Options) -> dict[str, Any]:
    ran = len(sweep.inputs.experts) <= MAX_N  # no bar when brute force is skipped
    with _bar(opts.progress and ran, f"brute force check ({name})", len(planned)) as advance:
        return crosscheck(name, sweep.problems[name], sweep.objectives[name], where,
                          [p.selections[name] for p in planned], seed=opts.seed, on_point=advance)


def _tradeoffs(points: list[dict[str, Any]], categories: tuple[str, ...],
               singles: dict[str, Any]) -> dict[str, Any]:
    """Claim 3's numbers: margins over the single experts, every method, the two slices."""
    alone = {name: s["corrected"] for name, s in singles.items()}
    return {
        "improvement_vs_best_single": {"moe2": compare(points, "moe2", "best-single-test"),
                                       "moe2-adaptive": compare(points, "moe2-adaptive", "best-single-test"),
                                       "moe2_vs_val_single": compare(points, "moe2", "best-single-val")},
        "per_category_vs_best_single": per_category_margins(points, categories, "moe2", alone),
        "summary": method_summary(points, METHODS),
        "energy_slice": energy_slice(points), "latency_slice": latency_slice(points),
    }


def _variants(opts: Options) -> list[Variant]:
    """The variants section 5 compares: the defaults, plus the main sweep's own when it is not one."""
    out = default_variants(opts.cv_folds, opts.guard_confidence or 0.95)
    main = Variant(opts.objective, opts.folds, opts.guard_confidence)
    return out if main in out else [*out, main]


def _header(opts: Options, inputs: planner.PlanInputs, raw: CalibrationTable) -> dict[str, Any]:
    """What the report was computed from, and how (runtime_s is added at the end)."""
    test_cats = raw.split_rows(TEST).categories
    gate = inputs.trained_gate
    return {
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
        "temperature": dict(zip(inputs.experts, (float(t) for t in inputs.gate.temperature), strict=True)),
        "selection": {"objective": opts.objective, "folds": opts.folds, "guard_confidence": opts.guard_confidence,
                      "cv_folds": opts.cv_folds, "name": Variant(opts.objective, opts.folds, opts.guard_confidence).name},
        "random_draws": opts.random_draws, "command": opts.command(),
    }


def _load(opts: Options) -> tuple[planner.PlanInputs, CalibrationTable]:
    """Check the options and inputs, train and export the gate; the raw table in gate order."""
    opts.check()
    load_calibration(opts.table)  # fail fast, before any training, naming the file
    load_profiles(opts.profiles)
    opts.out.mkdir(parents=True, exist_ok=True)
    with progress_bar(opts.progress) as bar:
        inputs = planner.load_inputs(opts.table, opts.profiles, None, opts.out, gate_config(opts),
                                     progress=bar)
    raw = load_calibration(opts.table).select_experts(list(inputs.experts))  # uncorrected, gate order
    if opts.top_k is not None and opts.top_k > len(inputs.experts):
        logger.warning("--top-k %d > %d experts: every member of S answers", opts.top_k, len(inputs.experts))
    return inputs, raw


def run_report(opts: Options) -> dict[str, Any]:
    """Compute everything, write OUT/results.json, OUT/REPORT.md and the PNGs; return results.

    Raises:
        DataFormatError: the table or profiles file is missing or malformed (names the file).
        ConfigError: an option breaks its rule.
        GateError: the gate cannot be trained or exported.
    """
    start = time.perf_counter()
    inputs, raw = _load(opts)
    sweep = MethodSweep.make(inputs, opts.top_k, opts.tau, opts.seed, opts.random_draws,
                             objective=opts.objective, folds=opts.folds, guard=opts.guard_confidence)
    timing: dict[str, float] = {"load_and_train_gate": time.perf_counter() - start}
    with _timed(timing, "retrain_gap"):
        singles = single_experts(inputs, raw, sweep.evaluate, opts.top_k)
        with progress_bar(opts.progress) as bar:
            gap = retrain_gap_summary(raw, inputs.trained_gate, opts.subsets, opts.seed, progress=bar)
    with _timed(timing, "plans"):
        grid = BudgetGrid.make(inputs.energy_j, inputs.latency_ms, inputs.profiles.aggregation_ms,
                               opts.energy_points, opts.latency_points, opts.expert_budgets)
        where = grid.points()
        planned = _plan_grid(sweep, where, opts.progress)
    with _timed(timing, "selection_check"):
        selection = {name: _crosscheck(sweep, name, where, planned, opts) for name in MOE2}
    with _timed(timing, "variants"):
        variants = run_variants(inputs, _variants(opts), where, opts.top_k, opts.seed)
        ceilings = {"subsets": subset_ceilings(inputs, where, opts.top_k), "oracle": oracle(inputs, opts.seed)}
    points = [p.record for p in planned]
    results: dict[str, Any] = {
        "format": FORMAT, "header": _header(opts, inputs, raw), "single_experts": singles,
        "claim1_retrain_gap": gap, "grid": grid.to_json(opts.expert_budgets), "claim2_selection": selection,
        "claim3_tradeoffs": _tradeoffs(points, inputs.categories, singles), "pareto": pareto(points, singles),
        "robust_selection": variants, "ceilings": ceilings,
        "points": points,
    }
    with _timed(timing, "plots"):
        plot_all(results, points, grid, inputs.categories, opts.out)
    results["header"]["runtime_s"] = time.perf_counter() - start
    results["timing_s"] = timing  # the only figures that vary between identical runs
    _write(opts.out, results)
    return results


def _write(out: Path, results: dict[str, Any]) -> None:
    from edge_moe.atomic import write_text

    # one line: the per-point records make an indented file several times larger
    write_text(out / "results.json", json.dumps(jsonable(results), allow_nan=False) + "\n")
    write_text(out / "REPORT.md", render(results))


# --------------------------------------------------------------------------- the command line


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="markdown")
NO_DEFAULT = {"show_default": False}  # the help text names the default


@app.command(
    help="Reproduce MoE²'s claims (optimality-preserving gate, exact selection, accuracy/cost "
         "trade-offs) from a calibration table and profiles. Trains the gate on train, selects "
         "on validation, reports on test. Writes OUT/REPORT.md, OUT/results.json (every figure "
         "of the report), OUT/gate.onnx and OUT/{accuracy_vs_energy,accuracy_vs_latency,pareto}.png.",
    epilog="The module docstring defines the budget grid, 'non-monotone F changed the plan' and the "
           "improvement over the best single expert. Example: .venv/bin/python benchmarks/reproduce_moe2.py "
           "--table configs/example/calibration.synthetic.npz --profiles configs/example/profiles.synthetic.json "
           "--out /tmp/moe2",
)
def reproduce(
    table: Annotated[Path, typer.Option(help="calibration table .npz (docs/formats.md)")],
    profiles: Annotated[Path, typer.Option(help="profiles JSON: latency_ms and energy_j per expert and category")],
    out: Annotated[Path, typer.Option(help=f"output folder (default: {DEFAULT_OUT})", **NO_DEFAULT)] = DEFAULT_OUT,
    top_k: Annotated[int, typer.Option(help="experts that answer inside S, fixed k (0: all of S; default 2)",
                                       **NO_DEFAULT)] = 2,
    tau: Annotated[float, typer.Option(help="adaptive k: fewest experts holding gate mass >= tau "
                                            f"(default {planner.DEFAULT_TAU})", **NO_DEFAULT)] = planner.DEFAULT_TAU,
    subsets: Annotated[int | None, typer.Option(
        help=f"random subsets for the retrain-gap check (default {FULL['subsets']}; --quick {QUICK['subsets']})")] = None,
    seed: Annotated[int, typer.Option(help="seed of the gate, the subsets and the random baseline (default 0)",
                                      **NO_DEFAULT)] = 0,
    energy_points: Annotated[int | None, typer.Option(
        help=f"energy budgets in the grid (default {FULL['energy_points']}; --quick {QUICK['energy_points']})")] = None,
    latency_points: Annotated[int | None, typer.Option(
        help=f"latency scales in the grid (default {FULL['latency_points']}; --quick {QUICK['latency_points']})")] = None,
    random_draws: Annotated[int | None, typer.Option(
        help=f"random feasible subsets averaged per budget (default {FULL['random_draws']}; "
             f"--quick {QUICK['random_draws']})")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="small gate, coarse grid, few subsets: for tests and smoke runs")] = False,
    no_expert_budgets: Annotated[bool, typer.Option(
        "--no-expert-budgets",
        help="grid of exactly energy-points x latency-points; by default each expert's own J and the "
             "latency scale where it starts to fit are added, so every single-expert regime is sampled")] = False,
    objective: Annotated[Literal["accuracy", "loglik"], typer.Option(
        help="MoE²'s F(S) in sections 3-4 (default loglik)", **NO_DEFAULT)] = "loglik",
    folds: Annotated[int, typer.Option(help="MoE² selects on k-fold CV over train + validation (0: validation)")] = 0,
    guard_confidence: Annotated[float, typer.Option(help="MoE²'s paired guard confidence (0: no guard; default 0.95)",
                                                    **NO_DEFAULT)] = 0.95,
    cv_folds: Annotated[int, typer.Option(help="folds of the CV variants in section 5 (default 5)", **NO_DEFAULT)] = 5,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="no progress bars")] = False,
) -> None:
    preset = QUICK if quick else FULL
    opts = Options(table=table, profiles=profiles, out=out, top_k=top_k or None, tau=tau,
                   subsets=subsets if subsets is not None else preset["subsets"], seed=seed,
                   energy_points=energy_points if energy_points is not None else preset["energy_points"],
                   latency_points=latency_points if latency_points is not None else preset["latency_points"],
                   random_draws=random_draws if random_draws is not None else preset["random_draws"],
                   quick=quick, progress=not no_progress, expert_budgets=not no_expert_budgets,
                   objective=objective, folds=folds, guard_confidence=guard_confidence or None,
                   cv_folds=cv_folds)
    try:
        results = run_report(opts)
    except EdgeMoEError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        raise typer.Exit(1) from exc
    sel = results["claim2_selection"]["moe2"]
    imp = results["claim3_tradeoffs"]["improvement_vs_best_single"]["moe2"]
    print(f"wrote {opts.out / 'REPORT.md'}, results.json and {', '.join(PNGS)} in {results['header']['runtime_s']:.1f} s")
    if sel.get("ran"):
        print(f"selector == brute force at {sel['equal']}/{sel['points']} points")
    if imp["points"]:
        print(f"best MoE² margin over the best single expert at the same budget: {imp['best']['margin_points']:+.1f} points")


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit status:
    0, 1 with ``ClassName: message`` on stderr for an EdgeMoEError, 2 for a usage error."""
    configure_logging()
    try:
        app(args=argv, prog_name="reproduce_moe2.py")
    except SystemExit as exc:  # Typer's standalone mode always exits
        return int(exc.code or 0)
    return 0

if __name__ == "__main__":
    sys.exit(main())
