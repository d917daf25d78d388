"""Routing (plans over live experts, cached) and aggregation (mixture, vote), in process."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from edge_moe.config import BudgetConfig, CoordinatorConfig
from edge_moe.errors import ConfigError, SelectionError
from gating.aggregate import mix_options, normalise_answer, renormalise, vote
from gating.coordinator import Coordinator
from gating.mixture import mix
from gating.routing import load_router
from gating.selector import Budget, SelectionProblem, select_experts
from edge_moe.runtime.toy import ToyEncoder


@pytest.fixture(scope="module")
def router(assets):
    return load_router(assets.gate, assets.calibration, assets.profiles, BudgetConfig(), top_k=2)


def test_plan_over_a_live_subset_is_select_experts_on_that_subset(router):
    live = ("synth-expert-0", "synth-expert-2", "synth-expert-3")
    idx = [router.index[e] for e in live]
    full = router.objective(2, None)

    def objective(mask):
        m = np.zeros(len(router.experts), dtype=bool)
        m[np.array(idx)[mask]] = True
        return full(m)

    problem = SelectionProblem(list(live), router.energy_j[idx], router.latency_ms[idx], objective,
                               top_k=2, aggregation_ms=router.aggregation_ms,
                               categories=router.categories)
    for energy in (2.0, 5.0, 12.0, math.inf):
        want = select_experts(problem, Budget(energy_j=energy))
        plan = router.plan(live, energy_j=energy)
        assert plan.selection.experts == want.experts and plan.selection.status == want.status
        assert not plan.cached and router.plan(live, energy_j=energy).cached
        assert set(plan.selection.experts) <= set(live)


def test_plan_rejects_bad_input(router):
    with pytest.raises(SelectionError, match="unknown category 'x'"):
        router.plan(router.experts, category="x")
    with pytest.raises(SelectionError, match="budget.energy_j=nan"):
        router.plan(router.experts, energy_j=float("nan"))
    with pytest.raises(SelectionError, match="not both"):
        router.plan(router.experts, top_k=2, tau=0.5)


def test_adaptive_tau_weights_reach_the_mass(router):
    plan = router.plan(router.experts, tau=0.9)
    assert plan.tau == 0.9 and plan.top_k is None
    logits = router.logits(ToyEncoder(16).embed(["hello world"])[0])
    w = router.weights(logits, plan)
    assert w.sum() == pytest.approx(1.0) and set(np.flatnonzero(w)) <= set(np.flatnonzero(plan.mask))


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
    from gating.coordinator import main as coordinator_main
    from nodes.server import main as node_main

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
