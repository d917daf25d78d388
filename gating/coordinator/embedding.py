"""The coordinator's compute, off its I/O loop: prompts embedded and gated on a worker thread.

The coordinator's loop owns the sockets and must never wait on a model (a long prompt
would stall heartbeats and every other query). It hands each prompt to an
:class:`EmbedWorker` (a bounded queue; :meth:`EmbedWorker.submit` says False when full, and
the query is answered ``overloaded``) and goes on serving. The worker takes every prompt
waiting, up to ``max_batch``, scores them as one batch (``score(prompts) -> ((M, N) logits,
embed ms, gate ms)``, :meth:`gating.coordinator.routing.Router.score`), and hands the results back
through a deque; one byte on an inproc PAIR socket wakes the loop's poller. When a batch
fails, its prompts are scored one at a time so that one bad prompt fails alone.

ONNX Runtime releases the GIL while it computes, so the loop keeps running meanwhile.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np
import zmq

logger = logging.getLogger(__name__)

Score = Callable[[list[str]], tuple[np.ndarray, float, float]]
_ids = itertools.count()


@dataclass(frozen=True)
class Scored:
    """One prompt's outcome: its (N,) logits, or the exception that scoring it raised."""

    key: Hashable
    logits: np.ndarray | None
    error: Exception | None
    embed_ms: float
    gate_ms: float
    batch: int  # prompts scored together with it


class EmbedWorker:
    """A thread that scores prompts in batches; results come back to the loop's poller.

    Args:
        score: the batch scorer (:meth:`gating.coordinator.routing.Router.score`).
        context: the ZeroMQ context of the loop (for the inproc wake-up socket).
        max_waiting: prompts queued and not yet taken; :meth:`submit` refuses beyond it.
        max_batch: prompts scored in one call at most.

    Poll :attr:`socket` for POLLIN in the loop, then call :meth:`done`.
    """

    def __init__(self, score: Score, context: zmq.Context, max_waiting: int = 256,
                 max_batch: int = 16) -> None:
        self._score = score
        self.max_batch = max_batch
        self._in: queue.Queue[tuple[Hashable, str] | None] = queue.Queue(maxsize=max_waiting)
        self._out: deque[Scored] = deque()
        self._addr = f"inproc://embed-{os.getpid()}-{next(_ids)}"
        self.socket = context.socket(zmq.PAIR)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(self._addr)
        self._ctx = context
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="coordinator-embed", daemon=True)
        self._thread.start()
        self._ready.wait(5)
        self.batches = 0
        self.scored = 0

    def submit(self, key: Hashable, prompt: str) -> bool:
        """Queue a prompt; False when :attr:`max_waiting` prompts are already waiting."""
        try:
            self._in.put_nowait((key, prompt))
        except queue.Full:
            return False
        return True

    @property
    def waiting(self) -> int:
        """Prompts queued and not yet taken by the worker."""
        return self._in.qsize()

    def done(self) -> list[Scored]:
        """The results that are back (non-blocking); clears the wake-ups."""
        while True:
            try:
                self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        out = []
        while self._out:
            out.append(self._out.popleft())
        return out

    def close(self) -> None:
        """Stop the thread (after the batch it is on) and close the socket."""
        while True:
            try:
                self._in.put(None, timeout=0.1)
                break
            except queue.Full:  # make room: the loop is gone, nobody will read these
                try:
                    self._in.get_nowait()
                except queue.Empty:
                    pass
        self._thread.join(timeout=10)
        self.socket.close(linger=0)

    # ---------------------------------------------------------------- the thread

    def _run(self) -> None:
        wake = self._ctx.socket(zmq.PAIR)
        wake.setsockopt(zmq.LINGER, 0)
        wake.connect(self._addr)
        self._ready.set()
        try:
            while True:
                first = self._in.get()
                if first is None:
                    return
                batch = [first]
                stop = False
                while len(batch) < self.max_batch:
                    try:
                        item = self._in.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
                self._out.extend(self._score_batch(batch))
                self.batches += 1
                self.scored += len(batch)
                try:
                    wake.send(b"", zmq.NOBLOCK)
                except zmq.Again:  # the loop has wake-ups pending; it drains the deque on any
                    pass
                if stop:
                    return
        finally:
            wake.close(linger=0)

    def _score_batch(self, batch: list[tuple[Hashable, str]]) -> list[Scored]:
        try:
            logits, embed_ms, gate_ms = self._score([p for _, p in batch])
            return [Scored(k, logits[i], None, embed_ms, gate_ms, len(batch))
                    for i, (k, _) in enumerate(batch)]
        except Exception as exc:  # noqa: BLE001 - isolate the prompt at fault below
            if len(batch) == 1:
                return [Scored(batch[0][0], None, exc, 0.0, 0.0, 1)]
            logger.info("a batch of %d prompts failed (%s); scoring them one at a time",
                        len(batch), exc)
            out: list[Scored] = []
            for item in batch:
                out.extend(self._score_batch([item]))
            return out
