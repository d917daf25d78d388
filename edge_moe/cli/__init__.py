"""The ``edge-moe`` command line (APEX): one Typer app, one thin module per command.

Each module registers its command on :data:`edge_moe.cli.common.app`; importing this
package imports them all (``--help`` lists them by name). The exit codes (0 ok, 1 usage or
config error, 2 a refusal, 3 unreachable) are tabled in :mod:`edge_moe.cli.common`; its
:class:`~edge_moe.cli.common.EdgeMoEGroup` applies them to every run, Click's usage errors
(which Click exits 2 with) included.
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


def main(argv: list[str] | None = None) -> int:
    """Run ``edge-moe`` (the console script) and exit with a code of the table in
    :mod:`edge_moe.cli.common`; logging is set up by the app's callback (``setup``).

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).
    """
    import typer.main

    code: int = typer.main.get_command(app).main(args=argv, standalone_mode=False)
    raise SystemExit(code)
