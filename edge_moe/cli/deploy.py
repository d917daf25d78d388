"""``edge-moe deploy``: place a fleet's nodes and its coordinator through Ray."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from edge_moe.cli.common import JSON_HELP, app, console, err_console, handles_errors, print_json
from edge_moe.errors import ConfigError
from edge_moe.paths import DEMO_INPUT_DIRS, demo_inputs_dir

if TYPE_CHECKING:
    from edge_moe.fleet.ship import ShipEvent


ShipMode = Literal["auto", "ray", "path"]


@app.command()
@handles_errors
def deploy(
    config: Annotated[Path, typer.Argument(help="fleet YAML")],
    address: Annotated[str | None, typer.Option(help="join this Ray cluster (host:port, ray://host:port or 'auto'); default: start a local head on loopback")] = None,
    gate: Annotated[Path | None, typer.Option(help="gate.onnx (default for the demo fleets: the demo's, in $EDGE_MOE_CACHE/demo/ or demo/real/)")] = None,
    calibration: Annotated[Path | None, typer.Option(help="calibration table .npz (default: the demo's)")] = None,
    profiles: Annotated[Path | None, typer.Option(help="profiles JSON (default: the demo's)")] = None,
    encoder: Annotated[Path | None, typer.Option(help="MiniLM encoder artifact folder (default: the cached export)")] = None,
    artifacts: Annotated[Path | None, typer.Option(help="root for relative artifact paths (default $EDGE_MOE_CACHE/artifacts)")] = None,
    toy: Annotated[bool, typer.Option("--toy", help="serve trivial ONNX experts (smoke runs, tests)")] = False,
    toy_encoder: Annotated[int | None, typer.Option(metavar="DIM", help="a toy encoder of this width instead of MiniLM (tests, benchmarks)")] = None,
    timeout_s: Annotated[float, typer.Option(help="how long to wait for every node's READY")] = 120.0,
    ship: Annotated[ShipMode, typer.Option(help="artifacts: 'ray' ships them to each node's host (sha256-addressed, "
                                                "verified, cached there), 'path' loads the same path on every host, "
                                                "'auto': ray with --address, else path")] = "auto",
    verify_cached: Annotated[bool, typer.Option(help="re-hash artifacts a host already has (default: sizes)")] = False,
    curve_keys: Annotated[Path | None, typer.Option(help="CURVE keys folder from `edge-moe keys` "
                                                         "(needed when coordinator.curve is on)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP + ": the deployment record")] = False,
) -> None:
    """Deploy a fleet through Ray and print the endpoint to query. Each node becomes one detached actor, beside the coordinator; the fleet is ready when every node has sent READY. Exits 3 when the Ray cluster at --address does not answer.

    Example: edge-moe deploy configs/fleet.demo.yaml --address 10.0.0.1:6379 --curve-keys keys/
    """
    from edge_moe import fleet as fleet_mod
    from edge_moe.config import load_fleet

    fl = load_fleet(config)
    defaults = demo_inputs_dir(fl.name)
    inputs = {"gate": gate or defaults / "gate.onnx", "calibration": calibration or defaults / "calibration.npz",
              "profiles": profiles or defaults / "profiles.json"}
    for flag, path in inputs.items():
        if not Path(path).is_file():
            hint = ("run `make demo` once" if fl.name in DEMO_INPUT_DIRS
                    else "make them with `edge-moe plan`")
            raise ConfigError(f"--{flag} {path}: file not found ({hint}, or pass --{flag})")
    err_console.print(f"deploying fleet '{fl.name}' ({len(fl.nodes)} nodes) "
                      + (f"on {address}" if address else "on a local Ray head (loopback)"), highlight=False)
    dep = fleet_mod.deploy(fl, address, gate=inputs["gate"], calibration=inputs["calibration"],
                           profiles=inputs["profiles"], encoder=str(encoder) if encoder else None,
                           toy_encoder_dim=toy_encoder, toy=toy,
                           artifacts=str(artifacts) if artifacts else None, ready_timeout_s=timeout_s,
                           ship=ship, verify_cached=verify_cached,
                           curve_keys=str(curve_keys) if curve_keys else None, progress=_progress())
    fleet_mod.disconnect()
    if as_json:
        print_json(dataclasses.asdict(dep))
        return
    for rec in dep.shipped:
        console.print(f"  {rec['expert']} on {rec['node']}: "
                      + ("this host: loads the source path" if rec.get("local") else
                         f"already there ({rec['digest'][:12]}, checked in {rec['seconds']:.1f} s)" if rec["skipped"]
                         else f"shipped {rec['bytes'] / 1e6:.0f} MB in {rec['seconds']:.1f} s "
                              f"({rec['bytes'] / 1e6 / max(rec['seconds'], 1e-3):.0f} MB/s)"), highlight=False)
    console.print(f"fleet '{dep.name}' ready in {dep.deploy_s:.1f} s: nodes {', '.join(dep.nodes)}; "
                  f"query it at {dep.frontend} (edge-moe query --endpoint {dep.frontend} ...)", highlight=False)


def _progress() -> Callable[[ShipEvent], None]:
    """Print each artifact's start, every quarter of its bytes, and its end (on stderr: progress)."""
    shown: dict[tuple[str, str], int] = {}

    def show(ev: ShipEvent) -> None:
        key = (ev.node, ev.expert)
        quarter = 4 * ev.done_bytes // max(ev.total_bytes, 1)
        if ev.state == "sending" and shown.get(key, -1) >= quarter:
            return
        shown[key] = quarter
        what = {"skipped": "already there", "done": "verified"}.get(ev.state, f"{100 * quarter // 4}%")
        err_console.print(f"  ship {ev.expert} → {ev.node} ({ev.digest[:12]}, {ev.total_bytes / 1e6:.0f} MB): "
                          f"{what} \\[{ev.seconds:.1f} s]", highlight=False)

    return show
