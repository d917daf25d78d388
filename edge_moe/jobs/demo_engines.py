"""The real demo's engine choice: per expert, which engine and precision it is served with.

Each expert of ``configs/fleet.demo.real.yaml`` has **candidates**: the ONNX artifact the
fleet file names (runner ``onnxruntime``) and, when ``llama_cpp`` imports (the ``gguf``
extra, ``make install-gguf``), the source GGUF that artifact was exported from (runner
``llama.cpp``, the asset's ``.gguf`` under ``$EDGE_MOE_CACHE/assets/<asset>/``), and when
that GGUF's type is one of :data:`REQUANT_TO_Q8` also the same GGUF requantised to Q8_0
(:func:`requantized_candidate`, :mod:`exporters.gguf_requant`). The demo
measures every candidate the same way (:func:`edge_moe.jobs.demo_real.measure`: letter
scores on the fixed fidelity sample of the train split, against the committed fp32 column
that plans for the expert; p95 ms per category at the node's thread count) and
:func:`choose_engine` picks:

- the **fastest** candidate (mean over categories of its profile's p95 ms per question)
  whose argmax **agreement** with the committed column is at least :data:`AGREEMENT_MIN`:
  the gate, temperatures and plans were all made from that column, so a served engine that
  answers differently would be planned with someone else's accuracy;
- when none reaches it, the **most faithful** one (highest agreement).

Ties (equal ms, or equal agreement when none qualifies) go to the other criterion, then to
the candidate listed first (the fleet file's own engine). The chosen engines are written as
a fleet file beside the demo's other inputs (:func:`write_chosen_fleet`: the same name,
nodes, device classes and expert names; only each expert's artifact, runner and precision
change), which the demo deploys; :func:`print_choices` prints the table.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_moe.errors import ArtifactError, RunnerError, SelectionError
from exporters.gguf_requant import gguf_precision

logger = logging.getLogger(__name__)

AGREEMENT_MIN = 0.95  # argmax agreement with the committed fp32 column an engine must reach
NO_LLAMA_CPP = "llama.cpp engine not installed (make install-gguf): serving ONNX for every expert"
CHOSEN_FLEET = "fleet.chosen.yaml"  # in the demo's folder: the fleet the demo deploys
# Source GGUF types the demo also offers requantised to Q8_0: types llama.cpp's CPU backend
# multiplies with its generic per-row dot product here (no tiled or repacked kernel), so a
# prompt is slow. Measured on the 2-core AVX-512 EPYC, 2 threads, ~130-token prompt, 64 new
# tokens (TTFT ms, decode tok/s, ms per MMLU question, letter agreement with the fp32 column):
#   SmolLM2-135M Q4_1 399, 127, 246, 1.00 -> Q8_0 171, 137, 122, 1.00   (offered)
#   Gemma-3-270M Q4_K_M 182, 62, 127, 0.96 -> Q8_0 169, 65, 125, 0.98   (within noise: not offered)
#   Qwen2.5-1.5B Q4_K_M 1136, 30, 763, 0.97 -> Q8_0 1634, 17, 1085, 0.98 (slower: not offered)
REQUANT_TO_Q8 = frozenset({"Q4_1"})


@dataclass(frozen=True)
class Candidate:
    """One way to serve an expert."""

    expert: str  # the fleet file's expert name (kept whatever the engine)
    engine: str  # the runner's registry name: "onnxruntime" or "llama.cpp"
    artifact: str  # as the fleet YAML writes it (relative to $EDGE_MOE_CACHE/artifacts, or absolute)
    path: Path  # the artifact on this machine
    precision: str  # the fleet YAML's precision ("fp32", "int4", ...)
    label: str  # what the table shows: "onnxruntime fp32", "llama.cpp Q4_K_M"
    sha: str  # a content hash prefix of the weights (the measurement cache's key)


@dataclass(frozen=True)
class Measured:
    """A candidate's measured numbers (:func:`edge_moe.jobs.demo_real.measure`)."""

    candidate: Candidate
    agreement: float  # argmax agreement with the committed column on the fidelity sample
    mean_ms: float  # mean over categories of the profile's p95 ms per question
    accuracy: float = math.nan  # on the fidelity sample
    reference_accuracy: float = math.nan  # the committed column's, on the same questions
    questions: int = 0
    profile: Any = None  # its edge_moe.profiles.ExpertProfile

    @property
    def label(self) -> str:
        return self.candidate.label


