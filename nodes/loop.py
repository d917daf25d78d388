"""The expert node's I/O loop: a Paranoid Pirate worker (zguide ``ppworker.py``).

The node *connects out* as a DEALER to the coordinator's ROUTER backend (so a board behind
NAT can join), sends READY (node, experts with runner and precision, device class, energy
source), then:

- sends a HEARTBEAT every ``heartbeat_s``, carrying the node's load (:class:`nodes.load.NodeLoad`:
  TASKs queued, moving averages of each expert's service ms), and counts the coordinator
  dead after ``liveness`` silent intervals; it then closes the socket, waits a backoff that doubles
  from ``reconnect_min_s`` to ``reconnect_max_s`` (:mod:`edge_moe.runtime.liveness`), reconnects
  and sends READY again. An ERROR "not_ready" (the coordinator restarted) also re-sends READY;
- queues each TASK (:mod:`nodes.scheduler`: bounded, batched by expert and kind), stamped on
  receipt, and a worker thread serves the queue (:mod:`nodes.execution`: results, joules,
  the one error policy), so heartbeats keep flowing while an expert computes;
- answers a TASK for an expert it does not host with ERROR "unknown_expert", one beyond a
  full queue with ERROR "overloaded", and a malformed frame with ERROR "protocol", and keeps
  serving;
- on CANCEL (a TASK id): a TASK still queued is taken off the queue and answered at once with
  a RESULT (``finish_reason`` "cancelled", text "", 0 tokens, 0 ms, 0 J); one the worker
  serves is flagged, and the worker stops it at the next step boundary and answers it
  (:mod:`nodes.execution`); an unknown or answered id is ignored (logged at DEBUG).

Only the main thread touches the DEALER; the worker hands its replies back over an
inproc PAIR socket, which also wakes the main thread's poller. The main thread counts a
TASK queued when it reads it and answered when it writes the reply, so every HEARTBEAT's
``queued`` agrees with the TASKs and answers before it on the wire.

Run one with ``edge-moe node --config configs/fleet.local.yaml --node cpu-a``
(:func:`nodes.build.build_server`).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import zmq

from edge_moe.config import CoordinatorConfig, DeviceClass
from edge_moe.energy import EnergyMeter, make_meter
from edge_moe.errors import ConfigError, ProtocolError
from edge_moe.runtime.capabilities import Runner, check_runner
from edge_moe.runtime.liveness import Backoff, HeartbeatTimer, Liveness
from edge_moe.security import connect_dealer
from edge_moe.wire import (
    Cancel,
    Error,
    ErrorCode,
    ExpertInfo,
    Heartbeat,
    Message,
    MsgType,
    Ready,
    Task,
    decode,
    encode,
)
from nodes.execution import STREAM_FLUSH_MS, Executor, HostedExpert
from nodes.load import LOAD_ALPHA, NodeLoad
from nodes.scheduler import MAX_QUEUE, Scheduler

logger = logging.getLogger(__name__)

_POLL_CAP_S = 0.1  # the loop wakes at least this often to notice stop()
_PARTIAL_TYPE = bytes([int(MsgType.PARTIAL)])
_ids = itertools.count()


def _hosted(node: str, name: str, expert: HostedExpert | Runner | object) -> HostedExpert:
    """``expert`` as a HostedExpert, its runner checked against its declared capabilities."""
    if isinstance(expert, HostedExpert):
        check_runner(expert.runner, f"node '{node}': expert '{name}'")
        return expert
    runner = check_runner(expert, f"node '{node}': expert '{name}'")
    return HostedExpert(runner, runner.runner_name)


class NodeServer:
    """One expert node. Build it, call :meth:`run` (blocking) and :meth:`stop` from elsewhere.

    Args:
        name: the node name (READY says it; the coordinator keys its registry on it).
        endpoint: the coordinator's backend, e.g. ``tcp://127.0.0.1:5556``.
        experts: expert name → :class:`HostedExpert` (or a bare runner, named by its
            ``runner_name``).
        device_class: for the energy meter and READY.
        coordinator: heartbeat_s, liveness and reconnect backoff.
        meter: an energy meter (default :func:`edge_moe.energy.make_meter`).
        curve: optional ``(server_public, client_public, client_secret)`` Z85 keys.
        max_queue: TASKs waiting for the worker at most; a TASK beyond them is answered ERROR
            ``overloaded`` at once.
        load_alpha: the weight of the newest sample in the service-time averages
            (:class:`NodeLoad`).
        max_batch / batch_wait_ms: dynamic batching (:class:`nodes.scheduler.Scheduler`);
            ``max_batch=1`` serves one TASK at a time.
        stream_flush_ms: a streamed TASK's PARTIALs after the first go at most this often,
            each with the text decoded since the last (:class:`nodes.execution.PartialStream`).

    Raises:
        ConfigError: no experts, bad batching settings, or an expert that is not a runner.
    """

    def __init__(self, name: str, endpoint: str, experts: Mapping[str, HostedExpert | Runner],
                 device_class: DeviceClass, coordinator: CoordinatorConfig,
                 meter: EnergyMeter | None = None,
                 curve: tuple[bytes, bytes, bytes] | None = None,
                 context: zmq.Context | None = None, load_alpha: float = LOAD_ALPHA,
                 max_queue: int = MAX_QUEUE, max_batch: int = 8, batch_wait_ms: float = 5.0,
                 stream_flush_ms: float = STREAM_FLUSH_MS) -> None:
        if not experts:
            raise ConfigError(f"node '{name}' hosts no experts")
        # the batching settings are checked first: they do not depend on the experts
        self.scheduler = Scheduler(name, {}, max_queue, max_batch, batch_wait_ms)
        self.name = name
        self.endpoint = endpoint
        self.experts = {k: _hosted(name, k, v) for k, v in experts.items()}
        self.device_class = device_class
        self.config = coordinator
        self.meter: EnergyMeter = meter if meter is not None else make_meter(device_class)
        self.curve = curve
        self.stats = {"tasks": 0, "results": 0, "errors": 0, "malformed": 0, "reconnects": 0,
                      "overloaded": 0, "batches": 0, "batched_tasks": 0, "cancelled": 0}
        self._load = NodeLoad(load_alpha)
        self.scheduler.runners.update({k: e.runner for k, e in self.experts.items()})
        self.executor = Executor(name, self.experts, self.meter, self._load, self.scheduler, self.stats,
                                 stream_flush_ms)
        self._own_context = context is None
        self.ctx = context or zmq.Context()
        self._stop = threading.Event()
        self._inproc = f"inproc://node-{name}-{os.getpid()}-{next(_ids)}"
        self._pair = self.ctx.socket(zmq.PAIR)
        self._pair.setsockopt(zmq.LINGER, 0)
        self._pair.bind(self._inproc)
        self._sock: zmq.Socket | None = None
        self._worker = threading.Thread(target=self._work_loop, name=f"node-{name}-worker", daemon=True)
        _trim_heap()  # loading (weight prepacking) leaves freed heap behind

    @property
    def max_queue(self) -> int:
        return self.scheduler.max_queue

    @property
    def max_batch(self) -> int:
        return self.scheduler.max_batch

    @property
    def batch_wait_ms(self) -> float:
        return self.scheduler.batch_wait_ms

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
        self.scheduler.close()
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
                self._accept(msg, now)
            elif isinstance(msg, Cancel):
                self._cancel(msg.id)
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
                                 f"TASK, CANCEL, HEARTBEAT or ERROR, got {type(msg).__name__.upper()}"))

    def _accept(self, task: Task, now: float) -> None:
        """Queue ``task``, or refuse it at once: an expert not hosted here, or a full queue."""
        if task.expert not in self.experts:
            self._send(Error(task.id, ErrorCode.UNKNOWN_EXPERT,
                             f"node {self.name} does not host expert '{task.expert}' "
                             f"(it hosts: {', '.join(self.experts)})"))
            return
        # counted on this thread before the worker can answer it (answers are counted here too)
        if self.scheduler.offer(task, now):
            self.stats["tasks"] += 1
            self._load.accepted()
            return
        self.stats["overloaded"] += 1  # bounded: refuse, do not pile up
        self._send(Error(task.id, ErrorCode.OVERLOADED,
                         f"node {self.name}: {self.max_queue} TASKs already queued"))

    def _cancel(self, task_id: str) -> None:
        """CANCEL ``task_id``: answer it now if it waits, else flag it for the worker (see the
        module docstring)."""
        item = self.scheduler.withdraw(task_id)
        if item is not None:
            self._send(self.executor.withdrawn(item[0]))
            self._load.answered()  # written here, so counted here
            logger.debug("node %s: cancelled task %s before it ran", self.name, task_id)
        elif self.scheduler.flag(task_id):
            logger.debug("node %s: cancelling task %s at its next step", self.name, task_id)
        else:
            logger.debug("node %s: CANCEL for task %s, not queued or running: ignored", self.name, task_id)

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

        def send(msg: Message) -> None:
            out.send_multipart(encode(msg))

        try:
            while (batch := self.scheduler.take()) is not None:
                self.executor.serve_batch(batch, send)
                if len(batch) > 1 and self.scheduler.idle:
                    _trim_heap()
        finally:
            out.close(linger=0)


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
