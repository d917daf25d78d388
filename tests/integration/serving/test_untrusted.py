"""Nodes are peers to check, not to trust: the registry's READY and quarantine rules,
:func:`edge_moe.wire.check_result`, and a real coordinator process (its placement from the
fleet file) with one real toy node and two in-test nodes that misbehave on cue: a hostile
READY, bad RESULTs, a RESULT for another node's task, a quick restart."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import yaml
import zmq

from edge_moe.client import EdgeMoEClient
from edge_moe.runtime.toy import ToyExpert
from edge_moe.wire import (
    Error,
    ErrorCode,
    ExpertInfo,
    Heartbeat,
    Message,
    Ready,
    Reply,
    Result,
    Task,
    check_result,
    decode,
    encode,
)
from gating.coordinator.registry import Registry

from .conftest import DIM, HEARTBEAT_S, NODES, Assets, Fleet, Proc

pytestmark = pytest.mark.timeout(120)

OPTIONS = ("red", "green", "blue", "black")
LIVENESS = 5  # this module's fleet: a 1 s window, so a takeover and an expiry are far apart
QUARANTINE_AFTER, QUARANTINE_S = 3, 1.5


def _ready(node: str, *experts: str) -> Ready:
    return Ready(node, tuple(ExpertInfo(e, "onnxruntime", "fp32") for e in experts), "cpu", "modelled")


# ---------------------------------------------------------------- the rules, stepped by hand


def test_registry_admits_only_what_the_fleet_places():
    reg = Registry(1.0, 3, placement={"a": ["e1", "e2"], "b": ["e3"]})
    assert reg.refusal(b"x", _ready("z", "e1"), 0.0) == "node 'z' is not in the fleet (known: a, b)"
    assert reg.refusal(b"x", _ready("b", "e3", "e1"), 0.0) == (
        "node 'b' claims experts ['e1'] that the fleet does not place on it (placed: ['e3'])")
    assert reg.refusal(b"id-a", _ready("a", "e1"), 0.0) is None  # a subset is fine
    reg.ready(b"id-a", _ready("a", "e1", "e2"), 0.0)
    # the name is live and beating on id-a: another connection cannot take it over ...
    reg.beat(b"id-a", 1.0)
    why = reg.refusal(b"id-x", _ready("a", "e1", "e2"), 2.4)
    assert why is not None and "node 'a' is live on another connection (heard 1.40 s ago)" in why
    assert reg.refusal(b"id-a", _ready("a", "e1", "e2"), 2.4) is None  # its own READY again
    # ... until id-a has been silent 1.5 heartbeats (a dead process), well before it expires
    assert reg.refusal(b"id-x", _ready("a", "e1", "e2"), 2.5) is None
    reg.ready(b"id-x", _ready("a", "e1", "e2"), 2.5)
    assert b"id-a" not in reg and reg.node_of("e1").identity == b"id-x"  # type: ignore[union-attr]
    # without a placement every READY is admitted, as before
    open_reg = Registry(1.0, 3)
    open_reg.ready(b"id-a", _ready("a", "e1"), 0.0)
    assert open_reg.refusal(b"id-z", _ready("z", "e1", "e9"), 0.0) is None
    assert open_reg.refusal(b"id-x", _ready("a", "e1"), 0.1) is None


def test_strikes_quarantine_a_node_for_a_while():
    reg = Registry(1.0, 100, placement={"a": ["e1"], "b": ["e2"]}, quarantine_after=3, quarantine_s=10.0)
    reg.ready(b"id-a", _ready("a", "e1"), 0.0)
    reg.ready(b"id-b", _ready("b", "e2"), 0.0)
    assert [reg.strike("a", t) for t in (1.0, 5.0)] == [False, False]
    assert reg.strike("a", 12.0) is False  # the strike at 1.0 left the 10 s window
    assert reg.live_experts == ("e1", "e2")
    assert reg.strike("a", 13.0) is True  # 5.0, 12.0, 13.0
    assert reg.live_experts == ("e2",) and reg.quarantined_until("a") == 23.0
    assert reg.entry("a") is not None and reg.next_expiry() == 23.0  # still connected
    assert reg.strike("a", 14.0) is False  # already quarantined
    reg.ready(b"id-a2", _ready("a", "e1"), 15.0)  # a reconnect does not end it
    assert reg.live_experts == ("e2",)
    assert reg.expire(22.9) == [] and reg.live_experts == ("e2",)
    assert reg.expire(23.0) == [] and reg.live_experts == ("e1", "e2")
    assert reg.quarantined_until("a") is None
    assert reg.strike("a", 24.0) is False  # counting starts again


SANE_LP = tuple(float(x) for x in np.log([0.1, 0.6, 0.2, 0.1]))


def _result(**kw: object) -> Result:
    base = {"id": "t1", "expert": "e1", "compute_ms": 3.0, "energy_j": 0.05,
            "energy_source": "modelled", "logprobs": SANE_LP}
    return Result(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(("kw", "needle"), [
    ({"logprobs": tuple([math.log(1 / 7)] * 7)}, "got 7 log-probs for 4 options"),
    ({"logprobs": (float("nan"), -1.0, -1.0, -1.0)}, "must all be finite"),
    ({"logprobs": (-math.inf, -0.1, -3.0, -3.0)}, "must all be finite"),
    ({"logprobs": (-1000.0,) * 4}, "not renormalised over the options"),
    ({"logprobs": (0.0,) * 4}, "logsumexp=1.386"),
    ({"logprobs": None}, "an options TASK needs 4 log-probs, got none"),
    ({"text": "B"}, "got a text too"),
    ({"energy_j": -3.0}, "energy_j=-3.0 must be a finite number >= 0"),
    ({"energy_j": float("inf")}, "energy_j=inf must be"),
    ({"compute_ms": float("nan")}, "compute_ms=nan must be"),
    ({"energy_source": "measured:vibes"}, "energy_source='measured:vibes' is not one of"),
    ({"n_tokens": -1}, "n_tokens=-1 must be >= 0"),
    ({"expert": "e2"}, "expert='e2' but the TASK went to expert 'e1'"),
])
def test_check_result_names_what_is_wrong(kw, needle):
    why = check_result(_result(**kw), "e1", OPTIONS)
    assert why is not None and needle in why, why


def test_check_result_accepts_sane_results():
    assert check_result(_result(), "e1", OPTIONS) is None
    assert check_result(_result(energy_j=0.0, energy_source="measured:nvml"), "e1", OPTIONS) is None
    gen = _result(logprobs=None, text="Paris.", n_tokens=2)
    assert check_result(gen, "e1", None) is None
    assert "needs a text" in (check_result(_result(logprobs=None), "e1", None) or "")
    assert "takes a text, got 4 log-probs" in (check_result(_result(text="x"), "e1", None) or "")


# ---------------------------------------------------------------- in-test nodes


class FakeNode:
    """A node in this process: a DEALER on a thread that sends READY, heartbeats, re-sends
    READY on ``not_ready``, and answers each TASK with ``respond(task)``: a list of
    (delay_s, message). The default is what a toy node computes."""

    def __init__(self, endpoint: str, name: str, experts: list[str]) -> None:
        self.endpoint, self.name, self.experts = endpoint, name, experts
        self.identity = f"fake-{name}-{uuid.uuid4().hex[:8]}".encode()
        self.toys = {e: ToyExpert(e) for e in experts}
        self.tasks: list[Task] = []
        self.errors: list[tuple[float, Error]] = []
        self.respond: Callable[[Task], list[tuple[float, Message]]] = self.sane
        self._outbox: list[tuple[float, Message]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sane(self, task: Task) -> list[tuple[float, Message]]:
        return [(0.0, self.toy_result(task))]

    def toy_result(self, task: Task) -> Result:
        toy = self.toys[task.expert]
        if task.options is None:
            return Result(task.id, task.expert, 1.0, 0.015, "modelled",
                          text=toy.generate(task.prompt, task.max_new_tokens).text, n_tokens=1)
        lp = toy.score_options(task.prompt, list(task.options), task.mode)
        return Result(task.id, task.expert, 1.0, 0.015, "modelled", tuple(float(x) for x in lp))

    def send_later(self, delay_s: float, msg: Message) -> None:
        with self._lock:
            self._outbox.append((time.monotonic() + delay_s, msg))

    def _run(self) -> None:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, self.identity)
        sock.connect(self.endpoint)
        ready = _ready(self.name, *self.experts)
        sock.send_multipart(encode(ready))
        next_beat = time.monotonic() + HEARTBEAT_S
        try:
            while not self._stop.is_set():
                if sock.poll(5):
                    while True:
                        try:
                            msg = decode(sock.recv_multipart(zmq.NOBLOCK))
                        except zmq.Again:
                            break
                        if isinstance(msg, Task):
                            self.tasks.append(msg)
                            for delay, out in self.respond(msg):
                                self.send_later(delay, out)
                        elif isinstance(msg, Error):
                            self.errors.append((time.monotonic(), msg))
                            if msg.code == ErrorCode.NOT_READY:
                                sock.send_multipart(encode(ready))
                now = time.monotonic()
                with self._lock:
                    due = [m for t, m in self._outbox if t <= now]
                    self._outbox = [(t, m) for t, m in self._outbox if t > now]
                for m in due:
                    sock.send_multipart(encode(m))
                if now >= next_beat:
                    sock.send_multipart(encode(Heartbeat(self.name)))
                    next_beat = now + HEARTBEAT_S
        finally:
            sock.close(linger=0)

    def stop(self) -> None:
        """Die: no more messages from this identity."""
        self._stop.set()
        self._thread.join(timeout=5)


@dataclasses.dataclass
class Trial:
    fleet: Fleet
    b: FakeNode
    c: FakeNode
    client: EdgeMoEClient
    fakes: list[FakeNode]  # every in-test node started, stopped at teardown

    @property
    def log(self) -> str:
        return "".join(self.fleet.coordinator.log)


E = [f"synth-expert-{i}" for i in range(4)]
PLACED = {E[i]: n for n, idx in NODES.items() for i in idx}


def _query(t: Trial, i: int, **kw: object) -> Reply:
    r = t.client.query(f"Question {i}: which colour is item {i * 7919 % 101}? Answer:", OPTIONS,
                       deadline_ms=1500, **kw)  # type: ignore[arg-type]
    assert isinstance(r, Reply), r
    return r


def _use(r: Reply, expert: str):  # type: ignore[no-untyped-def]
    return next((u for u in r.experts if u.name == expert), None)


def _assert_valid(r: Reply) -> None:
    """docs/protocol.md's REPLY rules for an options query."""
    assert r.probabilities is not None and len(r.probabilities) == len(OPTIONS)
    assert all(math.isfinite(p) and p >= 0 for p in r.probabilities)
    assert math.isclose(sum(r.probabilities), 1.0, rel_tol=1e-6)  # float32 prior correction
    assert r.answer_index == int(np.argmax(r.probabilities))
    assert math.isfinite(r.energy_j) and r.energy_j >= 0
    assert r.energy_j == pytest.approx(sum(u.energy_j for u in r.experts if u.status == "ok"))
    assert all(u.node == PLACED[u.name] for u in r.experts)
    assert r.degraded == any(u.status != "ok" for u in r.experts)


