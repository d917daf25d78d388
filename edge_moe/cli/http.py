"""``edge-moe http``: the OpenAI-compatible HTTP front against a running coordinator."""

from __future__ import annotations

from typing import Annotated

import typer

from edge_moe.cli.common import app, handles_errors


@app.command()
@handles_errors
def http(
    endpoint: Annotated[str, typer.Option(help="the coordinator's frontend (edge-moe status shows it)")],
    listen: Annotated[str, typer.Option(help="host:port to serve on (port 0 picks a free one)")] = "127.0.0.1:8000",
    config: Annotated[str | None, typer.Option(help="fleet YAML: its experts become model ids (pinning)")] = None,
    api_keys: Annotated[str | None, typer.Option(help="file of API keys, one per line (Bearer auth)")] = None,
    insecure: Annotated[bool, typer.Option(help="allow a non-loopback address without API keys and TLS")] = False,
    ssl_certfile: Annotated[str | None, typer.Option(help="TLS certificate (PEM): serve https")] = None,
    ssl_keyfile: Annotated[str | None, typer.Option(help="TLS private key (PEM)")] = None,
    timeout_s: Annotated[float, typer.Option(help="give up on the coordinator after this many seconds")] = 60.0,
    curve_keys: Annotated[str | None, typer.Option(help="keys folder from `edge-moe keys`, for a coordinator with coordinator.curve: true")] = None,
    curve_name: Annotated[str, typer.Option(help="this front's key pair in that folder (<name>.key_secret)")] = "http",
) -> None:
    """Serve /v1/chat/completions, /v1/completions, /v1/models, /healthz, /readyz and /metrics
    for any OpenAI client; every request becomes one QUERY to the coordinator. Prints
    ``http front <url> -> <endpoint>`` once listening.

    Example: edge-moe http --endpoint tcp://10.0.0.1:5555 --listen 0.0.0.0:8000 --api-keys keys.txt --ssl-certfile cert.pem --ssl-keyfile key.pem --curve-keys keys/
    """
    from edge_moe.security import load_client_keys
    from gating.http import serve_http

    curve = load_client_keys(curve_keys, curve_name) if curve_keys else None
    serve_http(endpoint, listen, config=config, api_keys=api_keys, insecure=insecure,
               ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, timeout_s=timeout_s, curve=curve)
