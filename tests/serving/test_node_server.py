"""The node server against a hand-driven ROUTER: READY, TASKs, deadlines, bad frames, and
Paranoid Pirate reconnects."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from edge_moe.config import CoordinatorConfig, DeviceClass, load_fleet
from edge_moe.energy import ModelledMeter
from edge_moe.errors import ConfigError
from edge_moe.wire import (
    PROTOCOL,
    Error,
    ErrorCode,
    Heartbeat,
    Query,
    Ready,
    Result,
    Task,
    decode,
    encode,
)
from nodes.server import NodeServer, backend_endpoint, build_experts
from edge_moe.runtime.toy import ToyExpert

pytestmark = pytest.mark.timeout(60)

CPU = DeviceClass("cpu", 5.0, 15.0, "test")
CFG = CoordinatorConfig(node="x", heartbeat_s=0.1, liveness=3, reconnect_min_s=0.05, reconnect_max_s=0.2)


class FakeCoordinator:
    """A ROUTER the test drives by hand."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def recv(self, timeout_s: float = 5.0, skip_heartbeats: bool = True) -> tuple[bytes, object]:
        end = time.monotonic() + timeout_s
        while (left := end - time.monotonic()) > 0:
            if not self.sock.poll(left * 1000):
                break
            identity, *frames = self.sock.recv_multipart()
            msg = decode(frames)
            if skip_heartbeats and isinstance(msg, Heartbeat):
                continue
            return identity, msg
        raise AssertionError("nothing from the node in time")

    def send(self, identity: bytes, msg: object) -> None:
        self.sock.send_multipart([identity, *encode(msg)])  # type: ignore[arg-type]

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture()
def coord():
    c = FakeCoordinator()
    yield c
    c.close()


@pytest.fixture()
def node(coord):
    experts = {"fast": ToyExpert("fast"), "slow": ToyExpert("slow", delay_ms=150)}
    server = NodeServer("n1", coord.endpoint, experts, CPU, CFG, meter=ModelledMeter(CPU))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    yield server
    server.stop()
    t.join(timeout=5)
    server.close()


def test_ready_then_result_with_logprobs_ms_and_joules(coord, node):
    identity, ready = coord.recv()
    assert isinstance(ready, Ready)
    assert ready.node == "n1" and ready.device_class == "cpu" and ready.energy_source == "modelled"
    assert [(e.name, e.runner, e.precision) for e in ready.experts] == [
        ("fast", "toy-onnx", "fp32"), ("slow", "toy-onnx", "fp32")]
    coord.send(identity, Task("t1", "fast", "2+2? A. 3 B. 4", 1000.0, ("3", "4")))
    _, res = coord.recv()
    assert isinstance(res, Result) and res.id == "t1" and res.expert == "fast"
    np.testing.assert_allclose(res.logprobs, ToyExpert("fast").score_options("2+2? A. 3 B. 4", ["3", "4"]))
    assert res.compute_ms > 0 and res.energy_source == "modelled"
    assert res.energy_j == pytest.approx(15.0 * res.compute_ms / 1e3, rel=0.5, abs=1e-3)
    coord.send(identity, Task("t2", "fast", "Say hi", 1000.0, None, max_new_tokens=3))
    _, res = coord.recv()
    assert isinstance(res, Result) and res.text == ToyExpert("fast").generate("Say hi").text
    assert res.logprobs is None and res.n_tokens == 1


def test_task_past_its_deadline_is_refused_not_computed(coord, node):
    identity, _ = coord.recv()
    coord.send(identity, Task("busy", "slow", "p", 5000.0, ("a", "b")))  # holds the worker 150 ms
    coord.send(identity, Task("late", "fast", "p", 20.0, ("a", "b")))  # waits > 20 ms behind it
    got = {}
    for _ in range(2):
        _, msg = coord.recv()
        got[msg.id] = msg
    assert isinstance(got["busy"], Result)
    assert isinstance(got["late"], Error) and got["late"].code == ErrorCode.DEADLINE
    assert "not computed" in got["late"].message
    assert node.stats["results"] == 1 and node.stats["errors"] == 1


def test_heartbeats_flow_while_an_expert_computes(coord, node):
    identity, _ = coord.recv()
    coord.send(identity, Task("busy", "slow", "p", 5000.0, ("a", "b")))
    beats = 0
    while coord.sock.poll(5000):  # count heartbeats until the RESULT of the 0.15 s task
        _, *frames = coord.sock.recv_multipart()
        msg = decode(frames)
        if isinstance(msg, Result):
            break
        beats += isinstance(msg, Heartbeat)
    assert isinstance(msg, Result) and beats >= 1  # 0.1 s heartbeats during a 0.15 s task


def test_malformed_frames_get_errors_and_the_node_keeps_serving(coord, node):
    identity, _ = coord.recv()
    bad = [[b"junk"], [PROTOCOL, b"\x06", b"\xc1"], [PROTOCOL, b"\x63", b"\x80"],
           encode(Query("q", "p")), encode(Task("u", "nobody", "p", 1000.0, ("a",)))]
    for frames in bad:
        coord.sock.send_multipart([identity, *frames])
    codes = []
    for _ in bad:
        _, msg = coord.recv()
        assert isinstance(msg, Error)
        codes.append(msg.code)
    assert codes == ["protocol"] * 4 + ["unknown_expert"]
    coord.send(identity, Task("ok", "fast", "p q", 1000.0, ("a", "b")))
    _, msg = coord.recv()
    assert isinstance(msg, Result) and msg.id == "ok"
    # a runner that refuses the task: ERROR "runner", the node goes on
    coord.send(identity, Task("r", "fast", "", 1000.0, ("a", "b")))
    _, msg = coord.recv()
    assert isinstance(msg, Error) and msg.code == "runner" and "prompt is empty" in msg.message


def test_node_reconnects_with_backoff_when_the_coordinator_is_silent(coord, node):
    first, _ = coord.recv()
    # silent coordinator: liveness 3 x 0.1 s, then backoff 0.05 s, then a new READY
    t0 = time.monotonic()
    second, ready = coord.recv(timeout_s=3)
    assert isinstance(ready, Ready) and second != first
    assert 0.25 <= time.monotonic() - t0 <= 1.5
    assert node.stats["reconnects"] >= 1


def test_not_ready_error_makes_the_node_resend_ready(coord, node):
    identity, _ = coord.recv()
    coord.send(identity, Error("", ErrorCode.NOT_READY, "who are you"))
    _, msg = coord.recv()
    assert isinstance(msg, Ready)


def test_build_experts_from_the_fleet_config(tmp_path):
    configs = Path(__file__).resolve().parents[2] / "configs"
    fleet = load_fleet(configs / "fleet.local.yaml")
    assert backend_endpoint(fleet) == "tcp://127.0.0.1:5556"
    assert backend_endpoint(load_fleet(configs / "fleet.example.yaml")) == "tcp://10.0.0.2:5556"
    toys = build_experts(fleet, "cpu-a", toy=True)
    assert list(toys) == ["smollm2-135m"] and toys["smollm2-135m"].runner_name == "toy-onnx"
    with pytest.raises(ConfigError, match="unknown node 'nope'"):
        build_experts(fleet, "nope", toy=True)
    from edge_moe.errors import ArtifactError

    with pytest.raises(ArtifactError, match=str(tmp_path)):
        build_experts(fleet, "cpu-a", artifacts_dir=tmp_path)
