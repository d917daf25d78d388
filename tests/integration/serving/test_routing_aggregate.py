"""Routing (one Router.route call per query: checks, gate, plan over the live experts, weights)
and aggregation (mixture, vote), in process."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from edge_moe.calibration import VALIDATION, load_calibration
from edge_moe.config import BudgetConfig, CoordinatorConfig
from edge_moe.errors import ConfigError, SelectionError
from edge_moe.profiles import load_profiles
from edge_moe.runtime.gate import OnnxGate, masked_gate_weights
from edge_moe.runtime.toy import ToyEncoder
from edge_moe.wire import Query, WireBudget
from gating.coordinator import Coordinator
from gating.coordinator.aggregate import mix_options, normalise_answer, renormalise, vote
from gating.coordinator.routing import Status, load_router
from gating.planning.mixture import MixtureObjective, apply_prior_correction, mix, select_top_k
from gating.planning.selector import Budget, SelectionProblem, select_experts
from gating.planning.temperature import apply_temperature

PROMPTS = ["Which planet is largest? Answer:", "hello world", "Is water wet? A. yes B. no Answer:"]


class CountingEncoder(ToyEncoder):
    """ToyEncoder(16) that counts its calls, to see that bad requests are refused before it."""

    calls = 0

    def embed(self, texts):
        CountingEncoder.calls += 1
        return super().embed(texts)


@pytest.fixture(scope="module")
def router(assets):
    return load_router(assets.gate, assets.calibration, assets.profiles, BudgetConfig(), top_k=2,
                       embedder=CountingEncoder(16))


@pytest.fixture(scope="module")
def by_hand(assets):
    """The gate, F(S) per fine level, and the (N, C) costs, rebuilt from the files without
    gating.coordinator.routing or gating.planning.inputs."""
    gate = OnnxGate.load(assets.gate)
    table = load_calibration(assets.calibration).select_experts(gate.experts)
    val = table.split_rows(VALIDATION)
    logits = gate.logits(val.embeddings)
    lp = apply_temperature(apply_prior_correction(val.logprobs, gate.prior), gate.temperature)
    prof = load_profiles(assets.profiles)
    lat, en = prof.arrays(gate.experts, table.category_names)

    def objective(top_k, tau):
        return MixtureObjective(logits, lp, val.labels, top_k=top_k, tau=tau, metric="neg_nll")  # default: loglik

    return gate, objective, en, lat, prof.aggregation_ms, table.category_names


def plan_by_hand(by_hand, live, category, energy, latency, top_k, tau):
    """select_experts over the live experts, on the category's column (or all of them)."""
    gate, objective, en, lat, agg, cats = by_hand
    idx = np.array([gate.experts.index(e) for e in live])
    cols = [cats.index(category)] if category is not None else list(range(len(cats)))
    full = objective(top_k, tau)

    def f(mask):
        m = np.zeros(len(gate.experts), dtype=bool)
        m[idx[mask]] = True
        return full(m)

    problem = SelectionProblem(list(live), en[np.ix_(idx, cols)], lat[np.ix_(idx, cols)], f,
                               top_k=None if tau is not None else top_k, aggregation_ms=agg,
                               categories=[cats[c] for c in cols], monotone=False)
    return select_experts(problem, Budget(energy_j=energy, latency_ms=np.full(len(cols), latency)))


CASES = [  # live, category, energy_j, latency_ms, top_k, tau
    (("synth-expert-0", "synth-expert-2", "synth-expert-3"), None, math.inf, math.inf, None, None),
    (("synth-expert-0", "synth-expert-1", "synth-expert-2", "synth-expert-3"), None, 5.0, math.inf, 1, None),
    (("synth-expert-0", "synth-expert-1", "synth-expert-2", "synth-expert-3"), None, 8.0, math.inf, 1, None),
    (("synth-expert-0", "synth-expert-1", "synth-expert-2", "synth-expert-3"), None, math.inf, math.inf, 1, None),
    (("synth-expert-0", "synth-expert-1", "synth-expert-2", "synth-expert-3"), None, math.inf, math.inf, 3, None),
    (("synth-expert-0", "synth-expert-1", "synth-expert-2", "synth-expert-3"), None, math.inf, math.inf, None, 0.5),
    (("synth-expert-1", "synth-expert-3"), None, math.inf, math.inf, None, 0.9),
    (("synth-expert-0", "synth-expert-1", "synth-expert-2"), "cat", math.inf, 1e9, 2, None),
    (("synth-expert-0", "synth-expert-2", "synth-expert-3"), None, 2.0, math.inf, None, None),
]


