"""The serving coordinator, in parts:

- :mod:`~gating.coordinator.loop`: the loop with its sockets and clock (:class:`Coordinator`);
- :mod:`~gating.coordinator.inflight`: every query and task in flight, in one table (and the
  cancelled tasks, until their late RESULT);
- :mod:`~gating.coordinator.admission`: queue waits, energy factors, deadlines and the
  fail-over choice, as pure functions;
- :mod:`~gating.coordinator.routing` and :mod:`~gating.coordinator.plans`: the plan over the
  live experts and the weights inside it;
- :mod:`~gating.coordinator.registry`, :mod:`~gating.coordinator.load`: live nodes and their
  queues; :mod:`~gating.coordinator.embedding`: the embedding worker;
- :mod:`~gating.coordinator.aggregate`, :mod:`~gating.coordinator.replies`: answers into a REPLY;
- :mod:`~gating.coordinator.metrics`: Prometheus counters;
- :mod:`~gating.coordinator.build`: :func:`build_coordinator`, used by the CLI and by Ray.
"""

from gating.coordinator.build import build_coordinator, load_encoder
from gating.coordinator.loop import DEFAULT_DEADLINE_MS, Coordinator

__all__ = ["DEFAULT_DEADLINE_MS", "Coordinator", "build_coordinator", "load_encoder"]
