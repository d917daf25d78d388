"""One error policy: each fault kind gets the same ErrorCode whether its TASK runs alone
or in a batch (option scoring, and generation with the fault at admission or in a decode
step). In-process: an :class:`~nodes.execution.Executor` over toy runners, no sockets."""

from __future__ import annotations

import time

import pytest

from edge_moe.errors import RunnerError
from edge_moe.wire import Error, ErrorCode, Message, Result, Task
from nodes.error_policy import Late, error_for
from tests.unit.nodes.fakes import BatchingToy, executor

pytestmark = pytest.mark.timeout(60)

EXPECTED = {
    "ok": None,
    "bad_input": ErrorCode.RUNNER,
    "runner_failure": ErrorCode.RUNNER,
    "edge_moe_error": ErrorCode.RUNNER,
    "bug": ErrorCode.INTERNAL,
    "unreadable": ErrorCode.INTERNAL,
    "deadline": ErrorCode.DEADLINE,
}
PATHS = [("scoring", "score"), ("generation", "prompt_ids"), ("generation", "step")]


def _task(i: int, kind: str, fault: str) -> Task:
    prompt = "" if fault == "bad_input" else f"is {i} a number?"
    options = ("yes", "no") if kind == "scoring" else None
    timeout_ms = 1.0 if fault == "deadline" else 60_000.0
    return Task(f"t{i}", "e", prompt, timeout_ms, options, max_new_tokens=4)


def _codes(fault: str, kind: str, fault_at: str, n: int, max_batch: int) -> tuple[list[str | None], dict]:
    """Serve ``n`` TASKs (one batch from the scheduler) and return each answer's code
    (None for a RESULT) and the executor's counters."""
    ex = executor(BatchingToy(fault, fault_at), max_batch=max_batch)
    received = time.monotonic() - (1.0 if fault == "deadline" else 0.0)
    sent: list[Message] = []
    ex.serve_batch([(_task(i, kind, fault), received) for i in range(n)], sent.append)
    answers = {m.id: m for m in sent if isinstance(m, (Result, Error))}
    assert sorted(answers) == [f"t{i}" for i in range(n)], sent  # every task answered once
    return [m.code if isinstance(m, Error) else None for m in answers.values()], ex.stats


@pytest.mark.parametrize("fault", list(EXPECTED))
@pytest.mark.parametrize(("kind", "fault_at"), PATHS, ids=["scoring", "gen-admit", "gen-step"])
def test_a_fault_gets_the_same_code_alone_and_batched(fault, kind, fault_at):
    alone, alone_stats = _codes(fault, kind, fault_at, n=1, max_batch=1)
    batched, batch_stats = _codes(fault, kind, fault_at, n=3, max_batch=8)
    assert alone_stats["batches"] == 0
    if fault != "deadline":  # a late task is refused before any batch forms
        assert batch_stats["batches"] == 1, batch_stats
    assert alone == [EXPECTED[fault]]
    assert batched == [EXPECTED[fault]] * 3


def test_the_policy_table_by_hand():
    task = Task("t", "e", "p", 10.0, ("a",))
    runner = error_for(task, "n1", RunnerError("prompt is empty"))
    assert runner.code == ErrorCode.RUNNER and runner.message == "e on n1: prompt is empty"
    bug = error_for(task, "n1", KeyError("x"))
    assert bug.code == ErrorCode.INTERNAL and bug.message == "e on n1: KeyError: 'x'"
    late = error_for(task, "n1", Late(12.5))
    assert late.code == ErrorCode.DEADLINE and "waited 12.5 ms on node n1" in late.message
    assert "not computed" in late.message and late.id == "t"


def test_a_lone_generation_on_a_batching_runner_goes_through_the_decode_session():
    """A lone generation TASK on a runner that batches generation is served by a decode
    session (so later TASKs can join it); its fault still gets the same code."""
    codes, stats = _codes("runner_failure", "generation", "step", n=1, max_batch=8)
    assert stats["batches"] == 1 and codes == [ErrorCode.RUNNER]