@pytest.mark.parametrize("case", CASES)
def test_route_is_the_selector_then_the_masked_top_k(router, by_hand, assets, case):
    live, category, energy, latency, top_k, tau = case
    category = assets.categories[1] if category == "cat" else category
    gate = by_hand[0]
    k, t = (2, None) if top_k is None and tau is None else (top_k, tau)  # the router's default: k=2
    want = plan_by_hand(by_hand, live, category, energy, latency, k, t)
    for i, prompt in enumerate(PROMPTS):
        q = Query(f"q{i}", prompt, ("a", "b", "c", "d"), category, WireBudget(energy, latency),
                  top_k=top_k, tau=tau)
        d = router.route(q, (*live, "not-an-expert"))
        assert d.plan is not None and d.plan.live == tuple(sorted(live))
        assert (d.top_k, d.tau) == (k, t) == (d.plan.top_k, d.plan.tau)
        assert d.plan.selection.experts == want.experts and d.plan.selection.status == want.status
        assert d.plan.cached == (i > 0)
        assert set(d.stage_ms) == {"embed", "gate", "select"}
        logits = gate.logits(ToyEncoder(16).embed([prompt]))  # (1, N)
        np.testing.assert_array_equal(d.logits, logits[0])
        if want.status != "optimal":
            assert d.status == Status.INFEASIBLE and d.message == want.message and d.weights == {}
            continue
        assert d.status == Status.OK and d.message == ""
        assert d.plan.selection.objective == pytest.approx(want.objective, abs=1e-12)
        mask = np.array([e in want.experts for e in gate.experts])
        np.testing.assert_array_equal(d.plan.mask, mask)
        w = select_top_k(masked_gate_weights(logits, mask), top_k=k, tau=t, mask=mask)[0]  # (N,)
        hand = {gate.experts[j]: w[j] for j in np.flatnonzero(w > 0)}
        assert list(d.weights) == list(hand) and d.active == tuple(hand)
        assert d.weights == pytest.approx(hand, rel=0, abs=1e-12)
        assert sum(d.weights.values()) == pytest.approx(1.0)
        if k is not None:
            assert len(d.active) == min(k, len(want.experts))


def test_route_with_no_live_expert_says_so(router):
    d = router.route(Query("q", "hello"), ("not-an-expert",), ("node-z",))
    assert d.status == Status.NO_EXPERTS and d.plan is None and d.weights == {}
    assert d.message == f"no live expert (live nodes: ['node-z']; the gate knows {list(router.experts)})"


def test_route_infeasible_budget_is_a_status_with_the_smallest_budget(router, by_hand):
    en = by_hand[2]
    d = router.route(Query("q", "hello", budget=WireBudget(energy_j=1e-3)), router.experts)
    assert d.status == Status.INFEASIBLE and d.weights == {} and d.plan is not None
    assert "energy budget" in d.message and d.message == d.plan.selection.message
    assert d.plan.min_energy_j == pytest.approx(en.max(axis=1).min())


@pytest.mark.parametrize("kwargs, needle", [
    ({"category": "x"}, "unknown category 'x'"),
    ({"budget": WireBudget(energy_j=float("nan"))}, "budget.energy_j=nan"),
    ({"budget": WireBudget(latency_ms=-1.0)}, "budget.latency_ms=-1.0"),
    ({"top_k": 2, "tau": 0.5}, "not both"),
    ({"top_k": 0}, "top_k=0"),
    ({"tau": 1.5}, "tau=1.5"),
    ({"mode": "vibes"}, "mode='vibes'"),
    ({"prompt": "  "}, "prompt is empty"),
    ({"deadline_ms": 1e9}, "deadline_ms=1000000000.0"),
])
def test_route_refuses_a_bad_request_with_a_typed_error_before_embedding(router, kwargs, needle):
    q = Query(**{"id": "bad", "prompt": "hello", **kwargs})
    before = CountingEncoder.calls
    with pytest.raises(SelectionError, match=needle):
        router.route(q, router.experts)
    assert CountingEncoder.calls == before


