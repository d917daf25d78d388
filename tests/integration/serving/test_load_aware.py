"""Load-aware serving: the load bookkeeping, plans against queue waits (checked against brute
force), overload answered at once, the embedding worker off the I/O loop, fail-over.

The end-to-end tests run a real Coordinator (in a thread, real sockets) against real node
processes serving toy experts that sleep a fixed time per task.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from edge_moe.client import EdgeMoEClient
from edge_moe.config import BudgetConfig, load_fleet
from edge_moe.errors import GateError
from edge_moe.runtime.toy import ToyEncoder
from edge_moe.wire import Error, ErrorCode, Heartbeat, Query, Reply, WireBudget
from gating.coordinator import Coordinator
from gating.coordinator.embedding import EmbedWorker
from gating.coordinator.load import MAX_REPORTED_QUEUE, LoadTracker
from gating.coordinator.routing import LOAD_STEP_MS, Status, load_router
from gating.planning.selector import Budget, SelectionProblem, brute_force

from .conftest import DIM, NODES, Proc

pytestmark = pytest.mark.timeout(180)

OPTIONS = ("red", "green", "blue", "black")
TOY_MS = 40.0  # every toy expert sleeps this long per task
PROFILE_MS = 45.0  # what a profile measures for it: compute plus the trip


# ---------------------------------------------------------------- LoadTracker, by hand


def test_backlog_grows_with_dispatch_and_restarts_at_each_answer():
    t = LoadTracker()
    t.dispatched("a", "t1", 100.0, now=10.0)
    t.dispatched("a", "t2", 50.0, now=10.0)
    assert t.node_wait_ms("a", 10.0) == pytest.approx(150.0)
    assert t.node_wait_ms("a", 10.1) == pytest.approx(50.0)  # drains with time
    assert t.node_wait_ms("a", 11.0) == 0.0  # never below zero
    t.answered("a", "t1", now=10.12, expert="e", compute_ms=120.0)  # t2 starts now
    assert t.node_wait_ms("a", 10.12) == pytest.approx(50.0)
    assert t.outstanding("a") == 1
    t.answered("a", "t2", now=10.2)
    assert t.node_wait_ms("a", 10.2) == 0.0 and t.outstanding("a") == 0
    assert t.node_wait_ms("b", 10.2) == 0.0  # a node never seen: idle
    t.answered("a", "t-unknown", now=10.3)  # unknown answers change nothing
    assert t.node_wait_ms("a", 10.3) == 0.0


def test_service_times_come_from_results_then_heartbeats_then_the_profile():
    t = LoadTracker()
    assert t.service_ms("e", "a", fallback_ms=70.0) == 70.0
    t.heartbeat("a", Heartbeat("a", 0, {"e": 30.0}, {"e": 5.0}), now=1.0)
    assert t.service_ms("e", "a", 70.0) == 30.0
    assert t.service_ms("e", "a", 70.0, max_new_tokens=8) == 40.0  # 5 ms/token x 8
    for ms in (100.0, 100.0):
        t.dispatched("a", "x", ms, 1.0)
        t.answered("a", "x", 1.1, expert="e", compute_ms=ms)
    assert t.service_ms("e", "a", 70.0) == pytest.approx(100.0)  # the coordinator's own average wins
    t.dispatched("a", "g", 10.0, 1.2)
    t.answered("a", "g", 1.3, expert="e", compute_ms=80.0, n_tokens=4)
    assert t.service_ms("e", "a", 70.0, max_new_tokens=10) == pytest.approx(200.0)  # 20 ms/token
    assert t.energy_factor("e") == 1.0  # no joules reported yet: the profile
    t.dispatched("a", "j1", 10.0, 1.4)
    t.answered("a", "j1", 1.5, expert="e", compute_ms=10.0, energy_ratio=3.0)  # one cold answer
    assert t.energy_factor("e") == pytest.approx(1.4)  # moves the prior by alpha = 0.2 of 2.0
    t.dispatched("a", "j2", 10.0, 1.5)
    t.answered("a", "j2", 1.6, expert="e", compute_ms=10.0, energy_ratio=math.nan)  # not a sample
    assert t.energy_factor("e") == pytest.approx(1.4)
    for i in range(30):  # sustained: it converges to what the answers cost
        t.dispatched("a", f"k{i}", 10.0, 2.0)
        t.answered("a", f"k{i}", 2.0, expert="e", compute_ms=10.0, energy_ratio=2.0)
    assert t.energy_factor("e") == pytest.approx(2.0, abs=0.01)


def test_tasks_from_elsewhere_and_hostile_hints():
    t = LoadTracker()
    t.heartbeat("a", Heartbeat("a", 3, {"e": 20.0}), now=1.0)  # 3 tasks we never sent
    assert t.node_wait_ms("a", 1.0) == pytest.approx(60.0)
    t.dispatched("a", "t1", 20.0, 1.0)
    t.heartbeat("a", Heartbeat("a", 1, {"e": 20.0}), now=1.0)  # the one it holds is ours
    assert t.node_wait_ms("a", 1.0) == pytest.approx(20.0)
    t.heartbeat("a", Heartbeat("a", -5, {"e": math.nan, "f": -1.0, "g": math.inf}, {"e": "x"}), 1.0)  # type: ignore[dict-item]
    assert t.reported_queue("a") == 0 and t.service_ms("f", "a", 7.0) == 7.0
    t.heartbeat("a", Heartbeat("a", 10**12), now=1.0)
    assert t.reported_queue("a") == MAX_REPORTED_QUEUE


def test_per_task_overhead_is_learnt_from_the_gaps_between_busy_answers():
    t = LoadTracker()
    for i in range(4):
        t.dispatched("a", f"t{i}", 40.0, now=0.0)
    assert t.node_wait_ms("a", 0.0) == pytest.approx(160.0)  # no overhead known yet
    t.answered("a", "t0", 0.045, "e", compute_ms=40.0)  # idle before: no sample
    assert t.overhead_ms("a") == 0.0
    t.answered("a", "t1", 0.095, "e", compute_ms=40.0)  # a 50 ms gap for 40 ms of compute
    assert t.overhead_ms("a") == pytest.approx(10.0)
    assert t.node_wait_ms("a", 0.095) == pytest.approx(2 * (40.0 + 10.0))
    t.cancelled("a", "t2", 0.1)  # the next gap holds a task nobody waits for: no sample
    t.answered("a", "t3", 0.2, "e", compute_ms=40.0)
    assert t.overhead_ms("a") == pytest.approx(10.0)


def test_a_batching_node_is_not_charged_its_batches_twice():
    """A node that batches answers a batch's TASKs together: the first after the whole
    batch's wall time, the rest after no gap, each with its share as compute_ms. The
    overhead learnt must stay near 0, not 7/8 of a batch per task."""
    t = LoadTracker()
    now, wall = 0.0, 0.4  # s per batch of 8; shares of 50 ms
    for i in range(8):
        t.dispatched("a", f"b0-{i}", 50.0, now=now)
    for b in range(1, 7):  # the next batch is queued while this one runs
        for i in range(8):
            t.dispatched("a", f"b{b}-{i}", 50.0, now=now)
        now += wall
        for i in range(8):
            t.answered("a", f"b{b - 1}-{i}", now, "e", compute_ms=50.0)
    assert t.overhead_ms("a") < 10.0
    # 8 TASKs (one batch) still out: about one batch's wall time, not twice that
    assert t.node_wait_ms("a", now) < 1.2 * wall * 1e3


def test_a_silent_node_gets_an_infinite_wait_and_forget_clears_it():
    t = LoadTracker(suspect_s=0.4)
    t.seen("a", 1.0)
    t.dispatched("a", "t1", 10.0, 1.0)
    assert math.isfinite(t.node_wait_ms("a", 1.3))
    assert t.node_wait_ms("a", 1.5) == math.inf
    t.forget("a")
    assert t.node_wait_ms("a", 1.5) == 0.0 and t.outstanding("a") == 0


# ---------------------------------------------------------------- Router.decide with waits


@pytest.fixture(scope="module")
def flat_profiles(assets, tmp_path_factory):
    """Profiles where every expert costs PROFILE_MS and 1 J in every category."""
    d = tmp_path_factory.mktemp("flat")
    cats = list(assets.categories)
    doc = {"format": "edge-moe-profiles/1", "aggregation_ms": 2.0, "categories": cats,
           "experts": {e: {"node": "n", "latency_ms": {c: {"value": PROFILE_MS, "source": "measured"} for c in cats},
                           "energy_j": {c: {"value": 1.0, "source": "modelled"} for c in cats}}
                       for e in assets.experts}}
    p = d / "profiles.json"
    p.write_text(json.dumps(doc))
    return p


@pytest.fixture(scope="module")
def router(assets):
    return load_router(assets.gate, assets.calibration, assets.profiles, BudgetConfig(), top_k=2,
                       embedder=ToyEncoder(DIM))


def _oracle(router, live, waits, energy, latency, top_k):
    """Brute force over the live experts with latency = profile + the wait on the grid."""
    idx = np.array([router.index[e] for e in live])
    grid = np.array([round(waits[e] / LOAD_STEP_MS) * LOAD_STEP_MS for e in live])
    full = router.objective(top_k, None)

    def f(mask):
        m = np.zeros(len(router.experts), dtype=bool)
        m[idx[mask]] = True
        return full(m)

    cols = len(router.categories)
    problem = SelectionProblem(list(live), router.energy_j[idx], router.latency_ms[idx] + grid[:, None], f,
                               top_k=top_k, aggregation_ms=router.aggregation_ms,
                               categories=list(router.categories))
    return brute_force(problem, Budget(energy, np.full(cols, latency))), problem


def test_plans_under_load_are_brute_force_optimal_and_feasible(router):
    rng = np.random.default_rng(0)
    live = tuple(sorted(router.experts))
    lat = router.latency_ms
    checked = overloaded = 0
    for trial in range(60):
        waits = {e: float(rng.choice([0.0, rng.uniform(0, 3 * lat.max())])) for e in live}
        latency = float(rng.uniform(lat.min(), 2.5 * lat.max()))
        energy = float(rng.choice([math.inf, rng.uniform(router.energy_j.min(), router.energy_j.sum())]))
        q = Query(f"q{trial}", "Which colour? Answer:", OPTIONS, budget=WireBudget(energy, latency))
        d = router.route(q, live, wait_ms=waits)
        want, problem = _oracle(router, live, waits, energy, latency, 2)
        idle = router.route(q, live)  # the same query on idle nodes
        if want.status == "infeasible":
            assert d.status in (Status.INFEASIBLE, Status.OVERLOADED), d.message
            assert (d.status == Status.OVERLOADED) == (idle.status == Status.OK)
            overloaded += d.status == Status.OVERLOADED
            if d.status == Status.OVERLOADED:
                # retry_after: the least time after which some expert that fits alone when idle fits
                assert d.retry_after_ms is not None and d.retry_after_ms >= 0
                assert "overloaded" in d.message and "retry in" in d.message
            continue
        assert d.status == Status.OK and d.plan is not None
        got = np.array([e in d.plan.selection.experts for e in live])
        assert problem.objective(got) == pytest.approx(want.objective, abs=1e-12)
        worst = max(lat[router.index[e]].max() + round(waits[e] / LOAD_STEP_MS) * LOAD_STEP_MS
                    for e in d.plan.selection.experts) + router.aggregation_ms
        assert worst <= latency + 1e-9  # the plan meets the budget at the current queues
        assert set(d.weights) <= set(d.plan.selection.experts)
        checked += 1
    assert checked >= 20 and overloaded >= 5  # both branches were exercised


def test_retry_after_is_when_the_first_expert_fits_again(router):
    live = tuple(sorted(router.experts))
    lat = router.latency_ms.max(axis=1) + router.aggregation_ms  # (N,) worst category, alone
    budget = float(lat.max()) + 1.0  # every expert fits alone when idle
    waits = {e: 1000.0 + 100.0 * i for i, e in enumerate(live)}
    q = Query("q", "Which colour? Answer:", OPTIONS, budget=WireBudget(math.inf, budget))
    d = router.route(q, live, wait_ms=waits)
    assert d.status == Status.OVERLOADED
    want = min(waits[e] - (budget - lat[router.index[e]]) for e in live)
    assert d.retry_after_ms == pytest.approx(want)


def test_a_slow_down_scales_energy_costs(router):
    """An expert computing 1.5x slower than its profile spends 1.5x the modelled joules."""
    live = tuple(sorted(router.experts))
    en = router.energy_j.max(axis=1)  # (N,) worst category, alone
    cheapest = live[int(np.argmin([en[router.index[e]] for e in live]))]
    budget = float(en[router.index[cheapest]]) * 1.2  # the cheapest fits alone, with 20 % to spare
    q = Query("q", "Which colour? Answer:", OPTIONS, budget=WireBudget(budget, math.inf), top_k=1)
    idle = router.route(q, live)
    assert idle.status == Status.OK and cheapest in idle.plan.selection.experts
    d = router.route(q, live, energy_scale={e: 1.5 for e in live})
    # not load (no queue): infeasible at the joules measured lately, and it says so
    assert d.status == Status.INFEASIBLE and "measured lately" in d.plan.note
    assert d.plan.min_energy_j == pytest.approx(float(en[router.index[cheapest]]) * 1.5)
    timed = replace(q, budget=WireBudget(budget, float(router.latency_ms.max()) + 10.0))
    busy = router.route(timed, live, wait_ms={e: 1e6 for e in live}, energy_scale={e: 1.1 for e in live})
    assert busy.status == Status.OVERLOADED  # the queue binds, the energy fits
    ok = router.route(q, live, energy_scale={e: 1.1 for e in live})  # within the 20 %
    assert ok.status == Status.OK and cheapest in ok.plan.selection.experts


def test_silent_nodes_are_not_planned_and_ties_spread_to_the_idle_expert(router):
    live = tuple(sorted(router.experts))
    q = Query("q", "Which colour? Answer:", OPTIONS, budget=WireBudget(math.inf, math.inf), top_k=1)
    d = router.route(q, live, wait_ms={live[0]: math.inf})
    assert d.status == Status.OK and live[0] not in d.plan.live and live[0] not in d.weights
    everyone_silent = router.route(q, live, wait_ms={e: math.inf for e in live})
    assert everyone_silent.status == Status.OVERLOADED and everyone_silent.retry_after_ms is None
    assert "silent" in everyone_silent.message


def test_spread_prefers_the_less_loaded_of_two_equivalent_experts():
    from gating.coordinator.plans import spread as _spread

    # two identical experts; F counts members, capped at 1: any single one is optimal
    def f(mask):
        return float(min(1, mask.sum()))

    problem = SelectionProblem(["a", "b"], np.ones((2, 1)), np.full((2, 1), 10.0), f, top_k=1)
    budget = Budget(energy_j=1.0, latency_ms=np.array([100.0]))
    from gating.planning.selector import select_experts

    sel = select_experts(problem, Budget(1.0, np.array([100.0])))
    loaded = sel.experts[0]
    wait = tuple(50.0 if e == loaded else 0.0 for e in problem.experts)
    spread = _spread(problem, budget, sel, wait)
    assert spread.experts != sel.experts and spread.objective == sel.objective


# ---------------------------------------------------------------- the embedding worker


class SlowEncoder(ToyEncoder):
    """ToyEncoder that sleeps per call (sleep releases the GIL, as ONNX Runtime does) and can
    be told to fail on a prompt."""

    def __init__(self, dim: int, sleep_s: float, poison: str = "") -> None:
        super().__init__(dim)
        self.sleep_s, self.poison, self.calls = sleep_s, poison, 0

    def embed(self, texts):
        self.calls += 1
        time.sleep(self.sleep_s)
        if self.poison and self.poison in texts:
            raise GateError(f"cannot embed {self.poison!r}")
        return super().embed(texts)


def test_the_worker_batches_isolates_a_bad_prompt_and_is_bounded(router):
    import zmq

    ctx = zmq.Context()
    enc = SlowEncoder(DIM, 0.05, poison="bad prompt")
    slow = router.with_embedder(enc)
    w = EmbedWorker(slow.score, ctx, max_waiting=4, max_batch=16)
    try:
        prompts = ["one", "bad prompt", "three", "four"]
        for i, p in enumerate(prompts):
            assert w.submit(i, p)
        assert not all(w.submit(100 + i, "extra") for i in range(5))  # the queue is bounded
        got: dict[object, object] = {}
        end = time.monotonic() + 10
        while len(got) < len(prompts) and time.monotonic() < end:
            if w.socket.poll(100):
                for s in w.done():
                    got[s.key] = s
        assert set(prompts_idx := range(len(prompts))) <= set(got)
        for i in prompts_idx:
            s = got[i]
            if prompts[i] == "bad prompt":
                assert s.logits is None and isinstance(s.error, GateError)
            else:  # a batch gives what one at a time gives
                one, _, _ = router.score([prompts[i]])
                np.testing.assert_allclose(s.logits, one[0], rtol=1e-6)
        assert w.batches < w.scored  # some prompts were scored together
    finally:
        w.close()
        ctx.term()


# ---------------------------------------------------------------- end to end: real nodes


class Served:
    """A Coordinator on a thread plus toy node processes, on loopback."""

    def __init__(self, assets, profiles, delays, embedder=None, **cfg_changes) -> None:
        fleet = load_fleet(assets.fleet)
        cfg = replace(fleet.coordinator, **cfg_changes)
        router = load_router(assets.gate, assets.calibration, profiles, BudgetConfig(), top_k=cfg.top_k)
        self.coord = Coordinator(router, embedder or ToyEncoder(DIM), cfg, "tcp://127.0.0.1:*",
                                 "tcp://127.0.0.1:*", placement=fleet.placement())
        self.thread = threading.Thread(target=self.coord.run, daemon=True)
        self.thread.start()
        self.nodes = {}
        try:
            for name in NODES:
                self.nodes[name] = self.start_node(assets, name, delays.get(name, TOY_MS))
            end = time.monotonic() + 30
            while len(self.coord.registry.live_experts) < len(assets.experts):
                assert time.monotonic() < end, "nodes did not all join"
                time.sleep(0.05)
        except BaseException:
            self.close()
            raise

    def start_node(self, assets, name, delay_ms):
        proc = Proc(["edge_moe.cli", "node", "--config", str(assets.fleet), "--node", name, "--toy",
                     "--toy-delay-ms", str(delay_ms), "--backend", self.coord.backend_endpoint,
                     "--meter", "modelled"])
        proc.expect(f"node {name} serving")
        return proc

    def close(self) -> None:
        for p in self.nodes.values():
            p.terminate()
        self.coord.stop()
        self.thread.join(timeout=10)
        self.coord.close()


def _closed_loop(endpoint, clients, seconds, budget_ms):
    records: list[tuple[float, Reply | Error]] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run(k):
        with EdgeMoEClient(endpoint, timeout_s=5, retries=0) as c:
            i = 0
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                r = c.query(f"client {k} question {i}: which colour is item {i * 31 % 97}? Answer:",
                            OPTIONS, energy_j=math.inf, latency_ms=budget_ms, top_k=1)
                with lock:
                    records.append(((time.perf_counter() - t0) * 1e3, r))
                i += 1
                if isinstance(r, Error) and r.code == ErrorCode.OVERLOADED:
                    time.sleep(min(0.2, (r.retry_after_ms or 10.0) / 1e3))  # as a client should

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 30)
    return records


def _tally(records, budget_ms):
    late = sum(1 for _, r in records if isinstance(r, Error) and r.code == ErrorCode.DEADLINE)
    late += sum(1 for _, r in records if isinstance(r, Reply) and r.degraded)
    breach = sum(1 for ms, r in records if isinstance(r, Reply) and ms > 1.1 * budget_ms)
    over = [(ms, r) for ms, r in records if isinstance(r, Error) and r.code == ErrorCode.OVERLOADED]
    ok = sum(1 for _, r in records if isinstance(r, Reply) and not r.degraded and r.answer_index is not None)
    return {"n": len(records), "ok": ok, "late": late, "breach": breach, "overloaded": over}


def test_load_aware_plans_keep_the_budget_that_load_blind_plans_break(assets, flat_profiles):
    """8 clients, top-1 of four 40 ms experts on three nodes, 150 ms budget: load-blind plans
    queue on whichever expert the gate likes and miss deadlines; load-aware plans move to
    idle experts or refuse at once with ERROR overloaded."""
    budget = 150.0
    out = {}
    for aware in (True, False):
        s = Served(assets, flat_profiles, {}, load_aware=aware, top_k=1)
        try:
            out[aware] = _tally(_closed_loop(s.coord.frontend_endpoint, 8, 4.0, budget), budget)
            if aware:
                assert all(isinstance(r.retry_after_ms, float) for _, r in out[aware]["overloaded"])
        finally:
            s.close()
    aware, blind = out[True], out[False]
    assert aware["n"] > 50 and blind["n"] > 50
    assert aware["late"] + aware["breach"] <= 0.03 * aware["n"], aware
    assert blind["late"] + blind["breach"] >= 3 * max(1, aware["late"] + aware["breach"]), (aware, blind)
    assert aware["ok"] >= 0.5 * aware["n"], aware
    over_ms = sorted(ms for ms, _ in aware["overloaded"])
    if over_ms:  # refused at once, not after a wait (the deadlines here are seconds; the
        # bound leaves room for a loaded 2-core CI machine; load_bench measures the real figure)
        assert over_ms[len(over_ms) // 2] < 250.0, over_ms


def test_heartbeats_flow_while_prompts_are_slow_to_embed(assets, flat_profiles):
    """Each embed call takes 0.4 s, longer than the 0.6 s liveness window allows twice; the
    loop keeps beating, so no node leaves the live set, and waiting prompts are batched."""
    enc = SlowEncoder(DIM, 0.4)
    s = Served(assets, flat_profiles, {}, embedder=enc)
    seen: list[int] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen.append(len(s.coord.registry.node_names))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        watcher.start()
        records = _closed_loop(s.coord.frontend_endpoint, 6, 2.5, 5000.0)
        stop.set()
        watcher.join()
        assert records and all(isinstance(r, Reply) for _, r in records), records[:3]
        assert min(seen) == len(NODES), "a node left the live set while prompts were embedded"
        assert s.coord.embedder.batches < s.coord.embedder.scored  # waiting prompts went together
    finally:
        stop.set()
        s.close()


def test_a_lost_nodes_task_is_re_dispatched_to_a_standby_at_once(assets, flat_profiles):
    """node-c is stuck (3 s per task) and then killed; its expert's task goes to another
    member of the plan as soon as node-c leaves the live set, well before the deadline."""
    doomed = assets.experts[NODES["node-c"][0]]
    s = Served(assets, flat_profiles, {"node-c": 3000.0}, top_k=1)
    try:
        router = s.coord.router
        prompt = None
        for i in range(500):  # a prompt whose top-1 expert is node-c's
            p = f"question {i}: which colour? Answer:"
            d = router.route(Query("x", p, OPTIONS, budget=WireBudget(math.inf, math.inf), top_k=1),
                             s.coord.registry.live_experts)
            if d.active == (doomed,) and len(d.plan.selection.experts) > 1:
                prompt = p
                break
        assert prompt is not None
        result: list[tuple[float, Reply | Error]] = []

        def ask():
            with EdgeMoEClient(s.coord.frontend_endpoint, timeout_s=10, retries=0) as c:
                t0 = time.monotonic()
                r = c.query(prompt, OPTIONS, energy_j=math.inf, latency_ms=math.inf, top_k=1,
                            deadline_ms=6000)
                result.append((time.monotonic() - t0, r))

        t = threading.Thread(target=ask, daemon=True)
        t.start()
        time.sleep(0.3)
        s.nodes["node-c"].kill()
        t.join(timeout=15)
        (elapsed, r), = result
        assert isinstance(r, Reply), r
        use = {u.name: u for u in r.experts}
        assert use[doomed].status == "lost" and "re-dispatched to" in use[doomed].error, use
        stand_in = use[doomed].error.rsplit("re-dispatched to ", 1)[1]
        assert use[stand_in].status == "ok" and r.answer_index is not None and r.degraded
        assert elapsed < 2.5, elapsed  # liveness window 0.6 s + a 40 ms task, not the 6 s deadline
        assert s.coord.stats["redispatched"] == 1
    finally:
        s.close()