@pytest.fixture(scope="module")
def trial(assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trial]:
    raw = yaml.safe_load(assets.fleet.read_text())
    raw["coordinator"].update(liveness=LIVENESS, quarantine_after=QUARANTINE_AFTER,
                              quarantine_s=QUARANTINE_S)
    path = tmp_path_factory.mktemp("untrusted") / "fleet.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    mine = dataclasses.replace(assets, fleet=path)
    coord = Proc(["edge_moe.cli", "coordinator", "--config", str(path), "--gate", str(assets.gate),
                  "--calibration", str(assets.calibration), "--profiles", str(assets.profiles),
                  "--toy-encoder", str(DIM), "--frontend", "tcp://127.0.0.1:*",
                  "--backend", "tcp://127.0.0.1:*"])
    words = coord.expect("coordinator frontend").split()
    fleet = Fleet(mine, coord, words[2], words[4])
    fakes: list[FakeNode] = []
    try:
        fleet.start_node("node-a")  # a real toy node process: synth-expert-0 and -1
        fakes = [FakeNode(fleet.backend, "node-b", [E[2]]), FakeNode(fleet.backend, "node-c", [E[3]])]
        with EdgeMoEClient(fleet.frontend, timeout_s=5, retries=0) as client:
            t = Trial(fleet, fakes[0], fakes[1], client, fakes)
            end = time.monotonic() + 20
            while len(_query(t, 0).plan.live) < 4:
                assert time.monotonic() < end, "the fleet never became live"
                time.sleep(0.05)
            yield t
    finally:
        for f in fakes:
            f.stop()
        fleet.stop()


