"""The node server against a hand-driven ROUTER over real loopback sockets: READY, TASKs,
deadlines, heartbeats while an expert computes, the load its heartbeats report, bad frames,
Paranoid Pirate reconnects, and CANCEL. (The parts without sockets: ``tests/unit/nodes/``.)"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import zmq

from edge_moe.config import CoordinatorConfig, DeviceClass
from edge_moe.energy import ModelledMeter
from edge_moe.runtime.toy import ToyExpert
from edge_moe.wire import (
    PROTOCOL,
    Cancel,
    Error,
    ErrorCode,
    Heartbeat,
    Query,
    Ready,
    Result,
    Sampling,
    Task,
    decode,
    encode,
)
from nodes import loop as loop_mod
from nodes.execution import Executor
from nodes.server import LOAD_ALPHA, NodeServer
from tests.unit.runtime.fakegraph import FakeGraph

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


@contextmanager
def running(server: NodeServer) -> Iterator[NodeServer]:
    """``server`` serving on a thread; stopped, joined and closed on exit."""
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    try:
        yield server
    finally:
        server.stop()
        t.join(timeout=5)
        server.close()


@pytest.fixture()
def coord():
    c = FakeCoordinator()
    yield c
    c.close()


@pytest.fixture()
def node(coord):
    experts = {"fast": ToyExpert("fast"), "slow": ToyExpert("slow", delay_ms=150)}
    with running(NodeServer("n1", coord.endpoint, experts, CPU, CFG, meter=ModelledMeter(CPU))) as server:
        yield server


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


# Heartbeats while an expert computes: the check is the coordinator's own rule, never a
# silence longer than the liveness window (heartbeat_s x liveness) between two messages
# from the node, over a task that computes for two windows. A busy machine delays a beat
# by tens of ms, well inside the window; a node that stops beating while it computes is
# silent for about COMPUTE_S and fails (test_..._catches_a_node_that_stops_beating).
HB_CFG = CoordinatorConfig(node="x", heartbeat_s=0.1, liveness=5, reconnect_min_s=0.05, reconnect_max_s=0.2)
COMPUTE_S = 1.0


def check_heartbeats_during_a_task(coord: FakeCoordinator, node: NodeServer, cfg: CoordinatorConfig,
                                   compute_s: float) -> tuple[int, float, float]:
    """Send a TASK that computes for ``compute_s``, heartbeat the node as a coordinator does,
    and assert what a coordinator needs from TASK to RESULT: no silence longer than the
    liveness window, heartbeats at no less than half the configured rate, no reconnect.

    Returns:
        (heartbeats received, seconds from TASK to RESULT, the longest silence in s).
    """
    identity, ready = coord.recv()
    assert isinstance(ready, Ready)
    window_s = cfg.heartbeat_s * cfg.liveness
    sent = time.monotonic()
    coord.send(identity, Task("busy", "slow", "p", 60_000.0, ("a", "b")))
    signs = [sent]  # when each message from the node arrived (any message is a sign of life)
    beat_at, end = sent + cfg.heartbeat_s, sent + compute_s + 10
    result = None
    while result is None:
        now = time.monotonic()
        assert now < end, f"no RESULT within {compute_s + 10:.0f} s"
        if now >= beat_at:  # the coordinator's side of Paranoid Pirate, so the node stays
            coord.send(identity, Heartbeat("coordinator"))
            beat_at = now + cfg.heartbeat_s
        if not coord.sock.poll(max(1, math.ceil((min(beat_at, end) - now) * 1000))):
            continue
        who, *frames = coord.sock.recv_multipart()
        signs.append(time.monotonic())
        assert who == identity, "the node reconnected while it computed"
        msg = decode(frames)
        if isinstance(msg, Result):
            result = msg
        else:
            assert isinstance(msg, Heartbeat), msg
    interval_s = signs[-1] - sent
    beats = len(signs) - 2
    gap_s = max(np.diff(signs))
    assert result.id == "busy" and interval_s >= compute_s, (result, interval_s)
    assert gap_s <= window_s, (f"the node was silent for {gap_s:.3f} s while it computed, longer than "
                               f"its liveness window ({cfg.heartbeat_s} s x {cfg.liveness}); "
                               f"{beats} heartbeats in {interval_s:.2f} s")
    assert beats >= interval_s / (2 * cfg.heartbeat_s) - 1, (
        f"{beats} heartbeats in {interval_s:.2f} s: under half the rate of one per {cfg.heartbeat_s} s")
    assert node.stats["reconnects"] == 0
    return beats, interval_s, gap_s


def test_heartbeats_flow_while_an_expert_computes(coord):
    experts = {"slow": ToyExpert("slow", delay_ms=COMPUTE_S * 1000)}
    with running(NodeServer("n1", coord.endpoint, experts, CPU, HB_CFG, meter=ModelledMeter(CPU))) as node:
        beats, interval_s, gap_s = check_heartbeats_during_a_task(coord, node, HB_CFG, COMPUTE_S)
    print(f"{beats} heartbeats in {interval_s:.2f} s of compute, longest silence {gap_s * 1e3:.0f} ms")


def test_the_heartbeat_check_catches_a_node_that_stops_beating_while_computing(coord, monkeypatch):
    """The same check against a node whose heartbeats are held back while a task computes
    (as if it computed on its I/O thread): it must fail, naming the silence."""
    computing = threading.Event()
    serve = Executor.serve

    def serve_blocking_heartbeats(self, task, received, *rest):
        computing.set()
        try:
            return serve(self, task, received, *rest)
        finally:
            computing.clear()

    class MutedWhileComputing(loop_mod.HeartbeatTimer):  # type: ignore[misc,name-defined]
        def due(self, now: float) -> bool:
            return not computing.is_set() and super().due(now)

    monkeypatch.setattr(Executor, "serve", serve_blocking_heartbeats)
    monkeypatch.setattr(loop_mod, "HeartbeatTimer", MutedWhileComputing)
    experts = {"slow": ToyExpert("slow", delay_ms=COMPUTE_S * 1000)}
    with running(NodeServer("n1", coord.endpoint, experts, CPU, HB_CFG, meter=ModelledMeter(CPU))) as node:
        with pytest.raises(AssertionError, match="the node was silent for"):
            check_heartbeats_during_a_task(coord, node, HB_CFG, COMPUTE_S)


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


# ---------------------------------------------------------------- the load in HEARTBEATs

LOAD_CFG = CoordinatorConfig(node="x", heartbeat_s=0.05, liveness=100, reconnect_min_s=0.05,
                             reconnect_max_s=0.2)  # beats often; 5 s of silence allowed
SLOW_MS = 200.0


@pytest.fixture()
def loaded_node(coord):
    experts = {"fast": ToyExpert("fast"), "slow": ToyExpert("slow", delay_ms=SLOW_MS)}
    with running(NodeServer("n1", coord.endpoint, experts, CPU, LOAD_CFG, meter=ModelledMeter(CPU))) as server:
        yield server


def collect(coord: FakeCoordinator, n_answers: int, timeout_s: float = 20.0) -> list[object]:
    """Every message from the node, in wire order, until ``n_answers`` RESULTs or ERRORs,
    then up to the next HEARTBEAT (decoded from the raw frames with ``wire.decode``)."""
    got: list[object] = []
    end = time.monotonic() + timeout_s
    answers = 0
    while time.monotonic() < end:
        if not coord.sock.poll(100):
            continue
        _, *frames = coord.sock.recv_multipart()
        msg = decode(frames)
        got.append(msg)
        if isinstance(msg, (Result, Error)):
            answers += 1
        elif isinstance(msg, Heartbeat) and answers >= n_answers:
            return got
    raise AssertionError(f"{answers}/{n_answers} answers in {timeout_s} s: {got}")


def test_heartbeats_count_queued_tasks_and_average_service_ms(coord, loaded_node):
    identity, _ = coord.recv()
    for i in range(3):  # three at once: one runs, two wait
        coord.send(identity, Task(f"t{i}", "slow", "p q", 60_000.0, ("a", "b")))
    got = collect(coord, 3)
    answered, queued_while_outstanding, after_first = 0, [], []
    for msg in got:
        if isinstance(msg, Result):
            answered += 1
        else:
            assert isinstance(msg, Heartbeat) and msg.node == "n1", msg
            if answered < 3:
                queued_while_outstanding.append(msg.queued)
            # once the first RESULT is out, every TASK has been read: a beat counts exactly
            # the tasks whose answer has not gone before it on the wire
            if answered >= 1:
                after_first.append((answered, msg.queued))
            assert msg.queued <= 3 - answered, (answered, msg)
    assert answered == 3
    assert max(queued_while_outstanding) >= 2, queued_while_outstanding
    assert all(q == 3 - a for a, q in after_first), after_first
    last = got[-1]
    assert isinstance(last, Heartbeat) and last.queued == 0
    assert set(last.service_ms) == {"slow"} and last.token_ms == {}  # "fast" has no sample
    assert SLOW_MS <= last.service_ms["slow"] < 2 * SLOW_MS, last
    ms = [m.compute_ms for m in got if isinstance(m, Result)]
    expected = ms[0]
    for x in ms[1:]:
        expected += LOAD_ALPHA * (x - expected)
    assert last.service_ms["slow"] == pytest.approx(expected)
    assert loaded_node.load() == last  # what a status display reads is what went out


def test_heartbeats_average_token_ms_of_generations_and_skip_errors(coord, loaded_node):
    identity, _ = coord.recv()
    coord.send(identity, Task("g1", "slow", "Say hi", 60_000.0, None, max_new_tokens=4))
    coord.send(identity, Task("bad", "fast", "", 60_000.0, ("a", "b")))  # ERROR runner: no sample
    coord.send(identity, Task("late", "fast", "p", 1.0, None))  # waits > 1 ms: ERROR deadline
    coord.send(identity, Task("u", "nobody", "p", 60_000.0, ("a",)))  # refused at once: not queued
    got = collect(coord, 4)
    answers = {m.id: m for m in got if isinstance(m, (Result, Error))}
    assert isinstance(answers["g1"], Result) and answers["g1"].n_tokens == 1
    assert [answers[k].code for k in ("bad", "late", "u")] == ["runner", "deadline", "unknown_expert"]
    last = got[-1]
    assert isinstance(last, Heartbeat) and last.queued == 0
    assert last.service_ms == {} and set(last.token_ms) == {"slow"}
    assert last.token_ms["slow"] == pytest.approx(answers["g1"].compute_ms)  # 1 token: ms / 1
    assert SLOW_MS <= last.token_ms["slow"] < 2 * SLOW_MS


def test_the_task_queue_is_bounded_and_overflow_is_answered_overloaded(coord):
    experts = {"slow": ToyExpert("slow", delay_ms=100)}
    with running(NodeServer("n1", coord.endpoint, experts, CPU, CFG, meter=ModelledMeter(CPU),
                            max_queue=2)) as server:
        identity, _ = coord.recv()
        for i in range(6):  # one runs, two wait, the other three are refused at once
            coord.send(identity, Task(f"t{i}", "slow", "p", 60_000.0, ("a", "b")))
            if i == 0:
                time.sleep(0.05)  # the worker takes t0 off the queue (it runs 100 ms)
        got = {}
        while len(got) < 6:
            _, msg = coord.recv(timeout_s=10)
            if isinstance(msg, (Result, Error)):  # (a READY if the node reconnects: no coordinator beats)
                got[msg.id] = msg
        refused = [m for m in got.values() if isinstance(m, Error)]
        assert len(refused) == 3 and all(m.code == ErrorCode.OVERLOADED for m in refused), got
        assert "2 TASKs already queued" in refused[0].message
        assert sum(isinstance(m, Result) for m in got.values()) == 3
        end = time.monotonic() + 2  # the count drops just after the last answer is written
        while server.load().queued and time.monotonic() < end:
            time.sleep(0.01)
        assert server.stats["overloaded"] == 3 and server.load().queued == 0


# ---------------------------------------------------------------- CANCEL


def _next_answer(coord: FakeCoordinator, timeout_s: float = 5.0) -> Result | Error:
    while True:
        _, msg = coord.recv(timeout_s)
        if isinstance(msg, (Result, Error)):
            return msg


def test_cancel_a_queued_a_batched_and_an_unknown_task(coord):
    """Two generations decode in one batch (max_batch 2) and a third waits: CANCEL of the
    waiting one answers it at once with nothing spent; CANCEL of a batched one answers it
    'cancelled' within one decode step with its tokens, ms and joules; an unknown id gets
    nothing; the other generation goes on."""
    g = FakeGraph(delay_ms=20)
    with running(NodeServer("n1", coord.endpoint, {"g": g}, CPU, LOAD_CFG, meter=ModelledMeter(CPU),
                            max_batch=2, batch_wait_ms=0)) as node:
        identity, _ = coord.recv()
        for i in range(3):
            coord.send(identity, Task(f"t{i}", "g", f"prompt {i}", 60_000.0, None, max_new_tokens=200,
                                      sampling=Sampling(temperature=0.8, seed=i)))
        end = time.monotonic() + 5
        while g.calls < 4 and time.monotonic() < end:  # t0 and t1 are decoding, t2 waits
            time.sleep(0.005)
        coord.send(identity, Cancel("t2"))
        r = _next_answer(coord)
        assert r == Result("t2", "g", 0.0, 0.0, "modelled", None, "", 0, finish_reason="cancelled")
        at = g.calls
        coord.send(identity, Cancel("t0"))
        r = _next_answer(coord)
        steps = g.calls - at
        print(f"\nCANCEL of a batched task: answered after {steps} decode step(s)")
        assert isinstance(r, Result) and r.id == "t0" and r.finish_reason == "cancelled"
        assert 3 <= r.n_tokens < 200 and r.text == g.generate("prompt 0", r.n_tokens,
                                                              sampling=Sampling(temperature=0.8, seed=0)).text
        assert r.compute_ms > 0 and r.energy_j > 0 and r.energy_source == "modelled"
        assert steps <= 2  # the step in flight, and one more if the CANCEL crossed a boundary
        coord.send(identity, Cancel("nobody"))
        coord.send(identity, Cancel("t2"))  # answered already
        coord.send(identity, Cancel("t1"))
        r = _next_answer(coord)  # nothing for the first two
        assert r.id == "t1" and r.finish_reason == "cancelled"
        coord.send(identity, Cancel("t1"))  # finished: ignored
        with pytest.raises(AssertionError, match="nothing from the node"):
            _next_answer(coord, timeout_s=0.3)
        assert node.stats["cancelled"] == 3 and node.stats["results"] == 0
        assert node.load().queued == 0


def test_cancel_a_lone_generation_through_should_stop(coord):
    """A sampled toy generation (one word per 30 ms, alone: the toy runner does not batch)
    stops at the next word after CANCEL and answers what it had."""
    experts = {"slow": ToyExpert("slow", delay_ms=30)}
    with running(NodeServer("n1", coord.endpoint, experts, CPU, LOAD_CFG, meter=ModelledMeter(CPU))) as node:
        identity, _ = coord.recv()
        s = Sampling(temperature=1.0, seed=3, logprobs=True)
        coord.send(identity, Task("t", "slow", "Say hi", 60_000.0, None, max_new_tokens=200, sampling=s))
        time.sleep(0.3)
        t0 = time.monotonic()
        coord.send(identity, Cancel("t"))
        r = _next_answer(coord)
        assert time.monotonic() - t0 < 0.25
        assert isinstance(r, Result) and r.finish_reason == "cancelled" and 1 <= r.n_tokens < 200
        whole = ToyExpert("slow").generate("Say hi", 200, sampling=s)
        assert whole.text.startswith(r.text) and r.token_logprobs == whole.token_logprobs[: r.n_tokens]
        assert r.compute_ms > 0 and r.energy_j > 0
        assert node.stats["cancelled"] == 1
