"""The coordinator's load-time decisions, as pure functions beside the router.

Each takes the clock as an argument (``now``, monotonic seconds) and reads the load tracker
and the router; none touches a socket, so each is tested with a stepped clock:

- :func:`deadline_ms` and :func:`flush_margin_ms`: when a query must be answered, and how
  long before that it is aggregated with what has arrived;
- :func:`queue_waits`: what a new task would wait per live expert beyond its profile
  (load-aware plans add it to the latency costs: admission refuses a query no queue can
  serve in time);
- :func:`energy_scales`: how many more joules than its profile each expert has lately spent;
- :func:`choose_standby`: the expert a lost task goes to (fail-over).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

from edge_moe.wire import MAX_DEADLINE_MS, Query
from gating.coordinator.inflight import Pending
from gating.coordinator.load import LoadTracker
from gating.coordinator.plans import LOAD_STEP_MS
from gating.coordinator.routing import Router

NodeOf = Callable[[str], "str | None"]  # live expert → the name of the live node serving it


def deadline_ms(q: Query, latency_budget_ms: float, default_ms: float) -> float:
    """The query's own deadline; else its finite latency budget (capped); else the default."""
    if q.deadline_ms is not None:
        return float(q.deadline_ms)
    if math.isfinite(latency_budget_ms) and latency_budget_ms > 0:
        return min(latency_budget_ms, MAX_DEADLINE_MS)
    return default_ms


def flush_margin_ms(budget_ms: float) -> float:
    """How long before its deadline a query is aggregated with what has arrived."""
    return min(5.0, 0.1 * budget_ms)


def gen_tokens(q: Query) -> int | None:
    """The tokens a generation query asks for; None for an options query."""
    return None if q.options is not None else q.max_new_tokens


def queue_waits(q: Query, live: Iterable[str], node_of: Mapping[str, str], router: Router,
                load: LoadTracker, now: float, elapsed_ms: float,
                default_deadline_ms: float) -> dict[str, float]:
    """Per live expert, what a new task would wait beyond its profile, in ms: its node's
    backlog (:meth:`LoadTracker.wait_ms`), the time the query already spent at the
    coordinator beyond the profiles' ``aggregation_ms``, and how much slower than its profile
    the expert has lately been (measured compute ms − profile, when positive). Behind a queue
    the answer must also beat the early flush, and the plan grid must not round the wait
    down: half a :data:`LOAD_STEP_MS` and the flush margin are added to a non-zero backlog.

    Args:
        live: the live experts; node_of: each one's node name.
        elapsed_ms: how long the query has been at the coordinator.
    """
    extra = max(0.0, elapsed_ms - router.aggregation_ms)
    gen = gen_tokens(q)
    margin = flush_margin_ms(deadline_ms(q, router.latency_budget_ms(q), default_deadline_ms))
    out = {}
    for e, backlog in load.wait_ms(live, node_of, now).items():
        if e not in router.index:
            continue
        profile = router.profile_ms(q, e)
        slower = max(0.0, load.service_ms(e, node_of[e], profile, gen) - profile)
        queued = margin + LOAD_STEP_MS / 2 if backlog > 0 else 0.0
        out[e] = backlog + extra + slower + queued
    return out


def energy_scales(live: Iterable[str], router: Router, load: LoadTracker) -> dict[str, float]:
    """Per live expert, the moving average of its RESULTs' ``energy_j`` ÷ its profile's
    (from 1): e.g. a node slowed by contention, whose modelled J is busy power × time. Load-
    aware plans scale its energy costs by this factor when above 1."""
    return {e: load.energy_factor(e) for e in live if e in router.index}


def choose_standby(p: Pending, lost: str, router: Router, load: LoadTracker,
                   node_of: NodeOf, now: float, retry: bool) -> tuple[str, float] | None:
    """Where ``p``'s lost task for expert ``lost`` goes, with the weight it answers with.

    The candidates, in order: the lost expert itself when ``retry`` (its node reconnected
    and is live on a new connection: the gate's own choice, its weight unchanged); then the
    members of ``p``'s plan not asked yet, by gate weight (the softmax over S, rescaled to the
    weights already given). The first whose live node is predicted (its queue + its service
    time) to answer before ``p``'s flush is chosen; None when none is.

    Args:
        node_of: expert → its live node's name, or None when no live node serves it.
        retry: the lost expert's node is back (reconnected), so it may take the task again.
    """
    if p.logits is None or not p.weights:
        return None
    left_ms = (p.flush_at - now) * 1e3
    gen = gen_tokens(p.query)
    ranked = router.standby(p.logits, p.plan)  # the gate softmax over S, highest first
    w_s = dict(ranked)
    ref = next(iter(p.weights))
    scale = p.weights[ref] / w_s[ref] if w_s.get(ref) else 1.0  # to the answering experts' scale
    candidates = [(lost, p.weights[lost])] if retry else []
    candidates += [(e, w * scale) for e, w in ranked if e not in p.weights]
    for expert, weight in candidates:
        node = node_of(expert)
        if node is None:
            continue
        need = load.node_wait_ms(node, now) + load.service_ms(
            expert, node, router.profile_ms(p.query, expert), gen)
        if need <= left_ms:
            return expert, weight
    return None
