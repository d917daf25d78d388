"""The node's scheduler (:mod:`nodes.scheduler`) and its runners' declared capabilities,
in-process: the bound, batching by declared capability, joins, and the settings checks."""

from __future__ import annotations

import threading
import time

import pytest

from edge_moe.errors import ConfigError
from edge_moe.runtime.capabilities import Capability, check_runner
from edge_moe.runtime.toy import ToyExpert
from edge_moe.wire import Heartbeat, Task
from nodes.scheduler import Scheduler
from nodes.server import HostedExpert, NodeServer
from tests.unit.nodes.fakes import CFG, CPU, BatchingToy

pytestmark = pytest.mark.timeout(60)


def _score(i: int, expert: str = "b") -> Task:
    return Task(f"s{i}", expert, "p", 60_000.0, ("a", "b"))


def _gen(i: int, expert: str = "b") -> Task:
    return Task(f"g{i}", expert, "p", 60_000.0, None)


def _ids(batch) -> list[str]:
    return [t.id for t, _ in batch]


def test_the_queue_is_bounded():
    s = Scheduler("n", {"b": BatchingToy()}, max_queue=2)
    assert s.offer(_score(0), 0.0) and s.offer(_score(1), 0.0)
    assert not s.offer(_score(2), 0.0)  # refused: the caller answers ERROR overloaded
    assert _ids(s.take() or []) == ["s0", "s1"]
    assert s.idle and s.offer(_score(3), 0.0)


def test_batches_hold_one_expert_and_one_kind_only_for_runners_that_declare_it():
    s = Scheduler("n", {"b": BatchingToy(), "t": ToyExpert("t")}, max_batch=3, batch_wait_ms=0)
    for task in (_score(0), _gen(0), _score(1, "t"), _score(2), _score(3), _score(4), _score(5, "t")):
        assert s.offer(task, 0.0)
    assert _ids(s.take() or []) == ["s0", "s2", "s3"]  # max_batch, oldest first, same kind
    assert _ids(s.take() or []) == ["g0"]  # a generation alone: no other waits
    assert _ids(s.take() or []) == ["s1"]  # ToyExpert declares no batching
    assert _ids(s.take() or []) == ["s4"]
    assert _ids(s.take() or []) == ["s5"]
    assert s.idle


def test_a_join_takes_only_from_the_front_of_the_queue():
    s = Scheduler("n", {"b": BatchingToy()})
    for task in (_gen(1), _gen(2), _score(3), _gen(4)):
        s.offer(task, 0.0)
    assert _ids(s.join(_gen(0), room=5)) == ["g1", "g2"]  # stops at the scoring task
    assert s.join(_gen(0), room=0) == []
    assert _ids(s.take() or []) == ["s3"]


def test_a_short_batch_waits_under_load_and_close_wakes_the_worker():
    s = Scheduler("n", {"b": BatchingToy()}, max_batch=3, batch_wait_ms=2000)
    s.offer(_score(0), 0.0)
    s.offer(_score(1), 0.0)  # two waiting: concurrent load, so the batch waits for a third
    threading.Timer(0.1, lambda: s.offer(_score(2), 0.0)).start()
    t0 = time.monotonic()
    assert _ids(s.take() or []) == ["s0", "s1", "s2"]
    assert time.monotonic() - t0 < 1.5  # full: served at once, not after the whole wait
    threading.Timer(0.1, s.close).start()
    assert s.take() is None


def test_batching_settings_are_checked():
    with pytest.raises(ConfigError, match="max_batch=0"):
        NodeServer("n", "tcp://127.0.0.1:1", {"e": object()}, CPU, CFG, max_batch=0)  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="batch_wait_ms=nan"):
        NodeServer("n", "tcp://127.0.0.1:1", {"e": object()}, CPU, CFG,  # type: ignore[dict-item]
                   batch_wait_ms=float("nan"))
    assert isinstance(Heartbeat("n").batch, float)


class _Liar(ToyExpert):
    capabilities = frozenset({Capability.BATCH_SCORE})  # without score_batch


def test_a_runner_is_checked_against_what_it_declares():
    with pytest.raises(ConfigError, match="expert 'e': a object is not a runner"):
        NodeServer("n", "tcp://127.0.0.1:1", {"e": object()}, CPU, CFG)  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="declares batch_score but is not a BatchScorer"):
        NodeServer("n", "tcp://127.0.0.1:1", {"e": HostedExpert(_Liar("e"))}, CPU, CFG)
    assert check_runner(BatchingToy(), "x").capabilities == {Capability.BATCH_SCORE, Capability.BATCH_GENERATE}
    with NodeServer("n", "tcp://127.0.0.1:1", {"e": ToyExpert("e")}, CPU, CFG) as server:
        assert server.ready_message().experts[0].runner == "toy-onnx"  # a bare runner names itself
