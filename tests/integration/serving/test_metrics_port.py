"""A ZeroMQ-only coordinator is observable: `serve_metrics` (`edge-moe coordinator --metrics`)
serves its Prometheus families on a port of its own, counting real queries answered by a
real node; and every query of the shipped Grafana dashboard (configs/grafana-dashboard.json)
names a family the coordinator really exports."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest

from edge_moe.client import EdgeMoEClient
from edge_moe.config import CoordinatorConfig, DeviceClass
from edge_moe.errors import ConfigError
from edge_moe.paths import CONFIGS
from edge_moe.runtime.toy import ToyEncoder, ToyExpert
from edge_moe.wire import Reply
from gating.coordinator import Coordinator
from gating.coordinator.routing import load_router
from nodes.server import NodeServer

CFG = CoordinatorConfig(node="node-a", heartbeat_s=0.2, liveness=3, reconnect_min_s=0.1, reconnect_max_s=0.4)
OPTIONS = ["red", "green", "blue", "black"]


@pytest.fixture()
def served(assets):
    router = load_router(assets.gate, assets.calibration, assets.profiles, top_k=2)
    coord = Coordinator(router, ToyEncoder(16), CFG, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
    url = coord.serve_metrics("127.0.0.1:0")
    threading.Thread(target=coord.run, daemon=True).start()
    node = NodeServer("node-a", coord.backend_endpoint, {e: ToyExpert(e) for e in assets.experts},
                      DeviceClass("cpu", 5.0, 15.0, "t"), CFG)
    threading.Thread(target=node.run, daemon=True).start()
    yield coord, url
    node.stop()
    coord.stop()
    time.sleep(0.3)
    coord.close()


def _families(text: str) -> set[str]:
    """The metric families in an exposition (counters named without ``_total``, whichever
    way this prometheus-client version writes their TYPE line)."""
    return {line.split()[2].removesuffix("_total") for line in text.splitlines()
            if line.startswith("# TYPE ")}


def test_metrics_are_served_without_the_http_front(served, assets):
    coord, url = served
    with EdgeMoEClient(coord.frontend_endpoint, timeout_s=10) as c:
        end = time.monotonic() + 20
        while not isinstance(c.query("warm up", OPTIONS), Reply) and time.monotonic() < end:
            time.sleep(0.1)
        for i in range(5):
            assert isinstance(c.query(f"question {i}: which colour?", OPTIONS), Reply)
    text = httpx.get(url, timeout=5).text
    assert {"edge_moe_requests", "edge_moe_request_latency_seconds", "edge_moe_live_experts"} <= _families(text)
    ok = sum(float(line.split()[-1]) for line in text.splitlines()
             if line.startswith("edge_moe_requests_total{") and 'status="ok"' in line)
    assert ok >= 5
    assert re.search(r"^edge_moe_live_experts 4\.0$", text, re.M)


def test_every_dashboard_query_names_an_exported_family(served):
    _, url = served
    exported = _families(httpx.get(url, timeout=5).text)
    series = set()
    for fam in exported:  # what PromQL may name: counters as _total, histograms as _bucket/_sum/_count
        series |= {fam, f"{fam}_total", f"{fam}_bucket", f"{fam}_sum", f"{fam}_count"}
    dash = json.loads((CONFIGS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 8
    for expr in exprs:
        for name in re.findall(r"edge_moe_[a-z_]+", expr):
            assert name in series, f"dashboard query {expr!r} names {name}, not exported"


def test_a_bad_metrics_address_is_a_config_error(assets):
    router = load_router(assets.gate, assets.calibration, assets.profiles, top_k=2)
    with Coordinator(router, ToyEncoder(16), CFG, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*") as coord:
        with pytest.raises(ConfigError, match="not host:port"):
            coord.serve_metrics("nowhere")
