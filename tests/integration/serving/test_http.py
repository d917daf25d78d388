"""The OpenAI-compatible HTTP front, tested with the official ``openai`` package against a real
fleet (coordinator and toy nodes as processes, the front as a process)."""

from __future__ import annotations

import asyncio
import math
import time

import httpx
import openai
import pytest

from edge_moe.client import EdgeMoEClient
from edge_moe.wire import Reply

from .conftest import Proc, start_fleet

pytestmark = pytest.mark.timeout(180)

KEY = "sk-test-edge-moe"
OPTIONS = ["red", "green", "blue", "black"]


@pytest.fixture(scope="module")
def served(assets, tmp_path_factory):
    fleet = start_fleet(assets)
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"# one per line\n{KEY}\n")
    front = Proc(["edge_moe.cli", "http", "--endpoint", fleet.frontend, "--listen", "127.0.0.1:0",
                  "--config", str(assets.fleet), "--api-keys", str(keys)])
    try:
        url = front.expect("http front ").split()[2]
        yield fleet, url
    finally:
        front.terminate()
        fleet.stop()


@pytest.fixture()
def client(served):
    _, url = served
    with openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=30) as c:
        yield c


def test_chat_completion_carries_the_decision_and_matches_the_zmq_reply(served, client, assets):
    fleet, _ = served
    r = client.chat.completions.with_raw_response.create(
        model="edge-moe", messages=[{"role": "user", "content": "Which colour is the sky? Answer:"}],
        max_tokens=8, extra_body={"edge_moe": {"options": OPTIONS, "top_k": 2}})
    c = r.parse()
    em = c.model_extra["edge_moe"]
    assert c.object == "chat.completion" and c.choices[0].message.role == "assistant"
    assert c.choices[0].message.content == OPTIONS[em["answer_index"]]
    assert math.isclose(sum(em["probabilities"]), 1.0, abs_tol=1e-6)
    assert em["plan"]["status"] == "optimal" and len(em["experts"]) == 2
    assert r.headers["x-edge-moe-experts"].count("=") == 2
    assert float(r.headers["x-edge-moe-energy-j"]) == pytest.approx(em["energy_j"], rel=1e-5)
    with EdgeMoEClient(fleet.frontend, timeout_s=10) as z:  # the same query over ZeroMQ
        direct = z.query("Which colour is the sky? Answer:", OPTIONS, top_k=2)
    assert isinstance(direct, Reply)
    assert direct.answer_index == em["answer_index"]
    assert [u.name for u in direct.experts] == [u["name"] for u in em["experts"]]
    assert direct.probabilities == pytest.approx(em["probabilities"], abs=1e-9)


def test_completion_generates_and_counts_tokens(client):
    c = client.completions.create(model="edge-moe", prompt="Say one word.", max_tokens=4,
                                  extra_body={"edge_moe": {"top_k": 1}})
    em = c.model_extra["edge_moe"]
    assert c.object == "text_completion" and c.choices[0].text
    assert c.choices[0].text.strip(" .").lower() in {u["text"].strip(" .").lower() for u in em["experts"]}
    assert c.usage.completion_tokens == sum(u["n_tokens"] for u in em["experts"] if u["status"] == "ok") >= 1


def test_a_model_naming_an_expert_is_pinned_to_it(client, assets):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "edge-moe" and set(ids[1:]) == set(assets.experts)
    expert = assets.experts[2]
    c = client.chat.completions.create(model=expert, messages=[{"role": "user", "content": "Pick."}],
                                       extra_body={"edge_moe": {"options": OPTIONS}})
    em = c.model_extra["edge_moe"]
    assert [u["name"] for u in em["experts"]] == [expert] and em["plan"]["live"] == [expert]


def test_budgets_from_extra_body_and_headers_and_the_infeasible_422(client):
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.chat.completions.create(model="edge-moe", messages=[{"role": "user", "content": "Pick."}],
                                       extra_body={"edge_moe": {"options": OPTIONS, "energy_j": 1e-6}})
    body = err.value.body
    assert body["code"] == "budget_infeasible" and body["min_energy_j"] > 1e-6
    with pytest.raises(openai.UnprocessableEntityError):  # the same budget as a header
        client.chat.completions.create(model="edge-moe", messages=[{"role": "user", "content": "Pick."}],
                                       extra_body={"edge_moe": {"options": OPTIONS}},
                                       extra_headers={"x-edge-moe-energy-j": "1e-6"})
    ok = client.chat.completions.create(model="edge-moe", messages=[{"role": "user", "content": "Pick."}],
                                        extra_body={"edge_moe": {"options": OPTIONS, "energy_j": 1e6}},
                                        extra_headers={"x-edge-moe-latency-ms": "60000"})
    assert ok.model_extra["edge_moe"]["plan"]["budget_latency_ms"] == 60000.0


