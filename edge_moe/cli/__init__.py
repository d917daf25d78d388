"""The ``edge-moe`` command line (APEX): one Typer app, one thin module per command.

Each module registers its command on :data:`edge_moe.cli.common.app`; importing this
package imports them all (``--help`` lists them by name).
"""

from __future__ import annotations

from edge_moe.cli import (  # noqa: F401  (each import registers a command)
    assets,
    calibrate,
    check_config,
    coordinator,
    demo,
    deploy,
    down,
    export,
    http,
    keys,
    node,
    plan,
    profile,
    query,
    status,
)
from edge_moe.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    app()  # logging is set up by the app's callback (edge_moe.cli.common.setup)
