"""The serving path with real ONNX Runtime LLM runners: a tiny random-weight Llama exported
by `exporters` (no download), served by a node built from a fleet config's artifact paths."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
import yaml

from edge_moe.calibration import TRAIN, save_calibration
from edge_moe.client import EdgeMoEClient
from edge_moe.config import load_fleet
from edge_moe.profiles import save_profiles
from edge_moe.runtime.toy import ToyEncoder, fit_linear_gate, write_linear_gate
from edge_moe.wire import Reply
from gating.coordinator import Coordinator
from gating.coordinator.routing import load_router
from gating.offline.synthetic import make_synthetic_profiles, make_synthetic_table
from gating.planning.mixture import apply_prior_correction, fit_prior_correction, mix
from nodes.server import NodeServer, build_experts

pytest.importorskip("transformers", reason="exporting the tiny Llama needs the `export` extra")
pytestmark = pytest.mark.timeout(180)

EXPERTS = ("tiny-a", "tiny-b")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from exporters.llm import export_decoder
    from exporters.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("real")
    ckpt = make_tiny_checkpoint("llama", root / "ckpt", max_context=64)
    export_decoder(ckpt, root / "artifacts" / "tiny-llama" / "fp32", name="tiny-llama", parity=False)
    table, size = make_synthetic_table(n_samples=300, n_experts=2, n_categories=2, n_options=2,
                                       embedding_dim=16, seed=1)
    table = dataclasses.replace(table, experts=EXPERTS)
    save_calibration(table, root / "cal.npz")
    save_profiles(make_synthetic_profiles(table, size), root / "prof.json")
    train = table.split_rows(TRAIN)
    label_lp = train.logprobs[np.arange(train.n_samples), :, train.labels]
    write_linear_gate(root / "gate.onnx", EXPERTS, 16, fit_prior_correction(train.logprobs),
                      weights=fit_linear_gate(train.embeddings, label_lp))
    fleet = {
        "device_classes": {"cpu": {"power_idle_w": 5.0, "power_busy_w": 15.0, "source": "t"}},
        "nodes": [{"name": "n1", "device_class": "cpu"}],
        "experts": [{"name": e, "node": "n1", "artifact": "tiny-llama/fp32"} for e in EXPERTS],
        "categories": list(table.category_names),
        "coordinator": {"node": "n1", "heartbeat_s": 0.5, "liveness": 3, "top_k": 2},
    }
    (root / "fleet.yaml").write_text(yaml.safe_dump(fleet))
    f = load_fleet(root / "fleet.yaml")
    router = load_router(root / "gate.onnx", root / "cal.npz", root / "prof.json", f.budget, 2)
    coord = Coordinator(router, ToyEncoder(16), f.coordinator, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
    experts = build_experts(f, "n1", artifacts_dir=root / "artifacts", runner_kwargs={"intra_op_threads": 1})
    node = NodeServer("n1", coord.backend_endpoint, experts, f.device_class_of("n1"), f.coordinator)
    threads = [threading.Thread(target=x.run, daemon=True) for x in (coord, node)]
    for t in threads:
        t.start()
    client = EdgeMoEClient(coord.frontend_endpoint, timeout_s=10)
    end = time.monotonic() + 20
    while time.monotonic() < end:
        r = client.query("w3 w4", ["w5", "w6"], mode="continuation")
        if isinstance(r, Reply) and len(r.plan.live) == 2:
            break
        time.sleep(0.05)
    yield client, experts, router
    client.close()
    node.stop()
    coord.stop()
    for t in threads:
        t.join(5)
    node.close()
    coord.close()


def test_options_through_real_ort_runners(served):
    client, experts, router = served
    prompt, options = "w3 w9 w12 w4", ["w5", "w6"]
    r = client.query(prompt, options, mode="continuation", energy_j=1e9)
    assert isinstance(r, Reply) and not r.degraded, r
    assert all(u.energy_source == "modelled" and u.compute_ms > 0 for u in r.experts)
    names = [u.name for u in r.experts]
    local = np.stack([experts[n].runner.score_options(prompt, options, "continuation") for n in names])
    np.testing.assert_allclose([u.logprobs for u in r.experts], local, atol=1e-6)
    prior = np.stack([router.gate.prior[router.index[n]] for n in names])
    want = mix(np.array([[u.weight for u in r.experts]]), apply_prior_correction(local[None], prior))[0]
    np.testing.assert_allclose(r.probabilities, want, atol=1e-6)


def test_generation_through_real_ort_runners(served):
    client, experts, _ = served
    r = client.query("w3 w4 w5", max_new_tokens=4)
    assert isinstance(r, Reply) and r.text is not None, r
    top = max(r.experts, key=lambda u: u.weight)
    assert top.text == experts[top.name].runner.generate("w3 w4 w5", 4).text


def test_a_real_runner_streams_its_generation_in_pieces_through_the_fleet(served):
    """The tiny random Llama decodes 12 tokens: the node's PARTIALs reach the client one piece
    at a time, in order, and add up to the REPLY's text (which equals a direct generate)."""
    from edge_moe.wire import Query

    client, experts, _ = served
    direct = []
    runner = experts[EXPERTS[0]].runner
    gen = runner.generate("w1 w2 w3", 12, on_text=direct.append)
    assert len(direct) >= 2 and "".join(direct) == gen.text  # pieces as decoded, then the whole
    pieces = []
    r = client.request(Query("st", "w1 w2 w3", None, max_new_tokens=12, top_k=1, stream=True),
                       on_partial=pieces.append)
    assert isinstance(r, Reply) and len(pieces) >= 2, (r, pieces)
    assert [p.index for p in pieces] == list(range(len(pieces)))
    assert "".join(p.text for p in pieces) == r.text
