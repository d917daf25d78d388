"""One query in flight at the coordinator: its state and the parts of its REPLY.

:class:`Pending` holds a query whose TASKs are out; :func:`deadline_ms` is the deadline it
gets; :func:`plan_info` and :func:`expert_use` turn its plan and the experts' answers into
the REPLY's fields. The query's checks are not here: the protocol's value limits are
:func:`edge_moe.wire.check_query`, run with the category check by
:meth:`gating.coordinator.routing.Router.route`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from edge_moe.wire import MAX_DEADLINE_MS, ExpertUse, PlanInfo, Query, Result, finite_or_none
from gating.coordinator.routing import RoutePlan


@dataclass
class Pending:
    """A query whose TASKs are out."""

    envelope: list[bytes]
    query: Query
    plan: RoutePlan
    weights: dict[str, float]  # chosen expert → gate weight (sums to 1)
    nodes: dict[str, str]  # chosen expert → node name
    tasks: dict[str, str]  # task id → expert
    started: float
    flush_at: float
    dispatched: float
    deadline_ms: float
    stage_ms: dict[str, float]
    results: dict[str, Result] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)  # expert → ok/late/lost/error
    errors: dict[str, str] = field(default_factory=dict)
    rtt_ms: dict[str, float] = field(default_factory=dict)
    sent_to: dict[str, bytes] = field(default_factory=dict)  # task id → the node identity it went to
    logits: Any = None  # (N,) the prompt's gate logits (fail-over picks a standby by them)
    predicted_ms: dict[str, float] = field(default_factory=dict)  # expert → predicted completion

    @property
    def open(self) -> list[str]:
        return [e for e in self.weights if e not in self.status]


@dataclass
class Waiting:
    """A query whose prompt is with the embedding worker (no TASK out yet)."""

    envelope: list[bytes]
    query: Query
    started: float
    flush_at: float  # answer ERROR deadline if it is still waiting then


def deadline_ms(q: Query, latency_budget_ms: float, default_ms: float) -> float:
    """The query's own deadline; else its finite latency budget (capped); else the default."""
    if q.deadline_ms is not None:
        return float(q.deadline_ms)
    if math.isfinite(latency_budget_ms) and latency_budget_ms > 0:
        return min(latency_budget_ms, MAX_DEADLINE_MS)
    return default_ms


def plan_info(plan: RoutePlan) -> PlanInfo:
    sel = plan.selection
    message = "; ".join(m for m in (sel.message, plan.note) if m)
    return PlanInfo(tuple(sel.experts), sel.status, finite_or_none(sel.objective), message,
                    plan.live, plan.category, plan.energy_budget_j, plan.latency_budget_ms,
                    plan.cached, plan.min_energy_j, plan.min_latency_ms)


def expert_use(expert: str, p: Pending) -> ExpertUse:
    r = p.results.get(expert)
    return ExpertUse(
        name=expert, node=p.nodes.get(expert, ""), weight=p.weights[expert], status=p.status[expert],
        compute_ms=r.compute_ms if r else 0.0, rtt_ms=p.rtt_ms.get(expert, 0.0),
        energy_j=r.energy_j if r else 0.0, energy_source=r.energy_source if r else "",
        logprobs=r.logprobs if r else None, text=r.text if r else None,
        error=p.errors.get(expert, ""), n_tokens=r.n_tokens if r else 0)
