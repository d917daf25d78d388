"""``edge-moe profile``: profiles JSON from calibrate's measured latencies and device classes.

Every figure carries its source (:mod:`edge_moe.profiles`):

- latency on the class the latencies were measured on (``--host-class``, default ``cpu``):
  the measured p95, ``measured``;
- energy there: the class's busy power × the measured mean busy time, ``modelled``
  (no energy counter on this machine; docs/design.md §4);
- a document from ``calibrate --fleet`` says where each expert was timed (``measured_on``:
  its node and device class): each expert's figures are measured on its own class;
- on another class: latency ÷ (its ``throughput_factor`` / the host class's), and energy =
  its busy power × the rescaled mean time, both ``projected``. The factors and their
  sources live in ``configs/device_classes.yaml``.

Each expert's generation cost model (prefill + per-token ms and J per category) is fitted
from the timed generate calls of the latency document (:mod:`edge_moe.jobs.generation`
holds the rule; its latency margin follows ``statistic``: p95, p50, or none for the mean),
with the same sources and projection. A document without those calls (one from before they
were timed, or ``--no-score``) still gives scoring-only profiles, and the note says which
experts lack a generation model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge_moe.config import DeviceClass
from edge_moe.errors import ConfigError, DataFormatError
from edge_moe.jobs.generation import fit_generation, generation_figures, parse_calls
from edge_moe.profiles import ExpertProfile, Figure, Profiles

QUANTILES = {"p95_ms": 95.0, "p50_ms": 50.0, "mean_ms": None}  # the generation latency margin


@dataclass(frozen=True)
class Placement:
    """Where an expert will run: its node and the node's device class."""

    node: str
    device_class: DeviceClass


def build_profiles(latency: Mapping[str, Any], placements: Mapping[str, Placement], host: DeviceClass,
                   *, aggregation_ms: float = 2.0, statistic: str = "p95_ms",
                   latency_file: str = "<latency>") -> Profiles:
    """Profiles for every expert of a latency document (see :func:`edge_moe.jobs.calibrate.finish`).

    Args:
        latency: the decoded ``<table>.latency.json``.
        placements: expert name -> placement; every expert of ``latency`` needs one.
        host: the device class the latencies were measured on.
        statistic: which latency figure plans use (``p95_ms`` or ``p50_ms``).

    Raises:
        ConfigError: an expert without a placement, a placement for an unknown expert, or
            a projection with no throughput factor for the target class.
    """
    if statistic not in ("p95_ms", "p50_ms", "mean_ms"):
        raise ConfigError(f"statistic={statistic!r} must be p95_ms, p50_ms or mean_ms")
    experts = latency["experts"]
    missing = [e for e in experts if e not in placements]
    if missing:
        raise ConfigError(f"{latency_file}: experts {missing} have no device class / node; "
                          f"place them with --device-class EXPERT=CLASS or a fleet config")
    unknown = [e for e in placements if e not in experts]
    if unknown:
        raise ConfigError(f"experts {unknown} are not in {latency_file} (it has {list(experts)})")
    cats: list[str] | None = None
    out = []
    scoring_only: list[str] = []
    for name, doc in experts.items():
        pl = placements[name]
        dc = pl.device_class
        per = doc["categories"]
        if cats is None:
            cats = list(per)
        elif sorted(per) != sorted(cats):
            raise DataFormatError(f"{latency_file}: expert {name} has categories {sorted(per)}, "
                                  f"others have {sorted(cats)}")
        # calibrate --fleet timed each expert on its own node: measured on its own class
        on = latency.get("measured_on", {}).get(name, {})
        same = dc.name == on.get("device_class", host.name)
        if not same and on:
            raise ConfigError(f"{latency_file}: expert {name} was timed on node {on.get('node')} "
                              f"({on.get('device_class')}), but is placed on {pl.node} ({dc.name}): "
                              "calibrate --fleet again on the fleet that will serve it")
        if not same and (dc.throughput_factor == host.throughput_factor or not dc.throughput_source):
            raise ConfigError(
                f"device class {dc.name!r} has no cited throughput_factor relative to {host.name!r} "
                "(set throughput_factor and throughput_source in the device-class YAML) so latency "
                "measured on this machine cannot be projected to it")
        speed = 1.0 if same else dc.throughput_factor / host.throughput_factor
        lat_src, en_src = ("measured", "modelled") if same else ("projected", "projected")
        lat = {c: Figure(round(per[c][statistic] / speed, 3), lat_src) for c in cats}
        en = {c: Figure(round(dc.power_busy_w * per[c]["mean_ms"] / speed / 1e3, 6), en_src) for c in cats}
        gen = {}
        if doc.get("generation"):
            calls = parse_calls(doc["generation"].get("calls"), f"{latency_file}: experts.{name}.generation.calls")
            fit = fit_generation(calls, QUANTILES[statistic])
            floor = {c: per[c][statistic] / per[c]["mean_ms"] for c in cats if per[c]["mean_ms"] > 0}
            gen = {c: f for c, f in generation_figures(fit, dc.power_busy_w, speed=speed, projected=not same,
                                                       min_margin=floor).items() if c in cats}
        if any(c not in gen for c in cats):
            scoring_only.append(name)
        out.append(ExpertProfile(name, pl.node, lat, en, gen))
    classes = sorted({p.device_class.name for p in placements.values()})
    if latency.get("measured_on"):
        host = DeviceClass("each expert's own node", 0.0, 0.0, "calibrate --fleet")
    q = QUANTILES[statistic]
    margin = "no latency margin" if q is None else (f"latency x the p{q:g} of measured/fitted ms, at least the "
                                                     f"category's scoring p{q:g}/mean")
    note = (f"latency: {statistic[:-3]} of calibrate's measured per-sample ms on {host.name} "
            f"({latency.get('n_samples')} samples, {latency.get('what', '')}); energy: device-class busy W "
            f"x mean busy time (modelled); classes {classes}; a class other than {host.name} is projected by "
            "its throughput_factor (see configs/device_classes.yaml); generation: prefill + per-token ms fitted "
            f"to timed generate calls (least squares; {margin}), J = busy W x fitted time")
    if scoring_only:
        note += (f"; SCORING-ONLY: experts {scoring_only} lack a generation model for some or all categories "
                 f"({latency_file} has no timed generate calls there; rerun `edge-moe calibrate` to time them)")
    return Profiles(tuple(out), tuple(cats or ()), aggregation_ms=aggregation_ms, note=note)


def placements_from_specs(experts: list[str], specs: list[str], classes: Mapping[str, DeviceClass]
                          ) -> dict[str, Placement]:
    """``--device-class CLASS`` (every expert) or ``EXPERT=CLASS`` repeated; each expert is
    its own node named after it."""

    def cls(name: str, what: str) -> DeviceClass:
        if name not in classes:
            raise ConfigError(f"{what}: unknown device class {name!r} (known: {sorted(classes)})")
        return classes[name]

    if len(specs) == 1 and "=" not in specs[0]:
        dc = cls(specs[0], f"--device-class {specs[0]}")
        return {e: Placement(e, dc) for e in experts}
    out: dict[str, Placement] = {}
    for s in specs:
        e, sep, c = s.partition("=")
        if not sep:
            raise ConfigError(f"--device-class {s!r}: with several values each must be EXPERT=CLASS")
        if e not in experts:
            raise ConfigError(f"--device-class {s!r}: unknown expert {e!r} (known: {experts})")
        out[e] = Placement(e, cls(c, f"--device-class {s}"))
    return out