# ---------------------------------------------------------------- the choice (pure)


def choose_engine(candidates: Sequence[Measured], agreement_min: float = AGREEMENT_MIN) -> tuple[Measured, str]:
    """The candidate to serve and why, in words (see the module docstring for the rule).

    Args:
        candidates: one expert's measured candidates, the fleet file's own engine first.
        agreement_min: the least argmax agreement with the committed column, in [0, 1].

    Returns:
        (the chosen candidate, a one-line reason naming the numbers that decided).

    Raises:
        SelectionError: no candidates, or a NaN agreement or ms.
    """
    if not candidates:
        raise SelectionError("choose_engine: no candidates")
    bad = [c.label for c in candidates if math.isnan(c.agreement) or math.isnan(c.mean_ms)]
    if bad:
        raise SelectionError(f"choose_engine: candidates {bad} have a NaN agreement or ms")
    order = {id(c): i for i, c in enumerate(candidates)}
    ok = [c for c in candidates if c.agreement >= agreement_min - 1e-9]  # 57/60 counts as 0.95
    if ok:
        best = min(ok, key=lambda c: (c.mean_ms, -c.agreement, order[id(c)]))
        if len(candidates) == 1:
            return best, f"the only candidate (agreement {best.agreement:.2f} >= {agreement_min:.2f})"
        rivals = [c for c in ok if c is not best]
        if rivals:
            r = min(rivals, key=lambda c: (c.mean_ms, order[id(c)]))
            if r.mean_ms == best.mean_ms:
                why = (f"as fast as {r.label} ({best.mean_ms:.0f} ms) and "
                       + (f"more faithful ({best.agreement:.2f} vs {r.agreement:.2f})"
                          if best.agreement > r.agreement else "listed first (the fleet file's engine)"))
            else:
                why = (f"fastest with agreement >= {agreement_min:.2f}: {best.mean_ms:.0f} ms vs "
                       f"{r.mean_ms:.0f} ms for {r.label}")
        else:
            why = f"the only one with agreement >= {agreement_min:.2f} ({best.agreement:.2f})"
        passed = {id(c) for c in ok}
        faster = [c for c in candidates if id(c) not in passed and c.mean_ms < best.mean_ms]
        why += "".join(f"; {c.label} is faster ({c.mean_ms:.0f} ms) but agrees only {c.agreement:.2f}"
                       for c in faster)
        return best, why
    best = max(candidates, key=lambda c: (c.agreement, -c.mean_ms, -order[id(c)]))
    rest = ", ".join(f"{c.label} {c.agreement:.2f}" for c in candidates if c is not best)
    return best, (f"none reaches agreement {agreement_min:.2f}: the most faithful ({best.agreement:.2f}"
                  + (f" vs {rest})" if rest else ")"))


# ---------------------------------------------------------------- the candidates


def llama_cpp_available() -> bool:
    """Whether runner ``llama.cpp`` can run here (``llama_cpp`` imports and starts)."""
    from edge_moe.runtime.gguf_start import import_llama_cpp

    try:
        import_llama_cpp()
    except (RunnerError, ImportError, OSError) as exc:
        logger.info("llama.cpp not available: %s", exc)
        return False
    return True


def gguf_candidate(expert: str, asset: str) -> Candidate | None:
    """The source GGUF of ``asset`` as a ``llama.cpp`` candidate, or None (logged) when the
    asset is not in the cache and cannot be assembled without installing anything."""
    from exporters.assets import fetch_asset, known_sha256

    try:
        path = Path(fetch_asset(asset, install=False))
    except ArtifactError as exc:
        logger.warning("no GGUF candidate for %s: %s", expert, exc)
        return None
    if path.suffix != ".gguf":
        return None
    sha = known_sha256(path)  # the asset record's: hashing a 1.1 GB file on every warm run costs seconds
    precision, quant = gguf_precision(path)
    return Candidate(expert, "llama.cpp", str(path), path, precision, f"llama.cpp {quant}", sha[:12])


