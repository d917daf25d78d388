"""Generation queries are planned with the profiles' generation model (prefill + T tokens),
not with the option-scoring costs; profiles without one still plan, and the plan says so."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edge_moe.config import BudgetConfig
from edge_moe.runtime.toy import ToyEncoder
from edge_moe.wire import Query, WireBudget
from gating.coordinator.replies import plan_info
from gating.coordinator.routing import Status, load_router
from gating.planning.selector import Budget, SelectionProblem, select_experts
from tests.toyfleet import DIM

OPTIONS = ("red", "green", "blue", "black")


def _fig(v, src="measured"):
    return {"value": v, "source": src}


@pytest.fixture(scope="module")
def gen_profiles(assets, tmp_path_factory):
    """The serving assets' profiles plus a generation model: expert i prefills in 20·(i+1) ms
    and decodes at 10·(i+1) ms/token, 0.1 J + 0.05·(i+1) J per token."""
    doc = json.loads(assets.profiles.read_text())
    for i, e in enumerate(assets.experts):
        doc["experts"][e]["generation"] = {
            c: {"prefill_ms": _fig(20.0 * (i + 1)), "per_token_ms": _fig(10.0 * (i + 1)),
                "prefill_j": _fig(0.1, "modelled"), "j_per_token": _fig(0.05 * (i + 1), "modelled")}
            for c in assets.categories}
    p = tmp_path_factory.mktemp("gen") / "profiles.json"
    p.write_text(json.dumps(doc))
    return p


def _offline(router, energy, latency, t_tokens):
    n = len(router.experts)
    i = np.arange(n, dtype=np.float64)[:, None] + 1.0
    cats = len(router.categories)
    lat = np.broadcast_to(20.0 * i + t_tokens * 10.0 * i, (n, cats)).copy()
    en = np.broadcast_to(0.1 + t_tokens * 0.05 * i, (n, cats)).copy()
    full = router.objective(router.top_k, None)
    problem = SelectionProblem(list(router.experts), en, lat, full, top_k=router.top_k,
                               aggregation_ms=router.aggregation_ms, categories=list(router.categories))
    return select_experts(problem, Budget(energy, np.full(cats, latency)))


@pytest.mark.parametrize("tokens", [1, 8, 64])
@pytest.mark.parametrize("energy,latency", [(math.inf, math.inf), (1.0, math.inf), (math.inf, 300.0),
                                            (2.0, 700.0), (0.05, math.inf)])
def test_a_generation_plan_is_the_selector_over_prefill_plus_tokens(assets, gen_profiles, tokens,
                                                                   energy, latency):
    router = load_router(assets.gate, assets.calibration, gen_profiles, BudgetConfig(), top_k=2,
                         embedder=ToyEncoder(DIM))
    # experts in gate order are the assets' order only if the gate says so: map by name
    assert router.experts == tuple(assets.experts)
    want = _offline(router, energy, latency, tokens)
    q = Query("g", "Write a haiku about rain.", None, budget=WireBudget(energy, latency),
              max_new_tokens=tokens)
    d = router.route(q, router.experts)
    assert d.plan is not None and d.plan.note == ""
    if want.status == "infeasible":
        assert d.status == Status.INFEASIBLE
    else:
        assert d.status == Status.OK and d.plan.selection.experts == want.experts
    assert router.profile_ms(q, router.experts[1]) == pytest.approx(40.0 + tokens * 20.0)


def test_a_budget_that_fits_scoring_can_refuse_a_long_generation(assets, gen_profiles):
    router = load_router(assets.gate, assets.calibration, gen_profiles, BudgetConfig(), top_k=2,
                         embedder=ToyEncoder(DIM))
    energy = float(router.energy_j.max()) * 2  # every expert scores options within it
    scoring = router.route(Query("s", "Which colour?", OPTIONS, budget=WireBudget(energy, math.inf)),
                           router.experts)
    assert scoring.status == Status.OK
    t = int(math.ceil((energy - 0.1) / 0.05)) + 1  # even the cheapest expert overspends on t tokens
    long = router.route(Query("g", "Tell a story.", None, budget=WireBudget(energy, math.inf),
                              max_new_tokens=t), router.experts)
    assert long.status == Status.INFEASIBLE and long.plan.min_energy_j == pytest.approx(0.1 + t * 0.05)


def test_old_profiles_plan_generation_with_scoring_costs_and_say_so(assets):
    router = load_router(assets.gate, assets.calibration, assets.profiles, BudgetConfig(), top_k=2,
                         embedder=ToyEncoder(DIM))
    assert router.generation is None
    q = Query("g", "Write a haiku.", None, budget=WireBudget(math.inf, math.inf), max_new_tokens=16)
    d = router.route(q, router.experts)
    assert d.status == Status.OK
    info = plan_info(d.plan)
    assert "no generation model" in info.message and "option-scoring costs" in info.message
    opt = router.route(Query("o", "Which colour?", OPTIONS), router.experts)
    assert "generation" not in plan_info(opt.plan).message
