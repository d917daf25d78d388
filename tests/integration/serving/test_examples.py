"""The examples run: each script in examples/ against a toy fleet (the coordinator and three
toy nodes as processes) with the OpenAI-compatible HTTP front as a process, its endpoint or
URL passed as the scripts' users pass it (an argument, or the environment)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from .conftest import REPO, Proc, start_fleet

pytestmark = pytest.mark.timeout(180)

EXAMPLES = REPO / "examples"
KEY = "sk-examples"


@pytest.fixture(scope="module")
def served(assets, tmp_path_factory):
    """(frontend endpoint, front's /v1 URL) of a toy fleet behind an HTTP front with an API key."""
    fleet = start_fleet(assets)
    keys = tmp_path_factory.mktemp("example-keys") / "keys.txt"
    keys.write_text(f"{KEY}\n")
    front = Proc(["edge_moe.cli", "http", "--endpoint", fleet.frontend, "--listen", "127.0.0.1:0",
                  "--config", str(assets.fleet), "--api-keys", str(keys)])
    try:
        url = front.expect("http front ").split()[2]
        yield fleet.frontend, f"{url}/v1"
    finally:
        front.terminate()
        fleet.stop()


def _run(args: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_python_client(served):
    endpoint, _ = served
    out = _run([sys.executable, str(EXAMPLES / "python_client.py"), endpoint])
    lines = dict(line.split(":", 1) for line in out.splitlines() if not line.startswith(" "))
    assert set(lines) == {"options", "greedy", "sampled", "cancel"}, out
    assert re.match(r" option [0-3] from \[", lines["options"]) and "J (modelled)" in lines["options"], out
    assert "probabilities: Mars=" in out, out
    assert re.match(r" text '.+' \((stop|length)\) from \[", lines["greedy"]), out
    sampled = re.match(r" text '.+' \((stop|length)\) from \[(\S+)=1\.00\]", lines["sampled"])
    assert sampled, f"a sampled generation is one expert's: {out}"
    assert "first token:" in out and "logprob -" in out, out
    assert lines["cancel"].startswith((" cancelled - ERROR cancelled", " finished before the cancel arrived")), out


def test_python_client_reads_the_endpoint_from_the_environment(served):
    endpoint, _ = served
    out = _run([sys.executable, str(EXAMPLES / "python_client.py")], {"EDGE_MOE_ENDPOINT": endpoint})
    assert out.startswith("options: option "), out


def test_openai_client(served):
    _, url = served
    out = _run([sys.executable, str(EXAMPLES / "openai_client.py"), url], {"EDGE_MOE_API_KEY": KEY})
    lines = dict(line.split(":", 1) for line in out.splitlines())
    assert set(lines) == {"chat", "options", "stream"}, out
    assert re.match(r" '.+' finish: (stop|length) experts: \[\('", lines["chat"]) and "(modelled)" in lines["chat"], out
    assert re.match(r" '(Mars|Jupiter|Venus|Earth)' index: [0-3] probabilities: \[", lines["options"]), out
    stream = re.match(r" (\d+) chunks: '(.+)' completion tokens: (\d+)", lines["stream"])
    assert stream and int(stream.group(1)) >= 1 and int(stream.group(3)) >= 1, out


def test_curl(served):
    _, url = served
    out = _run(["bash", str(EXAMPLES / "curl.sh"), url], {"EDGE_MOE_API_KEY": KEY})
    body = json.loads(out)
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"], body
    assert body["edge_moe"]["experts"] and body["edge_moe"]["plan"]["status"] == "optimal", body


def test_curl_without_the_key_is_refused(served):
    _, url = served
    done = subprocess.run(["bash", str(EXAMPLES / "curl.sh"), url], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={k: v for k, v in os.environ.items() if k != "EDGE_MOE_API_KEY"})
    assert done.returncode == 22 and "401" in done.stderr, done  # curl --fail-with-body: HTTP >= 400
    assert json.loads(done.stdout.strip())["error"]["code"], done.stdout