# ---------------------------------------------------------------- over the wire


def _backend_dealer(endpoint: str) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.IDENTITY, b"hostile-" + uuid.uuid4().hex[:6].encode())
    s.connect(endpoint)
    return s


def _recv_all(sock: zmq.Socket, wait_ms: int) -> list[Message]:
    out = []
    while sock.poll(wait_ms):
        out.append(decode(sock.recv_multipart()))
        wait_ms = 50
    return out


def test_hostile_ready_is_refused_and_gets_no_task(trial: Trial):
    hostile = _backend_dealer(trial.fleet.backend)
    try:
        cases = [
            (_ready("node-z", E[3]), "node 'node-z' is not in the fleet (known: node-a, node-b, node-c)"),
            (_ready("node-b", E[2], E[3]), "node 'node-b' claims experts ['synth-expert-3'] that the "
                                           "fleet does not place on it (placed: ['synth-expert-2'])"),
            (_ready("node-c", E[3]), "node 'node-c' is live on another connection"),
        ]
        for ready, needle in cases:
            hostile.send_multipart(encode(ready))
            (msg,) = _recv_all(hostile, 3000)
            assert isinstance(msg, Error) and msg.code == ErrorCode.REFUSED and needle in msg.message, msg
        hostile.send_multipart(encode(Heartbeat("node-z")))  # it is not registered
        (msg,) = _recv_all(hostile, 3000)
        assert isinstance(msg, Error) and msg.code == ErrorCode.NOT_READY, msg
        c_before = len(trial.c.tasks)
        replies = [_query(trial, 1000 + i) for i in range(20)]
        got = _recv_all(hostile, 300)
        tasks = [m for m in got if isinstance(m, Task)]
        assert tasks == [], f"the hostile node got {len(tasks)} TASKs"
        for r in replies:
            assert not r.degraded and len(r.plan.live) == 4, r
            _assert_valid(r)
        used_c = sum(_use(r, E[3]) is not None for r in replies)
        assert used_c > 0 and len(trial.c.tasks) - c_before == used_c
        assert "refused READY from" in trial.log and "node 'node-z' is not in the fleet" in trial.log
        print(f"\nhostile node: {len(cases)} READYs refused, 0 TASKs of {sum(len(r.experts) for r in replies)} "
              f"reached it; {len(replies)} replies valid, {used_c} used the real {E[3]} on node-c")
    finally:
        hostile.close(linger=0)


