"""``edge-moe coordinator``: run the gating coordinator in the foreground (no Ray)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

from edge_moe.cli.common import app, check_endpoint, handles_errors


@app.command()
@handles_errors
def coordinator(
    config: Annotated[Path, typer.Option(help="fleet YAML: its coordinator section, budget and placement")],
    gate: Annotated[Path, typer.Option(help="gate.onnx (from `edge-moe plan`)")],
    calibration: Annotated[Path, typer.Option(help="calibration table .npz (F(S) for the selector)")],
    profiles: Annotated[Path, typer.Option(help="profiles JSON (latency and energy per expert)")],
    encoder: Annotated[Path | None, typer.Option(
        help="MiniLM encoder artifact folder (default: the cached export)",
        show_default=False)] = None,
    toy_encoder: Annotated[int | None, typer.Option(
        metavar="DIM", help="a toy encoder of this width instead of MiniLM (tests, benchmarks)")] = None,
    frontend: Annotated[str | None, typer.Option(callback=check_endpoint, help="bind clients here instead of coordinator.frontend")] = None,
    backend: Annotated[str | None, typer.Option(callback=check_endpoint, help="bind nodes here instead of coordinator.backend")] = None,
    tau: Annotated[float | None, typer.Option(help="adaptive k by gate mass instead of top_k")] = None,
    insecure: Annotated[bool, typer.Option(help="allow non-loopback binds without CURVE")] = False,
    metrics: Annotated[str | None, typer.Option(
        metavar="HOST:PORT", help="also serve Prometheus metrics at http://HOST:PORT/metrics "
                                  "(port 0 picks a free one; default: coordinator.metrics)")] = None,
    curve_keys: Annotated[Path | None, typer.Option(
        help="keys folder from `edge-moe keys` (server.key_secret and authorized/); "
             "needed when coordinator.curve is true")] = None,
) -> None:
    """Run the gating coordinator in the foreground (no Ray). It serves queries on the fleet's ZeroMQ frontend and dispatches them to the nodes that connect to its backend, until SIGINT or SIGTERM; it prints the bound endpoints first.

    Example: edge-moe coordinator --config fleet.yaml --gate plans/gate.onnx --calibration cal.npz --profiles profiles.json --metrics 127.0.0.1:9464
    """
    from edge_moe.config import load_fleet
    from edge_moe.security import load_server_keys
    from gating.coordinator import build_coordinator

    fleet = load_fleet(config)
    curve = load_server_keys(curve_keys) if fleet.coordinator.curve and curve_keys else None
    coord = build_coordinator(fleet, gate, calibration, profiles, encoder=encoder,
                              toy_encoder_dim=toy_encoder, frontend=frontend, backend=backend,
                              tau=tau, curve=curve, insecure=insecure)
    metrics = metrics or fleet.coordinator.metrics
    if metrics:
        try:
            print(f"coordinator metrics {coord.serve_metrics(metrics)}", flush=True)
        except BaseException:
            coord.close()
            raise
    signal.signal(signal.SIGTERM, lambda *_: coord.stop())
    signal.signal(signal.SIGINT, lambda *_: coord.stop())
    print(f"coordinator frontend {coord.frontend_endpoint} backend {coord.backend_endpoint}", flush=True)
    try:
        coord.run()
    finally:
        coord.close()
    raise typer.Exit(0)
