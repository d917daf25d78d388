"""The CLI's shared surface: --version, and --help for every command of the one CLI."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edge_moe import __version__
from edge_moe.cli import app


def test_version_prints_the_package_version():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"edge-moe {__version__}"
    assert __version__ != "0.0.0+unknown"  # the project is installed (make install)


COMMANDS = sorted(c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands)


def test_the_one_cli_has_the_serving_commands():
    assert {"coordinator", "node", "http", "deploy", "query", "status", "down", "plan"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    res = CliRunner().invoke(app, [command, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output and "--" in res.output
