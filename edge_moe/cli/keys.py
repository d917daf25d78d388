"""``edge-moe keys``: CURVE key pairs for the coordinator and its clients and nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge_moe.cli.common import app, console, handles_errors


@app.command()
@handles_errors
def keys(
    directory: Annotated[Path, typer.Argument(help="folder for the CURVE key pairs")],
    client: Annotated[list[str] | None, typer.Option("--client", help="client/node key names (repeat)")] = None,
) -> None:
    """Generate CURVE keys: a server pair and one pair per client, with the allow-list."""
    from edge_moe.security import generate_keys

    out = generate_keys(directory, tuple(client or ["client"]))
    console.print(f"wrote CURVE keys to {out} (keep *.key_secret private)")
