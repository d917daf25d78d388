"""One query in flight at the coordinator: its checks, its state, and its reply parts.

:func:`check_query` says why a decoded QUERY cannot be served (the ERROR "bad_request"
text), :class:`Pending` holds a query whose TASKs are out, and :func:`plan_info` /
:func:`expert_use` turn a plan and the experts' answers into the REPLY's fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from edge_moe.wire import ExpertUse, PlanInfo, Query, Result, finite_or_none
from gating.routing import Plan

MODES = ("letter", "continuation")
MAX_ID_CHARS = 256
MAX_NEW_TOKENS = 4096
MAX_DEADLINE_MS = 600_000.0


@dataclass
class Pending:
    """A query whose TASKs are out."""

    envelope: list[bytes]
    query: Query
    plan: Plan
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

    @property
    def open(self) -> list[str]:
        return [e for e in self.weights if e not in self.status]


def check_query(q: Query) -> str | None:
    """Why a decoded QUERY cannot be served, or None."""
    if not q.id or len(q.id) > MAX_ID_CHARS:
        return f"id must be 1..{MAX_ID_CHARS} characters, got {len(q.id)}"
    if not q.prompt.strip():
        return "prompt is empty"
    if q.options is not None and not 0 < len(q.options) <= 26:
        return f"options must hold 1..26 strings, got {len(q.options)}"
    if q.mode not in MODES:
        return f"mode={q.mode!r} is not one of {list(MODES)}"
    if not 0 < q.max_new_tokens <= MAX_NEW_TOKENS:
        return f"max_new_tokens={q.max_new_tokens} must be in 1..{MAX_NEW_TOKENS}"
    if q.top_k is not None and q.top_k < 1:
        return f"top_k={q.top_k} must be >= 1"
    if q.tau is not None and not (0 < q.tau <= 1):
        return f"tau={q.tau} must be in (0, 1]"
    if q.top_k is not None and q.tau is not None:
        return "give top_k or tau, not both"
    if q.deadline_ms is not None and not (0 < q.deadline_ms <= MAX_DEADLINE_MS):
        return f"deadline_ms={q.deadline_ms} must be in (0, {MAX_DEADLINE_MS:g}]"
    if q.budget is not None:
        for name in ("energy_j", "latency_ms"):
            v = getattr(q.budget, name)
            if v is not None and (math.isnan(v) or v < 0):
                return f"budget.{name}={v} must be a number >= 0 (inf for no budget)"
    return None


def deadline_ms(q: Query, plan: Plan, default_ms: float) -> float:
    if q.deadline_ms is not None:
        return float(q.deadline_ms)
    if math.isfinite(plan.latency_budget_ms) and plan.latency_budget_ms > 0:
        return min(plan.latency_budget_ms, MAX_DEADLINE_MS)
    return default_ms


def plan_info(plan: Plan) -> PlanInfo:
    sel = plan.selection
    return PlanInfo(tuple(sel.experts), sel.status, finite_or_none(sel.objective), sel.message,
                    plan.live, plan.category, plan.energy_budget_j, plan.latency_budget_ms,
                    plan.cached, plan.min_energy_j, plan.min_latency_ms)


def expert_use(expert: str, p: Pending) -> ExpertUse:
    r = p.results.get(expert)
    return ExpertUse(
        name=expert, node=p.nodes.get(expert, ""), weight=p.weights[expert], status=p.status[expert],
        compute_ms=r.compute_ms if r else 0.0, rtt_ms=p.rtt_ms.get(expert, 0.0),
        energy_j=r.energy_j if r else 0.0, energy_source=r.energy_source if r else "",
        logprobs=r.logprobs if r else None, text=r.text if r else None,
        error=p.errors.get(expert, ""))
