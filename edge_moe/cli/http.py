"""``edge-moe http``: the OpenAI-compatible HTTP front against a running coordinator."""

from __future__ import annotations

from typing import Annotated

import typer

from edge_moe.cli.common import app


@app.command()
def http(
    endpoint: Annotated[str, typer.Option(help="the coordinator's frontend (edge-moe status shows it)")],
    listen: Annotated[str, typer.Option(help="host:port to serve on (port 0 picks a free one)")] = "127.0.0.1:8000",
    config: Annotated[str | None, typer.Option(help="fleet YAML: its experts become model ids (pinning)")] = None,
    api_keys: Annotated[str | None, typer.Option(help="file of API keys, one per line (Bearer auth)")] = None,
    insecure: Annotated[bool, typer.Option(help="allow a non-loopback address without API keys and TLS")] = False,
    ssl_certfile: Annotated[str | None, typer.Option(help="TLS certificate (PEM): serve https")] = None,
    ssl_keyfile: Annotated[str | None, typer.Option(help="TLS private key (PEM)")] = None,
) -> None:
    """Serve /v1/chat/completions, /v1/completions, /v1/models, /healthz, /readyz and /metrics
    for any OpenAI client; every request becomes one QUERY to the coordinator."""
    from gating.http import main

    argv = ["--endpoint", endpoint, "--listen", listen]
    argv += ["--config", config] if config else []
    argv += ["--api-keys", api_keys] if api_keys else []
    argv += ["--insecure"] if insecure else []
    argv += ["--ssl-certfile", ssl_certfile] if ssl_certfile else []
    argv += ["--ssl-keyfile", ssl_keyfile] if ssl_keyfile else []
    raise typer.Exit(main(argv))
