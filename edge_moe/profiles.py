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
          "energy_j":   {"stem": {"value": 9.7,   "source": "modelled"}, ...}
        }
      }
    }

``latency_ms`` is compute plus transfer at p95; ``energy_j`` is joules per request. Each
figure says where it came from: "measured" (timed or read from counters), "modelled"
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
from edge_moe.errors import DataFormatError

FORMAT = "edge-moe-profiles/1"
SOURCES = ("measured", "modelled", "projected")


@dataclass(frozen=True)
class Figure:
    """One number with its provenance."""

    value: float
    source: str


@dataclass(frozen=True)
class ExpertProfile:
    name: str
    node: str
    latency_ms: dict[str, Figure]
    energy_j: dict[str, Figure]


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

    def sources(self) -> dict[str, list[str]]:
        """The distinct sources used, for latency and for energy (for reports)."""
        lat = sorted({f.source for e in self.experts for f in e.latency_ms.values()})
        en = sorted({f.source for e in self.experts for f in e.energy_j.values()})
        return {"latency_ms": lat, "energy_j": en}

    def to_json(self) -> dict[str, Any]:
        def figs(d: dict[str, Figure]) -> dict[str, dict[str, Any]]:
            return {c: {"value": f.value, "source": f.source} for c, f in d.items()}

        return {
            "format": FORMAT,
            "aggregation_ms": self.aggregation_ms,
            "categories": list(self.categories),
            "note": self.note,
            "experts": {
                e.name: {"node": e.node, "latency_ms": figs(e.latency_ms), "energy_j": figs(e.energy_j)}
                for e in self.experts
            },
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
        unknown = sorted(set(raw) - {"node", "latency_ms", "energy_j"})
        if unknown:
            raise DataFormatError(f"{where}: unknown keys {unknown} (allowed: energy_j, latency_ms, node)")
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
        experts.append(ExpertProfile(str(name), raw["node"], figs["latency_ms"], figs["energy_j"]))
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
