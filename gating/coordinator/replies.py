"""The answer to a query: its experts' answers aggregated into a REPLY (or an ERROR).

:func:`aggregate` turns a finished :class:`gating.coordinator.inflight.Pending` into the
message the client gets (option probabilities mixed with the gate weights, or a weighted
vote over generated texts, :mod:`gating.coordinator.aggregate`); :func:`plan_info` and
:func:`expert_use` build the REPLY's plan and per-expert fields.

A generation's ``finish_reason`` and ``token_logprobs`` are the RESULT's of the expert whose
text is the answer (the vote's winner: the highest-weight expert that gave that text; a
sampled generation has one expert); each :class:`~edge_moe.wire.ExpertUse` carries its own
RESULT's.
"""

from __future__ import annotations

import time

import numpy as np

from edge_moe.errors import EdgeMoEError
from edge_moe.wire import Error, ErrorCode, ExpertUse, PlanInfo, Reply, finite_or_none
from gating.coordinator.aggregate import mix_options, vote
from gating.coordinator.inflight import Pending
from gating.coordinator.plans import RoutePlan
from gating.coordinator.routing import Router


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
        error=p.errors.get(expert, ""), n_tokens=r.n_tokens if r else 0,
        finish_reason=r.finish_reason if r else None, token_logprobs=r.token_logprobs if r else None)


def aggregate(p: Pending, router: Router, t_agg: float) -> tuple[Reply | Error, bool]:
    """The answer to a finished query, and whether it is degraded.

    Experts still open are marked late. With no answer at all: ERROR ``deadline`` (some
    were late) or ``expert_error``. Otherwise a REPLY from the answering experts' weights,
    renormalised, with every expert that did not answer named in ``reasons``.

    Args:
        t_agg: when aggregation started (monotonic s): the fanout stage ends there.
    """
    for e in p.open:
        p.status[e] = "late"
        p.errors[e] = f"no answer within the {p.deadline_ms:.1f} ms deadline"
    q = p.query
    reasons = tuple(f"{e} ({p.nodes.get(e, '')}) {p.status[e]}: {p.errors[e]}"
                    for e in p.weights if p.status[e] != "ok")
    if not p.results:
        late = any(s == "late" for s in p.status.values())
        code = ErrorCode.DEADLINE if late else ErrorCode.EXPERT_ERROR
        return Error(q.id, code, "no expert answered: " + "; ".join(reasons)), True
    answered = {e: p.weights[e] for e in p.weights if e in p.results}
    index = probs = text = speaker = None
    try:
        if q.options is not None:
            lp = {e: np.asarray(p.results[e].logprobs or (), np.float64) for e in answered}
            probs_arr, _ = mix_options(answered, lp, router.prior, router.temperature)
            probs, index = tuple(float(x) for x in probs_arr), int(np.argmax(probs_arr))
        else:
            texts = {e: p.results[e].text or "" for e in answered}
            text, _ = vote(answered, texts)
            # the vote's speaker: the highest-weight expert with the winning text (ties: gate order)
            speaker = p.results[max((e for e in answered if texts[e] == text), key=lambda e: answered[e])]
    except EdgeMoEError as exc:
        return Error(q.id, ErrorCode.EXPERT_ERROR, f"cannot aggregate: {exc}"), True
    done = time.monotonic()
    stage = dict(p.stage_ms)
    stage["fanout"] = (t_agg - p.dispatched) * 1e3 + 0.0
    stage["aggregate"] = (done - t_agg) * 1e3
    stage["total"] = (done - p.started) * 1e3
    uses = tuple(expert_use(e, p) for e in p.weights)
    sources = sorted({r.energy_source for r in p.results.values()})
    reply = Reply(q.id, uses, stage, stage["total"],
                  float(sum(r.energy_j for r in p.results.values())), "+".join(sources),
                  plan_info(p.plan), index, probs, text, bool(reasons), reasons,
                  finish_reason=speaker.finish_reason if speaker else None,
                  token_logprobs=speaker.token_logprobs if speaker else None)
    return reply, bool(reasons)
