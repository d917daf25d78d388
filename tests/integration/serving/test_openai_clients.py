"""What OpenAI clients send by default (issue 24), against a real fleet: the coordinator and the
toy nodes as processes, the HTTP front as a process, the official ``openai`` package (sync and
async) and LangChain's ``ChatOpenAI`` with its defaults. The toy expert samples words with a
seed, stops on stop strings and gives log-probabilities, so sampling, ``n``, logprobs and
streaming run end to end; a client that disconnects mid-stream cancels its generation."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import openai
import pytest

from .conftest import Proc, start_fleet

pytestmark = pytest.mark.timeout(180)

KEY = "sk-test-edge-moe"
HI = [{"role": "user", "content": "Tell me about Paris."}]
SAMPLED = dict(temperature=0.7, top_p=0.95, stop=["\n\n"], seed=1, max_tokens=8)


def _front(endpoint: str, fleet_yaml: str, keys: str | None = None) -> tuple[Proc, str]:
    args = ["edge_moe.cli", "http", "--endpoint", endpoint, "--listen", "127.0.0.1:0", "--config", fleet_yaml]
    front = Proc([*args, "--api-keys", keys] if keys else args)
    return front, front.expect("http front ").split()[2]


@pytest.fixture(scope="module")
def served(assets, tmp_path_factory):
    fleet = start_fleet(assets)
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"{KEY}\n")
    front, url = _front(fleet.frontend, str(assets.fleet), str(keys))
    try:
        yield url
    finally:
        front.terminate()
        fleet.stop()


@pytest.fixture()
def client(served):
    with openai.OpenAI(base_url=f"{served}/v1", api_key=KEY, max_retries=0, timeout=30) as c:
        yield c


def test_a_sampled_chat_with_the_usual_parameters(client):
    c = client.chat.completions.create(model="edge-moe", messages=HI, **SAMPLED)
    em = c.model_extra["edge_moe"]
    assert c.choices[0].message.content and c.choices[0].finish_reason in ("stop", "length")
    assert len(em["experts"]) == 1  # a sampled generation is the gate's top expert's alone
    assert 1 <= c.usage.completion_tokens <= 8


def test_the_same_seed_gives_the_same_text_and_other_seeds_vary(client):
    kw = dict(model="edge-moe", messages=HI, temperature=1.0, max_tokens=12)
    a = client.chat.completions.create(seed=42, **kw).choices[0].message.content
    b = client.chat.completions.create(seed=42, **kw).choices[0].message.content
    others = {client.chat.completions.create(seed=s, **kw).choices[0].message.content for s in range(43, 48)}
    assert a == b and others - {a}, (a, others)


def test_n_choices_are_the_seeds_seed_plus_i(client):
    kw = dict(model="edge-moe", messages=HI, temperature=1.0, max_tokens=6)
    c = client.chat.completions.create(n=3, seed=5, **kw)
    assert [ch.index for ch in c.choices] == [0, 1, 2]
    alone = [client.chat.completions.create(seed=5 + i, **kw).choices[0].message.content for i in range(3)]
    assert [ch.message.content for ch in c.choices] == alone
    per_choice = [sum(u["n_tokens"] for u in ch.model_extra["edge_moe"]["experts"]) for ch in c.choices]
    assert c.usage.completion_tokens == sum(per_choice) >= 3


def test_logprobs_in_both_formats_are_log_probabilities(client):
    c = client.chat.completions.create(model="edge-moe", messages=HI, logprobs=True, top_logprobs=2,
                                       temperature=0.7, seed=3, max_tokens=6)
    content = c.choices[0].logprobs.content
    assert content and len(content) == c.usage.completion_tokens
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)
    assert all(a.logprob <= 0 and a.bytes == list(a.token.encode()) for t in content for a in t.top_logprobs)
    t = client.completions.create(model="edge-moe", prompt="Tell me about Paris.", logprobs=2, temperature=0.7,
                                  seed=3, max_tokens=6)
    lp = t.choices[0].logprobs
    assert lp.tokens and len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert all(x <= 0 for x in lp.token_logprobs) and all(len(d) <= 2 for d in lp.top_logprobs)


def test_the_async_client(served):
    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{served}/v1", api_key=KEY, max_retries=0, timeout=60) as c:
            replies = await asyncio.gather(*[
                c.chat.completions.create(model="edge-moe", messages=HI, temperature=0.9, seed=s, max_tokens=6)
                for s in (7, 8, 7, 8)])
        return [r.choices[0].message.content for r in replies]

    texts = asyncio.run(run())
    assert all(texts) and texts[0] == texts[2] and texts[1] == texts[3]


def test_a_sampled_stream_ends_with_its_finish_reason_and_logprobs(client):
    kw = dict(model="edge-moe", messages=HI, temperature=0.8, seed=9, max_tokens=6, logprobs=True)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2 and "".join(pieces) == whole.choices[0].message.content  # streamed as decoded
    last = [c for c in chunks if c.choices][-1]
    assert last.choices[0].finish_reason == whole.choices[0].finish_reason in ("stop", "length")
    assert [t.logprob for t in last.choices[0].logprobs.content] == [t.logprob for t in whole.choices[0].logprobs.content]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_a_stream_of_n_choices_indexes_its_chunks(client):
    chunks = list(client.chat.completions.create(model="edge-moe", messages=HI, temperature=1.0, seed=5, n=2,
                                                 max_tokens=4, stream=True))
    texts = {i: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
             for i in (0, 1)}
    plain = client.chat.completions.create(model="edge-moe", messages=HI, temperature=1.0, seed=5, n=2, max_tokens=4)
    assert texts == {i: plain.choices[i].message.content for i in (0, 1)}
    finished = [c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason]
    assert sorted(finished) == [0, 1]


@pytest.mark.parametrize("kwargs,param", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"temperature": 3.0}, "temperature"),
    ({"n": 9}, "n"),
    ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
])
def test_what_would_change_the_answer_and_cannot_is_a_400_naming_it(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="edge-moe", messages=HI, **kwargs)
    assert err.value.body["param"] == param and param in err.value.body["message"], err.value.body


def test_no_op_parameters_at_their_defaults_are_accepted(client):
    c = client.chat.completions.create(
        model="edge-moe", messages=HI, user="u-1", response_format={"type": "text"}, logit_bias={},
        parallel_tool_calls=True, tool_choice="none", service_tier="auto", store=False,
        metadata={"app": "test"}, modalities=["text"], max_completion_tokens=4, max_tokens=99,
        presence_penalty=0, frequency_penalty=0)
    assert c.choices[0].message.content and c.usage.completion_tokens <= 4 * 4  # max_completion_tokens won


def test_langchain_chat_openai_with_its_defaults(served, monkeypatch):
    """``ChatOpenAI`` as it comes: ``invoke`` and ``stream`` need no tiktoken (counting tokens
    is the only use; made to fail here, so a network download could not hide)."""
    import tiktoken
    from langchain_openai import ChatOpenAI

    def no_tiktoken(*_a, **_k):
        raise AssertionError("tiktoken was used")

    monkeypatch.setattr(tiktoken, "get_encoding", no_tiktoken)
    monkeypatch.setattr(tiktoken, "encoding_for_model", no_tiktoken)
    llm = ChatOpenAI(base_url=f"{served}/v1", api_key=KEY, model="edge-moe")
    msg = llm.invoke("Say something about Paris.")
    assert msg.content and msg.response_metadata["finish_reason"] in ("stop", "length")
    chunks = list(llm.stream("Say something about Paris."))
    assert "".join(c.content for c in chunks) == msg.content  # greedy both times
    sampled = ChatOpenAI(base_url=f"{served}/v1", api_key=KEY, model="edge-moe", temperature=0.7, seed=4,
                         max_tokens=6)
    assert sampled.invoke("Hi").content == sampled.invoke("Hi").content


# ---------------------------------------------------------------- disconnect = cancel


DELAY_MS = 25.0  # per toy token: a 400-token generation is 10 s of the node's time


def test_clients_that_disconnect_cancel_their_generations(assets):
    """8 streaming clients close after 3 chunks of 400-token generations on one expert (25 ms
    a token: 80 s of work uncancelled), and one plain client gives up; the coordinator sees
    each CANCEL, the node stops, and a short request to the same expert is answered at once."""
    from edge_moe.config import load_fleet
    from edge_moe.runtime.toy import ToyEncoder
    from gating.coordinator import Coordinator
    from gating.coordinator.routing import load_router

    fleet = load_fleet(assets.fleet)
    router = load_router(assets.gate, assets.calibration, assets.profiles, fleet.budget, top_k=1)
    coord = Coordinator(router, ToyEncoder(16), fleet.coordinator, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
    loop = threading.Thread(target=coord.run, daemon=True)
    loop.start()
    node = Proc(["edge_moe.cli", "node", "--config", str(assets.fleet), "--node", "node-c", "--toy",
                 "--toy-delay-ms", str(DELAY_MS), "--backend", coord.backend_endpoint, "--meter", "modelled"])
    front = None
    try:
        node.expect("node node-c serving")
        front, url = _front(coord.frontend_endpoint, str(assets.fleet))
        end = time.monotonic() + 10
        while not coord.registry.live_experts and time.monotonic() < end:
            time.sleep(0.05)
        expert = assets.experts[3]  # node-c's
        long = {"model": expert, "messages": HI, "temperature": 1.0, "max_tokens": 400}
        short = {"model": expert, "messages": HI, "temperature": 1.0, "max_tokens": 2}

        def answer_s() -> float:
            t0 = time.perf_counter()
            r = httpx.post(f"{url}/v1/chat/completions", json=short, timeout=60)
            assert r.status_code == 200, r.text
            return time.perf_counter() - t0

        idle = answer_s()

        async def read_three_and_leave() -> int:
            async with httpx.AsyncClient(timeout=60) as c:
                async with c.stream("POST", f"{url}/v1/chat/completions", json={**long, "stream": True}) as r:
                    assert r.status_code == 200
                    seen = 0
                    async for line in r.aiter_lines():
                        seen += line.startswith("data: ")
                        if seen == 3:
                            return seen  # leaving the block closes the connection mid-stream
            return seen

        t0 = time.perf_counter()
        seen = asyncio.run(_gather(read_three_and_leave() for _ in range(8)))
        streams_s = time.perf_counter() - t0
        assert seen == [3] * 8
        with pytest.raises(httpx.ReadTimeout):  # a plain request given up before its answer
            httpx.post(f"{url}/v1/chat/completions", json=long, timeout=1.0)
        end = time.monotonic() + 15
        while coord.snapshot()["stats"]["cancelled"] < 9 and time.monotonic() < end:
            time.sleep(0.05)
        after = answer_s()
        stats = coord.snapshot()["stats"]
        metrics = httpx.get(f"{url}/metrics").text
        print(f"\nshort request idle {idle:.3f} s; 8 streams read 3 chunks each in {streams_s:.2f} s; "
              f"short request after the disconnects {after:.3f} s; coordinator: cancelled={stats['cancelled']} "
              f"cancels_sent={stats['cancels_sent']} cancelled_tokens={stats['cancelled_tokens']} "
              f"(uncancelled: {9 * 400} tokens, {9 * 400 * DELAY_MS / 1e3:.0f} s of node time)")
        assert stats["cancelled"] == 9 and stats["cancels_sent"] >= 9
        assert stats["cancelled_tokens"] < 9 * 400 / 4
        assert "edge_moe_cancelled_queries_total 9.0" in metrics  # the front's own count
        assert after < 2.0, f"the expert was still busy: {after:.2f} s (idle {idle:.2f} s)"
    finally:
        if front is not None:
            front.terminate()
        node.terminate()
        coord.stop()
        loop.join(5)
        coord.close()


async def _gather(coros) -> list[int]:
    return list(await asyncio.gather(*coros))
