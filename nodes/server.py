"""The expert node server: a ZeroMQ worker that hosts experts and answers TASKs.

**Paranoid Pirate worker** (zguide ``ppworker.py``). The node *connects out* as a DEALER
to the coordinator's ROUTER backend (so a board behind NAT can join), sends READY (node,
experts with runner and precision, device class, energy source), then:

- sends a HEARTBEAT every ``heartbeat_s``, carrying the node's load (:class:`NodeLoad`:
  TASKs queued, moving averages of each expert's service ms), and counts the coordinator
  dead after ``liveness`` silent intervals; it then closes the socket, waits a backoff that doubles
  from ``reconnect_min_s`` to ``reconnect_max_s`` (:mod:`edge_moe.runtime.liveness`), reconnects
  and sends READY again. An ERROR "not_ready" (the coordinator restarted) also re-sends READY;
- serves TASKs one at a time, in arrival order, on a worker thread, so heartbeats keep
  flowing while an expert computes. Each TASK is stamped on receipt; one that waited past
  its ``timeout_ms`` is answered ERROR "deadline" and not computed;
- answers RESULT with the log-probs (options) or text (generation), the compute ms, and
  the joules from its energy meter (:mod:`edge_moe.energy`) with their source;
- answers a malformed frame with ERROR "protocol" and keeps serving.

Only the main thread touches the DEALER; the worker hands its replies back over an
inproc PAIR socket, which also wakes the main thread's poller. The main thread counts a
TASK queued when it reads it and answered when it writes the reply, so every HEARTBEAT's
``queued`` agrees with the TASKs and answers before it on the wire.

Run one::

    python -m nodes.server --config configs/fleet.local.yaml --node cpu-a

Each expert of the node is built from its ``experts[].artifact``: an absolute folder, or
one relative to ``--artifacts`` (default ``$EDGE_MOE_CACHE/artifacts``, i.e.
``~/.cache/edge-moe/artifacts``, where ``exporters`` write ``<name>/<precision>``).
``--toy`` serves :class:`edge_moe.runtime.toy.ToyExpert` instead (smoke tests, the benchmark).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from edge_moe import paths
from edge_moe.config import CoordinatorConfig, DeviceClass, FleetConfig, load_fleet
from edge_moe.energy import EnergyMeter, make_meter
from edge_moe.errors import ConfigError, EdgeMoEError, ProtocolError, RunnerError
from edge_moe.runtime.batch import GenRequest, Outcome, ScoreRequest
from edge_moe.runtime.liveness import Backoff, HeartbeatTimer, Liveness
from edge_moe.runtime.runners import Runner
from edge_moe.security import connect_dealer
from edge_moe.wire import (
    Error,
    ErrorCode,
    ExpertInfo,
    Heartbeat,
    Message,
    MsgType,
    Partial,
    Ready,
    Result,
    Task,
    decode,
    encode,
)

logger = logging.getLogger(__name__)

_POLL_CAP_S = 0.1  # the loop wakes at least this often to notice stop()
_PARTIAL_TYPE = bytes([int(MsgType.PARTIAL)])
# Weight of the newest sample in the service-time averages: the last 10 tasks hold ~89 % of
# the weight (1 - 0.8**10), so the average follows a change of load within a few tasks and
# one outlier (a page fault, a GC pause) moves it by a fifth.
LOAD_ALPHA = 0.2
MAX_QUEUE = 256  # TASKs waiting for the worker; past it a TASK is answered ERROR overloaded
_ids = itertools.count()


@dataclass(frozen=True)
class HostedExpert:
    """An expert on this node: its runner and what READY says about it."""

    runner: Runner
    runner_name: str = "onnxruntime"
    precision: str = "fp32"


class NodeLoad:
    """The load a node reports in its HEARTBEATs; thread-safe (one lock).

    - ``queued``: TASKs accepted (read off the socket for a hosted expert) and not yet
      answered (their RESULT or ERROR not yet written to the socket), i.e. waiting or
      running. A TASK refused at once (unknown expert) is never accepted.
    - ``service_ms[expert]``: the exponentially weighted moving average of the runner's
      compute ms per option-scoring task; ``token_ms[expert]``: the same of
      ``compute_ms / max(1, n_tokens)`` per generation task. The first sample sets the
      average; each later sample ``x`` moves it: ``avg += alpha * (x - avg)``.
    - ``batch``: the same average of the tasks per batch the worker ran (for a generation
      batch, the mean number of sequences per decode step); 0 before the first.
    - Only RESULTs are samples: a task answered ERROR (deadline, runner) says nothing of
      the service time. An expert with no sample of a kind is absent from that map.

    Args:
        alpha: weight of the newest sample, in (0, 1] (1: the last sample only).

    Raises:
        ConfigError: ``alpha`` is outside (0, 1].
    """

    def __init__(self, alpha: float = LOAD_ALPHA) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ConfigError(f"load alpha={alpha} must be in (0, 1]")
        self.alpha = alpha
        self._lock = threading.Lock()
        self._queued = 0
        self._service_ms: dict[str, float] = {}
        self._token_ms: dict[str, float] = {}
        self._batch: float = 0.0

    def batched(self, size: float) -> None:
        """A batch of ``size`` tasks ran (for generation: the mean live sequences per step)."""
        with self._lock:
            self._batch = size if self._batch == 0.0 else self._batch + self.alpha * (size - self._batch)

    def accepted(self) -> None:
        """A TASK was queued for the worker."""
        with self._lock:
            self._queued += 1

    def answered(self) -> None:
        """A TASK's RESULT or ERROR was sent (one call per :meth:`accepted`)."""
        with self._lock:
            self._queued -= 1

    def observe(self, task: Task, result: Result) -> None:
        """Add ``result.compute_ms`` to the average of its expert and kind of task."""
        if task.options is not None:
            averages, sample = self._service_ms, result.compute_ms
        else:
            averages, sample = self._token_ms, result.compute_ms / max(1, result.n_tokens)
        with self._lock:
            old = averages.get(task.expert)
            averages[task.expert] = sample if old is None else old + self.alpha * (sample - old)

    def heartbeat(self, node: str) -> Heartbeat:
        """The HEARTBEAT ``node`` sends now: a snapshot (copies of the maps)."""
        with self._lock:
            return Heartbeat(node, self._queued, dict(self._service_ms), dict(self._token_ms),
                             round(self._batch, 3))