@pytest.mark.parametrize("kwargs,param", [
    ({"temperature": 2.5}, "temperature"), ({"n": 9}, "n"), ({"top_p": 0}, "top_p"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"functions": [{"name": "f"}]}, "functions"),
    ({"extra_body": {"edge_moe": {"mode": "poetry"}}}, "edge_moe.mode"),
    ({"extra_body": {"frequency_penalty": 3.0}}, "frequency_penalty"),
    ({"temperature": 0.7, "extra_body": {"edge_moe": {"options": OPTIONS}}}, "temperature"),
])
def test_unsupported_parameters_are_400s_that_name_them(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="edge-moe", messages=[{"role": "user", "content": "Hi"}], **kwargs)
    assert err.value.body["param"] == param, err.value.body


def test_coordinator_errors_map_to_http_statuses(served, client):
    with pytest.raises(openai.BadRequestError) as err:  # the coordinator's bad_request
        client.chat.completions.create(model="edge-moe", messages=[{"role": "user", "content": "Hi"}],
                                       extra_body={"edge_moe": {"category": "astrology"}})
    assert err.value.body["code"] == "bad_request" and "unknown category" in err.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "Hi"}])
    _, url = served
    with openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    assert httpx.get(f"{url}/healthz").status_code == 200  # open without a key
    ready = httpx.get(f"{url}/readyz", headers={"Authorization": f"Bearer {KEY}"})
    assert ready.status_code == 200 and len(ready.json()["live_experts"]) == 4


def test_sixteen_concurrent_async_requests_and_the_metrics(served):
    from prometheus_client.parser import text_string_to_metric_families

    _, url = served

    async def run() -> list[object]:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60) as c:
            return await asyncio.gather(*[
                c.chat.completions.create(model="edge-moe",
                                          messages=[{"role": "user", "content": f"Question {i}? Answer:"}],
                                          extra_body={"edge_moe": {"options": OPTIONS}})
                for i in range(16)])

    before = _requests_ok(url, text_string_to_metric_families)
    replies = asyncio.run(run())
    assert len(replies) == 16 and all(r.choices[0].message.content in OPTIONS for r in replies)
    assert _requests_ok(url, text_string_to_metric_families) - before == 16
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"edge_moe_requests", "edge_moe_request_latency_seconds", "edge_moe_stage_latency_seconds",
            "edge_moe_expert_requests", "edge_moe_expert_energy_joules", "edge_moe_live_experts",
            "edge_moe_inflight_requests", "edge_moe_plan_cache_hits"} <= names


def _requests_ok(url, parse) -> float:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    for fam in parse(text):
        if fam.name == "edge_moe_requests":
            return sum(s.value for s in fam.samples
                       if s.name.endswith("_total") and s.labels.get("status") == "ok"
                       and s.labels.get("mode") == "options")
    return 0.0


def test_a_stream_of_one_expert_comes_in_chunks_ending_with_the_decision(client):
    kwargs = dict(model="edge-moe", messages=[{"role": "user", "content": "Say one word."}], max_tokens=4,
                  extra_body={"edge_moe": {"top_k": 1}})
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                 **kwargs))
    assert len(chunks) >= 3 and chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content  # the same greedy answer, in pieces
    last = [c for c in chunks if c.choices][-1]
    assert last.choices[0].finish_reason in ("stop", "length")
    em = last.model_extra["edge_moe"]
    assert len(em["experts"]) == 1 and em["experts"][0]["status"] == "ok"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_a_stream_of_a_mixture_sends_the_answer_once_it_is_mixed(client):
    chunks = list(client.chat.completions.create(
        model="edge-moe", messages=[{"role": "user", "content": "Which colour? Answer:"}], stream=True,
        extra_body={"edge_moe": {"options": OPTIONS, "top_k": 2}}))
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(contents) == 1 and contents[0] in OPTIONS
    em = chunks[-1].model_extra["edge_moe"]
    assert contents[0] == OPTIONS[em["answer_index"]] and len(em["experts"]) == 2


def test_a_stream_that_fails_first_is_a_plain_error(client):
    with pytest.raises(openai.UnprocessableEntityError):
        list(client.chat.completions.create(
            model="edge-moe", messages=[{"role": "user", "content": "Hi"}], stream=True,
            extra_body={"edge_moe": {"energy_j": 1e-9}}))


def test_partials_reach_a_zmq_client_before_the_reply(served):
    from edge_moe.wire import Query

    fleet, _ = served
    got = []
    with EdgeMoEClient(fleet.frontend, timeout_s=10) as z:
        r = z.request(Query("s1", "Say one word.", None, max_new_tokens=4, top_k=1, stream=True),
                      on_partial=got.append)
        plain = z.request(Query("s2", "Say one word.", None, max_new_tokens=4, top_k=1))
    assert isinstance(r, Reply) and got and [p.index for p in got] == list(range(len(got)))
    assert r.text.startswith("".join(p.text for p in got)) and r.text == plain.text
    assert got[0].expert == r.experts[0].name


