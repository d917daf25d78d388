"""``edge-moe http``: the OpenAI-compatible HTTP front against a running coordinator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge_moe.cli.common import app, check_endpoint, deprecated, handles_errors


def _str(p: Path | None) -> str | None:
    return None if p is None else str(p)


@app.command()
@handles_errors
def http(
    endpoint: Annotated[str, typer.Option(callback=check_endpoint, help="the coordinator's frontend (`edge-moe status` shows it)")],
    listen: Annotated[str, typer.Option(metavar="HOST:PORT", help="where to serve (port 0 picks a free one)")] = "127.0.0.1:8000",
    config: Annotated[Path | None, typer.Option(help="fleet YAML: its experts become model ids (pinning)")] = None,
    api_keys: Annotated[Path | None, typer.Option(help="file of API keys, one per line (Bearer auth)")] = None,
    insecure: Annotated[bool, typer.Option(help="allow a non-loopback address without API keys and TLS")] = False,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM): serve https")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
    timeout_s: Annotated[float, typer.Option(help="give up on the coordinator after this many seconds")] = 60.0,
    curve_keys: Annotated[Path | None, typer.Option(help="keys folder from `edge-moe keys`, for a coordinator with coordinator.curve: true")] = None,
    key_name: Annotated[str, typer.Option(help="this process's key pair in --curve-keys (<name>.key_secret)")] = "http",
    old_curve_name: Annotated[str | None, typer.Option("--curve-name", hidden=True, callback=deprecated("http --curve-name", "--key-name"))] = None,
) -> None:
    """Serve the OpenAI-compatible HTTP front of a running coordinator. Every request to /v1/chat/completions or /v1/completions becomes one QUERY; /v1/models, /healthz, /readyz and /metrics are served too. Prints `http front <url> -> <endpoint>` once listening. Needs the package's http extra (starlette, uvicorn).

    Example: edge-moe http --endpoint tcp://10.0.0.1:5555 --listen 0.0.0.0:8000 --api-keys keys.txt --ssl-certfile cert.pem --ssl-keyfile key.pem --curve-keys keys/
    """
    from edge_moe.security import load_client_keys
    from gating.http import serve_http

    curve = load_client_keys(curve_keys, old_curve_name or key_name) if curve_keys else None
    serve_http(endpoint, listen, config=_str(config), api_keys=_str(api_keys), insecure=insecure,
               ssl_certfile=_str(ssl_certfile), ssl_keyfile=_str(ssl_keyfile), timeout_s=timeout_s, curve=curve)
