"""A 3-node fleet on embedded Ray: deploy, query, status, kill a node actor, down.

Each test starts its own Ray head through :func:`edge_moe.fleet.deploy` and removes it
with :func:`edge_moe.fleet.down`; the teardown checks that no process of that head is
left (found by its process group and private ``RAY_TMPDIR``). Nothing else is stopped.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from edge_moe import fleet as F
from edge_moe import paths
from edge_moe.client import EdgeMoEClient
from edge_moe.config import load_fleet
from edge_moe.wire import Error, Reply

from .conftest import HEARTBEAT_S, LIVENESS, NODES, Assets, write_fleet

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

OPTIONS = ["red", "green", "blue", "black"]


@pytest.fixture
def deployed(assets: Assets) -> Iterator[F.Deployment]:
    dep = F.deploy(load_fleet(assets.fleet), **assets.kwargs())  # type: ignore[arg-type]
    try:
        yield dep
    finally:
        try:
            F.down(dep.name)
        finally:
            assert F.owned_processes(dep) == [], "Ray processes started by the test survived down()"


def test_deploy_query_status_down(deployed: F.Deployment) -> None:
    assert deployed.started_head and deployed.head_pids
    st = F.status()
    assert sorted(st["nodes"]) == sorted(NODES)
    for name, node in st["nodes"].items():
        assert node["ready"] and node["live"], (name, node)
        assert node["actor"]["serving"] and node["last_heartbeat_s_ago"] < HEARTBEAT_S * LIVENESS
        assert node["quarantined_s_left"] is None and node["queued"] == 0 == node["tasks_out"], node
        assert node["predicted_wait_ms"] == 0.0, node
        assert node["threads"] == (os.cpu_count() or 1), node  # nodes[].threads: null → the host's cores
        # Ray renices its workers to 15; a node serves at an ordinary process's priority
        assert os.getpriority(os.PRIO_PROCESS, node["actor"]["pid"]) == 0, name
    assert os.getpriority(os.PRIO_PROCESS, st["coordinator"]["pid"]) == 0
    assert {n["device_class"] for n in st["nodes"].values()} == {"cpu-fast", "cpu-slow", "edge"}
    assert st["ray"]["nodes_alive"] == 1
    assert st["http"].startswith("http://127.0.0.1:"), st["http"]  # coordinator.http: port 0 -> a free one
    import httpx
    import openai

    assert httpx.get(f"{st['http']}/healthz", timeout=5).status_code == 200
    with openai.OpenAI(base_url=f"{st['http']}/v1", api_key="-", max_retries=0, timeout=30) as oa:
        chat = oa.chat.completions.create(model="edge-moe", messages=[{"role": "user", "content": "Pick."}],
                                          extra_body={"edge_moe": {"options": OPTIONS}})
        assert chat.choices[0].message.content in OPTIONS
        assert {m.id for m in oa.models.list().data} >= {"edge-moe"}
    from prometheus_client.parser import text_string_to_metric_families

    before = _ok_answers(st["http"], text_string_to_metric_families)
    with EdgeMoEClient(deployed.frontend, timeout_s=5) as c:  # ZeroMQ queries count too
        for i in range(3):
            assert isinstance(c.query(f"zmq {i}", OPTIONS), Reply)
    assert _ok_answers(st["http"], text_string_to_metric_families) == before + 3
    # coordinator.metrics: the same families on the coordinator's own port, no front needed
    assert st["metrics"].startswith("http://127.0.0.1:") and st["metrics"].endswith("/metrics"), st
    own = httpx.get(st["metrics"], timeout=5).text
    assert "edge_moe_requests_total" in own and "edge_moe_live_experts 4.0" in own
    with EdgeMoEClient(deployed.frontend, timeout_s=5) as c:
        for i in range(10):
            r = c.query(f"question {i}: which colour?", OPTIONS, top_k=4)
            assert isinstance(r, Reply) and r.answer_index is not None and not r.degraded, r
            assert {u.name for u in r.experts} <= set(load_fleet(deployed.config).experts[j].name
                                                      for j in range(4))
        gen = c.query("Say yes or no.", None, top_k=2)
        assert isinstance(gen, Reply) and gen.text
    st = F.status()
    so_far = st["coordinator"]["experts_so_far"]
    assert sum(v["answers"] for v in so_far.values()) >= 10
    assert all(v["energy_j"] > 0 for v in so_far.values())


def test_killed_node_actor_restarts_and_is_used_again(deployed: F.Deployment, assets: Assets) -> None:
    doomed_node, doomed_expert = "node-c", assets.experts[3]
    before = F.status()["nodes"][doomed_node]["actor"]["pid"]
    records: list[Reply | Error] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        try:
            with EdgeMoEClient(deployed.frontend, timeout_s=5, retries=0) as c:
                i = 0
                while not stop.is_set():
                    records.append(c.query(f"item {i} colour?", OPTIONS, top_k=4, deadline_ms=500))
                    i += 1
        except BaseException as exc:
            failures.append(exc)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    try:
        time.sleep(0.5)
        F.kill_node(doomed_node, restart=True)
        t_kill = time.monotonic()
        end = t_kill + 60
        while time.monotonic() < end:
            node = F.status()["nodes"][doomed_node]
            if node["ready"] and node["actor"].get("pid") not in (None, before):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"{doomed_node} was not restarted and READY again within 60 s")
        restarted_s = time.monotonic() - t_kill
        assert node["actor"]["restarted"] is True
        n_before_reuse = len(records)
        end = time.monotonic() + 20
        while time.monotonic() < end and not any(
                isinstance(r, Reply) and any(u.name == doomed_expert and u.status == "ok"
                                             for u in r.experts) for r in records[n_before_reuse:]):
            time.sleep(0.1)
    finally:
        stop.set()
        t.join(timeout=10)
    assert not failures, failures
    assert records, "no query was answered"
    errors = [r for r in records if isinstance(r, Error)]
    assert not errors, errors[:3]  # every query answered (degraded where needed): none lost
    reused = [r for r in records[n_before_reuse:] if isinstance(r, Reply)
              and any(u.name == doomed_expert and u.status == "ok" for u in r.experts)]
    assert reused, f"{doomed_expert} was not used again after its node restarted"
    print(f"restart to READY {restarted_s:.1f} s; {len(records)} queries, "
          f"{sum(r.degraded for r in records if isinstance(r, Reply))} degraded, 0 lost")


def test_missing_artifact_and_missing_resource_fail_fast(assets: Assets, tmp_path) -> None:
    # Local head: a missing artifact is found before anything starts.
    bad = write_fleet(tmp_path / "bad.yaml", assets.experts, ("synth-cat-0", "synth-cat-1"),
                      "fleet-bad", artifacts={assets.experts[2]: "nowhere/fp32"})
    kw = {**assets.kwargs(), "toy": False}
    t0 = time.monotonic()
    with pytest.raises(F.FleetError, match=r"node node-b: expert 'synth-expert-2': artifact .*nowhere"):
        F.deploy(load_fleet(bad), artifacts=str(tmp_path / "artifacts"), **kw)  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 2
    assert not (paths.state_dir() / "fleet-bad.json").exists()

    base = F.deploy(load_fleet(assets.fleet), **assets.kwargs())  # type: ignore[arg-type]
    try:
        # Joining a cluster: a node whose resource is not there is named before placing.
        extra = write_fleet(tmp_path / "extra.yaml", assets.experts, ("synth-cat-0", "synth-cat-1"),
                            "fleet-extra", nodes={"node-a": ("cpu-fast", [0, 1]),
                                                  "orin-9": ("edge", [2, 3])})
        t0 = time.monotonic()
        with pytest.raises(F.FleetError, match=r"node orin-9: Ray resource 'edge_moe_node:orin-9' "
                                               r"is not in the cluster"):
            F.deploy(load_fleet(extra), base.address, **assets.kwargs())  # type: ignore[arg-type]
        assert time.monotonic() - t0 < 15
        # The resources exist but another fleet's actors hold them.
        twin = write_fleet(tmp_path / "twin.yaml", assets.experts, ("synth-cat-0", "synth-cat-1"),
                           "fleet-twin")
        with pytest.raises(F.FleetError, match=r"node node-a: Ray resource 'edge_moe_node:node-a' is in use"):
            F.deploy(load_fleet(twin), base.address, **assets.kwargs())  # type: ignore[arg-type]
        assert F.owned_processes(base), "a failed deploy on a joined cluster must not stop its head"
        assert F.status(base.name)["nodes"]["node-a"]["ready"]
    finally:
        F.down(base.name)
    assert F.owned_processes(base) == []
    # The node itself finds its artifact missing: its actor fails, and deploy names the node.
    t0 = time.monotonic()
    with pytest.raises(F.FleetError, match=r"node node-b: .*nowhere"):
        F.deploy(load_fleet(bad), artifacts=str(tmp_path / "artifacts"), check_artifacts=False,
                 **kw)  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 30
    assert not (paths.state_dir() / "fleet-bad.json").exists()


def test_fresh_machine_gets_a_ray_token_once(tmp_path, monkeypatch):
    """`ray start --head` refuses to run with token auth and no token (a fresh CI machine)."""
    import sys
    from pathlib import Path

    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(var, raising=False)
    ray_cmd = str(Path(sys.executable).with_name("ray"))
    token = tmp_path / ".ray" / "auth_token"
    F.ensure_auth_token(ray_cmd, str(tmp_path))
    first = token.read_text()
    assert len(first.strip()) >= 32
    F.ensure_auth_token(ray_cmd, str(tmp_path))
    assert token.read_text() == first  # never overwritten


def _ok_answers(url: str, parse) -> float:  # type: ignore[no-untyped-def]
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(s.value for f in parse(text) if f.name == "edge_moe_requests" for s in f.samples
               if s.name.endswith("_total") and s.labels.get("status") == "ok")
