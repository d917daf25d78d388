"""Running TASKs on an expert's runner, and THE node's error policy.

:class:`Executor` serves what the scheduler (:mod:`nodes.scheduler`) hands the worker: a
lone TASK through ``score_options`` / ``generate`` (:meth:`Executor.serve`), a batch of
option-scoring TASKs through ``score_batch``, or a generation batch through a decode
session that TASKs join between steps. Every answer goes out through one ``send`` callable
(the worker's inproc socket, or a list in a test), with its load sample and its joules.

A generation TASK's ``sampling`` (checked by :func:`edge_moe.wire.sampling_problem`) goes to
the runner (``generate(..., sampling=)``, or the request of a decode session, its ``stop``
strings included); its RESULT carries ``finish_reason`` and, when asked, ``token_logprobs``.

**Cancellation** (CANCEL from the coordinator, :mod:`nodes.loop`): a TASK still waiting is
answered by :meth:`Executor.withdrawn` at once, nothing computed; a TASK the worker serves
stops at the next step boundary: a decode session's sequence is cancelled before the next
step (:meth:`~edge_moe.runtime.capabilities.DecodeSession.cancel`), a lone generation
stops through the runner's ``should_stop`` (runners that declare ``CANCEL``). Either way its
RESULT has ``finish_reason`` "cancelled", the text and tokens so far, their compute ms and
joules. Option scoring is not interrupted (it is one pass). Cancelled RESULTs count in
``stats["cancelled"]``, not in ``results``, and are no service-time sample.

**The error policy** is :mod:`nodes.error_policy` (:func:`~nodes.error_policy.error_for`):
one function every path here calls, so a fault gets the same ``ErrorCode`` whether its TASK
ran alone or in a batch.

**Streaming** (a TASK with ``stream``): the first piece of text goes out as a PARTIAL at
once (time to first token), later pieces at most one PARTIAL per ``stream_flush_ms``
(:class:`PartialStream`; the node's ``nodes[].stream_flush_ms``), joined, and what is left
just before the RESULT. Every PARTIAL wakes the node's I/O thread, the coordinator and the
HTTP front, which share the cores the engine decodes on: one per token cost SmolLM2 on
llama.cpp, served on 2 cores, 16–21% of its decode speed (docs/howto/tuning.md). A piece
slower than ``stream_flush_ms`` goes at once, so only fast decoders are joined.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge_moe.energy import EnergyMeter
from edge_moe.errors import RunnerError
from edge_moe.runtime.batch import GenRequest, Outcome, ScoreRequest, finish_reason
from edge_moe.runtime.capabilities import (
    Runner,
    batch_generator,
    batch_scorer,
    cancels,
    samples,
    streams,
)
from edge_moe.wire import (
    Error,
    Message,
    Partial,
    Result,
    Sampling,
    Task,
    sampling_problem,
)
from nodes.error_policy import error_for, late
from nodes.load import NodeLoad
from nodes.scheduler import Item, Scheduler

logger = logging.getLogger(__name__)

Send = Callable[[Message], None]


@dataclass(frozen=True)
class HostedExpert:
    """An expert on this node: its runner and what READY says about it."""

    runner: Runner
    runner_name: str = "onnxruntime"
    precision: str = "fp32"


STREAM_FLUSH_MS = 30.0  # default of nodes[].stream_flush_ms
MAX_PARTIAL_CHARS = 65536  # docs/protocol.md: a node never sends a longer PARTIAL text


class PartialStream:
    """A streamed TASK's PARTIALs (the module docstring): call it with each piece of text as
    the runner decodes it; :meth:`flush` sends what is held. ``flush_ms`` 0: one PARTIAL
    per piece."""

    def __init__(self, send: Send, task: Task, flush_ms: float = STREAM_FLUSH_MS) -> None:
        self._send, self._task = send, task
        self._flush_s = max(0.0, float(flush_ms)) / 1e3
        self._held: list[str] = []
        self._index = 0
        self._last: float | None = None  # when the last PARTIAL went

    def __call__(self, text: str) -> None:
        self._held.append(text)
        now = time.perf_counter()
        if self._last is None or now - self._last >= self._flush_s:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Send the text held (nothing when none), split at :data:`MAX_PARTIAL_CHARS`."""
        if not self._held:
            return
        text = "".join(self._held)
        self._held.clear()
        for i in range(0, len(text), MAX_PARTIAL_CHARS):
            self._send(Partial(self._task.id, self._task.expert, text[i:i + MAX_PARTIAL_CHARS], self._index))
            self._index += 1
        self._last = time.perf_counter() if now is None else now