def test_the_listening_socket_is_tcp_so_replies_go_out_without_nagle():
    """asyncio sets TCP_NODELAY only on IPPROTO_TCP sockets; on a proto-0 socket every reply
    waited ~40 ms for the client's delayed ACK (measured by benchmarks/http_bench.py)."""
    import socket

    from gating.http.server import _bind

    sock = _bind("127.0.0.1:0")
    try:
        assert sock.proto == socket.IPPROTO_TCP and sock.type == socket.SOCK_STREAM
    finally:
        sock.close()


def test_no_experts_is_503_with_retry_after_and_a_deadline_is_504(assets):
    """A coordinator with no node: 503 and Retry-After; then one slow node (2 s per task) and a
    300 ms deadline: 504."""
    import threading

    from edge_moe.config import BudgetConfig, load_fleet
    from edge_moe.runtime.toy import ToyEncoder
    from gating.coordinator import Coordinator
    from gating.coordinator.routing import load_router

    fleet = load_fleet(assets.fleet)
    router = load_router(assets.gate, assets.calibration, assets.profiles, BudgetConfig(), top_k=1)
    coord = Coordinator(router, ToyEncoder(16), fleet.coordinator, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
    loop = threading.Thread(target=coord.run, daemon=True)
    loop.start()
    front = Proc(["edge_moe.cli", "http", "--endpoint", coord.frontend_endpoint, "--listen", "127.0.0.1:0"])
    node = None
    try:
        url = front.expect("http front ").split()[2]
        body = {"model": "edge-moe", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_experts", r.text
        assert int(r.headers["retry-after"]) >= 1
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 503
        node = Proc(["edge_moe.cli", "node", "--config", str(assets.fleet), "--node", "node-c", "--toy",
                     "--toy-delay-ms", "2000", "--backend", coord.backend_endpoint, "--meter", "modelled"])
        node.expect("node node-c serving")
        end = time.monotonic() + 10
        while not coord.registry.live_experts and time.monotonic() < end:
            time.sleep(0.05)
        r = httpx.post(f"{url}/v1/chat/completions", timeout=10,
                       json={**body, "edge_moe": {"deadline_ms": 300}})
        assert r.status_code == 504 and r.json()["error"]["code"] == "deadline", r.text
    finally:
        if node is not None:
            node.terminate()
        front.terminate()
        coord.stop()
        loop.join(5)
        coord.close()


def test_serving_off_loopback_needs_keys_and_tls():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "edge_moe.cli", "http", "--endpoint", "tcp://127.0.0.1:9",
                          "--listen", "0.0.0.0:0"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "ConfigError" in out.stderr and "needs API keys and TLS" in out.stderr, out


def test_the_coordinator_counts_every_answer_zeromq_clients_included(assets):
    """The coordinator's own metrics (what a front beside it serves) count ZeroMQ queries."""
    import threading

    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from edge_moe.config import BudgetConfig, load_fleet
    from edge_moe.runtime.toy import ToyEncoder
    from gating.coordinator import Coordinator
    from gating.coordinator.routing import load_router

    fleet = load_fleet(assets.fleet)
    router = load_router(assets.gate, assets.calibration, assets.profiles, BudgetConfig(), top_k=1)
    coord = Coordinator(router, ToyEncoder(16), fleet.coordinator, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
    loop = threading.Thread(target=coord.run, daemon=True)
    loop.start()
    node = Proc(["edge_moe.cli", "node", "--config", str(assets.fleet), "--node", "node-b", "--toy",
                 "--backend", coord.backend_endpoint, "--meter", "modelled"])
    try:
        node.expect("node node-b serving")
        end = time.monotonic() + 10
        while not coord.registry.live_experts and time.monotonic() < end:
            time.sleep(0.05)
        with EdgeMoEClient(coord.frontend_endpoint, timeout_s=10) as z:
            for i in range(5):
                assert isinstance(z.query(f"q{i}? Answer:", OPTIONS), Reply)
            assert isinstance(z.query("Say hi.", None, max_new_tokens=2), Reply)
            z.query("q", OPTIONS, energy_j=1e-9)  # infeasible
            z.query("q", OPTIONS, category="astrology")  # bad_request
        fams = {f.name: f for f in text_string_to_metric_families(generate_latest(coord.metrics.registry).decode())}
        got = {(s.labels["status"], s.labels["mode"]): s.value for s in fams["edge_moe_requests"].samples
               if s.name.endswith("_total")}
        assert got[("ok", "options")] == 5 and got[("ok", "generation")] == 1
        assert got[("infeasible", "-")] == 1 and got[("bad_request", "-")] == 1
        live = next(s.value for s in fams["edge_moe_live_experts"].samples)
        assert live == len(coord.registry.live_experts) == 1
        joules = sum(s.value for s in fams["edge_moe_expert_energy_joules"].samples if s.name.endswith("_total"))
        assert joules > 0
    finally:
        node.terminate()
        coord.stop()
        loop.join(5)
        coord.close()
