"""``edge-moe keys``: CURVE key pairs for the coordinator and its clients and nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge_moe.cli.common import JSON_HELP, app, console, err_console, handles_errors, print_json


@app.command()
@handles_errors
def keys(
    directory: Annotated[Path, typer.Argument(help="folder for the CURVE key pairs (made 0700)")],
    client: Annotated[list[str] | None, typer.Option(
        "--client", metavar="NAME", help="a client or node key name; repeat for several \\[default: client]",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="replace existing key pairs (a new server pair locks out every client "
                        "and node holding the old server.key)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP + ": what was created, kept, replaced, "
                                                                     "locked out")] = False,
) -> None:
    """Make the CURVE key pairs: a server pair in DIRECTORY and one authorised pair per client. Safe to run again: existing pairs are kept unless --force, so adding a client never locks out the others. Secret keys are written 0600.

    Example: edge-moe keys keys/ --client cpu-a --client cpu-b --client http
    """
    from edge_moe.security import generate_keys

    out = generate_keys(directory, tuple(client or ["client"]), force=force)
    if as_json:
        print_json({"directory": str(out.directory), "created": list(out.created), "kept": list(out.kept),
                    "replaced": list(out.replaced), "locked_out": list(out.locked_out)})
        return
    for what, names in (("created", out.created), ("kept", out.kept), ("replaced", out.replaced)):
        if names:
            console.print(f"{what}: {', '.join(names)}", highlight=False)
    if out.locked_out:
        err_console.print(f"[yellow]locked out until they get the new keys[/]: {', '.join(out.locked_out)}",
                          highlight=False)
    console.print(f"CURVE keys in {out.directory} (keep *.key_secret private)", highlight=False)
