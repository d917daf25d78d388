"""CURVE: with `security: curve` the coordinator answers only clients that hold the server
key and an authorised key pair; nodes join the same way."""

from __future__ import annotations

import threading
import time

import pytest

from edge_moe.client import EdgeMoEClient
from edge_moe.config import BudgetConfig, CoordinatorConfig, DeviceClass
from edge_moe.errors import ConfigError, DeadlineError
from edge_moe.runtime.toy import ToyEncoder, ToyExpert
from edge_moe.security import generate_keys, load_client_keys, load_server_keys
from edge_moe.wire import Reply
from gating.coordinator import Coordinator
from gating.coordinator.routing import load_router
from nodes.server import NodeServer

pytestmark = pytest.mark.timeout(60)

CFG = CoordinatorConfig(node="x", heartbeat_s=0.2, liveness=3, reconnect_min_s=0.1,
                        reconnect_max_s=0.4, top_k=2, curve=True)


@pytest.fixture()
def secured(assets, tmp_path):
    keys = generate_keys(tmp_path / "keys", clients=("client", "node", "stranger")).directory
    (keys / "authorized" / "stranger.key").unlink()  # a valid key pair the server does not know
    router = load_router(assets.gate, assets.calibration, assets.profiles, BudgetConfig(), 2)
    coord = Coordinator(router, ToyEncoder(16), CFG, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*",
                        curve=load_server_keys(keys))
    ct = threading.Thread(target=coord.run, daemon=True)
    ct.start()
    node = NodeServer("node-a", coord.backend_endpoint, {e: ToyExpert(e) for e in assets.experts},
                      DeviceClass("cpu", 5.0, 15.0, "t"), CFG, curve=load_client_keys(keys, "node"))
    nt = threading.Thread(target=node.run, daemon=True)
    nt.start()
    yield coord, keys
    node.stop()
    coord.stop()
    nt.join(5)
    ct.join(5)
    node.close()
    coord.close()


def test_curve_with_keys_works_and_without_gets_no_answer(secured):
    coord, keys = secured
    with EdgeMoEClient(coord.frontend_endpoint, timeout_s=3, retries=0,
                       curve=load_client_keys(keys, "client")) as c:
        end = time.monotonic() + 10
        while True:
            r = c.query("Is it safe? A. yes B. no", ["yes", "no"])
            if isinstance(r, Reply) and r.plan.live or time.monotonic() > end:
                break
            time.sleep(0.05)
        assert isinstance(r, Reply) and len(r.plan.live) == 4 and r.probabilities is not None
    with EdgeMoEClient(coord.frontend_endpoint, timeout_s=0.5, retries=0) as plain:
        with pytest.raises(DeadlineError, match="no answer"):
            plain.query("Is it safe?", ["yes", "no"])
    with EdgeMoEClient(coord.frontend_endpoint, timeout_s=0.5, retries=0,
                       curve=load_client_keys(keys, "stranger")) as stranger:
        with pytest.raises(DeadlineError):
            stranger.query("Is it safe?", ["yes", "no"])
    assert coord.stats["queries"] >= 1 and coord.stats["malformed_frontend"] == 0


def test_missing_keys_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="--curve-keys"):
        load_server_keys(None)
    with pytest.raises(ConfigError, match="server.key_secret: CURVE key file not found"):
        load_server_keys(tmp_path)
    with pytest.raises(ConfigError, match="server.key: CURVE key file not found"):
        load_client_keys(tmp_path)


def test_the_http_front_talks_to_a_curve_coordinator(secured):
    """The OpenAI front is a CURVE client too: with an authorised key pair its requests are
    answered; without keys the coordinator never hears them (the front times out, 504)."""
    import httpx

    from gating.http import HttpThread

    coord, keys = secured
    body = {"model": "edge-moe", "messages": [{"role": "user", "content": "Is it safe?"}],
            "edge_moe": {"options": ["yes", "no"]}}
    front = HttpThread(coord.frontend_endpoint, "127.0.0.1:0", curve=load_client_keys(keys, "client"))
    try:
        end = time.monotonic() + 15
        while True:
            r = httpx.post(f"{front.url}/v1/chat/completions", json=body, timeout=10)
            if r.status_code == 200 or time.monotonic() > end:
                break
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] in ("yes", "no")
    finally:
        front.stop()
