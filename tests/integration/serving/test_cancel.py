"""Issue 24 end to end on real ZeroMQ sockets: an in-process Coordinator, a client, and fake
nodes (DEALER sockets the test answers by hand). CANCEL from the client reaches each open
task's node and answers the client ERROR cancelled; the node's late RESULT is counted as
cancelled work; a query finished at its deadline cancels its open tasks too; sampling
travels in the TASK and the speaker's finish reason and token log-probs come back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from edge_moe.client import EdgeMoEClient
from edge_moe.config import BudgetConfig, CoordinatorConfig
from edge_moe.runtime.toy import ToyEncoder
from edge_moe.wire import (
    Cancel,
    Error,
    ErrorCode,
    ExpertInfo,
    Message,
    Partial,
    Query,
    Ready,
    Reply,
    Result,
    Sampling,
    Task,
    TokenLogprob,
    decode,
    encode,
)
from gating.coordinator import Coordinator
from gating.coordinator.routing import load_router
from tests.toyfleet import DIM, NODES

pytestmark = pytest.mark.timeout(120)

SAMPLED = Sampling(temperature=0.7, top_p=0.9, seed=11, stop=("\n",), logprobs=True, top_logprobs=1)


class FakeNodes:
    """One DEALER per toy node, READY at start; the test reads what each gets and answers."""

    def __init__(self, endpoint: str, experts: tuple[str, ...]) -> None:
        self.ctx = zmq.Context.instance()
        self.socks: dict[str, zmq.Socket] = {}
        self.node_of = {experts[i]: n for n, idx in NODES.items() for i in idx}
        for name, idx in NODES.items():
            s = self.ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(endpoint)
            s.send_multipart(encode(Ready(name, tuple(ExpertInfo(experts[i], "onnxruntime", "fp32")
                                                      for i in idx), "cpu", "modelled")))
            self.socks[name] = s

    def get(self, kind: type, n: int = 1, timeout_s: float = 10.0) -> list[tuple[str, Message]]:
        """The next ``n`` messages of ``kind`` (others are skipped), with the node each went to."""
        got: list[tuple[str, Message]] = []
        end = time.monotonic() + timeout_s
        poller = zmq.Poller()
        for s in self.socks.values():
            poller.register(s, zmq.POLLIN)
        while len(got) < n and time.monotonic() < end:
            for sock, _ in poller.poll(50):
                name = next(k for k, v in self.socks.items() if v is sock)
                msg = decode(sock.recv_multipart())
                if isinstance(msg, kind):
                    got.append((name, msg))
        assert len(got) == n, f"wanted {n} {kind.__name__}, got {got}"
        return got

    def none(self, kind: type, wait_s: float = 0.3) -> None:
        """Nothing of ``kind`` arrives within ``wait_s``."""
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            for s in self.socks.values():
                if s.poll(10):
                    msg = decode(s.recv_multipart())
                    assert not isinstance(msg, kind), msg

    def send(self, node: str, msg: Message) -> None:
        self.socks[node].send_multipart(encode(msg))

    def close(self) -> None:
        for s in self.socks.values():
            s.close(linger=0)


class SlowEncoder(ToyEncoder):
    """Embeds after a pause, so a query can be caught while it waits to be embedded."""

    def embed(self, texts):
        time.sleep(0.5)
        return super().embed(texts)


class Served:
    def __init__(self, assets, embedder: ToyEncoder) -> None:
        router = load_router(assets.gate, assets.calibration, assets.profiles, BudgetConfig(), top_k=2)
        # heartbeats far apart: the fake nodes stay live (and not suspect) without beating
        cfg = CoordinatorConfig(node="x", heartbeat_s=5.0, liveness=20, load_aware=False)
        self.coord = Coordinator(router, embedder, cfg, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
        self.thread = threading.Thread(target=self.coord.run, daemon=True)
        self.thread.start()
        self.nodes = FakeNodes(self.coord.backend_endpoint, router.experts)
        self.client = EdgeMoEClient(self.coord.frontend_endpoint, timeout_s=5, retries=0)
        end = time.monotonic() + 10
        while len(self.coord.registry.live_experts) < len(router.experts):
            assert time.monotonic() < end, "the fake nodes did not join"
            time.sleep(0.02)

    @property
    def stats(self) -> dict[str, float]:
        return self.coord.snapshot()["stats"]

    def metric(self, name: str, **labels: str) -> float:
        return self.coord.metrics.registry.get_sample_value(name, labels) or 0.0

    def close(self) -> None:
        self.client.close()
        self.nodes.close()
        self.coord.stop()
        self.thread.join(5)
        self.coord.close()


@pytest.fixture
def served(assets) -> Iterator[Served]:
    s = Served(assets, ToyEncoder(DIM))
    yield s
    s.close()


def _spent(task: Task, n_tokens: int, energy_j: float, reason: str = "cancelled") -> Result:
    return Result(task.id, task.expert, 12.0, energy_j, "modelled", text="so far", n_tokens=n_tokens,
                  finish_reason=reason)


def test_cancel_reaches_each_open_task_and_the_late_result_is_counted(served):
    q = Query("c1", "Write a long poem about the sea.", None, max_new_tokens=64, deadline_ms=20_000)
    served.client.send(q)
    tasks = served.nodes.get(Task, n=2)  # greedy generation: top_k=2, two TASKs out
    assert len({t.id for _, t in tasks}) == 2 and all(t.max_new_tokens == 64 for _, t in tasks)
    served.client.cancel("c1")
    answer = served.client.receive("c1")
    assert isinstance(answer, Error) and answer.code == ErrorCode.CANCELLED, answer
    cancels = served.nodes.get(Cancel, n=2)
    assert sorted((n, c.id) for n, c in cancels) == sorted((n, t.id) for n, t in tasks)
    assert served.coord.inflight.tasks == {} and len(served.coord.inflight) == 0
    assert all(served.coord.load.outstanding(n) == 0 for n in NODES)
    # the nodes answer what they spent before they stopped (one RESULT raced the CANCEL)
    (n1, t1), (n2, t2) = tasks
    served.nodes.send(n1, _spent(t1, 3, 0.5))
    served.nodes.send(n2, _spent(t2, 2, 0.25, reason="length"))
    served.nodes.send(n2, _spent(t2, 2, 0.25, reason="length"))  # a duplicate counts once
    end = time.monotonic() + 5
    while served.stats["cancelled_tokens"] < 5 and time.monotonic() < end:
        time.sleep(0.02)
    s = served.stats
    assert s["cancelled"] == 1 and s["cancels_sent"] == 2
    assert (s["cancelled_tokens"], s["cancelled_energy_j"], s["cancelled_compute_ms"]) == (5, 0.75, 24.0)
    assert served.metric("edge_moe_cancelled_queries_total") == 1
    assert served.metric("edge_moe_cancelled_tokens_total", reason="client") == 5
    assert served.metric("edge_moe_cancelled_energy_joules_total", reason="client") == 0.75
    assert served.metric("edge_moe_requests_total", status="cancelled", mode="-") == 1
    # the client got nothing more; a CANCEL again (now finished) is ignored and counted
    served.client.cancel("c1")
    assert served.client.receive("c1", timeout_s=0.3) is None
    assert served.stats["cancel_unknown"] == 1


def test_cancel_for_an_unknown_id_is_ignored(served):
    served.client.cancel("never-sent")
    assert served.client.receive("never-sent", timeout_s=0.3) is None
    served.nodes.none(Cancel)
    assert served.stats["cancel_unknown"] == 1 and served.stats["cancelled"] == 0
    # another connection cannot cancel this client's query: the id is per connection
    q = Query("mine", "Name a colour.", None, expert=served.coord.router.experts[0], deadline_ms=10_000)
    served.client.send(q)
    ((node, task),) = served.nodes.get(Task)
    with EdgeMoEClient(served.coord.frontend_endpoint, timeout_s=1, retries=0) as other:
        other.cancel("mine")
        time.sleep(0.2)
    served.nodes.none(Cancel, 0.2)
    served.nodes.send(node, Result(task.id, task.expert, 2.0, 0.1, "modelled", text="Red", n_tokens=1,
                                   finish_reason="stop"))
    r = served.client.receive("mine")
    assert isinstance(r, Reply) and r.text == "Red" and r.finish_reason == "stop"
    assert served.stats["cancel_unknown"] == 2


def test_sampling_goes_in_the_task_and_the_speakers_fields_come_back(served):
    q = Query("s1", "Tell me a story.", None, max_new_tokens=8, deadline_ms=10_000, sampling=SAMPLED)
    served.client.send(q)
    ((node, task),) = served.nodes.get(Task)  # sampled: the top expert alone
    assert task.sampling == SAMPLED and task.max_new_tokens == 8
    served.nodes.none(Task, 0.2)
    tl = (TokenLogprob("Once", -0.2, ("Once",), (-0.2,)),)
    served.nodes.send(node, Result(task.id, task.expert, 5.0, 0.1, "modelled", text="Once", n_tokens=1,
                                   finish_reason="stop", token_logprobs=tl))
    r = served.client.receive("s1")
    assert isinstance(r, Reply) and r.text == "Once", r
    assert (r.finish_reason, r.token_logprobs) == ("stop", tl)
    (use,) = r.experts
    assert (use.name, use.finish_reason, use.token_logprobs) == (task.expert, "stop", tl)
    # a greedy QUERY sends no sampling
    served.client.send(Query("g1", "Tell me a story.", None, max_new_tokens=8, deadline_ms=10_000))
    assert all(t.sampling is None for _, t in served.nodes.get(Task, n=2))


def test_a_deadline_finish_cancels_the_late_task(served):
    q = Query("d1", "Write a long poem about the sea.", None, max_new_tokens=64, deadline_ms=600)
    served.client.send(q)
    (n1, t1), (n2, t2) = served.nodes.get(Task, n=2)
    served.nodes.send(n1, Result(t1.id, t1.expert, 5.0, 0.1, "modelled", text="Waves", n_tokens=1,
                                 finish_reason="stop"))
    r = served.client.receive("d1")
    assert isinstance(r, Reply) and r.degraded and r.text == "Waves", r
    ((node, cancel),) = served.nodes.get(Cancel)
    assert (node, cancel.id) == (n2, t2.id)
    served.nodes.send(n2, _spent(t2, 7, 1.5))
    end = time.monotonic() + 5
    while served.stats["cancelled_tokens"] < 7 and time.monotonic() < end:
        time.sleep(0.02)
    assert served.stats["cancelled_tokens"] == 7 and served.stats["cancelled"] == 0
    assert served.metric("edge_moe_cancelled_energy_joules_total", reason="finished") == 1.5
    assert served.metric("edge_moe_cancelled_queries_total") == 0


def test_a_cancelled_streams_partials_are_dropped(served):
    q = Query("p1", "Tell me a story.", None, max_new_tokens=16, deadline_ms=10_000, sampling=SAMPLED,
              stream=True)
    served.client.send(q)
    ((node, task),) = served.nodes.get(Task)
    assert task.stream
    served.nodes.send(node, Partial(task.id, task.expert, "Once", 0))
    sock = served.client.sock
    assert sock.poll(5000)
    first = decode(sock.recv_multipart()[1:])
    assert isinstance(first, Partial) and first.id == "p1" and first.text == "Once"
    served.client.cancel("p1")
    served.nodes.get(Cancel)
    served.nodes.send(node, Partial(task.id, task.expert, " upon", 1))  # sent before the node stopped
    answer = served.client.receive("p1")  # receive() skips PARTIALs: look at the socket itself
    assert isinstance(answer, Error) and answer.code == ErrorCode.CANCELLED
    assert not sock.poll(300), decode(sock.recv_multipart()[1:])


def test_a_query_waiting_to_be_embedded_is_cancelled_before_any_task(assets):
    s = Served(assets, SlowEncoder(DIM))
    try:
        s.client.send(Query("w1", "Name a colour.", None, deadline_ms=10_000))
        time.sleep(0.1)  # still with the embedding worker
        assert len(s.coord.inflight.waiting) == 1
        s.client.cancel("w1")
        answer = s.client.receive("w1")
        assert isinstance(answer, Error) and answer.code == ErrorCode.CANCELLED, answer
        s.nodes.none(Task, 1.0)  # its score came back to an empty table: nothing was sent
        assert s.stats["cancelled"] == 1 and s.stats["cancels_sent"] == 0 and len(s.coord.inflight) == 0
    finally:
        s.close()
