"""Issue 24 in the coordinator's pure parts: a sampled generation is planned and answered by
one expert (routing), a REPLY's finish reason and token log-probs are its speaker's
(replies), and a cancelled query leaves the in-flight table in one call, its tasks
remembered (bounded) for their late RESULTs (inflight). No sockets, a stepped clock."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_moe.config import BudgetConfig
from edge_moe.runtime.toy import ToyEncoder
from edge_moe.wire import Query, Reply, Result, Sampling, TokenLogprob, WireBudget
from gating.coordinator.inflight import (
    MAX_CANCELLED_REMEMBERED,
    Closed,
    InFlight,
    Pending,
    Waiting,
    Why,
)
from gating.coordinator.load import LoadTracker
from gating.coordinator.replies import aggregate
from gating.coordinator.routing import Status, load_router, sampled_generation
from gating.planning.selector import Budget, SelectionProblem, select_experts
from tests.toyfleet import DIM, NODES

SAMPLED = Sampling(temperature=0.8, top_p=0.9, seed=7)


@pytest.fixture(scope="module")
def router(assets):
    return load_router(assets.gate, assets.calibration, assets.profiles, BudgetConfig(), top_k=2,
                       embedder=ToyEncoder(DIM))


@pytest.fixture(scope="module")
def node_of(assets) -> dict[str, str]:
    return {assets.experts[i]: n for n, idx in NODES.items() for i in idx}


def _gen(sampling: Sampling | None, energy_j: float, category: str, **kw: object) -> Query:
    return Query("g", "Write a haiku about rain.", None, category=category,
                 budget=WireBudget(energy_j, math.inf), sampling=sampling, **kw)  # type: ignore[arg-type]


def _offline(router, category: int, energy_j: float, top_k: int):
    """The selector alone, without the router: the plan it should make for ``top_k``."""
    en = router.energy_j[:, [category]]
    lat = router.latency_ms[:, [category]]
    problem = SelectionProblem(list(router.experts), en, lat, router.objective(top_k, None), top_k=top_k,
                               aggregation_ms=router.aggregation_ms,
                               categories=[router.categories[category]])
    return select_experts(problem, Budget(energy_j, np.full(1, math.inf)))


# ---------------------------------------------------------------- routing: the k > 1 rule


def test_a_sampled_generation_is_planned_and_answered_by_one_expert(router, assets):
    cat = assets.categories[0]
    e = router.energy_j[:, 0]  # (N,) one category's joules per expert
    # every expert fits alone, but the costliest with any other does not: k=2 must leave it
    # out of a set of two, k=1 need not
    budget = float(e.max())
    assert budget < e.max() + e.min()
    sampled = router.route(_gen(SAMPLED, budget, cat), router.experts)
    greedy = router.route(_gen(None, budget, cat), router.experts)
    assert sampled_generation(_gen(SAMPLED, budget, cat)) and not sampled_generation(_gen(None, budget, cat))
    assert sampled.status == greedy.status == Status.OK
    assert (sampled.top_k, sampled.tau, greedy.top_k) == (1, None, 2)
    assert len(sampled.weights) == 1 and sum(sampled.weights.values()) == pytest.approx(1.0)
    # the plan's energy is modelled for one expert: the costliest member, not the two costliest
    members = [router.index[x] for x in sampled.plan.selection.experts]
    assert len(members) >= 2
    assert sampled.plan.selection.worst_energy_j == pytest.approx(e[members].max())
    assert np.sort(e[members])[-2:].sum() > budget  # planned for two, this set would not fit
    # greedy keeps k=2: its plan is charged the two costliest members, and so it is another set
    g_members = [router.index[x] for x in greedy.plan.selection.experts]
    assert greedy.plan.selection.worst_energy_j == pytest.approx(np.sort(e[g_members])[-2:].sum())
    assert greedy.plan.selection.experts != sampled.plan.selection.experts
    # both are the selector's own plans for their k
    assert sampled.plan.selection.experts == _offline(router, 0, budget, 1).experts
    assert greedy.plan.selection.experts == _offline(router, 0, budget, 2).experts
    # the plan cache keys the fine level: asking again gives the same plans
    assert router.route(_gen(SAMPLED, budget, cat), router.experts).plan.selection.experts == \
        sampled.plan.selection.experts
    assert router.route(_gen(None, budget, cat), router.experts).plan.selection.experts == \
        greedy.plan.selection.experts


def test_greedy_sampling_and_explicit_k_keep_the_vote(router, assets):
    cat = assets.categories[0]
    greedy = Sampling(temperature=0.0, seed=3, stop=("\n",))
    assert not sampled_generation(_gen(greedy, math.inf, cat))
    d = router.route(_gen(greedy, math.inf, cat), router.experts)
    assert d.top_k == 2 and len(d.weights) == 2
    # a sampled query's own top_k / tau are overridden: one expert answers
    d = router.route(_gen(SAMPLED, math.inf, cat, top_k=3), router.experts)
    assert (d.top_k, d.tau, len(d.weights)) == (1, None, 1)
    d = router.route(_gen(SAMPLED, math.inf, cat, tau=0.9), router.experts)
    assert (d.top_k, d.tau, len(d.weights)) == (1, None, 1)


# ---------------------------------------------------------------- replies: the speaker's fields


def _pending(router, node_of, q: Query, top_k: int | None = None) -> Pending:
    logits, _, _ = router.score([q.prompt])
    d = router.decide(q, logits[0], tuple(node_of))
    assert d.status == Status.OK
    p = Pending([b"client", b""], q, d.plan, dict(d.weights), 0.0, 1.0, 0.0, 1000.0, {}, logits=logits[0])
    for x in d.weights:
        p.nodes[x] = node_of[x]
    return p


def _tl(token: str, lp: float) -> tuple[TokenLogprob, ...]:
    return (TokenLogprob(token, lp, (token, "x"), (lp, lp - 1.0)),)


def test_finish_reason_and_token_logprobs_are_the_winners_and_each_expert_keeps_its_own(router, node_of):
    q = Query("v", "Name a colour.", None, top_k=2, sampling=Sampling(logprobs=True, top_logprobs=2))
    p = _pending(router, node_of, q)
    low, high = sorted(p.weights, key=lambda x: p.weights[x])
    p.results[high] = Result("t1", high, 5.0, 0.2, "modelled", text="Red", n_tokens=1,
                             finish_reason="stop", token_logprobs=_tl("Red", -0.1))
    p.results[low] = Result("t2", low, 6.0, 0.3, "modelled", text="Blue", n_tokens=4,
                            finish_reason="length", token_logprobs=_tl("Blue", -0.7))
    p.status.update({high: "ok", low: "ok"})
    reply, degraded = aggregate(p, router, 0.5)
    assert isinstance(reply, Reply) and not degraded
    assert reply.text == "Red" and reply.finish_reason == "stop"
    assert reply.token_logprobs == _tl("Red", -0.1)
    uses = {u.name: u for u in reply.experts}
    assert (uses[low].finish_reason, uses[low].token_logprobs) == ("length", _tl("Blue", -0.7))
    assert (uses[high].finish_reason, uses[high].token_logprobs) == ("stop", _tl("Red", -0.1))


def test_a_sampled_reply_is_its_one_experts_and_options_replies_have_none(router, node_of):
    q = Query("s", "Tell me a story.", None, max_new_tokens=8, sampling=SAMPLED)
    p = _pending(router, node_of, q)
    (only,) = p.weights
    p.results[only] = Result("t", only, 9.0, 0.4, "modelled", text="Once", n_tokens=8,
                             finish_reason="length")
    p.status[only] = "ok"
    reply, _ = aggregate(p, router, 0.5)
    assert isinstance(reply, Reply) and reply.text == "Once"
    assert (reply.finish_reason, reply.token_logprobs) == ("length", None)
    opts = Query("o", "Which colour?", ("red", "blue"), top_k=1)
    p = _pending(router, node_of, opts)
    (only,) = p.weights
    p.results[only] = Result("t", only, 1.0, 0.1, "modelled", (math.log(0.3), math.log(0.7)))
    p.status[only] = "ok"
    reply, _ = aggregate(p, router, 0.5)
    assert isinstance(reply, Reply) and reply.finish_reason is None and reply.token_logprobs is None


# ---------------------------------------------------------------- in-flight: the cancel path


def test_cancel_empties_the_table_and_remembers_the_tasks_for_their_late_results(router, node_of):
    load = LoadTracker()
    table = InFlight(load)
    q = Query("q1", "Name a colour.", None, top_k=2)
    p = _pending(router, node_of, q)
    table.open(p)
    recs = [table.dispatch(p, x, node_of[x], node_of[x].encode(), 50.0, now=0.0) for x in p.weights]
    assert sum(load.outstanding(n) for n in set(node_of.values())) == 2
    got, cancelled = table.cancel(p.key, 0.1)
    assert got is p and cancelled == recs
    assert len(table) == 0 and table.tasks == {} and p.key not in table
    assert all(load.outstanding(n) == 0 for n in set(node_of.values()))
    assert [c.why for c in table.cancelled.values()] == [Why.CLIENT, Why.CLIENT]
    assert table.task(recs[0].id) is None  # a PARTIAL or RESULT finds no open task
    # the late RESULT counts once, and only from the connection its TASK went to
    assert table.take_cancelled(recs[0].id, b"another-connection") is None
    c = table.take_cancelled(recs[0].id, recs[0].identity)
    assert c is not None and c.record == recs[0] and c.at == 0.1
    assert table.take_cancelled(recs[0].id, recs[0].identity) is None
    # twice, or for a query never seen: nothing happens
    assert table.cancel(p.key, 0.2) == (None, [])
    assert table.cancel((b"client", "nope"), 0.2) == (None, [])


def test_cancel_of_a_waiting_query_and_finish_remembers_why(router, node_of):
    table = InFlight(LoadTracker())
    w = Waiting([b"c", b""], Query("w", "p", None), 0.0, 1.0)
    table.wait((b"c", "w"), w)
    assert table.cancel((b"c", "w"), 0.1) == (w, []) and len(table) == 0
    p = _pending(router, node_of, Query("f", "Name a colour.", None, top_k=2))
    table.open(p)
    first, second = (table.dispatch(p, x, node_of[x], b"id", 50.0, now=0.0) for x in p.weights)
    table.close_task(first, Closed.ANSWERED, 0.05)
    done, cancelled = table.finish(p.key, 1.0)  # the deadline: the second is still open
    assert done is p and cancelled == [second]
    assert list(table.cancelled) == [second.id] and table.cancelled[second.id].why is Why.FINISHED


def test_the_cancelled_tasks_remembered_are_bounded(router, node_of):
    load = LoadTracker()
    table = InFlight(load)
    x = next(iter(node_of))
    first_id = ""
    for i in range(MAX_CANCELLED_REMEMBERED + 10):
        p = Pending([b"c", b""], Query(f"q{i}", "p", None), None, {x: 1.0}, 0.0, 1.0, 0.0,  # type: ignore[arg-type]
                    1000.0, {})
        table.open(p)
        rec = table.dispatch(p, x, node_of[x], b"id", 1.0, now=0.0)
        first_id = first_id or rec.id
        table.cancel(p.key, 0.0)
    assert len(table.cancelled) == MAX_CANCELLED_REMEMBERED and first_id not in table.cancelled
    assert len(table) == 0 and table.tasks == {} and load.outstanding(node_of[x]) == 0