def _result(task: Task, value: Any, compute_ms: float, energy_j: float, source: str) -> Result:
    """The RESULT of ``value``: log-probs (option scoring) or a Generation (with its
    ``finish_reason``, and its token log-probs when the TASK asked). Raises on output it
    cannot read (the policy makes that INTERNAL)."""
    if task.options is not None:
        return Result(task.id, task.expert, compute_ms, energy_j, source, tuple(float(x) for x in value))
    asked = task.sampling is not None and task.sampling.logprobs
    logprobs = tuple(value.token_logprobs) if asked and value.token_logprobs is not None else None
    return Result(task.id, task.expert, compute_ms, energy_j, source, None,
                  str(value.text), int(value.n_tokens), finish_reason(str(value.stop_reason)), logprobs)


def checked_sampling(task: Task, runner: Runner) -> Sampling | None:
    """``task.sampling`` for ``runner``: None when greedy decoding with nothing else asked
    serves it (no sampling, or the defaults).

    Raises:
        RunnerError: it breaks the rules (:func:`edge_moe.wire.sampling_problem`), or asks a
            runner that does not declare ``SAMPLE`` to draw, stop or give log-probs.
    """
    s = task.sampling
    if s is None or s == Sampling():
        return None
    problem = sampling_problem(s)
    if problem is not None:
        raise RunnerError(problem)
    if not samples(runner):
        raise RunnerError(f"runner {runner.runner_name!r} does not sample (no sampling, stop strings "
                          "or log-probs); send the task without sampling")
    return s


