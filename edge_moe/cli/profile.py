"""``edge-moe profile``: latency and energy profiles from a calibration run's measurements."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from edge_moe.cli.common import JSON_HELP, app, console, deprecated, handles_errors, print_json
from edge_moe.errors import ConfigError
from edge_moe.paths import CONFIGS

Statistic = Literal["p95_ms", "p50_ms", "mean_ms"]


@app.command()
@handles_errors
def profile(
    latency: Annotated[Path, typer.Argument(help="<table>.latency.json written by `edge-moe calibrate`")],
    out: Annotated[Path, typer.Option(help="the profiles JSON to write")],
    device_class: Annotated[list[str] | None, typer.Option(
        "--device-class", help="CLASS for every expert, or EXPERT=CLASS repeated (each expert its own node); "
        "a class other than --host-class is PROJECTED by its throughput_factor")] = None,
    config: Annotated[Path | None, typer.Option(help="fleet YAML: take each expert's node and device class from it")] = None,
    device_classes: Annotated[Path, typer.Option(help="device-class YAML (power and throughput, with sources)")] = CONFIGS / "device_classes.yaml",
    host_class: Annotated[str, typer.Option(help="device class the latencies were measured on")] = "cpu",
    statistic: Annotated[Statistic, typer.Option(help="the latency figure plans use")] = "p95_ms",
    aggregation_ms: Annotated[float, typer.Option(help="coordinator cost added to every plan", min=0)] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP + ": {path, profiles, generation_missing}")] = False,
    old_fleet: Annotated[Path | None, typer.Option("--fleet", hidden=True, callback=deprecated("profile --fleet", "--config"))] = None,
) -> None:
    """Build the profiles JSON the planner needs from calibrate's measurements. Latency is measured and energy modelled (busy W x busy time) on the host class, or projected to another device class by its cited throughput factor; the generation cost model (prefill + per-token ms and J) is fitted to the timed generations. Every figure records whether it is measured, modelled or projected.

    Example: edge-moe profile cal/mmlu.latency.json --config configs/fleet.example.yaml --out cal/profiles.orin.json
    """
    from edge_moe.config import load_device_classes, load_fleet
    from edge_moe.jobs.calibrate import load_latency
    from edge_moe.jobs.profile import Placement, build_profiles, placements_from_specs
    from edge_moe.profiles import save_profiles

    config = old_fleet if old_fleet is not None else config
    doc = load_latency(latency)
    experts = list(doc["experts"])
    if config is not None:
        if device_class:
            raise ConfigError("give --config or --device-class, not both")
        fl = load_fleet(config)
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
    missing = prof.generation_missing(prof.names)
    if as_json:
        print_json({"path": str(out), "profiles": json.loads(out.read_text()), "generation_missing": missing})
        return
    t = Table(title=f"profiles ({', '.join(f'{k}: {v}' for k, v in prof.sources().items())})")
    for col in ("expert", "node", "worst latency ms", "worst energy J", "sources",
                "generation: worst ms + ms/token, J + J/token"):
        t.add_column(col, overflow="fold")
    for e in prof.experts:
        lat_f = max(e.latency_ms.values(), key=lambda f: f.value)
        en_f = max(e.energy_j.values(), key=lambda f: f.value)
        gen = "none (scoring-only)"
        if e.generation:
            g = max(e.generation.values(), key=lambda g: g.prefill_ms.value + 16 * g.per_token_ms.value)
            gen = (f"{g.prefill_ms.value:.1f} + {g.per_token_ms.value:.2f}/token, "
                   f"{g.prefill_j.value:.3g} + {g.j_per_token.value:.3g}/token")
        t.add_row(e.name, e.node, f"{lat_f.value:.1f}", f"{en_f.value:.4g}", f"{lat_f.source} / {en_f.source}", gen)
    console.print(t)
    if missing:
        console.print(f"note: experts {missing} have no generation cost model (the latency file has no timed "
                      "generate calls for them; rerun `edge-moe calibrate`): their profiles are scoring-only",
                      highlight=False)
    console.print(f"wrote {out}", highlight=False)
