"""`edge-moe keys` is safe by default: existing pairs are kept, secrets are private, and a
folder that cannot be written is a one-line error."""

from __future__ import annotations

import json
import stat

from typer.testing import CliRunner

from edge_moe.cli import app
from edge_moe.security import generate_keys, load_client_keys, load_server_keys


def _mode(p) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_keys_are_kept_on_a_second_run_and_replaced_only_with_force(tmp_path):
    d = tmp_path / "keys"
    first = generate_keys(d, ("cpu-a", "cpu-b"))
    assert set(first.created) == {"server", "cpu-a", "cpu-b"} and first.kept == ()
    server = (d / "server.key").read_bytes()
    client = load_client_keys(d, "cpu-a")
    again = generate_keys(d, ("cpu-a", "cpu-c"))  # adding a client locks nobody out
    assert (d / "server.key").read_bytes() == server and load_client_keys(d, "cpu-a") == client
    assert again.created == ("cpu-c",) and set(again.kept) == {"server", "cpu-a"}
    assert again.locked_out == ()
    assert sorted(p.name for p in (d / "authorized").iterdir()) == ["cpu-a.key", "cpu-b.key", "cpu-c.key"]
    forced = generate_keys(d, ("cpu-a",), force=True)
    assert (d / "server.key").read_bytes() != server
    assert set(forced.replaced) == {"server", "cpu-a"}
    assert set(forced.locked_out) == {"cpu-a", "cpu-b", "cpu-c"}  # every holder of the old server.key
    load_server_keys(d)  # still a valid folder


def test_secrets_are_0600_and_folders_0700(tmp_path):
    d = tmp_path / "keys"
    generate_keys(d, ("node",))
    assert _mode(d) == 0o700 and _mode(d / "authorized") == 0o700
    for secret in d.glob("*.key_secret"):
        assert _mode(secret) == 0o600, secret


def test_the_cli_reports_what_it_did_and_refuses_an_unwritable_folder(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["keys", str(tmp_path / "k"), "--client", "a", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["created"] == ["server", "a"]
    res = runner.invoke(app, ["keys", str(tmp_path / "k"), "--client", "a"])
    assert res.exit_code == 0 and "kept: server, a" in res.output
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    res = runner.invoke(app, ["keys", str(blocker / "keys")])
    assert res.exit_code == 1
    assert "ConfigError" in res.output and "cannot write CURVE keys" in res.output
    assert "Traceback" not in res.output
