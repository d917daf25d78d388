"""A streamed TASK's PARTIALs (:class:`nodes.execution.PartialStream`): the first piece at
once, later ones joined at most once per ``stream_flush_ms``, what is held sent before the
RESULT; pieces in order, adding up to the RESULT's text, alone and in a decode batch."""

from __future__ import annotations

import time

import pytest

import nodes.execution as execution
from edge_moe.wire import Message, Partial, Result, Task
from nodes.execution import PartialStream
from tests.unit.nodes.fakes import executor
from tests.unit.runtime.fakegraph import FakeGraph

pytestmark = pytest.mark.timeout(60)

PROMPTS = ["Say hi", "The capital of France is", "1 2 3 4 5"]


def _task(i: int, n: int = 12) -> Task:
    return Task(f"t{i}", "e", PROMPTS[i % len(PROMPTS)], 60_000.0, None, max_new_tokens=n, stream=True)


def _serve(ex, tasks: list[Task]) -> list[Message]:
    sent: list[Message] = []
    for t in tasks:
        assert ex.scheduler.offer(t, time.monotonic())
    while not ex.scheduler.idle:
        ex.serve_batch(ex.scheduler.take(), sent.append)
    return sent


def test_the_first_piece_goes_at_once_and_later_ones_wait_for_the_interval() -> None:
    sent: list[Message] = []
    s = PartialStream(sent.append, _task(0), flush_ms=60_000)
    for piece in ["Once", " upon", " a", " time"]:
        s(piece)
    assert [(p.text, p.index) for p in sent] == [("Once", 0)]  # the rest is held
    s.flush()
    s.flush()  # nothing held: nothing sent
    assert [(p.text, p.index) for p in sent] == [("Once", 0), (" upon a time", 1)]
    assert all(isinstance(p, Partial) and p.id == "t0" and p.expert == "e" for p in sent)


def test_flush_ms_zero_sends_every_piece_and_a_long_text_is_split(monkeypatch) -> None:
    sent: list[Message] = []
    s = PartialStream(sent.append, _task(0), flush_ms=0)
    for piece in ["a", "b", "c"]:
        s(piece)
    assert [p.text for p in sent] == ["a", "b", "c"] and [p.index for p in sent] == [0, 1, 2]
    monkeypatch.setattr(execution, "MAX_PARTIAL_CHARS", 4)
    sent.clear()
    s = PartialStream(sent.append, _task(1), flush_ms=60_000)
    s("x")
    s("0123456789")
    s.flush()
    assert [p.text for p in sent] == ["x", "0123", "4567", "89"] and [p.index for p in sent] == [0, 1, 2, 3]


@pytest.mark.parametrize("max_batch", [1, 8], ids=["alone", "batched"])
@pytest.mark.parametrize("flush_ms", [0.0, 60_000.0], ids=["every-piece", "held"])
def test_the_pieces_add_up_to_the_result_and_come_before_it(max_batch, flush_ms) -> None:
    g = FakeGraph()
    tasks = [_task(i) for i in range(3 if max_batch > 1 else 1)]
    sent = _serve(executor(g, max_batch=max_batch, stream_flush_ms=flush_ms), tasks)
    for t in tasks:
        mine = [m for m in sent if m.id == t.id]
        result = mine[-1]
        assert isinstance(result, Result) and result.finish_reason == "length", mine
        parts = mine[:-1]
        assert parts and all(isinstance(p, Partial) for p in parts)
        assert [p.index for p in parts] == list(range(len(parts)))
        assert "".join(p.text for p in parts) == result.text
        pieces: list[str] = []
        want = g.generate(t.prompt, t.max_new_tokens, on_text=pieces.append)
        assert result.text == want.text
        if flush_ms == 0:  # one PARTIAL per piece the runner decoded
            assert [p.text for p in parts] == pieces
        else:  # the first piece at once, the rest held until the RESULT
            assert [p.text for p in parts] == [pieces[0], "".join(pieces[1:])]
