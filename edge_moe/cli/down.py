"""``edge-moe down``: remove a deployed fleet, and the Ray head only if deploy started it."""

from __future__ import annotations

from typing import Annotated

import typer

from edge_moe.cli.common import (
    FLEET_NAME_HELP,
    JSON_HELP,
    app,
    console,
    deprecated,
    handles_errors,
    print_json,
)


@app.command()
@handles_errors
def down(
    fleet: Annotated[str | None, typer.Option(metavar="NAME", help=FLEET_NAME_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP + ": {fleet, actors_killed, head_stopped, "
                                          "survivors}")] = False,
    old_name: Annotated[str | None, typer.Option("--name", hidden=True, callback=deprecated("down --name", "--fleet"))] = None,
) -> None:
    """Remove a deployed fleet. Kills its node actors and coordinator, and stops its Ray head only if `edge-moe deploy` started it (by recorded PIDs).

    Example: edge-moe down --fleet demo
    """
    from edge_moe import fleet as fleet_mod

    out = fleet_mod.down(old_name if old_name is not None else fleet)
    if as_json:
        print_json(out)
        return
    console.print(f"fleet '{out['fleet']}' down: killed {', '.join(out['actors_killed']) or 'no actors'}"
                  + ("; stopped the Ray head it started" if out["head_stopped"] else "; left the cluster running"),
                  highlight=False)
