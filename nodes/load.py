"""The load a node reports in its HEARTBEATs (:class:`NodeLoad`): TASKs queued, moving
averages of each expert's service ms (per scoring task, per generated token), and the mean
batch size. The coordinator turns it into queue waits (docs/design.md §2.7)."""

from __future__ import annotations

import logging
import threading

from edge_moe.errors import ConfigError
from edge_moe.wire import Heartbeat, Result, Task

logger = logging.getLogger(__name__)

# Weight of the newest sample in the service-time averages: the last 10 tasks hold ~89 % of
# the weight (1 - 0.8**10), so the average follows a change of load within a few tasks and
# one outlier (a page fault, a GC pause) moves it by a fifth.
LOAD_ALPHA = 0.2


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
