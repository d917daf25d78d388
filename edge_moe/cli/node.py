"""``edge-moe node``: serve one node of the fleet (a ZeroMQ worker that connects out to the
coordinator's backend; :mod:`nodes.loop`)."""

from __future__ import annotations

import logging
import signal
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from edge_moe.cli.common import app, check_endpoint, deprecated, handles_errors


class MeterChoice(StrEnum):
    auto = "auto"
    modelled = "modelled"


@app.command()
@handles_errors
def node(
    config: Annotated[Path, typer.Option(help="fleet YAML")],
    node: Annotated[str, typer.Option(help="this node's name in the fleet")],
    backend: Annotated[str | None, typer.Option(callback=check_endpoint, help="the coordinator's backend to connect to (default: coordinator.backend of the config)")] = None,
    artifacts: Annotated[Path | None, typer.Option(
        help="root for relative artifact paths (default $EDGE_MOE_CACHE/artifacts)")] = None,
    toy: Annotated[bool, typer.Option("--toy", help="serve trivial ONNX experts (smoke runs, tests)")] = False,
    toy_delay_ms: Annotated[float, typer.Option(help="extra ms each toy expert sleeps per request")] = 0.0,
    meter: Annotated[MeterChoice, typer.Option(
        help="energy meter: auto (measured where counters exist) or modelled")] = MeterChoice.auto,
    threads: Annotated[int | None, typer.Option(help="onnxruntime intra-op threads (default: the node's threads in the config)", min=1)] = None,
    curve_keys: Annotated[Path | None, typer.Option(
        help="keys folder from `edge-moe keys` (server.key and <--key-name>.key_secret); "
        "needed when coordinator.curve is true")] = None,
    key_name: Annotated[str, typer.Option(help="this process's key pair in --curve-keys (<name>.key_secret)")] = "client",
    old_endpoint: Annotated[str | None, typer.Option("--endpoint", hidden=True, callback=deprecated("node --endpoint", "--backend"))] = None,
    old_verbose: Annotated[bool, typer.Option("--verbose", "-v", hidden=True, callback=deprecated("node --verbose", "edge-moe -v node ..."))] = False,
) -> None:
    """Serve one node's experts until SIGTERM or SIGINT. The node connects out to the coordinator's backend, sends READY and heartbeats, and answers TASKs; it prints its experts and the endpoint once connected.

    Example: edge-moe -v node --config configs/fleet.local.yaml --node cpu-a
    """
    from nodes.build import build_server

    if old_verbose:
        logging.getLogger().setLevel(logging.INFO)
    server = build_server(config, node, endpoint=backend or old_endpoint, artifacts_dir=artifacts, toy=toy,
                          toy_delay_ms=toy_delay_ms, meter=meter.value, threads=threads,
                          curve_keys=curve_keys, key_name=key_name)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    signal.signal(signal.SIGINT, lambda *_: server.stop())
    print(f"node {node} serving {list(server.experts)} -> {server.endpoint}", flush=True)
    try:
        server.run()
    finally:
        server.close()
