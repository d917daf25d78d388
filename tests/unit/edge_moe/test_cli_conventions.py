"""The conventions every ``edge-moe`` command keeps (edge_moe.cli.common): one meaning per
flag name, documented exit codes with one line and no traceback for an expected failure,
``--json`` on every command that reports, and help texts with an example."""

from __future__ import annotations

import builtins
import json
import socket
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import typer.main
from rich.text import Text
from typer.testing import CliRunner

from edge_moe.cli import app, main
from edge_moe.cli.common import EXIT_UNREACHABLE, EXIT_USAGE, exit_code, first_sentence
from edge_moe.errors import ArtifactError, ConfigError, DataFormatError, DeadlineError, FleetError
from edge_moe.paths import CONFIGS

runner = CliRunner()


def _commands(cmd: Any = None, path: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """Every leaf command of the app (``assets list`` too), by its full name."""
    cmd = cmd or typer.main.get_command(app)
    subs = getattr(cmd, "commands", None)
    if not subs:
        return [(" ".join(path), cmd)]
    return [leaf for name, sub in sorted(subs.items()) for leaf in _commands(sub, (*path, name))]


COMMANDS = dict(_commands())
# the commands that report a result (the servers and the demo print as they go)
REPORTING = ("deploy", "status", "plan", "query", "calibrate", "profile", "check-config", "keys", "down",
             "export", "assets list", "assets fetch")


def _options(cmd: Any) -> list[Any]:
    return [p for p in cmd.params if p.param_type_name == "option" and not p.hidden and p.name != "help"]


def _signature(cmd: Any, param: Any) -> tuple[str, str, bool]:
    """(type, metavar as --help shows it, repeatable) of one option."""
    ctx = cmd.make_context("x", [], resilient_parsing=True)
    decl = param.get_help_record(ctx)[0]
    meta = decl.split(" ", 1)[1] if " " in decl and " / " not in decl else ""
    ann = str(param.type_descriptor.annotation).replace("typing.", "")
    return ann, meta, bool(param.multiple)


# one flag name with two signatures, on purpose (why, in the comment)
SIGNATURE_ALLOWED = {
    # plan takes a budget per category (CATEGORY=MS, repeatable); a query's budget is one
    # number for every category (WireBudget.latency_ms)
    "--latency-ms",
}


def test_the_commands_are_walked():
    assert {"plan", "query", "assets list", "assets fetch", "http", "node"} <= set(COMMANDS)


def test_one_flag_name_has_one_type_and_metavar_across_commands():
    seen: dict[str, dict[tuple[str, str, bool], list[str]]] = defaultdict(lambda: defaultdict(list))
    for name, cmd in COMMANDS.items():
        for p in _options(cmd):
            for opt in p.opts:
                seen[opt][_signature(cmd, p)].append(name)
    clashes = {opt: dict(sigs) for opt, sigs in seen.items() if len(sigs) > 1 and opt not in SIGNATURE_ALLOWED}
    assert not clashes, f"one flag name, several types or metavars: {clashes}"
    assert SIGNATURE_ALLOWED <= set(seen), "an allow-listed flag no longer exists: drop it from the list"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_is_one_paragraph_with_an_example(name: str):
    text = COMMANDS[name].help or ""
    paragraphs = [p for p in text.strip().split("\n\n") if p.strip()]
    examples = [p.strip() for p in paragraphs if p.strip().startswith("Example: edge-moe ")]
    assert len(examples) == 1, f"{name}: one 'Example: edge-moe ...' line, got {paragraphs}"
    assert all("\n" not in p.strip() for p in paragraphs), f"{name}: a hard-wrapped help paragraph: {text!r}"
    assert len(paragraphs) == 2, f"{name}: one paragraph and the example, got {paragraphs}"
    assert len(first_sentence(text)) <= 100, f"{name}: `edge-moe --help` lists it by a long first sentence"
    res = runner.invoke(app, [*name.split(), "--help"])
    assert res.exit_code == 0 and "Example:" in res.stdout, res.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_texts_survive_rich_markup(name: str):
    """A `[` that rich takes for a tag vanishes from --help: escape it (\\[) or avoid it."""
    cmd = COMMANDS[name]
    for text in [cmd.help or "", *(p.help or "" for p in cmd.params if not getattr(p, "hidden", False))]:
        assert Text.from_markup(text).plain == text.replace("\\[", "["), f"{name}: {text!r}"


@pytest.mark.parametrize("name", REPORTING)
def test_every_reporting_command_takes_json(name: str):
    assert any("--json" in p.opts for p in _options(COMMANDS[name])), name


@pytest.mark.parametrize(("name", "flag"), [("plan", "--objective"), ("export", "--precision"),
                                            ("export", "--builder"), ("export", "--kind"), ("deploy", "--ship"),
                                            ("node", "--meter"), ("profile", "--statistic"),
                                            ("demo", "--demo-fleet")])
def test_fixed_choices_are_listed_in_help(name: str, flag: str):
    cmd = COMMANDS[name]
    (param,) = [p for p in cmd.params if flag in p.opts]
    meta = _signature(cmd, param)[1]
    assert meta.startswith("<") and "|" in meta, (flag, meta)


def test_the_app_help_documents_the_exit_codes():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    flat = " ".join(res.stdout.replace("│", " ").split())
    assert "Exit codes: 0 ok; 1 usage or config error; 2 a refusal" in flat and "3 unreachable" in flat


# ---------------------------------------------------------------- exit codes


@pytest.mark.parametrize(("exc", "code"), [
    (ConfigError("x"), EXIT_USAGE), (DataFormatError("x"), EXIT_USAGE), (ArtifactError("x"), EXIT_USAGE),
    (FleetError("no deployed fleet"), EXIT_USAGE), (DeadlineError("no answer"), EXIT_UNREACHABLE),
    (ModuleNotFoundError("No module named 'starlette'", name="starlette"), EXIT_USAGE),
    (PermissionError(13, "Permission denied", "/out"), EXIT_USAGE),
    (RuntimeError("a bug"), None), (ModuleNotFoundError("No module named 'nope'", name="nope"), None),
])
def test_exit_code_maps_expected_failures_and_leaves_bugs(exc: BaseException, code: int | None):
    assert exit_code(exc) == code


def test_a_fleet_error_caused_by_a_refused_connection_is_unreachable():
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as exc:
            raise FleetError("the Ray cluster at 10.0.0.1:6379 does not answer") from exc
    except FleetError as exc:
        assert exit_code(exc) == EXIT_UNREACHABLE


def _no_traceback(res: Any) -> None:
    assert "Traceback" not in res.output, res.output


def test_a_usage_error_exits_one_and_never_suggests_a_deprecated_spelling():
    res = runner.invoke(app, ["plan", "--ou"])
    assert res.exit_code == EXIT_USAGE and "No such option: --ou" in res.stderr, res.output
    assert "--out\n" not in res.stderr and "(Possible options: --out)" not in res.stderr


def test_main_maps_usage_errors_to_one(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as info:
        main(["plan", "--no-such-flag"])
    assert info.value.code == EXIT_USAGE
    assert "No such option" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0


def test_a_bad_endpoint_is_a_usage_error():
    res = runner.invoke(app, ["query", "hi", "--endpoint", "nonsense"])
    assert res.exit_code == EXIT_USAGE and "is not a ZeroMQ address" in " ".join(res.stderr.split()), res.output
    _no_traceback(res)


def test_an_unreachable_endpoint_exits_three():
    with socket.socket() as s:  # a port with nothing behind it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = runner.invoke(app, ["query", "hi", "--endpoint", f"tcp://127.0.0.1:{port}", "--timeout-s", "0.1"])
    assert res.exit_code == EXIT_UNREACHABLE, res.output
    assert res.stderr.strip().splitlines()[-1].startswith("DeadlineError: no answer from tcp://127.0.0.1:")
    _no_traceback(res)


def test_a_missing_file_exits_one(tmp_path: Path):
    res = runner.invoke(app, ["deploy", str(tmp_path / "fleet.yaml")])
    assert res.exit_code == EXIT_USAGE and "ConfigError: " in res.stderr and "fleet.yaml" in res.stderr, res.output
    res = runner.invoke(app, ["profile", str(tmp_path / "none.latency.json"), "--out", str(tmp_path / "p.json")])
    assert res.exit_code == EXIT_USAGE and "DataFormatError: " in res.stderr, res.output
    _no_traceback(res)


def test_an_unwritable_output_folder_exits_one(tmp_path: Path):
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "plans"
    res = runner.invoke(app, ["plan", "--example", "--out-dir", str(out)])
    assert res.exit_code == EXIT_USAGE, res.output
    assert res.stderr.strip() == f"NotADirectoryError: {out}: Not a directory: choose a path you can read or write"


def test_a_missing_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch):
    real_import = builtins.__import__

    def no_starlette(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "starlette" or name.startswith("starlette."):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)

    for mod in [m for m in sys.modules if m == "gating.http" or m.startswith("gating.http.")]:
        monkeypatch.delitem(sys.modules, mod)  # import it again, without starlette
    monkeypatch.setattr(builtins, "__import__", no_starlette)
    res = runner.invoke(app, ["http", "--endpoint", "tcp://127.0.0.1:9"])
    assert res.exit_code == EXIT_USAGE, res.output
    line = " ".join(res.stderr.split())
    assert line.startswith("ModuleNotFoundError: No module named 'starlette") and "pip install 'edge-moe[http]'" in line
    _no_traceback(res)


# ---------------------------------------------------------------- the old spellings, for one release


def test_old_spellings_still_work_with_a_warning(tmp_path: Path):
    res = runner.invoke(app, ["status", "--name", "no-such-fleet"])
    assert "warning: status --name is deprecated and goes in the next release; use --fleet" in res.stderr
    assert res.exit_code == EXIT_USAGE and "no deployed fleet 'no-such-fleet'" in res.stderr, res.output
    res = runner.invoke(app, ["export", "x", "--encoder", "--precision", "int8"])
    assert "export --encoder is deprecated" in res.stderr and "fp32 only" in res.stderr, res.output
    assert res.exit_code == EXIT_USAGE


def test_json_is_alone_on_stdout():
    res = runner.invoke(app, ["check-config", str(CONFIGS / "fleet.example.yaml"), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["ok"] is True and not res.stderr