def test_bad_results_are_errors_and_quarantine_the_node(trial: Trial):
    def bad(task: Task, **kw: object) -> Result:
        r = trial.c.toy_result(task)
        return dataclasses.replace(r, **kw)  # type: ignore[arg-type]

    variants = [
        (lambda t: bad(t, logprobs=tuple([math.log(1 / 7)] * 7)), "got 7 log-probs for 4 options"),
        (lambda t: bad(t, logprobs=(float("nan"),) * 4), "must all be finite"),
        (lambda t: bad(t, energy_j=-3.0), "energy_j=-3.0 must be a finite number >= 0"),
    ]
    assert len(variants) == QUARANTINE_AFTER
    queue = list(variants)

    def respond(task: Task) -> list[tuple[float, Message]]:
        return [(0.0, queue.pop(0)[0](task))] if queue else trial.c.sane(task)

    trial.c.respond = respond
    try:
        bad_replies: list[Reply] = []
        i = 2000
        while len(bad_replies) < QUARANTINE_AFTER:
            r = _query(trial, i)
            i += 1
            _assert_valid(r)
            u = _use(r, E[3])
            if u is not None and u.status == "error":
                bad_replies.append(r)
            assert i < 2200, "node-c was never asked"
        for r, (_, needle) in zip(bad_replies, variants, strict=True):
            u = _use(r, E[3])
            assert u is not None and u.error.startswith("bad RESULT: ") and needle in u.error, u
            assert u.energy_j == 0.0 and u.logprobs is None and u.compute_ms == 0.0
            assert r.degraded and any(f"{E[3]} (node-c) error: bad RESULT" in x for x in r.reasons)
        # three strikes: node-c is out of the plans, the replies are whole again ...
        t_quarantined = time.monotonic()
        r = _query(trial, 3000)
        assert E[3] not in r.plan.live and len(r.plan.live) == 3 and not r.degraded, r
        assert "node node-c sent 3 bad RESULTs" in trial.log and "quarantined for 1.5 s" in trial.log
        # ... for quarantine_s, while it stays connected; then it is planned (and now sane) again
        end = t_quarantined + QUARANTINE_S + 3
        while E[3] not in (r := _query(trial, 3001)).plan.live:
            assert time.monotonic() < end, "node-c never came back from quarantine"
            time.sleep(0.05)
        back_s = time.monotonic() - t_quarantined
        assert back_s >= QUARANTINE_S - 0.3
        uses = [u for j in range(20) if (u := _use(_query(trial, 4000 + j), E[3])) is not None]
        assert uses and all(u.status == "ok" for u in uses)
        print(f"\nbad results: {len(bad_replies)} counted as errors (replies valid, degraded), "
              f"quarantined, back after {back_s:.2f} s")
    finally:
        trial.c.respond = trial.c.sane