def test_router_and_coordinator_need_an_embedder_and_one_fine_level(assets, router):
    bare = load_router(assets.gate, assets.calibration, assets.profiles, top_k=2)
    with pytest.raises(ConfigError, match="no embedder"):
        bare.route(Query("q", "hello"), bare.experts)
    with pytest.raises(ConfigError, match="no embedder"):
        Coordinator(bare, None, CoordinatorConfig(node="x"), "tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
    with pytest.raises(ConfigError, match="not both"):
        load_router(assets.gate, assets.calibration, assets.profiles, top_k=2, tau=0.5)
    other = router.with_embedder(ToyEncoder(16))  # shares the plan cache
    assert other.embedder is not router.embedder and other._plans is router._plans
    assert router.prior.keys() == set(router.experts)


def test_mix_options_renormalises_over_those_that_answered():
    lp = {"a": np.log([0.7, 0.2, 0.1]), "b": np.log([0.1, 0.1, 0.8])}
    probs, corrected = mix_options({"a": 0.3, "b": 0.1, "gone": 0.6}, lp)
    assert not corrected
    np.testing.assert_allclose(probs, 0.75 * np.exp(lp["a"]) + 0.25 * np.exp(lp["b"]))
    same = mix(np.array([[0.75, 0.25]]), np.stack([lp["a"], lp["b"]])[None])[0]
    np.testing.assert_allclose(probs, same)
    prior = {"a": np.log([0.5, 0.25, 0.25]), "b": np.zeros(3)}
    probs, corrected = mix_options({"a": 1.0, "b": 1.0}, lp, prior)
    assert corrected and probs.sum() == pytest.approx(1.0)
    _, corrected = mix_options({"a": 1.0}, lp, {"a": np.zeros(4)})  # another K: uncorrected
    assert not corrected
    with pytest.raises(SelectionError, match="different option counts"):
        mix_options({"a": 1.0, "b": 1.0}, {"a": np.zeros(2), "b": np.zeros(3)})
    with pytest.raises(SelectionError, match="no expert answered"):
        mix_options({"a": 1.0}, {})


def test_vote_normalises_and_breaks_ties_by_the_top_weight_expert():
    assert normalise_answer("  Paris.\n") == "paris" == normalise_answer("PARIS!")
    text, scores = vote({"a": 0.4, "b": 0.35, "c": 0.25}, {"a": "Rome", "b": "Paris.", "c": "paris"})
    assert text == "Paris." and scores == pytest.approx({"rome": 0.4, "paris": 0.6})
    text, scores = vote({"a": 0.5, "b": 0.3, "c": 0.2}, {"a": "Rome", "b": "Paris.", "c": "paris"})
    assert text == "Rome" and scores == pytest.approx({"rome": 0.5, "paris": 0.5})  # tie: top expert
    # a tie: the group holding the top-weight expert wins, with its own text
    text, _ = vote({"a": 0.4, "b": 0.4, "c": 0.2}, {"a": "yes", "b": "No", "c": "no"})
    assert text == "No"
    text, _ = vote({"a": 0.5, "b": 0.25, "c": 0.25}, {"a": "Yes!", "b": "no", "c": "no"})
    assert text == "Yes!"
    assert renormalise({"a": 0.0, "b": 0.0}) == {"a": 0.5, "b": 0.5}


def test_non_loopback_bind_needs_curve_or_insecure(router):
    cfg = CoordinatorConfig(node="x")
    with pytest.raises(ConfigError, match="without CURVE"):
        Coordinator(router, ToyEncoder(16), cfg, "tcp://0.0.0.0:*", "tcp://127.0.0.1:*")
    c = Coordinator(router, ToyEncoder(16), cfg, "tcp://0.0.0.0:*", "tcp://127.0.0.1:*", insecure=True)
    c.close()


def test_serving_path_imports_neither_torch_nor_transformers():
    code = ("import sys, edge_moe.wire, edge_moe.client, edge_moe.energy, nodes.server, edge_moe.runtime.liveness, "
            "edge_moe.runtime.toy, gating.coordinator\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_entry_points_fail_cleanly_on_bad_setup(assets, tmp_path, capsys):
    from typer.testing import CliRunner

    from edge_moe.cli import app

    def run(command: str, argv: list[str]) -> int:  # `edge-moe <command>`; its error line goes to stderr
        res = CliRunner().invoke(app, [command, *argv])
        print(res.output)
        return res.exit_code

    def node_main(argv: list[str]) -> int:
        return run("node", argv)

    def coordinator_main(argv: list[str]) -> int:
        return run("coordinator", argv)

    rc = coordinator_main(["--config", str(assets.fleet), "--gate", str(assets.gate), "--calibration",
                           str(assets.calibration), "--profiles", str(assets.profiles),
                           "--encoder", str(tmp_path / "no-encoder")])
    assert rc == 1 and "ArtifactError" in capsys.readouterr().out
    rc = coordinator_main(["--config", str(assets.fleet), "--gate", str(tmp_path / "nope.onnx"),
                           "--calibration", str(assets.calibration), "--profiles", str(assets.profiles)])
    assert rc == 1 and "GateError" in capsys.readouterr().out
    assert node_main(["--config", str(assets.fleet), "--node", "node-z", "--toy"]) == 1
    assert "unknown node 'node-z'" in capsys.readouterr().out
    assert node_main(["--config", str(assets.fleet), "--node", "node-a",
                      "--artifacts", str(tmp_path)]) == 1
    assert "ArtifactError" in capsys.readouterr().out
