"""A node's part in sampling and cancellation, in-process (an Executor and its Scheduler over a
numpy decoder graph, no sockets): TASK.sampling reaches the runner alone and batched with the
same tokens, a bad one is ERROR ``runner`` through the one policy; a flagged generation
stops within one decode step and is answered RESULT ``cancelled`` with what it spent."""

from __future__ import annotations

import time

import pytest

from edge_moe.wire import Error, ErrorCode, Message, Result, Sampling, Task
from nodes.scheduler import Scheduler
from tests.unit.nodes.fakes import BatchingToy, executor
from tests.unit.runtime.fakegraph import FakeGraph

pytestmark = pytest.mark.timeout(60)

PROMPTS = ["Say hi", "The capital of France is", "1 2 3 4 5", "Why is the sky blue?"]


def _task(i: int, sampling: Sampling | None = None, n: int = 12) -> Task:
    return Task(f"t{i}", "e", PROMPTS[i % len(PROMPTS)], 60_000.0, None, max_new_tokens=n, sampling=sampling)


def _serve(ex, tasks: list[Task]) -> dict[str, Message]:
    """Queue ``tasks`` and serve what the worker would take, as the worker does."""
    sent: list[Message] = []
    for t in tasks:
        assert ex.scheduler.offer(t, time.monotonic())
    while not ex.scheduler.idle:
        ex.serve_batch(ex.scheduler.take(), sent.append)
    return {m.id: m for m in sent if isinstance(m, (Result, Error))}


@pytest.mark.parametrize("max_batch", [1, 8], ids=["alone", "batched"])
def test_sampling_reaches_the_runner_with_the_same_tokens_alone_and_batched(max_batch):
    g = FakeGraph()
    ex = executor(g, max_batch=max_batch)
    tasks = [_task(i, Sampling(temperature=0.8, top_p=0.95, seed=i, logprobs=i % 2 == 1, top_logprobs=i % 2))
             for i in range(4)]
    got = _serve(ex, tasks)
    assert ex.stats["batches"] == (1 if max_batch > 1 else 0)
    for t in tasks:
        r = got[t.id]
        assert isinstance(r, Result), r
        want = g.generate(t.prompt, t.max_new_tokens, sampling=t.sampling)
        assert r.text == want.text and r.n_tokens == want.n_tokens == 12
        assert r.finish_reason == "length"
        if t.sampling.logprobs:
            assert r.token_logprobs == want.token_logprobs and len(r.token_logprobs) == 12
        else:
            assert r.token_logprobs is None


@pytest.mark.parametrize("max_batch", [1, 8], ids=["alone", "batched"])
def test_stop_strings_and_greedy_finish_reasons(max_batch):
    g = FakeGraph()
    text = g.generate(PROMPTS[0], 12).text
    assert text.index(text[5:8]) == 5  # a stop string across two tokens, nowhere earlier
    ex = executor(g, max_batch=max_batch)
    got = _serve(ex, [_task(0, Sampling(stop=(text[5:8],))), _task(1), _task(2, Sampling())])
    assert got["t0"].text == text[:5] and got["t0"].finish_reason == "stop"
    assert got["t1"].finish_reason == got["t2"].finish_reason == "length"
    assert got["t1"].text == g.generate(PROMPTS[1], 12).text  # greedy


@pytest.mark.parametrize("max_batch", [1, 8], ids=["alone", "batched"])
def test_a_bad_sampling_is_a_runner_error_through_the_one_policy(max_batch):
    ex = executor(FakeGraph(), max_batch=max_batch)
    got = _serve(ex, [_task(0, Sampling(temperature=3.0)), _task(1, Sampling(top_logprobs=2)), _task(2)])
    assert got["t0"].code == got["t1"].code == ErrorCode.RUNNER
    assert got["t0"].message == "e on n: sampling.temperature=3.0 must be in [0, 2]"
    assert "needs sampling.logprobs" in got["t1"].message
    assert isinstance(got["t2"], Result)


def test_a_runner_that_does_not_sample_refuses_sampling_but_not_the_defaults():
    ex = executor(BatchingToy(), max_batch=1)
    got = _serve(ex, [_task(0, Sampling(temperature=1.0)), _task(1, Sampling())])
    assert isinstance(got["t0"], Error) and got["t0"].code == ErrorCode.RUNNER
    assert "does not sample" in got["t0"].message
    assert isinstance(got["t1"], Result)


# ---------------------------------------------------------------- cancellation


@pytest.mark.parametrize("flag_pass", [1, 3], ids=["in-prefill", "in-step-2"])
@pytest.mark.parametrize("max_batch", [1, 8], ids=["alone", "batched"])
def test_a_flagged_generation_stops_within_one_step(max_batch, flag_pass):
    """8 generations (batched: one decode batch; alone: one, via should_stop), flagged during
    the forward pass that gives their n-th token (the prefill, or the 2nd decode step):
    answered 'cancelled' with n tokens, before any further pass."""
    g = FakeGraph()
    ex = executor(g, max_batch=max_batch)
    tasks = [_task(i, Sampling(temperature=0.8, seed=i), n=50) for i in range(8 if max_batch > 1 else 1)]
    flagged_at: list[int] = []

    def flag_all(n: int) -> None:
        if n == flag_pass and not flagged_at:
            flagged_at.append(n)
            assert all(ex.scheduler.flag(t.id) for t in tasks)

    g.on_forward = flag_all
    got = _serve(ex, tasks)
    after = g.calls - flagged_at[0]
    print(f"\n{len(tasks)} generation(s) flagged in pass {flagged_at[0]}: freed after {after} more passes "
          f"(1 step counting the pass in flight)")
    assert after == 0
    for t in tasks:
        r = got[t.id]
        assert isinstance(r, Result) and r.finish_reason == "cancelled", r
        want = g.generate(t.prompt, flag_pass, sampling=t.sampling).text
        assert r.n_tokens == flag_pass and r.text == want
        assert r.compute_ms > 0 and r.energy_j > 0 and r.energy_source == "modelled"
    assert ex.stats["cancelled"] == len(tasks) and ex.stats["results"] == 0
    assert not any(ex.scheduler.flag(t.id) for t in tasks)  # answered: no longer serving


def test_the_scheduler_withdraws_waiting_tasks_and_flags_serving_ones():
    s = Scheduler("n", {"e": FakeGraph()}, max_batch=2)  # type: ignore[dict-item]
    for i in range(3):
        s.offer(_task(i), time.monotonic())
    assert s.flag("t0") is False  # waiting, not serving
    batch = s.take()
    assert [t.id for t, _ in batch] == ["t0", "t1"]
    assert s.withdraw("t0") is None and s.flag("t0") is True and s.flagged(["t0", "t1"]) == {"t0"}
    item = s.withdraw("t2")
    assert item is not None and item[0].id == "t2" and s.idle
    assert s.withdraw("t2") is None and s.flag("t2") is False and s.flag("nobody") is False
    s.done("t0")
    assert s.flagged(["t0"]) == set() and s.flag("t0") is False


def test_a_withdrawn_task_is_answered_cancelled_with_nothing_spent():
    ex = executor(FakeGraph())
    r = ex.withdrawn(_task(0))
    assert r == Result("t0", "e", 0.0, 0.0, "modelled", None, "", 0, finish_reason="cancelled")
    assert ex.stats["cancelled"] == 1
