"""Exit codes against live peers. ``edge-moe query`` against a coordinator in this process: a
REPLY exits 0, an infeasible plan or a coordinator that refuses (no_experts) exits 2, a wrong
request exits 1; ``--json`` prints the answer alone on stdout (the nodes run in this process
too, toy experts). ``edge-moe status`` of a fleet whose Ray cluster is gone exits 3."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from edge_moe.cli import app
from edge_moe.cli.query import answer_code
from edge_moe.client import EdgeMoEClient
from edge_moe.config import BudgetConfig, CoordinatorConfig
from edge_moe.runtime.toy import ToyEncoder
from edge_moe.wire import Error, ErrorCode, Reply
from gating.coordinator import Coordinator
from gating.coordinator.routing import load_router
from nodes.build import build_server
from tests.toyfleet import DIM, NODES, Assets

pytestmark = pytest.mark.timeout(120)

QUESTION = "Which planet is largest? A. Mars B. Jupiter C. Venus D. Earth Answer:"
OPTIONS = ["Mars", "Jupiter", "Venus", "Earth"]
runner = CliRunner()


class Running:
    """A coordinator on loopback (random ports) with ``nodes`` of the toy fleet, each on a thread."""

    def __init__(self, assets: Assets, nodes: tuple[str, ...]) -> None:
        router = load_router(assets.gate, assets.calibration, assets.profiles, BudgetConfig(), 2)
        self.coord = Coordinator(router, ToyEncoder(DIM), CoordinatorConfig(node="x", heartbeat_s=0.2),
                                 "tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
        self.servers = [build_server(assets.fleet, n, endpoint=self.coord.backend_endpoint, toy=True,
                                     meter="modelled") for n in nodes]
        self.threads = [threading.Thread(target=x.run, daemon=True) for x in (self.coord, *self.servers)]
        for t in self.threads:
            t.start()
        self.endpoint = self.coord.frontend_endpoint

    def close(self) -> None:
        for x in (*self.servers, self.coord):
            x.stop()
        for t in self.threads:
            t.join(5)
        for x in (*self.servers, self.coord):
            x.close()


@pytest.fixture
def with_nodes(assets: Assets) -> Iterator[Running]:
    run = Running(assets, tuple(NODES))
    try:
        with EdgeMoEClient(run.endpoint, timeout_s=5, retries=0) as client:  # until a node is live
            end = time.monotonic() + 20
            while not isinstance(client.query(QUESTION, OPTIONS), Reply):
                assert time.monotonic() < end, "no node became live"
                time.sleep(0.05)
        yield run
    finally:
        run.close()


@pytest.fixture
def without_nodes(assets: Assets) -> Iterator[Running]:
    run = Running(assets, ())
    try:
        yield run
    finally:
        run.close()


def query(endpoint: str, *args: str) -> Any:
    return runner.invoke(app, ["query", QUESTION, *(a for o in OPTIONS for a in ("-o", o)),
                               "--endpoint", endpoint, "--timeout-s", "5", *args])


def test_an_answer_exits_zero_and_an_infeasible_budget_exits_two(with_nodes: Running) -> None:
    res = query(with_nodes.endpoint, "--energy-j", "1e6")
    assert res.exit_code == 0 and "answer:" in res.stdout, res.output
    res = query(with_nodes.endpoint, "--energy-j", "1e-9")
    assert res.exit_code == 2 and "INFEASIBLE budget" in res.stdout, res.output
    res = query(with_nodes.endpoint, "--energy-j", "1e-9", "--json")
    assert res.exit_code == 2, res.output
    doc = json.loads(res.stdout)  # the REPLY alone on stdout
    assert doc["type"] == "REPLY" and doc["plan"]["status"] == "infeasible"


def test_a_wrong_request_exits_one(with_nodes: Running) -> None:
    res = query(with_nodes.endpoint, "--category", "astrology")
    assert res.exit_code == 1 and "ERROR bad_request" in res.stdout, res.output


def test_a_coordinator_without_live_experts_is_a_refusal(without_nodes: Running) -> None:
    res = query(without_nodes.endpoint)
    assert res.exit_code == 2 and "ERROR no_experts" in res.stdout, res.output


@pytest.mark.parametrize(("code", "exit"), [
    (ErrorCode.NO_EXPERTS, 2), (ErrorCode.REFUSED, 2), (ErrorCode.OVERLOADED, 2),
    (ErrorCode.DEADLINE, 3), (ErrorCode.EXPERT_ERROR, 3),
    (ErrorCode.BAD_REQUEST, 1), (ErrorCode.PROTOCOL, 1), (ErrorCode.RUNNER, 1), (ErrorCode.INTERNAL, 1),
])
def test_every_coordinator_error_has_its_exit_code(code: ErrorCode, exit: int) -> None:
    assert answer_code(Error(id="q", code=code.value, message="m")) == exit


def test_status_of_a_fleet_whose_cluster_is_gone_exits_three(tmp_path) -> None:
    """Run as its own process, as the CLI always is: importing ray for a remote cluster in
    this test process would leave it unable to reach a local head later (Ray reads
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, at import)."""
    import os
    import subprocess
    import sys

    from edge_moe.fleet.state import Deployment

    with socket.socket() as s:  # a port with nothing behind it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "EDGE_MOE_STATE": str(tmp_path)}
    old = os.environ.get("EDGE_MOE_STATE")
    os.environ["EDGE_MOE_STATE"] = str(tmp_path)
    try:
        Deployment(name="gone", config="fleet.yaml", namespace="edge-moe-gone", address=f"127.0.0.1:{port}",
                   frontend="tcp://127.0.0.1:5555", backend="tcp://127.0.0.1:5556", started_head=False).save()
    finally:
        if old is None:
            os.environ.pop("EDGE_MOE_STATE", None)
        else:
            os.environ["EDGE_MOE_STATE"] = old
    res = subprocess.run([sys.executable, "-m", "edge_moe.cli", "status", "--fleet", "gone"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 3, res.stdout + res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith(f"FleetError: cannot reach the Ray cluster at 127.0.0.1:{port}"), res.stderr
    assert "Traceback" not in res.stdout + res.stderr
