"""Expert cost profiles: p95 latency and energy per request, per expert and category.

The profiles JSON is a user-facing format (``edge-moe profile`` writes it; users may too)::

    {
      "format": "edge-moe-profiles/1",
      "aggregation_ms": 2.0,                    # coordinator-side cost added to every plan
      "categories": ["stem", "humanities"],     # optional; defaults to the first expert's keys
      "note": "free text",                      # optional
      "experts": {
        "qwen-1.5b": {
          "node": "cpu-1",
          "latency_ms": {"stem": {"value": 812.0, "source": "measured"}, ...},
          "energy_j":   {"stem": {"value": 9.7,   "source": "modelled"}, ...},
          "generation": {                       # optional: the free-form generation cost model
            "stem": {"prefill_ms":   {"value": 340.0, "source": "measured"},
                     "per_token_ms": {"value": 62.0,  "source": "measured"},
                     "prefill_j":    {"value": 4.9,   "source": "modelled"},
                     "j_per_token":  {"value": 0.85,  "source": "modelled"}}, ...
          }
        }
      }
    }

``latency_ms`` is compute plus transfer at p95; ``energy_j`` is joules per request. Both
are the costs of one *option-scoring* request (one prefill). A free-form generation of up
to T new tokens costs ``prefill_ms + T * per_token_ms`` ms and ``prefill_j + T *
j_per_token`` J (:class:`GenerationCosts`); an expert without a ``generation`` entry (every
file written before it existed) has no generation model, and :meth:`Profiles.generation_arrays`
says so with ``None``. The latency pair is a conservative (p95-like) prediction and the
energy pair a mean one, as for scoring: ``edge-moe calibrate`` times a few real generate
calls per expert and category and ``edge-moe profile`` fits them
(:mod:`edge_moe.jobs.generation` holds the rule: least squares of the call's ms on the
tokens it produced, then the latency scaled by the p95 of measured ÷ fitted).

Each figure says where it came from: "measured" (timed or read from counters), "modelled"
(power profile × busy time) or "projected" (rescaled from another device class).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_moe.atomic import write_text
from edge_moe.errors import DataFormatError, SelectionError

FORMAT = "edge-moe-profiles/1"
SOURCES = ("measured", "modelled", "projected")
GENERATION_FIELDS = ("prefill_ms", "per_token_ms", "prefill_j", "j_per_token")


@dataclass(frozen=True)
class Figure:
    """One number with its provenance."""

    value: float
    source: str


@dataclass(frozen=True)
class GenerationFigures:
    """One expert's generation cost model on one category: ms and J = prefill + T x per token."""

    prefill_ms: Figure
    per_token_ms: Figure
    prefill_j: Figure
    j_per_token: Figure

    def to_json(self) -> dict[str, dict[str, Any]]:
        return {k: {"value": getattr(self, k).value, "source": getattr(self, k).source}
                for k in GENERATION_FIELDS}


@dataclass(frozen=True)
class GenerationCosts:
    """The generation cost model of N experts on C categories, four (N, C) float64 arrays.

    ``latency_ms(T)`` is conservative (p95-like), ``energy_j(T)`` a mean, like the scoring
    ``latency_ms`` / ``energy_j`` of :meth:`Profiles.arrays`.
    """

    prefill_ms: np.ndarray
    per_token_ms: np.ndarray
    prefill_j: np.ndarray
    j_per_token: np.ndarray

    def __post_init__(self) -> None:
        shapes = {getattr(self, k).shape for k in GENERATION_FIELDS}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise DataFormatError(f"generation cost arrays must share one (N, C) shape, got {sorted(shapes)}")

    @staticmethod
    def _tokens(max_new_tokens: int) -> int:
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
                or max_new_tokens < 1:
            raise SelectionError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 1")
        return int(max_new_tokens)

    def latency_ms(self, max_new_tokens: int) -> np.ndarray:
        """(N, C) ms of a generation of up to ``max_new_tokens``: prefill_ms + T * per_token_ms."""
        t = self._tokens(max_new_tokens)
        return self.prefill_ms + t * self.per_token_ms

    def energy_j(self, max_new_tokens: int) -> np.ndarray:
        """(N, C) J of a generation of up to ``max_new_tokens``: prefill_j + T * j_per_token."""
        t = self._tokens(max_new_tokens)
        return self.prefill_j + t * self.j_per_token


@dataclass(frozen=True)
class ExpertProfile:
    name: str
    node: str
    latency_ms: dict[str, Figure]
    energy_j: dict[str, Figure]
    generation: dict[str, GenerationFigures] = field(default_factory=dict)  # {}: no generation model


