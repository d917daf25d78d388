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
) -> None:
    """Serve /v1/chat/completions, /v1/completions, /v1/models, /healthz, /readyz and /metrics
    for any OpenAI client; every request becomes one QUERY to the coordinator. Prints
    ``http front <url> -> <endpoint>`` once listening."""
    from gating.http import serve_http

    serve_http(endpoint, listen, config=config, api_keys=api_keys, insecure=insecure,
               ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, timeout_s=timeout_s)
