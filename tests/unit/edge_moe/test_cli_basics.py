"""The CLI's shared surface: --version, and --help for the serving commands of the one CLI."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edge_moe import __version__
from edge_moe.cli import app


def test_version_prints_the_package_version():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"edge-moe {__version__}"
    assert __version__ != "0.0.0+unknown"  # the project is installed (make install)


@pytest.mark.parametrize("command", ["coordinator", "node", "http", "keys", "deploy"])
def test_each_serving_command_has_help(command):
    res = CliRunner().invoke(app, [command, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output and "--" in res.output