@dataclass(frozen=True)
class Profiles:
    experts: tuple[ExpertProfile, ...]
    categories: tuple[str, ...]
    aggregation_ms: float = 0.0
    note: str = ""
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index.update({e.name: i for i, e in enumerate(self.experts)})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.experts)

    def expert(self, name: str) -> ExpertProfile:
        if name not in self._index:
            raise DataFormatError(f"expert '{name}' has no profile (known: {list(self.names)})")
        return self.experts[self._index[name]]

    def arrays(
        self, experts: tuple[str, ...] | list[str], categories: tuple[str, ...] | list[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(latency_ms, energy_j)``, each (N, C) float64, in the given expert and category order.

        Raises:
            DataFormatError: an expert or category has no figure.
        """
        lat = np.empty((len(experts), len(categories)))
        en = np.empty_like(lat)
        for i, name in enumerate(experts):
            p = self.expert(name)
            for j, c in enumerate(categories):
                if c not in p.latency_ms or c not in p.energy_j:
                    raise DataFormatError(
                        f"profile of expert '{name}' has no figure for category '{c}' "
                        f"(it has: {sorted(p.latency_ms)})"
                    )
                lat[i, j] = p.latency_ms[c].value
                en[i, j] = p.energy_j[c].value
        return lat, en

    def generation_missing(self, experts: tuple[str, ...] | list[str],
                           categories: tuple[str, ...] | list[str] | None = None) -> list[str]:
        """The given experts (in order) without a generation model for every one of
        ``categories`` (default: the file's categories).

        Raises:
            DataFormatError: an expert has no profile.
        """
        cats = self.categories if categories is None else categories
        return [n for n in experts if any(c not in self.expert(n).generation for c in cats)]

    def generation_arrays(self, experts: tuple[str, ...] | list[str],
                          categories: tuple[str, ...] | list[str]) -> GenerationCosts | None:
        """The generation cost model in the given expert and category order, or ``None`` when
        any of those experts lacks one for any of those categories
        (:meth:`generation_missing` names them).

        Raises:
            DataFormatError: an expert has no profile.
        """
        if self.generation_missing(experts, categories):
            return None
        arrs = {k: np.empty((len(experts), len(categories))) for k in GENERATION_FIELDS}
        for i, name in enumerate(experts):
            gen = self.expert(name).generation
            for j, c in enumerate(categories):
                for k in GENERATION_FIELDS:
                    arrs[k][i, j] = getattr(gen[c], k).value
        return GenerationCosts(**arrs)

    def sources(self) -> dict[str, list[str]]:
        """The distinct sources used, for latency and for energy, and for the generation
        model when any expert has one (for reports)."""
        lat = sorted({f.source for e in self.experts for f in e.latency_ms.values()})
        en = sorted({f.source for e in self.experts for f in e.energy_j.values()})
        out = {"latency_ms": lat, "energy_j": en}
        gen = sorted({getattr(g, k).source for e in self.experts for g in e.generation.values()
                      for k in GENERATION_FIELDS})
        if gen:
            out["generation"] = gen
        return out

    def to_json(self) -> dict[str, Any]:
        def figs(d: dict[str, Figure]) -> dict[str, dict[str, Any]]:
            return {c: {"value": f.value, "source": f.source} for c, f in d.items()}

        def expert(e: ExpertProfile) -> dict[str, Any]:
            out: dict[str, Any] = {"node": e.node, "latency_ms": figs(e.latency_ms), "energy_j": figs(e.energy_j)}
            if e.generation:
                out["generation"] = {c: g.to_json() for c, g in e.generation.items()}
            return out

        return {
            "format": FORMAT,
            "aggregation_ms": self.aggregation_ms,
            "categories": list(self.categories),
            "note": self.note,
            "experts": {e.name: expert(e) for e in self.experts},
        }


def _figure(raw: Any, where: str) -> Figure:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        raise DataFormatError(f"{where}={raw!r} must be an object {{'value': ..., 'source': ...}}")
    if not isinstance(raw, dict) or set(raw) != {"value", "source"}:
        raise DataFormatError(f"{where}={raw!r} must have exactly the keys 'value' and 'source'")
    v, s = raw["value"], raw["source"]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise DataFormatError(f"{where}.value={v!r} must be a finite number >= 0")
    if s not in SOURCES:
        raise DataFormatError(f"{where}.source={s!r} must be one of {list(SOURCES)}")
    return Figure(float(v), str(s))


def _generation(raw: Any, where: str, known: dict[str, Figure]) -> dict[str, GenerationFigures]:
    """``experts.<name>.generation``: category -> the four figures of :data:`GENERATION_FIELDS`."""
    if not isinstance(raw, dict) or not raw:
        raise DataFormatError(f"{where} must be a non-empty object of category -> "
                              f"{{{', '.join(GENERATION_FIELDS)}}}")
    out = {}
    for c, d in raw.items():
        w = f"{where}.{c}"
        if c not in known:
            raise DataFormatError(f"{w}: {c!r} is not a category of this expert's latency_ms "
                                  f"(it has: {sorted(known)})")
        if not isinstance(d, dict):
            raise DataFormatError(f"{w}={d!r} must be an object of {list(GENERATION_FIELDS)} -> figure")
        unknown = sorted(set(d) - set(GENERATION_FIELDS))
        if unknown:
            raise DataFormatError(f"{w}: unknown keys {unknown} (allowed: {list(GENERATION_FIELDS)})")
        missing = [k for k in GENERATION_FIELDS if k not in d]
        if missing:
            raise DataFormatError(f"{w}: missing {missing}")
        out[str(c)] = GenerationFigures(*(_figure(d[k], f"{w}.{k}") for k in GENERATION_FIELDS))
    return out


def parse_profiles(data: Any, source: str = "<profiles>") -> Profiles:
    """Validate a decoded profiles JSON document; errors name ``source`` and the field."""
    if not isinstance(data, dict):
        raise DataFormatError(f"{source}: top level must be an object, got {type(data).__name__}")
    allowed = {"format", "aggregation_ms", "categories", "note", "experts"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise DataFormatError(f"{source}: unknown keys {unknown} (allowed: {sorted(allowed)})")
    fmt = data.get("format", FORMAT)
    if fmt != FORMAT:
        raise DataFormatError(f"{source}: format={fmt!r}, expected {FORMAT!r}")
    agg = data.get("aggregation_ms", 0.0)
    if isinstance(agg, bool) or not isinstance(agg, (int, float)) or not math.isfinite(agg) or agg < 0:
        raise DataFormatError(f"{source}: aggregation_ms={agg!r} must be a finite number >= 0")
    experts_raw = data.get("experts")
    if not isinstance(experts_raw, dict) or not experts_raw:
        raise DataFormatError(f"{source}: 'experts' must be a non-empty object of expert name -> profile")
    experts = []
    for name, raw in experts_raw.items():
        where = f"{source}: experts.{name}"
        if not isinstance(raw, dict):
            raise DataFormatError(f"{where} must be an object")
        unknown = sorted(set(raw) - {"node", "latency_ms", "energy_j", "generation"})
        if unknown:
            raise DataFormatError(f"{where}: unknown keys {unknown} "
                                  "(allowed: energy_j, generation, latency_ms, node)")
        for key in ("node", "latency_ms", "energy_j"):
            if key not in raw:
                raise DataFormatError(f"{where}: missing '{key}'")
        if not isinstance(raw["node"], str) or not raw["node"]:
            raise DataFormatError(f"{where}.node={raw['node']!r} must be a non-empty string")
        figs = {}
        for key in ("latency_ms", "energy_j"):
            d = raw[key]
            if not isinstance(d, dict) or not d:
                raise DataFormatError(f"{where}.{key} must be a non-empty object of category -> figure")
            figs[key] = {str(c): _figure(v, f"{where}.{key}.{c}") for c, v in d.items()}
        gen = _generation(raw["generation"], f"{where}.generation", figs["latency_ms"]) if "generation" in raw else {}
        experts.append(ExpertProfile(str(name), raw["node"], figs["latency_ms"], figs["energy_j"], gen))
    cats = data.get("categories")
    if cats is None:
        cats = list(experts[0].latency_ms)
    if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats) or not cats:
        raise DataFormatError(f"{source}: categories={cats!r} must be a non-empty list of names")
    for e in experts:
        for key, d in (("latency_ms", e.latency_ms), ("energy_j", e.energy_j)):
            missing = [c for c in cats if c not in d]
            if missing:
                raise DataFormatError(f"{source}: experts.{e.name}.{key} lacks categories {missing}")
    note = data.get("note", "")
    return Profiles(tuple(experts), tuple(cats), float(agg), str(note))


def load_profiles(path: str | os.PathLike[str]) -> Profiles:
    """Load and validate a profiles JSON file.

    Raises:
        DataFormatError: missing file, invalid JSON, or a field that breaks a rule.
    """
    p = Path(path)
    if not p.is_file():
        raise DataFormatError(f"{p}: profiles file not found")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{p}: not valid JSON ({exc})") from exc
    return parse_profiles(data, source=str(p))


def save_profiles(profiles: Profiles, path: str | os.PathLike[str]) -> Path:
    """Write atomically (temp file, then rename)."""
    return write_text(path, json.dumps(profiles.to_json(), indent=2) + "\n")
