"""The coordinator's limits and protocol edges: a prompt over ``coordinator.max_prompt_bytes``
is refused before it is embedded (fast, while the fleet keeps serving); an ERROR for an
invalid QUERY id echoes ""; RESULT or ERROR before READY gets ``not_ready``."""

from __future__ import annotations

import statistics
import threading
import time

import pytest
import zmq

from edge_moe.client import EdgeMoEClient
from edge_moe.config import BudgetConfig, CoordinatorConfig
from edge_moe.runtime.toy import ToyEncoder
from edge_moe.wire import (
    MAX_ID_CHARS,
    Error,
    ErrorCode,
    Heartbeat,
    Message,
    Query,
    Reply,
    Result,
    decode,
    encode,
)
from gating.coordinator import Coordinator
from gating.coordinator.routing import load_router

pytestmark = pytest.mark.timeout(120)

OPTIONS = ("red", "green", "blue", "black")
LIMIT = CoordinatorConfig.max_prompt_bytes  # the fleet fixture's coordinator uses the default
BIG = "word " * (5 * 1024 * 1024 // 5)  # 5 MiB of words: seconds for the toy encoder to embed


def _dealer(endpoint: str) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s


def _ask(sock: zmq.Socket, frames: list[bytes], timeout_ms: int = 5000) -> Message:
    sock.send_multipart([b"", *frames])
    assert sock.poll(timeout_ms), "no answer"
    got = sock.recv_multipart()
    return decode(got[1:] if got[0] == b"" else got)


def _question(i: int) -> str:
    return f"Question {i}: which colour is item {i * 7919 % 101}? Answer:"


@pytest.fixture(scope="module")
def client(fleet):
    with EdgeMoEClient(fleet.frontend, timeout_s=5, retries=0) as c:
        end = time.monotonic() + 20
        while True:
            r = c.query("warm up", OPTIONS)
            if isinstance(r, Reply) and len(r.plan.live) == 4:
                break
            assert time.monotonic() < end, f"the fleet never became live: {r}"
            time.sleep(0.05)
        yield c


def test_a_5mb_prompt_is_refused_fast_while_the_fleet_serves(fleet, client):
    stop = threading.Event()
    records: list[Reply | Error] = []
    failures: list[BaseException] = []

    def load(k: int) -> None:
        try:
            with EdgeMoEClient(fleet.frontend, timeout_s=3, retries=0) as c:
                i = 10_000 * (k + 1)
                while not stop.is_set():
                    records.append(c.query(_question(i), OPTIONS, deadline_ms=1000))
                    i += 1
        except BaseException as exc:  # surfaced below
            failures.append(exc)

    threads = [threading.Thread(target=load, args=(k,), daemon=True) for k in range(3)]
    big = _dealer(fleet.frontend)
    latencies_ms: list[float] = []
    try:
        for t in threads:
            t.start()
        time.sleep(0.3)
        size = len(BIG.encode()) + sum(len(o.encode()) for o in OPTIONS)  # the options count too
        for n in range(10):
            frames = encode(Query(id=f"big-{n}", prompt=BIG, options=OPTIONS))  # encoded before timing
            t0 = time.perf_counter()
            msg = _ask(big, frames)
            latencies_ms.append((time.perf_counter() - t0) * 1e3)
            assert isinstance(msg, Error) and msg.code == ErrorCode.BAD_REQUEST and msg.id == f"big-{n}", msg
            assert msg.message == (f"prompt and options are {size} bytes (UTF-8), over the limit of "
                                   f"{LIMIT} bytes (coordinator.max_prompt_bytes)")
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        big.close(linger=0)
    assert not failures, failures
    # every valid query answered, whole, over all four experts: no node left the live set
    assert len(records) >= 30, len(records)
    bad = [r for r in records if not (isinstance(r, Reply) and not r.degraded and len(r.plan.live) == 4)]
    assert not bad, f"{len(bad)} of {len(records)} valid queries suffered: {bad[:2]}"
    assert fleet.coordinator.alive and all(p.alive for p in fleet.nodes.values())
    median, worst = statistics.median(latencies_ms), max(latencies_ms)
    print(f"\n5 MiB prompt -> ERROR bad_request: median {median:.1f} ms, max {worst:.1f} ms over "
          f"{len(latencies_ms)}; {len(records)} concurrent valid queries all answered, 4 experts live")
    assert median <= 50.0, latencies_ms  # the target; loose on a shared 2-core box
    assert worst <= 250.0, latencies_ms


def test_the_limit_counts_utf8_bytes(fleet, client):
    sock = _dealer(fleet.frontend)
    try:
        opts = sum(len(o) for o in OPTIONS)  # the options count towards the limit
        at_limit = "a" * (LIMIT - 8 - opts) + " Answer:"  # with the options exactly LIMIT bytes: served
        msg = _ask(sock, encode(Query(id="at", prompt=at_limit, options=OPTIONS)))
        assert isinstance(msg, Reply) and msg.id == "at", msg
        euros = "€" * (LIMIT // 3 + 1)  # 21846 characters, 65538 bytes
        msg = _ask(sock, encode(Query(id="eu", prompt=euros)))
        assert isinstance(msg, Error) and msg.code == ErrorCode.BAD_REQUEST, msg
        assert msg.message.startswith(f"prompt is {len(euros.encode())} bytes (UTF-8), over the limit")
        msg = _ask(sock, encode(Query(id="over", prompt=at_limit + "?", options=OPTIONS)))
        assert isinstance(msg, Error) and f"prompt and options are {LIMIT + 1} bytes" in msg.message, msg
        long_option = ("x" * LIMIT,) + OPTIONS[1:]  # a short prompt with one huge option
        msg = _ask(sock, encode(Query(id="opt", prompt="Pick one.", options=long_option)))
        assert isinstance(msg, Error) and msg.code == ErrorCode.BAD_REQUEST, msg
        assert "prompt and options are" in msg.message and msg.id == "opt", msg
    finally:
        sock.close(linger=0)


@pytest.mark.parametrize("bad_id", ["x" * (MAX_ID_CHARS + 1), ""])
def test_an_error_for_an_invalid_id_echoes_an_empty_id(fleet, client, bad_id):
    sock = _dealer(fleet.frontend)
    try:
        msg = _ask(sock, encode(Query(id=bad_id, prompt="Is water wet?", options=OPTIONS)))
        assert isinstance(msg, Error) and msg.code == ErrorCode.BAD_REQUEST, msg
        assert msg.id == "" and msg.message == f"id must be 1..{MAX_ID_CHARS} characters, got {len(bad_id)}"
        msg = _ask(sock, encode(Query(id=bad_id, prompt=BIG, options=OPTIONS)))  # the prompt check's ERROR
        assert isinstance(msg, Error) and msg.id == "" and "max_prompt_bytes" in msg.message, msg
        msg = _ask(sock, encode(Error(bad_id, "internal", "not a query")))  # wrong type on the frontend
        assert isinstance(msg, Error) and msg.code == ErrorCode.PROTOCOL and msg.id == "", msg
        ok = "y" * MAX_ID_CHARS  # the longest valid id is echoed whole
        msg = _ask(sock, encode(Query(id=ok, prompt="Is water wet?", options=OPTIONS, top_k=0)))
        assert isinstance(msg, Error) and msg.id == ok, msg
    finally:
        sock.close(linger=0)


def test_result_or_error_before_ready_gets_not_ready(fleet, client):
    stranger = zmq.Context.instance().socket(zmq.DEALER)
    stranger.setsockopt(zmq.LINGER, 0)
    stranger.connect(fleet.backend)
    try:
        for msg in (Result("t0", "synth-expert-0", 1.0, 0.01, "modelled", (-1.4, -1.4, -1.4, -1.4)),
                    Error("t0", ErrorCode.RUNNER, "hello"), Heartbeat("who")):
            stranger.send_multipart(encode(msg))
            assert stranger.poll(3000), f"no answer to {type(msg).__name__}"
            got = decode(stranger.recv_multipart())
            assert isinstance(got, Error) and got.code == ErrorCode.NOT_READY, got
            assert got.id == getattr(msg, "id", "") and got.message == "unknown node: send READY first"
        r = client.query(_question(1), OPTIONS)
        assert isinstance(r, Reply) and not r.degraded
    finally:
        stranger.close(linger=0)


def test_max_prompt_bytes_comes_from_the_config(assets):
    """In process, no node: the limit is the config's, checked before the router runs."""
    router = load_router(assets.gate, assets.calibration, assets.profiles, BudgetConfig(), 2)
    cfg = CoordinatorConfig(node="x", heartbeat_s=0.2, max_prompt_bytes=100)
    coord = Coordinator(router, ToyEncoder(16), cfg, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
    loop = threading.Thread(target=coord.run, daemon=True)
    loop.start()
    try:
        with EdgeMoEClient(coord.frontend_endpoint, timeout_s=5, retries=0) as c:
            r = c.query("x" * 100, category="astrology")  # at the limit: the router's check
            assert isinstance(r, Error) and "unknown category" in r.message, r
            r = c.query("x" * 101, category="astrology")  # over it: refused first
            assert isinstance(r, Error) and r.code == ErrorCode.BAD_REQUEST, r
            assert r.message == ("prompt is 101 bytes (UTF-8), over the limit of 100 bytes "
                                 "(coordinator.max_prompt_bytes)")
        assert coord.stats["oversized_prompts"] == 1
    finally:
        coord.stop()
        loop.join(5)
        coord.close()