class Executor:
    """Serves the worker's batches on the node's runners.

    Args:
        node: the node's name (ERROR messages say it).
        experts: expert name → :class:`HostedExpert`.
        meter: the node's energy meter.
        load: where RESULTs are sampled and batch sizes counted.
        scheduler: the queue that generation batches take joining TASKs from; its
            ``max_batch`` caps a batch.
        stats: the node's counters (``results``, ``errors``, ``batches``, ``batched_tasks``,
            ``cancelled``).
    """

    def __init__(self, node: str, experts: Mapping[str, HostedExpert], meter: EnergyMeter,
                 load: NodeLoad, scheduler: Scheduler, stats: dict[str, int],
                 stream_flush_ms: float = STREAM_FLUSH_MS) -> None:
        self.node = node
        self.stream_flush_ms = float(stream_flush_ms)
        self._streams: dict[str, PartialStream] = {}  # TASK id -> its PARTIALs, until its answer
        self.experts = experts
        self.meter = meter
        self.load = load
        self.scheduler = scheduler
        self.stats = stats
        self.stats.setdefault("cancelled", 0)
        self._cancelled_lock = threading.Lock()  # "cancelled" is counted on both threads

    # ---- answers

    def _count_cancelled(self) -> None:
        with self._cancelled_lock:
            self.stats["cancelled"] += 1

    def _answer(self, send: Send, task: Task, msg: Result | Error) -> None:
        stream = self._streams.pop(task.id, None)
        if stream is not None and isinstance(msg, Result) and msg.finish_reason != "cancelled":
            stream.flush()  # the text held goes before the RESULT (a cancelled one's is dropped)
        if isinstance(msg, Result) and msg.finish_reason == "cancelled":
            self._count_cancelled()  # a part of a generation: no service-time sample
        elif isinstance(msg, Result):
            self.load.observe(task, msg)  # before the answer goes: a later beat has it
            self.stats["results"] += 1
        else:
            self.stats["errors"] += 1
        send(msg)
        self.scheduler.done(task.id)

    def withdrawn(self, task: Task) -> Result:
        """The RESULT of ``task`` cancelled while it waited (the caller took it off the queue
        and sends it): finish "cancelled", nothing generated, computed or spent."""
        self._count_cancelled()
        return Result(task.id, task.expert, 0.0, 0.0, self.meter.source, None, "", 0,
                      finish_reason="cancelled")

    def _emitter(self, send: Send, task: Task) -> Callable[[str], None] | None:
        if not task.stream:
            return None
        stream = self._streams[task.id] = PartialStream(send, task, self.stream_flush_ms)
        return stream

    def _readable(self, task: Task, value: Any, compute_ms: float, energy_j: float,
                  source: str) -> Result | Error:
        try:
            return _result(task, value, compute_ms, energy_j, source)
        except Exception as exc:  # output the node cannot read
            return error_for(task, self.node, exc)

    def _message(self, task: Task, o: Outcome, energy_j: float, source: str) -> Result | Error:
        if o.error is not None:
            return error_for(task, self.node, o.error)
        return self._readable(task, o.value, o.compute_ms, energy_j, source)

    # ---- a batch from the scheduler

    def serve_batch(self, batch: list[Item], send: Send) -> None:
        """Answer every TASK of ``batch`` (one expert, one kind) through ``send``: those past
        their deadline at once, a lone one alone, the others as one batch."""
        live: list[Item] = []
        for task, received in batch:
            refused = late(task, received, self.node)
            if refused is not None:
                self._answer(send, task, refused)
            else:
                live.append((task, received))
        if not live:
            return
        first = live[0][0]
        if len(live) == 1 and (self.scheduler.max_batch == 1 or first.options is not None
                               or not self.scheduler.batchable(first)):
            task, received = live[0]
            self.load.batched(1)
            self._answer(send, task, self.serve(task, received, self._emitter(send, task)))
            return
        self.stats["batches"] += 1
        if first.options is not None:
            self.stats["batched_tasks"] += len(live)
            self._score_batch([t for t, _ in live], send)
        else:
            self._generate_batch(live, send)

    def serve(self, task: Task, received: float,
              emit: Callable[[str], None] | None = None) -> Result | Error:
        """Run one task (or refuse it when its deadline passed while it waited).

        Args:
            task: the TASK.
            received: ``time.monotonic()`` when the node read it off the socket.
            emit: for a generation TASK with ``stream``, called with each piece of text as
                the runner decodes it (runners that declare streaming; others answer whole).
        """
        refused = late(task, received, self.node)
        if refused is not None:
            return refused
        runner = self.experts[task.expert].runner
        window = self.meter.begin()
        t0 = time.perf_counter()
        try:
            value: Any
            if task.options is not None:
                value = runner.score_options(task.prompt, list(task.options), task.mode)
            else:
                value = runner.generate(task.prompt, task.max_new_tokens,
                                        **self._generate_args(task, runner, emit))
        except Exception as exc:  # a runner fault must not kill the node
            self.meter.end(window)
            return error_for(task, self.node, exc)
        compute_ms = (time.perf_counter() - t0) * 1e3
        reading = self.meter.end(window)
        return self._readable(task, value, compute_ms, reading.energy_j, reading.source)

    def _generate_args(self, task: Task, runner: Runner,
                       emit: Callable[[str], None] | None) -> dict[str, Any]:
        """The keyword arguments of ``runner.generate`` for ``task``: only those the runner
        declares (streaming, sampling, cancellation). Raises RunnerError for a bad sampling."""
        args: dict[str, Any] = {}
        sampling = checked_sampling(task, runner)
        if sampling is not None:
            args["sampling"] = sampling
        if emit is not None and streams(runner):
            args["on_text"] = emit
        if cancels(runner):
            args["should_stop"] = lambda: bool(self.scheduler.flagged((task.id,)))
        return args

    def _score_batch(self, tasks: list[Task], send: Send) -> None:
        runner = self.experts[tasks[0].expert].runner
        assert batch_scorer(runner)  # the scheduler batches only runners that declare it
        reqs = [ScoreRequest(t.prompt, tuple(t.options or ()), t.mode) for t in tasks]
        window = self.meter.begin()
        try:
            outcomes = runner.score_batch(reqs)
        except Exception as exc:  # the whole batch's fault is each task's
            self.meter.end(window)
            for t in tasks:
                self._answer(send, t, error_for(t, self.node, exc))
            return
        reading = self.meter.end(window)
        self.load.batched(len(tasks))
        total = sum(o.compute_ms for o in outcomes) or 1.0
        for t, o in zip(tasks, outcomes, strict=True):
            self._answer(send, t, self._message(t, o, reading.energy_j * o.compute_ms / total,
                                                reading.source))

    def _generate_batch(self, live: list[Item], send: Send) -> None:
        """Continuous batching: one decode step for every live sequence at a time; a TASK
        waiting at the front of the queue for the same expert joins between steps. Each
        step's joules go to the sequences in it by their share of its compute ms."""
        first = live[0][0]
        hosted = runner = self.experts[first.expert].runner
        assert batch_generator(runner)  # the scheduler batches only runners that declare it
        tasks: dict[str, Task] = {}
        energy: dict[str, float] = {}
        steps = sizes = 0

        def metered(call: Callable[[], list[tuple[Any, Outcome]]]) -> None:
            before = {s.key: s.outcome.compute_ms for s in batch.seqs}
            window = self.meter.begin()
            ended = call()
            reading = self.meter.end(window)
            now = {s.key: s.outcome.compute_ms for s in batch.seqs} | {k: o.compute_ms for k, o in ended}
            delta = {k: v - before.get(k, 0.0) for k, v in now.items()}
            total = sum(delta.values()) or 1.0
            for k, d in delta.items():
                energy[k] = energy.get(k, 0.0) + reading.energy_j * d / total
            for k, o in ended:
                t = tasks.pop(k)
                self._answer(send, t, self._message(t, o, energy.pop(k, 0.0), reading.source))

        def admit(items: list[Item]) -> None:
            reqs = []
            for t, received in items:
                refused = late(t, received, self.node)
                if refused is not None:
                    self._answer(send, t, refused)
                    continue
                try:
                    sampling = checked_sampling(t, hosted)
                    ids = runner.prompt_ids(t.prompt)
                except Exception as exc:  # this task's fault only
                    self._answer(send, t, error_for(t, self.node, exc))
                    continue
                tasks[t.id] = t
                stop = sampling.stop if sampling is not None else ()
                reqs.append((t.id, GenRequest(tuple(ids), t.max_new_tokens, self._emitter(send, t),
                                              stop, sampling)))
            self.stats["batched_tasks"] += len(reqs)
            if reqs:
                metered(lambda: batch.add(reqs))

        try:
            batch = runner.decode_batch()
        except Exception as exc:  # no session: each task's fault
            for t, _ in live:
                self._answer(send, t, error_for(t, self.node, exc))
            return
        def cancel_flagged() -> None:
            for k in self.scheduler.flagged(tasks):  # between steps, before the next one
                o = batch.cancel(k)
                if o is not None:
                    t = tasks.pop(k)
                    self._answer(send, t, self._message(t, o, energy.pop(k, 0.0), self.meter.source))

        try:
            admit(live)
            while True:
                cancel_flagged()
                if not batch.active:
                    break
                steps += 1
                sizes += batch.active
                metered(batch.step)
                admit(self.scheduler.join(first, self.scheduler.max_batch - batch.active))
        except Exception as exc:  # the whole batch's fault is each live task's
            for t in tasks.values():
                self._answer(send, t, error_for(t, self.node, exc))
        self.load.batched(sizes / steps if steps else 1.0)