class NodeServer:
    """One expert node. Build it, call :meth:`run` (blocking) and :meth:`stop` from elsewhere.

    Args:
        name: the node name (READY says it; the coordinator keys its registry on it).
        endpoint: the coordinator's backend, e.g. ``tcp://127.0.0.1:5556``.
        experts: expert name → :class:`HostedExpert` (or a bare runner object).
        device_class: for the energy meter and READY.
        coordinator: heartbeat_s, liveness and reconnect backoff.
        meter: an energy meter (default :func:`edge_moe.energy.make_meter`).
        curve: optional ``(server_public, client_public, client_secret)`` Z85 keys.
        max_queue: TASKs waiting for the worker at most; a TASK beyond them is answered ERROR
            ``overloaded`` at once.
        load_alpha: the weight of the newest sample in the service-time averages
            (:class:`NodeLoad`).
        max_batch / batch_wait_ms: dynamic batching (see :meth:`_take`); ``max_batch=1``
            serves one TASK at a time.
    """

    def __init__(self, name: str, endpoint: str, experts: Mapping[str, HostedExpert | Any],
                 device_class: DeviceClass, coordinator: CoordinatorConfig,
                 meter: EnergyMeter | None = None,
                 curve: tuple[bytes, bytes, bytes] | None = None,
                 context: zmq.Context | None = None, load_alpha: float = LOAD_ALPHA,
                 max_queue: int = MAX_QUEUE, max_batch: int = 8, batch_wait_ms: float = 5.0) -> None:
        if not experts:
            raise ConfigError(f"node '{name}' hosts no experts")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigError(f"node '{name}': max_batch={max_batch!r} must be an integer >= 1")
        if not (isinstance(batch_wait_ms, (int, float)) and math.isfinite(batch_wait_ms) and batch_wait_ms >= 0):
            raise ConfigError(f"node '{name}': batch_wait_ms={batch_wait_ms!r} must be a finite number >= 0")
        self.name = name
        self.endpoint = endpoint
        self.experts = {k: v if isinstance(v, HostedExpert) else HostedExpert(v, getattr(v, "runner", "custom"))
                        for k, v in experts.items()}
        self.device_class = device_class
        self.config = coordinator
        self.meter: EnergyMeter = meter if meter is not None else make_meter(device_class)
        self.curve = curve
        self._own_context = context is None
        self.ctx = context or zmq.Context()
        self._stop = threading.Event()
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.batch_wait_ms = float(batch_wait_ms)
        # TASKs waiting for the worker, with their receipt time; guarded by _cv.
        self._waiting: deque[tuple[Task, float]] = deque()
        self._cv = threading.Condition()
        self._closing = False
        self._inproc = f"inproc://node-{name}-{os.getpid()}-{next(_ids)}"
        self._pair = self.ctx.socket(zmq.PAIR)
        self._pair.setsockopt(zmq.LINGER, 0)
        self._pair.bind(self._inproc)
        self._sock: zmq.Socket | None = None
        self._worker = threading.Thread(target=self._work_loop, name=f"node-{name}-worker", daemon=True)
        self.stats = {"tasks": 0, "results": 0, "errors": 0, "malformed": 0, "reconnects": 0,
                      "overloaded": 0, "batches": 0, "batched_tasks": 0}
        self._load = NodeLoad(load_alpha)
        _trim_heap()  # loading (weight prepacking) leaves freed heap behind

    # ---------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        """Ask :meth:`run` to return (thread-safe)."""
        self._stop.set()

    def __enter__(self) -> NodeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close()

    def close(self) -> None:
        """Close the sockets (and the context, if this object made it)."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout=5)
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        self._pair.close(linger=0)
        if self._own_context:
            self.ctx.term()

    def load(self) -> Heartbeat:
        """The node's load now, as its next HEARTBEAT would carry it (thread-safe; for
        status displays). See :class:`NodeLoad`."""
        return self._load.heartbeat(self.name)

    def ready_message(self) -> Ready:
        infos = tuple(ExpertInfo(n, e.runner_name, e.precision) for n, e in self.experts.items())
        return Ready(self.name, infos, self.device_class.name, self.meter.source)

    # ---------------------------------------------------------------- main loop

    def _connect(self) -> zmq.Socket:
        sock = connect_dealer(self.ctx, self.endpoint, self.curve,
                              identity=f"{self.name}-{os.getpid()}-{next(_ids)}".encode())
        sock.send_multipart(encode(self.ready_message()))
        logger.info("node %s connected to %s with experts %s", self.name, self.endpoint, list(self.experts))
        return sock

    def run(self) -> None:
        """Serve until :meth:`stop`. Never raises on bad input from the wire."""
        self._worker.start()
        backoff = Backoff(self.config.reconnect_min_s, self.config.reconnect_max_s)
        while not self._stop.is_set():
            self._sock = self._connect()
            now = time.monotonic()
            alive = Liveness(self.config.heartbeat_s, self.config.liveness, now)
            beat = HeartbeatTimer(self.config.heartbeat_s, now)
            poller = zmq.Poller()
            poller.register(self._sock, zmq.POLLIN)
            poller.register(self._pair, zmq.POLLIN)
            while not self._stop.is_set():
                now = time.monotonic()
                wait = max(0.0, min(beat.next_at, alive.expires_at + 1e-3) - now, 0.0)
                events = dict(poller.poll(math.ceil(min(wait, _POLL_CAP_S) * 1000)))
                if self._sock in events:
                    self._drain_coordinator(alive, backoff)
                if self._pair in events:
                    self._drain_worker()
                now = time.monotonic()
                if beat.due(now):
                    self._sock.send_multipart(encode(self.load()))
                    beat.sent(now)
                if alive.expired(now):
                    logger.warning("node %s: coordinator silent for %.1f s; reconnecting",
                                   self.name, alive.window_s)
                    break
            self._sock.close(linger=0)
            self._sock = None
            if not self._stop.is_set():
                self.stats["reconnects"] += 1
                self._stop.wait(backoff.delay())

    def _send(self, msg: Message) -> None:
        assert self._sock is not None
        self._sock.send_multipart(encode(msg))

    def _drain_coordinator(self, alive: Liveness, backoff: Backoff) -> None:
        assert self._sock is not None
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            now = time.monotonic()
            alive.beat(now)
            backoff.reset()
            try:
                msg = decode(frames)
            except ProtocolError as exc:
                self.stats["malformed"] += 1
                self._send(Error("", ErrorCode.PROTOCOL, f"node {self.name}: {exc}"))
                continue
            if isinstance(msg, Task):
                if msg.expert not in self.experts:
                    self._send(Error(msg.id, ErrorCode.UNKNOWN_EXPERT,
                                     f"node {self.name} does not host expert '{msg.expert}' "
                                     f"(it hosts: {', '.join(self.experts)})"))
                    continue
                with self._cv:
                    full = len(self._waiting) >= self.max_queue
                    if not full:
                        self.stats["tasks"] += 1
                        self._load.accepted()
                        self._waiting.append((msg, now))
                        self._cv.notify()
                if full:  # bounded: refuse, do not pile up
                    self.stats["overloaded"] += 1
                    self._send(Error(msg.id, ErrorCode.OVERLOADED,
                                     f"node {self.name}: {self.max_queue} TASKs already queued"))
            elif isinstance(msg, Heartbeat):
                pass
            elif isinstance(msg, Error):
                if msg.code == ErrorCode.NOT_READY:
                    self._send(self.ready_message())
                else:
                    logger.warning("node %s: coordinator says %s: %s", self.name, msg.code, msg.message)
            else:
                self.stats["malformed"] += 1
                self._send(Error("", ErrorCode.PROTOCOL, f"node {self.name}: a node accepts "
                                 f"TASK, HEARTBEAT or ERROR, got {type(msg).__name__.upper()}"))

    def _drain_worker(self) -> None:
        while True:
            try:
                frames = self._pair.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            # Each frame set but a PARTIAL is one TASK's answer. Counted here, where it is
            # written (not on the worker), so a HEARTBEAT never reports a task whose answer
            # went before it.
            if self._sock is not None:
                self._sock.send_multipart(frames)
            if not (len(frames) == 3 and frames[1] == _PARTIAL_TYPE):
                self._load.answered()

    # ---------------------------------------------------------------- worker thread

    def _work_loop(self) -> None:
        out = self.ctx.socket(zmq.PAIR)
        out.setsockopt(zmq.LINGER, 0)
        out.connect(self._inproc)
        try:
            while (batch := self._take()) is not None:
                self._serve_batch(batch, out)
                if len(batch) > 1 and not self._waiting:
                    _trim_heap()
        finally:
            out.close(linger=0)

    # ---- dynamic batching

    def _batchable(self, task: Task) -> bool:
        runner = self.experts[task.expert].runner
        if not getattr(runner, "batches", False):
            return False
        if task.options is not None:
            return hasattr(runner, "score_batch")
        return bool(getattr(runner, "batches_generation", False)) and hasattr(runner, "decode_batch")

    def _compatible(self, first: Task) -> Callable[[Task], bool]:
        gen = first.options is None
        return lambda t: t.expert == first.expert and (t.options is None) == gen

    def _collect(self, batch: list[tuple[Task, float]], fits: Callable[[Task], bool], limit: int,
                 front_only: bool = False) -> None:
        """Move waiting TASKs that ``fits`` into ``batch`` (caller holds ``_cv``), up to
        ``limit``, oldest first; the others keep their order. ``front_only``: stop at the
        first that does not fit (a join must not overtake a TASK of another kind)."""
        keep: deque[tuple[Task, float]] = deque()
        while self._waiting and len(batch) < limit:
            item = self._waiting.popleft()
            if fits(item[0]):
                batch.append(item)
            elif front_only:
                self._waiting.appendleft(item)
                break
            else:
                keep.append(item)
        keep.extend(self._waiting)
        self._waiting = keep

    def _take(self) -> list[tuple[Task, float]] | None:
        """The next batch: the oldest waiting TASK and up to ``max_batch - 1`` more for the
        same expert and kind (option scoring, or generation), oldest first.

        When the batch is short, the worker waits up to ``batch_wait_ms`` for more, but only
        under concurrent load (at least two fitting TASKs were already waiting): a lone
        request never pays the wait, and a queue that already holds a full batch is served
        at once. Returns None when the node closes."""
        with self._cv:
            while not self._waiting and not self._closing:
                self._cv.wait()
            if self._closing:
                return None
            first = self._waiting.popleft()
            batch = [first]
            if self.max_batch == 1 or not self._batchable(first[0]):
                return batch
            fits = self._compatible(first[0])
            self._collect(batch, fits, self.max_batch)
            if 1 < len(batch) < self.max_batch and self.batch_wait_ms > 0:
                until = time.monotonic() + self.batch_wait_ms / 1e3
                while len(batch) < self.max_batch and not self._closing:
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                    self._collect(batch, fits, self.max_batch)
            return batch

    def _join(self, first: Task, room: int) -> list[tuple[Task, float]]:
        """TASKs that may join a running generation batch between decode steps: those at the
        front of the queue that fit it, up to ``room``."""
        got: list[tuple[Task, float]] = []
        if room > 0:
            with self._cv:
                self._collect(got, self._compatible(first), room, front_only=True)
        return got

    def _answer(self, out: zmq.Socket, task: Task, msg: Result | Error) -> None:
        if isinstance(msg, Result):
            self._load.observe(task, msg)  # before the answer goes: a later beat has it
        self.stats["results" if isinstance(msg, Result) else "errors"] += 1
        out.send_multipart(encode(msg))

    def _emitter(self, out: zmq.Socket, task: Task) -> Callable[[str], None] | None:
        if not task.stream:
            return None
        pieces = itertools.count()

        def emit(text: str) -> None:
            out.send_multipart(encode(Partial(task.id, task.expert, text, next(pieces))))

        return emit

    def _serve_batch(self, batch: list[tuple[Task, float]], out: zmq.Socket) -> None:
        live: list[tuple[Task, float]] = []
        for task, received in batch:
            late = self._late(task, received)
            if late is not None:
                self._answer(out, task, late)
            else:
                live.append((task, received))
        if not live:
            return
        if len(live) == 1 and (self.max_batch == 1 or live[0][0].options is not None
                               or not self._batchable(live[0][0])):
            task, received = live[0]
            self._load.batched(1)
            self._answer(out, task, self.serve(task, received, self._emitter(out, task)))
            return
        self.stats["batches"] += 1
        if live[0][0].options is not None:
            self.stats["batched_tasks"] += len(live)
            self._score_batch([t for t, _ in live], out)
        else:
            self._generate_batch(live, out)

    def _late(self, task: Task, received: float) -> Error | None:
        waited_ms = (time.monotonic() - received) * 1e3
        if waited_ms > task.timeout_ms:
            return Error(task.id, ErrorCode.DEADLINE,
                         f"task waited {waited_ms:.1f} ms on node {self.name}, past its "
                         f"{task.timeout_ms:.1f} ms deadline; not computed")
        return None

    def _outcome_message(self, task: Task, o: Outcome, energy_j: float, source: str) -> Result | Error:
        if o.error is not None:
            return Error(task.id, ErrorCode.RUNNER, f"{task.expert} on {self.name}: {o.error}")
        if task.options is not None:
            return Result(task.id, task.expert, o.compute_ms, energy_j, source,
                          tuple(float(x) for x in o.value))
        return Result(task.id, task.expert, o.compute_ms, energy_j, source, None,
                      str(o.value.text), int(o.value.n_tokens))

    def _score_batch(self, tasks: list[Task], out: zmq.Socket) -> None:
        runner: Any = self.experts[tasks[0].expert].runner
        reqs = [ScoreRequest(t.prompt, tuple(t.options or ()), t.mode) for t in tasks]
        window = self.meter.begin()
        try:
            outcomes = runner.score_batch(reqs)
        except Exception as exc:  # a runner bug must not kill the node
            self.meter.end(window)
            logger.exception("expert %s failed on a batch of %d", tasks[0].expert, len(tasks))
            for t in tasks:
                self._answer(out, t, Error(t.id, ErrorCode.INTERNAL, f"{t.expert} on {self.name}: "
                                           f"{type(exc).__name__}: {exc}"))
            return
        reading = self.meter.end(window)
        self._load.batched(len(tasks))
        total = sum(o.compute_ms for o in outcomes) or 1.0
        for t, o in zip(tasks, outcomes, strict=True):
            self._answer(out, t, self._outcome_message(t, o, reading.energy_j * o.compute_ms / total,
                                                       reading.source))

    def _generate_batch(self, live: list[tuple[Task, float]], out: zmq.Socket) -> None:
        """Continuous batching: one decode step for every live sequence at a time; a TASK
        waiting at the front of the queue for the same expert joins between steps. Each
        step's joules go to the sequences in it by their share of its compute ms."""
        first = live[0][0]
        runner: Any = self.experts[first.expert].runner
        batch = runner.decode_batch()
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
                self._answer(out, t, self._outcome_message(t, o, energy.pop(k, 0.0), reading.source))

        def admit(items: list[tuple[Task, float]]) -> None:
            reqs = []
            for t, received in items:
                late = self._late(t, received)
                if late is not None:
                    self._answer(out, t, late)
                    continue
                try:
                    ids = runner.prompt_ids(t.prompt)
                except Exception as exc:
                    self._answer(out, t, Error(t.id, ErrorCode.RUNNER, f"{t.expert} on {self.name}: {exc}"))
                    continue
                tasks[t.id] = t
                reqs.append((t.id, GenRequest(tuple(ids), t.max_new_tokens, self._emitter(out, t))))
            self.stats["batched_tasks"] += len(reqs)
            if reqs:
                metered(lambda: batch.add(reqs))

        try:
            admit(live)
            while batch.active:
                steps += 1
                sizes += batch.active
                metered(batch.step)
                admit(self._join(first, self.max_batch - batch.active))
        except Exception as exc:  # a runner bug must not kill the node
            logger.exception("expert %s failed in a generation batch", first.expert)
            for t in tasks.values():
                self._answer(out, t, Error(t.id, ErrorCode.INTERNAL, f"{t.expert} on {self.name}: "
                                           f"{type(exc).__name__}: {exc}"))
        self._load.batched(sizes / steps if steps else 1.0)

    def serve(self, task: Task, received: float,
              emit: Any = None) -> Result | Error:
        """Run one task (or refuse it when its deadline passed while it waited).

        Args:
            task: the TASK.
            received: ``time.monotonic()`` when the node read it off the socket.
            emit: for a generation TASK with ``stream``, called with each piece of text as
                the runner decodes it (runners with ``streams``; others answer whole).
        """
        late = self._late(task, received)
        if late is not None:
            return late
        runner = self.experts[task.expert].runner
        window = self.meter.begin()
        t0 = time.perf_counter()
        try:
            if task.options is not None:
                lp = runner.score_options(task.prompt, list(task.options), task.mode)
                logprobs, text, n_tokens = tuple(float(x) for x in lp), None, 0
            else:
                if emit is not None and getattr(runner, "streams", False):
                    gen = runner.generate(task.prompt, task.max_new_tokens, on_text=emit)  # type: ignore[call-arg]
                else:
                    gen = runner.generate(task.prompt, task.max_new_tokens)
                logprobs, text, n_tokens = None, str(gen.text), int(gen.n_tokens)
        except RunnerError as exc:
            self.meter.end(window)
            return Error(task.id, ErrorCode.RUNNER, f"{task.expert} on {self.name}: {exc}")
        except EdgeMoEError as exc:
            self.meter.end(window)
            return Error(task.id, ErrorCode.RUNNER, f"{task.expert} on {self.name}: "
                         f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a runner bug must not kill the node
            self.meter.end(window)
            logger.exception("expert %s failed on task %s", task.expert, task.id)
            return Error(task.id, ErrorCode.INTERNAL, f"{task.expert} on {self.name}: "
                         f"{type(exc).__name__}: {exc}")
        compute_ms = (time.perf_counter() - t0) * 1e3
        reading = self.meter.end(window)
        return Result(task.id, task.expert, compute_ms, reading.energy_j, reading.source,
                      logprobs, text, n_tokens)


def _trim_heap() -> None:
    """Hand the freed heap back to the OS (glibc ``malloc_trim``) once a batch is done and
    nothing waits. A batch's buffers (padded prefill activations, logits) are freed in
    pieces below glibc's mmap threshold, which the heap keeps: without this a node idles
    at the RSS of its largest batch (measured in ``benchmarks/batching_bench.py``)."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: Any = None


# ---------------------------------------------------------------- from a fleet config


def backend_endpoint(fleet: FleetConfig) -> str:
    """Where nodes connect: the backend address, with a wildcard host replaced by the
    coordinator node's host."""
    ep = fleet.coordinator.backend
    host = fleet.node(fleet.coordinator.node).host
    for wildcard in ("://0.0.0.0:", "://*:"):
        ep = ep.replace(wildcard, f"://{host}:")
    return ep


def build_experts(fleet: FleetConfig, node: str, artifacts_dir: str | Path | None = None,
                  toy: bool = False, toy_delay_ms: float = 0.0,
                  runner_kwargs: Mapping[str, Any] | None = None) -> dict[str, HostedExpert]:
    """The node's experts from ``experts[]`` of the fleet config.

    Raises:
        ConfigError: the node hosts no experts, or an expert has no artifact.
        ArtifactError / RunnerError: the runner cannot load its artifact.
    """
    from edge_moe.runtime.runners import make_runner

    fleet.node(node)  # ConfigError on an unknown node
    mine = fleet.experts_on(node)
    if not mine:
        raise ConfigError(f"{fleet.path}: node '{node}' hosts no experts")
    root = Path(artifacts_dir) if artifacts_dir is not None else paths.artifacts_dir()
    out: dict[str, HostedExpert] = {}
    for e in mine:
        if toy:
            from edge_moe.runtime.toy import ToyExpert

            out[e.name] = HostedExpert(ToyExpert(e.name, toy_delay_ms), ToyExpert.runner, "fp32")
            continue
        if not e.artifact:
            raise ConfigError(f"{fleet.path}: expert '{e.name}' has no artifact (needed to serve it)")
        path = Path(e.artifact)
        path = path if path.is_absolute() else root / path
        kwargs = dict(runner_kwargs or {})
        if e.runner == "onnxruntime":
            kwargs.setdefault("prepack", fleet.node(node).prepack)
        runner = make_runner(e.runner, path, **kwargs)
        out[e.name] = HostedExpert(runner, e.runner, e.precision)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nodes.server", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="fleet YAML")
    ap.add_argument("--node", required=True, help="this node's name in the fleet")
    ap.add_argument("--endpoint", help="coordinator backend (default: from the config)")
    ap.add_argument("--artifacts", help="root for relative artifact paths "
                    "(default $EDGE_MOE_CACHE/artifacts)")
    ap.add_argument("--toy", action="store_true", help="serve trivial ONNX experts (tests, benchmark)")
    ap.add_argument("--toy-delay-ms", type=float, default=0.0)
    ap.add_argument("--meter", choices=["auto", "modelled"], default="auto")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    ap.add_argument("--curve-keys", help="keys folder from `edge-moe keys` (server.key and "
                    "<--key-name>.key_secret); needed when coordinator.curve is true")
    ap.add_argument("--key-name", default="client", help="this node's key pair name in --curve-keys")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        fleet = load_fleet(args.config)
        kwargs = {"intra_op_threads": args.threads} if args.threads else {}
        experts = build_experts(fleet, args.node, args.artifacts, args.toy, args.toy_delay_ms, kwargs)
        dc = fleet.device_class_of(args.node)
        curve = None
        if fleet.coordinator.curve:
            from edge_moe.security import load_client_keys

            curve = load_client_keys(args.curve_keys, args.key_name)
        spec = fleet.node(args.node)
        server = NodeServer(args.node, args.endpoint or backend_endpoint(fleet), experts, dc,
                            fleet.coordinator, meter=make_meter(dc, args.meter), curve=curve,
                            max_batch=spec.max_batch, batch_wait_ms=spec.batch_wait_ms)
    except EdgeMoEError as exc:
        print(f"{type(exc).__name__}: {exc}", flush=True)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    signal.signal(signal.SIGINT, lambda *_: server.stop())
    print(f"node {args.node} serving {list(experts)} -> {server.endpoint}", flush=True)
    try:
        server.run()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
