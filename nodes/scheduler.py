"""The node's scheduler: a bounded queue of TASKs and dynamic batching.

The main thread :meth:`Scheduler.offer`\\ s each TASK it reads; the worker thread
:meth:`Scheduler.take`\\ s the next batch, and a running generation batch
:meth:`Scheduler.join`\\ s TASKs between decode steps (continuous batching).

- **Bounded.** At most ``max_queue`` TASKs wait; :meth:`offer` refuses one more (returns
  False) and the caller answers it ERROR ``overloaded`` at once: a full queue never drops a
  TASK silently and never grows.
- **Batches.** A batch holds TASKs for one expert and one kind (option scoring, or
  generation), oldest first, up to ``max_batch``; only a runner that declares the kind's
  batching capability (:func:`edge_moe.runtime.capabilities.batches`) gets more than one.
- **Waits.** A short batch waits up to ``batch_wait_ms`` for more, only under concurrent
  load (see :meth:`Scheduler.take`): a lone request never pays the wait.
- **Cancellation.** A TASK is either waiting, or *serving* (handed to the worker by
  :meth:`take` / :meth:`join` and not yet answered, :meth:`done`); both moves happen under
  the one lock, so a CANCEL always finds its TASK in one of them unless it was answered.
  The main thread :meth:`withdraw`\\ s a waiting TASK (and answers it), or :meth:`flag`\\ s a
  serving one; the worker asks :meth:`flagged` before each decode step and stops those.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping

from edge_moe.errors import ConfigError
from edge_moe.runtime.capabilities import Runner, batches
from edge_moe.wire import Task

logger = logging.getLogger(__name__)

MAX_QUEUE = 256  # TASKs waiting for the worker; past it a TASK is answered ERROR overloaded

Item = tuple[Task, float]  # a TASK and the time.monotonic() the node read it


class Scheduler:
    """The waiting TASKs of one node (thread-safe: one condition variable).

    Args:
        name: the node's name (for messages).
        runners: expert name → its runner (for its batching capabilities).
        max_queue: TASKs waiting at most (:meth:`offer` refuses more).
        max_batch: TASKs per batch at most; 1 serves one TASK at a time.
        batch_wait_ms: how long a short batch waits for more under load.

    Raises:
        ConfigError: ``max_batch`` is not an integer >= 1, or ``batch_wait_ms`` is not a
            finite number >= 0.
    """

    def __init__(self, name: str, runners: Mapping[str, Runner], max_queue: int = MAX_QUEUE,
                 max_batch: int = 8, batch_wait_ms: float = 5.0) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigError(f"node '{name}': max_batch={max_batch!r} must be an integer >= 1")
        if not (isinstance(batch_wait_ms, (int, float)) and math.isfinite(batch_wait_ms) and batch_wait_ms >= 0):
            raise ConfigError(f"node '{name}': batch_wait_ms={batch_wait_ms!r} must be a finite number >= 0")
        self.runners = dict(runners)
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.batch_wait_ms = float(batch_wait_ms)
        self._waiting: deque[Item] = deque()
        self._serving: set[str] = set()  # TASK ids handed to the worker, not yet answered
        self._flagged: set[str] = set()  # serving TASK ids a CANCEL asked to stop
        self._cv = threading.Condition()
        self._closing = False

    def batchable(self, task: Task) -> bool:
        """Whether ``task``'s runner serves batches of its kind."""
        return batches(self.runners[task.expert], scoring=task.options is not None)

    @property
    def idle(self) -> bool:
        """No TASK waits (a hint: another thread may offer one at once)."""
        return not self._waiting

    def offer(self, task: Task, received: float) -> bool:
        """Queue ``task`` for the worker; False (not queued) when ``max_queue`` already wait."""
        with self._cv:
            if len(self._waiting) >= self.max_queue:
                return False
            self._waiting.append((task, received))
            self._cv.notify()
            return True

    def close(self) -> None:
        """Wake the worker; :meth:`take` returns None from now on."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()

    def _compatible(self, first: Task) -> Callable[[Task], bool]:
        gen = first.options is None
        return lambda t: t.expert == first.expert and (t.options is None) == gen

    def _collect(self, batch: list[Item], fits: Callable[[Task], bool], limit: int,
                 front_only: bool = False) -> None:
        """Move waiting TASKs that ``fits`` into ``batch`` (caller holds ``_cv``), up to
        ``limit``, oldest first; the others keep their order. ``front_only``: stop at the
        first that does not fit (a join must not overtake a TASK of another kind)."""
        keep: deque[Item] = deque()
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

    def take(self) -> list[Item] | None:
        """The next batch (blocks): the oldest waiting TASK and up to ``max_batch - 1`` more
        for the same expert and kind (option scoring, or generation), oldest first.

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
            if self.max_batch == 1 or not self.batchable(first[0]):
                self._serving.add(first[0].id)
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
            self._serving.update(t.id for t, _ in batch)
            return batch

    def join(self, first: Task, room: int) -> list[Item]:
        """TASKs that may join a running generation batch between decode steps: those at the
        front of the queue that fit it, up to ``room``."""
        got: list[Item] = []
        if room > 0:
            with self._cv:
                self._collect(got, self._compatible(first), room, front_only=True)
                self._serving.update(t.id for t, _ in got)
        return got

    # ---- cancellation (see the module docstring)

    def withdraw(self, task_id: str) -> Item | None:
        """Take the waiting TASK ``task_id`` off the queue (the caller answers it); None
        when none waits."""
        with self._cv:
            for i, item in enumerate(self._waiting):
                if item[0].id == task_id:
                    del self._waiting[i]
                    return item
        return None

    def flag(self, task_id: str) -> bool:
        """Ask the worker to stop the serving TASK ``task_id``; False when it is not serving
        (unknown, or already answered)."""
        with self._cv:
            if task_id in self._serving:
                self._flagged.add(task_id)
                return True
        return False

    def flagged(self, task_ids: Iterable[str]) -> set[str]:
        """Those of ``task_ids`` a CANCEL asked to stop."""
        with self._cv:
            return self._flagged.intersection(task_ids)

    def done(self, task_id: str) -> None:
        """The worker answered ``task_id``: it is no longer serving (a later CANCEL is ignored)."""
        with self._cv:
            self._serving.discard(task_id)
            self._flagged.discard(task_id)
