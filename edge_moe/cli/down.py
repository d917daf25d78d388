"""``edge-moe down``: remove a deployed fleet, and the Ray head only if deploy started it."""

from __future__ import annotations

from typing import Annotated

import typer

from edge_moe.cli.common import app, console, handles_errors


@app.command()
@handles_errors
def down(
    name: Annotated[str | None, typer.Option(help="fleet name (default: the only one deployed)")] = None,
) -> None:
    """Remove a deployed fleet; stop its Ray head only if `deploy` started it (by recorded PIDs)."""
    from edge_moe import fleet as fleet_mod

    out = fleet_mod.down(name)
    console.print(f"fleet '{out['fleet']}' down: killed {', '.join(out['actors_killed']) or 'no actors'}"
                  + ("; stopped the Ray head it started" if out["head_stopped"] else "; left the cluster running"),
                  highlight=False)
