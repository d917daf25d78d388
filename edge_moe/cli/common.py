"""What every ``edge-moe`` command shares: the Typer app with its ``-v`` callback, the
consoles, the exit codes and the one function that maps a failure to them, ``--json``
output, deprecated option spellings, and the budget and endpoint parsers.

Each command module registers itself on :data:`app` with ``@app.command()``;
:mod:`edge_moe.cli` imports them all. The app's callback (:func:`setup`) configures logging
once, before any command runs: ``edge-moe -v plan ...``. Progress bars come from
:func:`edge_moe.jobs.progress_bar.progress_bar`.

Exit codes, the same for every command (:func:`exit_code` is the one mapping):

====  ===========================================================================
code  meaning
====  ===========================================================================
0     ok: the command did what it was asked
1     usage or config error: a bad option or value (Click's usage errors, which
      Click itself exits 2 with), a missing or malformed file, an artifact that
      does not load, an unwritable output folder, a missing optional extra (any
      :class:`~edge_moe.errors.EdgeMoEError` not listed below)
2     an answer that is a refusal: an infeasible budget (``plan``; ``query`` when
      the REPLY's plan is infeasible) or an ERROR ``refused``, ``overloaded`` or
      ``no_experts`` from the coordinator
3     unreachable: the coordinator or the Ray cluster did not answer
      (:class:`~edge_moe.errors.DeadlineError`, a
      :class:`~edge_moe.errors.FleetError` caused by a connection failure, an
      ERROR ``deadline`` or ``expert_error`` from the coordinator)
====  ===========================================================================

An expected failure prints one line ``ClassName: message`` on stderr, never a traceback;
an unexpected one (a bug) keeps its traceback.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from edge_moe.errors import ConfigError, DeadlineError, EdgeMoEError, FleetError
from edge_moe.jobs.logs import configure_logging

console = Console(soft_wrap=True)  # never break paths and messages across lines
err_console = Console(stderr=True, soft_wrap=True)

EXIT_OK = 0
EXIT_USAGE = 1  # usage or config error
EXIT_REFUSED = 2  # an answer that is a refusal (infeasible budget, refused/overloaded/no_experts)
EXIT_UNREACHABLE = 3  # the coordinator or the Ray cluster did not answer

# coordinator ERROR codes (edge_moe.wire.ErrorCode values) by exit code; any other is 1
REFUSAL_ERRORS = frozenset({"refused", "overloaded", "no_experts"})
UNREACHABLE_ERRORS = frozenset({"deadline", "expert_error"})

# the optional extras (pyproject.toml) by the top-level module a command imports from them
EXTRAS = {
    "starlette": "http", "uvicorn": "http", "httptools": "http", "uvloop": "http", "prometheus_client": "http",
    "torch": "export", "onnxscript": "export", "transformers": "export", "gguf": "export",
    "accelerate": "export", "safetensors": "export", "onnxruntime_genai": "export",
    "matplotlib": "plan", "zeus": "energy", "tensorrt": "gpu", "pynvml": "gpu",
}

EXIT_CODES_HELP = ("Exit codes: 0 ok; 1 usage or config error; 2 a refusal (an infeasible budget, or the "
                   "coordinator refused or is overloaded); 3 unreachable (the coordinator or the Ray cluster "
                   "did not answer).")


def exit_code(exc: BaseException) -> int | None:
    """The exit code of an expected failure (see the module's table), or None for a bug.

    Args:
        exc: what a command raised.

    Returns:
        1, 2 or 3; None when ``exc`` is not an expected failure (its traceback is shown).
    """
    ClickException, UsageError = _click_exception("ClickException"), _click_exception("UsageError")
    if isinstance(exc, DeadlineError):
        return EXIT_UNREACHABLE
    if isinstance(exc, FleetError):
        return EXIT_UNREACHABLE if _connection_failure(exc) else EXIT_USAGE
    if isinstance(exc, EdgeMoEError | UsageError):
        return EXIT_USAGE
    if isinstance(exc, ClickException):
        return int(getattr(exc, "exit_code", EXIT_USAGE))
    if isinstance(exc, ModuleNotFoundError):
        return EXIT_USAGE if _extra_of(exc) else None
    if isinstance(exc, OSError) and exc.filename is not None:  # a file or folder we cannot read or write
        return EXIT_USAGE
    if type(exc).__module__.startswith("zmq"):  # a ZeroMQ address that cannot be bound or connected
        return EXIT_USAGE
    return None


def describe(exc: BaseException) -> str:
    """``ClassName: message`` in one line, naming what to do where the message does not."""
    name = type(exc).__name__
    if isinstance(exc, ModuleNotFoundError):
        extra = _extra_of(exc)
        return f"{name}: {exc}: this needs the '{extra}' extra: pip install 'edge-moe[{extra}]'"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{name}: {exc.filename}: {exc.strerror or exc}: choose a path you can read or write"
    if type(exc).__module__.startswith("zmq"):
        return f"{name}: {exc}: check the address (tcp://HOST:PORT, ipc://PATH) and that its port is free"
    message = " ".join(str(exc).split()) if "\n" not in str(exc).strip() else str(exc).strip()
    if isinstance(exc, DeadlineError):
        message += " (is a coordinator running there? `edge-moe status` shows its endpoint)"
    elif exit_code(exc) == EXIT_UNREACHABLE:
        message += " (check that the Ray cluster is up and reachable from here)"
    return f"{name}: {message}"


def report(exc: BaseException) -> int:
    """Print :func:`describe` on stderr and return :func:`exit_code` (an expected failure)."""
    code = exit_code(exc)
    assert code is not None, exc
    name, _, rest = describe(exc).partition(": ")
    err_console.print(f"[bold red]{escape(name)}[/]: {escape(rest)}", highlight=False)
    return code


def _connection_failure(exc: BaseException) -> bool:
    """Whether a FleetError was caused by a connection that failed or timed out."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ConnectionError | TimeoutError) or type(cur).__name__ in ("gaierror", "GetTimeoutError"):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _extra_of(exc: ModuleNotFoundError) -> str | None:
    return EXTRAS.get((exc.name or "").split(".")[0])


def _click_exception(name: str) -> type[BaseException]:
    """Click's exception class ``name``: Typer >= 0.20 vendors Click as ``typer._click``."""
    try:
        from typer._click import exceptions
    except ImportError:  # an older Typer on Click itself
        from click import exceptions  # type: ignore[no-redef]
    cls: type[BaseException] = getattr(exceptions, name, _Never)
    return cls


class _Never(Exception):
    """Stands for an exception class this Click version lacks (never raised)."""


class EdgeMoEGroup(TyperGroup):
    """The app's group: every run ends with a code of the module's table, whether it runs as
    the ``edge-moe`` console script or under Typer's ``CliRunner`` (which calls ``main``)."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             windows_expand_args: bool = True, **extra: Any) -> Any:
        from typer import rich_utils

        Abort, ClickException = _click_exception("Abort"), _click_exception("ClickException")
        NoArgsIsHelpError = _click_exception("NoArgsIsHelpError")
        try:
            code = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                standalone_mode=False, windows_expand_args=windows_expand_args, **extra)
        except NoArgsIsHelpError:  # the help is printed already
            code = EXIT_USAGE
        except ClickException as exc:  # usage errors: Click's own message, code 1 (not Click's 2)
            _hide_deprecated_suggestions(exc)
            rich_utils.rich_format_error(exc)  # type: ignore[arg-type]
            code = exit_code(exc)
        except Abort:
            rich_utils.rich_abort_error()
            code = EXIT_USAGE
        except Exception as exc:  # what a command without @handles_errors let through
            if exit_code(exc) is None:
                raise
            code = report(exc)
        code = code if isinstance(code, int) else EXIT_OK
        if standalone_mode:
            sys.exit(code)
        return code

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        """A command, listed in ``--help`` by the first sentence of its help paragraph."""
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None and not cmd.short_help and cmd.help:
            cmd.short_help = first_sentence(cmd.help)
        return cmd


def first_sentence(text: str) -> str:
    """The first sentence of a help text (what a command list shows)."""
    para = text.strip().split("\n\n")[0]
    m = re.match(r"(.+?\.)(\s|$)", para, flags=re.S)
    return " ".join((m.group(1) if m else para).split())


def _hide_deprecated_suggestions(exc: BaseException) -> None:
    """``No such option: --ot (Possible options: --out)``: never suggest a hidden (deprecated)
    spelling; Click's suggestions include them."""
    ctx, possible = getattr(exc, "ctx", None), getattr(exc, "possibilities", None)
    if ctx is None or not possible:
        return
    hidden = {o for p in ctx.command.params if getattr(p, "hidden", False) for o in p.opts}
    exc.possibilities = [p for p in possible if p not in hidden]  # type: ignore[attr-defined]


app = typer.Typer(
    name="edge-moe",
    cls=EdgeMoEGroup,
    help="Collaborative mixture-of-edge-experts (MoE²) inference: plan budgets offline, "
    "export experts, deploy a fleet, and query the gating coordinator. " + EXIT_CODES_HELP,
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
    """Map an expected failure (:func:`exit_code`) to its exit code with one line on stderr."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if exit_code(exc) is None:
                raise
            raise typer.Exit(report(exc)) from exc

    return wrapper  # type: ignore[return-value]


# ---------------------------------------------------------------- --json


@contextlib.contextmanager
def stdout_to_stderr(on: bool = True) -> Iterator[None]:
    """With ``--json``, what the work prints (progress, tables) goes to stderr, so that stdout
    holds the JSON alone; print it with :func:`print_json` after the block."""
    if not on:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def print_json(obj: Any) -> None:
    """The result as JSON on stdout, nothing else (paths and other objects as strings)."""
    typer.echo(json.dumps(obj, indent=2, default=str))


JSON_HELP = "print the result as JSON on stdout (progress and logs go to stderr)"
FLEET_NAME_HELP = "a deployed fleet's name (default: the only one deployed)"


# ---------------------------------------------------------------- deprecated spellings


def deprecated(old: str, new: str) -> Callable[..., Any]:
    """A callback for a hidden option that keeps an old spelling working for one release:
    it prints a one-line warning on stderr when the option is given."""

    def warn(ctx: typer.Context, value: Any) -> Any:
        if value not in (None, False, (), []) and not ctx.resilient_parsing:
            err_console.print(f"warning: {old} is deprecated and goes in the next release; use {new}",
                              highlight=False, markup=False)
        return value

    return warn


# ---------------------------------------------------------------- parsers

_ENDPOINT = re.compile(r"(?:tcp://(?P<host>[^/]+):(?P<port>\d+|\*)|(?:ipc|inproc)://.+)")


def check_endpoint(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    """An option callback: a ZeroMQ address a socket can connect to (``tcp://HOST:PORT``,
    ``ipc://PATH`` or ``inproc://NAME``); anything else is a usage error (exit 1)."""
    if value is None or ctx.resilient_parsing:
        return value
    m = _ENDPOINT.fullmatch(value)
    if m is None or (m["port"] not in (None, "*") and not 0 < int(m["port"]) < 65536):
        raise typer.BadParameter(f"{value!r} is not a ZeroMQ address: give tcp://HOST:PORT (e.g. "
                                 "tcp://127.0.0.1:5555, what `edge-moe status` shows) or ipc://PATH")
    return value


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
    """A budget: a number >= 0, or ``inf`` for none.

    Raises:
        ConfigError: not a number, NaN, or negative.
    """
    try:
        v = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a number") from exc
    if math.isnan(v) or v < 0:
        raise ConfigError(f"{name}={raw!r} must be a number >= 0 (use 'inf' for no budget)")
    return v