def requantized_candidate(source: Candidate) -> Candidate | None:
    """``source`` (a GGUF candidate) requantised to Q8_0 when its type is one of
    :data:`REQUANT_TO_Q8` (cached; parity-checked against the source), else None; None
    (logged) when requantising fails."""
    from edge_moe.errors import EdgeMoEError
    from exporters.gguf_requant import requantize_gguf, requantized_record

    quant = gguf_precision(source.path)[1]
    if source.engine != "llama.cpp" or quant not in REQUANT_TO_Q8:
        return None
    try:
        path = requantize_gguf(source.path, "Q8_0")
    except EdgeMoEError as exc:
        logger.warning("no Q8_0 candidate for %s: %s", source.expert, exc)
        return None
    sha = requantized_record(path).get("sha256") or f"{source.sha}-q8_0"
    return Candidate(source.expert, "llama.cpp", str(path), path, "int8", f"llama.cpp Q8_0 (from {quant})", sha[:12])


def onnx_candidate(expert: Any, path: Path) -> Candidate:
    """The fleet file's own ONNX artifact (``expert``: its ``ExpertConfig``)."""
    from edge_moe.runtime.manifest import load_manifest

    sha = load_manifest(path).model_sha256[:12]
    return Candidate(expert.name, expert.runner, expert.artifact, path, expert.precision,
                     f"{expert.runner} {expert.precision}", sha)


# ---------------------------------------------------------------- the fleet the demo deploys


def chosen_fleet_doc(doc: Mapping[str, Any], chosen: Mapping[str, Candidate]) -> dict[str, Any]:
    """The fleet YAML document ``doc`` with each expert served by its chosen candidate:
    the same name, node, device classes and everything else; its artifact, runner and
    precision replaced. Pure.

    Raises:
        ConfigError: an expert of ``doc`` has no choice, or a choice names no expert of it.
    """
    from edge_moe.errors import ConfigError

    names = [e.get("name") for e in doc.get("experts", [])]
    if set(names) != set(chosen):
        raise ConfigError(f"the chosen engines are for experts {sorted(chosen)}, the fleet has {names}")
    out = dict(doc)
    out["experts"] = [{**e, "artifact": chosen[e["name"]].artifact, "runner": chosen[e["name"]].engine,
                       "precision": chosen[e["name"]].precision} for e in doc["experts"]]
    return out


def write_chosen_fleet(committed: Path, chosen: Mapping[str, Candidate], folder: Path) -> Path:
    """:func:`chosen_fleet_doc` of the fleet file ``committed``, written to
    ``folder/fleet.chosen.yaml`` and checked by the one loader; returns its path."""
    import yaml

    from edge_moe.atomic import write_text
    from edge_moe.config import load_fleet

    doc = chosen_fleet_doc(yaml.safe_load(committed.read_text()), chosen)
    head = (f"# Written by `edge-moe demo` (edge_moe/jobs/demo_engines.py) from {committed}:\n"
            "# each expert served by the engine the demo chose for it (agreement with the committed\n"
            "# fp32 column >= 0.95, then the fastest). Rewritten on every demo run.\n")
    path = folder / CHOSEN_FLEET
    write_text(path, head + yaml.safe_dump(doc, sort_keys=False))
    load_fleet(path)  # ConfigError now rather than at deploy
    return path


# ---------------------------------------------------------------- the table


def print_choices(measured: Mapping[str, Sequence[Measured]], choices: Mapping[str, tuple[Measured, str]],
                  questions: int) -> None:
    """One row per expert: the engine chosen, each candidate's agreement and ms, and why."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"engine per expert: agreement with the committed fp32 column on {questions} fixed train "
                    f"questions (>= {AGREEMENT_MIN:.2f} required), then the fastest (mean of the per-category p95 "
                    "ms per question, measured on this machine)")
    for col in ("expert", "engine chosen", "agreement", "ms/question", "why"):
        t.add_column(col, overflow="fold")
    for name, cands in measured.items():
        best, why = choices[name]
        t.add_row(name, best.label,
                  "\n".join(f"{c.label}: {c.agreement:.2f}" for c in cands),
                  "\n".join(f"{c.label}: {c.mean_ms:.0f}" for c in cands), why)
    Console(soft_wrap=False, width=200).print(t)
