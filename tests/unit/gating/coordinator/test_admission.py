"""The coordinator's load-time decisions (gating.coordinator.admission) and its in-flight
table (gating.coordinator.inflight), driven by a stepped clock: no sockets, no threads."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_moe.config import BudgetConfig
from edge_moe.runtime.toy import ToyEncoder
from edge_moe.wire import Query
from gating.coordinator import admission
from gating.coordinator.inflight import Closed, InFlight, Pending
from gating.coordinator.load import LoadTracker
from gating.coordinator.plans import LOAD_STEP_MS
from gating.coordinator.routing import Status, load_router
from tests.toyfleet import DIM, NODES

OPTIONS = ("red", "green", "blue", "black")


@pytest.fixture(scope="module")
def router(assets):
    return load_router(assets.gate, assets.calibration, assets.profiles, BudgetConfig(), top_k=1,
                       embedder=ToyEncoder(DIM))


@pytest.fixture(scope="module")
def node_of(assets) -> dict[str, str]:
    return {assets.experts[i]: n for n, idx in NODES.items() for i in idx}


def _pending(router, node_of, q: Query, t0: float = 0.0, deadline_ms: float = 1000.0) -> Pending:
    logits, _, _ = router.score([q.prompt])
    d = router.decide(q, logits[0], tuple(node_of))
    assert d.status == Status.OK
    return Pending([b"client", b""], q, d.plan, dict(d.weights), t0, t0 + deadline_ms / 1e3, t0,
                   deadline_ms, {}, logits=logits[0])


def test_deadline_is_the_querys_then_its_budget_capped_then_the_default():
    q = Query("q", "p", OPTIONS)
    assert admission.deadline_ms(Query("q", "p", OPTIONS, deadline_ms=250.0), 100.0, 30_000.0) == 250.0
    assert admission.deadline_ms(q, 400.0, 30_000.0) == 400.0
    assert admission.deadline_ms(q, math.inf, 30_000.0) == 30_000.0
    assert admission.deadline_ms(q, 1e12, 30_000.0) < 1e12  # capped at the protocol's limit
    assert admission.flush_margin_ms(1000.0) == 5.0 and admission.flush_margin_ms(20.0) == 2.0


def test_queue_waits_follow_the_backlog_as_the_clock_steps(router, node_of, assets):
    load = LoadTracker()
    q = Query("q", "which colour?", OPTIONS, category=assets.categories[0])
    busy = assets.experts[2]  # node-b's only expert
    load.dispatched("node-b", "t0", 200.0, now=0.0)
    margin = admission.flush_margin_ms(admission.deadline_ms(q, router.latency_budget_ms(q), 30_000.0))
    seen = {}
    for now in (0.0, 0.05, 0.15, 0.25):
        waits = admission.queue_waits(q, node_of, node_of, router, load, now, elapsed_ms=0.0,
                                      default_deadline_ms=30_000.0)
        seen[now] = waits[busy]
        idle = [e for e in node_of if node_of[e] != "node-b"]
        assert all(waits[e] == 0.0 for e in idle), "an idle node has no wait"
    backlog = {now: max(0.0, 200.0 - now * 1e3) for now in seen}
    for now, w in seen.items():
        expected = backlog[now] + (margin + LOAD_STEP_MS / 2 if backlog[now] > 0 else 0.0)
        assert w == pytest.approx(expected, abs=1e-6), now
    # time the query already spent beyond the aggregation allowance counts for every expert
    waits = admission.queue_waits(q, node_of, node_of, router, load, 0.25, elapsed_ms=40.0,
                                  default_deadline_ms=30_000.0)
    assert waits[assets.experts[0]] == pytest.approx(max(0.0, 40.0 - router.aggregation_ms))


def test_energy_scales_rise_with_the_measured_joules(router, node_of, assets):
    load = LoadTracker()
    e = assets.experts[0]
    assert admission.energy_scales(node_of, router, load)[e] == 1.0
    for i in range(5):
        load.dispatched("node-a", f"t{i}", 10.0, now=i)
        load.answered("node-a", f"t{i}", now=i + 0.01, expert=e, compute_ms=10.0, energy_ratio=2.0)
    scales = admission.energy_scales(node_of, router, load)
    assert scales[e] > 1.2 and all(scales[x] == 1.0 for x in node_of if x != e)


def test_standby_is_the_same_expert_on_its_new_connection_else_the_next_by_gate_weight(
        router, node_of, assets):
    q = Query("q", "which colour is it?", OPTIONS, top_k=1)
    p = _pending(router, node_of, q)
    (lost,) = p.weights
    ranked = [e for e, _ in router.standby(p.logits, p.plan) if e != lost]
    assert ranked, "the plan has a standby"

    def live(*down: str):
        return lambda e: None if node_of[e] in down else node_of[e]

    load = LoadTracker()
    assert admission.choose_standby(p, lost, router, load, live(), 0.1, retry=True) == (lost, p.weights[lost])
    pick = admission.choose_standby(p, lost, router, load, live(node_of[lost]), 0.1, retry=False)
    assert pick is not None and pick[0] == ranked[0] != lost
    # brute force: the first of the ranked standbys whose node is live and fast enough
    w_s = dict(router.standby(p.logits, p.plan))
    assert pick[1] == pytest.approx(w_s[pick[0]] * p.weights[lost] / w_s[lost])
    # the first standby's node is backed up past the flush: the next one is taken
    for i in range(20):
        load.dispatched(node_of[ranked[0]], f"b{i}", 100.0, now=0.1)
    pick = admission.choose_standby(p, lost, router, load, live(node_of[lost]), 0.1, retry=False)
    expected = next((e for e in ranked if node_of[e] not in (node_of[lost], node_of[ranked[0]])), None)
    assert (pick[0] if pick else None) == expected
    # the clock passes the flush: nobody can make it
    assert admission.choose_standby(p, lost, router, load, live(), 1.5, retry=True) is None


def test_inflight_table_owns_every_task_and_cleans_up_in_one_place(router, node_of):
    load = LoadTracker()
    table = InFlight(load)
    q = Query("q1", "which colour?", OPTIONS, top_k=2)
    p = _pending(router, node_of, q)
    table.open(p)
    recs = [table.dispatch(p, e, node_of[e], node_of[e].encode(), 50.0, now=0.0) for e in p.weights]
    assert len(table) == 1 and p.key in table and set(table.tasks) == {r.id for r in recs}
    assert sum(load.outstanding(n) for n in set(node_of.values())) == len(recs)
    first, *rest = recs
    assert table.task(first.id) == (first, p)
    table.close_task(first, Closed.ANSWERED, 0.05, expert=first.expert, compute_ms=40.0)
    table.close_task(first, Closed.ANSWERED, 0.06)  # twice: a no-op
    assert table.task(first.id) is None and load.outstanding(first.node) == sum(
        1 for r in rest if r.node == first.node)
    assert [r for r, _ in table.on_node(rest[0].node)] == [r for r in rest if r.node == rest[0].node]
    assert list(table.on_node(rest[0].node, b"another-connection")) == []
    assert table.next_flush() == p.flush_at and table.due_pending(p.flush_at - 1e-3) == []
    assert table.due_pending(p.flush_at) == [p.key]
    done, cancelled = table.finish(p.key, 1.0)  # the query is answered: its open tasks are cancelled
    assert done is p and len(table) == 0 and table.tasks == {} and cancelled == rest
    assert all(load.outstanding(n) == 0 for n in set(node_of.values()))
    assert table.next_flush() == math.inf


def test_waiting_queries_expire_by_the_clock():
    table = InFlight(LoadTracker())
    from gating.coordinator.inflight import Waiting

    for i, flush in enumerate((0.5, 1.0)):
        table.wait((b"c", f"q{i}"), Waiting([b"c"], Query(f"q{i}", "p", OPTIONS), 0.0, flush))
    assert [w.query.id for w in table.due_waiting(0.4)] == []
    assert [w.query.id for w in table.due_waiting(0.75)] == ["q0"]
    assert len(table) == 1 and table.take_waiting((b"c", "q1")) is not None and len(table) == 0
    assert np.isinf(table.next_flush())
