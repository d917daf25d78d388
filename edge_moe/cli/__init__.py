"""The ``edge-moe`` command line (APEX): one Typer app, one thin module per command."""

from edge_moe.cli.app import app, main

__all__ = ["app", "main"]
