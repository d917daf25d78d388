"""What every ``edge-moe`` command shares: the Typer app with its ``-v`` callback, the
consoles, the error mapping, and the budget parsers.

Each command module registers itself on :data:`app` with ``@app.command()``;
:mod:`edge_moe.cli` imports them all. The app's callback (:func:`setup`) configures logging
once, before any command runs: ``edge-moe -v plan ...``. Any
:class:`~edge_moe.errors.EdgeMoEError` becomes exit code 1 with ``ClassName: message`` on
stderr; an infeasible budget is an answer (exit 0), not an error. Progress bars come from
:func:`edge_moe.jobs.progress_bar.progress_bar`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from edge_moe.errors import ConfigError, EdgeMoEError
from edge_moe.jobs.logs import configure_logging

console = Console(soft_wrap=True)  # never break paths and messages across lines
err_console = Console(stderr=True, soft_wrap=True)

app = typer.Typer(
    name="edge-moe",
    help="Collaborative mixture-of-edge-experts (MoE²) inference: plan budgets offline, "
    "export experts, deploy a fleet, and query the gating coordinator.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def _print_version(value: bool) -> None:
    if value:
        from edge_moe import __version__

        console.print(f"edge-moe {__version__}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def setup(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True,
                                         help="log INFO (-v) or DEBUG (-vv, third-party loggers too) "
                                              "to stderr; WARNING by default", show_default=False)] = 0,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """Configure logging once for whichever command runs (see edge_moe.jobs.logs)."""
    configure_logging(verbose)


def handles_errors(fn: F) -> F:
    """Map EdgeMoEError to exit code 1 with ``ClassName: message`` on stderr."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgeMoEError as exc:
            err_console.print(f"[bold red]{type(exc).__name__}[/]: {exc}", highlight=False)
            raise typer.Exit(1) from exc

    return wrapper  # type: ignore[return-value]


def parse_latency(values: list[str] | None) -> float | dict[str, float]:
    """``--latency-ms 500`` (all categories) or ``--latency-ms stem=500`` repeated."""
    if not values:
        return math.inf
    if len(values) == 1 and "=" not in values[0]:
        return budget_number("--latency-ms", values[0])
    out: dict[str, float] = {}
    for v in values:
        if "=" not in v:
            raise ConfigError(f"--latency-ms {v!r}: with several values, each must be CATEGORY=MS")
        cat, _, ms = v.partition("=")
        if cat.strip() in out:
            raise ConfigError(f"--latency-ms: category {cat.strip()!r} given twice")
        out[cat.strip()] = budget_number(f"--latency-ms {cat.strip()}", ms)
    return out


def budget_number(name: str, raw: str | float) -> float:
    try:
        v = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a number") from exc
    if math.isnan(v) or v < 0:
        raise ConfigError(f"{name}={raw!r} must be a number >= 0 (use 'inf' for no budget)")
    return v