def test_a_result_for_another_nodes_task_is_dropped(trial: Trial):
    stolen: list[str] = []
    uniform = tuple([math.log(0.25)] * 4)

    def respond(task: Task) -> list[tuple[float, Message]]:
        if stolen:
            return trial.c.sane(task)
        stolen.append(task.id)  # node-b answers node-c's task first; node-c answers 150 ms later
        trial.b.send_later(0.0, Result(task.id, task.expert, 1.0, 0.01, "modelled", uniform))
        return [(0.15, trial.c.toy_result(task))]

    trial.c.respond = respond
    try:
        i = 5000
        while not stolen:
            r = _query(trial, i)
            i += 1
            assert i < 5200, "node-c was never asked"
        u = _use(r, E[3])
        assert u is not None and u.status == "ok", u
        want = ToyExpert(E[3]).score_options(f"Question {i - 1}: which colour is item "
                                            f"{(i - 1) * 7919 % 101}? Answer:", list(OPTIONS))
        np.testing.assert_allclose(u.logprobs, want, atol=1e-12)  # node-c's own answer, not node-b's
        assert u.rtt_ms >= 140, u.rtt_ms  # node-b's RESULT did not resolve the task
        _assert_valid(r)
        assert f"dropped a RESULT for task {stolen[0]} from node node-b" in trial.log
    finally:
        trial.c.respond = trial.c.sane


def test_a_restarted_node_takes_over_within_its_liveness_window(trial: Trial):
    old = trial.c
    old.stop()
    t_dead = time.monotonic()
    new = FakeNode(trial.fleet.backend, "node-c", [E[3]])  # a new process: a new identity, at once
    trial.c = new
    trial.fakes.append(new)
    window_s = HEARTBEAT_S * LIVENESS
    i = 6000
    while not new.tasks:
        r = _query(trial, i)
        i += 1
        assert time.monotonic() - t_dead < window_s + 2, "the restarted node-c was never used"
    admitted_s = time.monotonic() - t_dead
    # its first READY came while the old connection had just beaten: refused, then retried on
    # its next HEARTBEAT's not_ready, and admitted once the old one was 1.5 beats silent
    refused = [e for _, e in new.errors if e.code == ErrorCode.REFUSED]
    assert refused and "is live on another connection" in refused[0].message
    assert admitted_s < window_s, admitted_s
    assert "node node-c: a new connection replaces the old one" in trial.log
    assert "node node-c missed" not in trial.log  # taken over, not expired
    r = _query(trial, 7000)
    assert len(r.plan.live) == 4 and not r.degraded
    print(f"\nrestart: node-c refused once, then used {admitted_s:.2f} s after the old one died "
          f"(liveness window {window_s:.1f} s)")
