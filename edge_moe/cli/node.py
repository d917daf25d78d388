"""``edge-moe node``: serve one node of the fleet (a ZeroMQ worker that connects out to the
coordinator's backend; :mod:`nodes.loop`)."""

from __future__ import annotations

import logging
import signal
from enum import StrEnum
from typing import Annotated

import typer

from edge_moe.cli.common import app, handles_errors


class MeterChoice(StrEnum):
    auto = "auto"
    modelled = "modelled"


@app.command()
@handles_errors
def node(
    config: Annotated[str, typer.Option(help="fleet YAML")],
    node: Annotated[str, typer.Option(help="this node's name in the fleet")],
    endpoint: Annotated[str | None, typer.Option(help="coordinator backend (default: from the config)")] = None,
    artifacts: Annotated[str | None, typer.Option(
        help="root for relative artifact paths (default $EDGE_MOE_CACHE/artifacts)")] = None,
    toy: Annotated[bool, typer.Option(help="serve trivial ONNX experts (tests, benchmark)")] = False,
    toy_delay_ms: Annotated[float, typer.Option(help="extra ms each toy expert sleeps per request")] = 0.0,
    meter: Annotated[MeterChoice, typer.Option(
        help="energy meter: auto (measured where counters exist) or modelled")] = MeterChoice.auto,
    threads: Annotated[int | None, typer.Option(help="onnxruntime intra-op threads")] = None,
    curve_keys: Annotated[str | None, typer.Option(
        help="keys folder from `edge-moe keys` (server.key and <--key-name>.key_secret); "
        "needed when coordinator.curve is true")] = None,
    key_name: Annotated[str, typer.Option(help="this node's key pair name in --curve-keys")] = "client",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log at INFO")] = False,
) -> None:
    """Serve this node's experts until SIGTERM or SIGINT: connect out to the coordinator,
    send READY and heartbeats, answer TASKs."""
    from nodes.build import build_server

    if verbose:
        logging.getLogger().setLevel(logging.INFO)
    server = build_server(config, node, endpoint=endpoint, artifacts_dir=artifacts, toy=toy,
                          toy_delay_ms=toy_delay_ms, meter=meter.value, threads=threads,
                          curve_keys=curve_keys, key_name=key_name)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    signal.signal(signal.SIGINT, lambda *_: server.stop())
    print(f"node {node} serving {list(server.experts)} -> {server.endpoint}", flush=True)
    try:
        server.run()
    finally:
        server.close()
