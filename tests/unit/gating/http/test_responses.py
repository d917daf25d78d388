"""The HTTP front's response side without a server: REPLYs → the completion object (choices,
finish_reason, usage, the decision), log-probabilities in OpenAI's two formats, stream chunks."""

from __future__ import annotations

import json
import math

import pytest

from edge_moe.wire import ExpertUse, PlanInfo, Query, Reply, Sampling, TokenLogprob
from gating.http.protocol import _ApiError
from gating.http.responses import (
    FLOOR_LOGPROB,
    chunk_body,
    completion_logprobs,
    decision,
    models_body,
    reply_headers,
    response_body,
    response_text,
    sse,
    usage_chunk,
)

EXPERTS = ("qwen", "smol")
OPTIONS = ["red", "green", "blue"]
TOKENS = (TokenLogprob("Hel", -0.25, ("Hel", "He"), (-0.25, -1.75)),
          TokenLogprob("lo ✓", -1.0, ("lo ✓", "p"), (-1.0, -math.inf)))


def reply(*, status: str = "optimal", text: str | None = None, answer_index: int | None = None,
          n_tokens: int = 0, experts: tuple[ExpertUse, ...] | None = None,
          budget_energy_j: float = math.inf, rid: str = "q1", **extra: object) -> Reply:
    uses = experts if experts is not None else (
        ExpertUse("qwen", "node-a", 0.75, "ok", 12.0, 1.5, 0.4, "modelled", (-0.1, -2.0, -3.0), text,
                  "", n_tokens),
        ExpertUse("smol", "node-b", 0.25, "ok", 8.0, 1.0, 0.1, "modelled", None, None, "", 0))
    plan = PlanInfo(("qwen", "smol"), status, 0.5, "ok", ("qwen", "smol"), None, budget_energy_j, 500.0,
                    cached=True, min_energy_j=0.2, min_latency_ms=9.0)
    return Reply(rid, uses, {"gate": 1.0}, 20.0, 0.5, "modelled", plan, answer_index=answer_index,
                 probabilities=None if answer_index is None else (0.2, 0.7, 0.1), text=text,
                 reasons=("energy budget 1e-06 J is below the cheapest plan (0.2 J)",)
                 if status == "infeasible" else (), **extra)  # type: ignore[arg-type]


def one(text: str, n_tokens: int) -> tuple[ExpertUse, ...]:
    return (ExpertUse("qwen", "node-a", 1.0, "ok", 5.0, 1.0, 0.2, "modelled", None, text, "", n_tokens),)


def test_an_options_reply_is_the_chosen_options_text_with_the_decision() -> None:
    q = Query("q1", "Which colour?", tuple(OPTIONS))
    r = reply(answer_index=1)
    out = response_body([q], [r], True, "edge-moe")
    assert out["object"] == "chat.completion" and out["id"] == "edge-moe-q1" and out["model"] == "edge-moe"
    assert out["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "green"},
                               "finish_reason": "stop", "logprobs": None}]
    assert out["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    em = out["edge_moe"]
    assert em["answer_index"] == 1 and em["probabilities"] == [0.2, 0.7, 0.1]
    assert [u["name"] for u in em["experts"]] == ["qwen", "smol"] and em["experts"][0]["logprobs"] == [-0.1, -2.0, -3.0]
    assert em["plan"]["budget_energy_j"] == "inf" and em["plan"]["budget_latency_ms"] == 500.0
    assert em["plan"]["cached"] and em["energy_j"] == 0.5 and em["stage_ms"] == {"gate": 1.0}
    json.dumps(out, allow_nan=False)  # JSON-safe: the infinite budget is a string
    assert reply_headers([r]) == {"x-edge-moe-experts": "qwen=0.7500,smol=0.2500", "x-edge-moe-energy-j": "0.5"}


def test_a_generation_without_a_finish_reason_finishes_by_length_at_the_limit() -> None:
    q = Query("q2", "Say hi.", None, max_new_tokens=4)
    out = response_body([q], [reply(text="hello there", experts=one("hello there", 4))], False, "qwen")
    assert out["object"] == "text_completion" and out["model"] == "qwen"
    assert out["choices"][0]["text"] == "hello there" and out["choices"][0]["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 0, "completion_tokens": 4, "total_tokens": 4}
    assert response_text(out["choices"][0], chat=False) == "hello there"
    q = Query("q3", "Say hi.", None, max_new_tokens=8)
    r = reply(text="hello there", experts=one("hello there", 4))
    assert response_body([q], [r], True, "qwen")["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("finish", ["stop", "length"])
def test_the_reply_s_finish_reason_wins(finish: str) -> None:
    q = Query("q2", "Say hi.", None, max_new_tokens=4)
    r = reply(text="hi", experts=one("hi", 4 if finish == "stop" else 1), finish_reason=finish)
    assert response_body([q], [r], True, "qwen")["choices"][0]["finish_reason"] == finish


def test_an_infeasible_reply_is_a_422_with_the_floor_and_the_decision() -> None:
    r = reply(status="infeasible", budget_energy_j=1e-6)
    with pytest.raises(_ApiError) as err:
        response_body([Query("q1", "p", tuple(OPTIONS))], [r], True, "edge-moe")
    e = err.value
    assert (e.status, e.code, e.param) == (422, "budget_infeasible", "edge_moe")
    assert e.message == "energy budget 1e-06 J is below the cheapest plan (0.2 J)"
    body = e.body()["error"]
    assert body["min_energy_j"] == 0.2 and body["min_latency_ms"] == 9.0 and body["edge_moe"] == decision(r)


def test_n_choices_are_indexed_in_order_with_usage_and_energy_summed() -> None:
    qs = [Query(f"q{i}", "Say hi.", None, max_new_tokens=8, sampling=Sampling(temperature=1.0, seed=i))
          for i in range(3)]
    rs = [reply(text=f"t{i}", experts=one(f"t{i}", i + 1), rid=f"q{i}", finish_reason="stop") for i in range(3)]
    out = response_body(qs, rs, True, "edge-moe")
    assert out["id"] == "edge-moe-q0" and [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert [c["message"]["content"] for c in out["choices"]] == ["t0", "t1", "t2"]
    assert out["usage"] == {"prompt_tokens": 0, "completion_tokens": 6, "total_tokens": 6}
    assert [c["edge_moe"]["experts"][0]["text"] for c in out["choices"]] == ["t0", "t1", "t2"]
    assert out["edge_moe"] == decision(rs[0])
    assert reply_headers(rs)["x-edge-moe-energy-j"] == "1.5"


def test_chat_logprobs_in_openai_s_format() -> None:
    q = Query("q1", "p", None, sampling=Sampling(logprobs=True, top_logprobs=1))
    r = reply(text="Hello ✓", experts=one("Hello ✓", 2), token_logprobs=TOKENS)
    lp = response_body([q], [r], True, "qwen")["choices"][0]["logprobs"]
    assert lp == {"content": [
        {"token": "Hel", "logprob": -0.25, "bytes": [72, 101, 108],
         "top_logprobs": [{"token": "Hel", "logprob": -0.25, "bytes": [72, 101, 108]}]},
        {"token": "lo ✓", "logprob": -1.0, "bytes": list("lo ✓".encode()),
         "top_logprobs": [{"token": "lo ✓", "logprob": -1.0, "bytes": [108, 111, 32, 226, 156, 147]}]},
    ], "refusal": None}
    two = Query("q1", "p", None, sampling=Sampling(logprobs=True, top_logprobs=2))
    lp = response_body([two], [r], True, "qwen")["choices"][0]["logprobs"]
    assert lp["content"][1]["top_logprobs"][1] == {"token": "p", "logprob": FLOOR_LOGPROB, "bytes": [112]}
    json.dumps(lp, allow_nan=False)  # -inf is written as OpenAI writes it


def test_completion_logprobs_in_openai_s_format() -> None:
    q = Query("q1", "p", None, sampling=Sampling(logprobs=True, top_logprobs=2))
    r = reply(text="Hello ✓", experts=one("Hello ✓", 2), token_logprobs=TOKENS)
    lp = response_body([q], [r], False, "qwen")["choices"][0]["logprobs"]
    assert lp == {"tokens": ["Hel", "lo ✓"], "token_logprobs": [-0.25, -1.0],
                  "top_logprobs": [{"Hel": -0.25, "He": -1.75}, {"lo ✓": -1.0, "p": FLOOR_LOGPROB}],
                  "text_offset": [0, 3]}
    assert completion_logprobs(TOKENS, 0)["top_logprobs"] is None  # logprobs: 0 asks for no alternatives


def test_logprobs_only_when_asked_and_given() -> None:
    r = reply(text="Hello ✓", experts=one("Hello ✓", 2), token_logprobs=TOKENS)
    assert response_body([Query("q1", "p")], [r], True, "qwen")["choices"][0]["logprobs"] is None
    asked = Query("q1", "p", None, sampling=Sampling(logprobs=True))
    plain = reply(text="Hello", experts=one("Hello", 2))  # a coordinator that gave none
    assert response_body([asked], [plain], True, "qwen")["choices"][0]["logprobs"] is None


def test_models_lists_the_ensemble_first() -> None:
    assert [m["id"] for m in models_body(EXPERTS)["data"]] == ["edge-moe", "qwen", "smol"]


def test_stream_chunks_in_both_shapes() -> None:
    first = chunk_body("edge-moe-q1", "edge-moe", True, 7, None, role=True)
    assert first == {"id": "edge-moe-q1", "object": "chat.completion.chunk", "created": 7, "model": "edge-moe",
                     "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None,
                                  "logprobs": None}]}
    last = chunk_body("edge-moe-q1", "edge-moe", True, 7, None, "stop", index=2, logprobs={"content": []},
                      edge_moe={"x": 1})
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "stop"
    assert last["choices"][0]["index"] == 2 and last["choices"][0]["logprobs"] == {"content": []}
    assert last["edge_moe"] == {"x": 1}
    text = chunk_body("edge-moe-q1", "edge-moe", False, 7, "he")
    assert text["object"] == "text_completion" and text["choices"][0]["text"] == "he"
    usage = usage_chunk("edge-moe-q1", "edge-moe", True, 7, {"completion_tokens": 3})
    assert usage["choices"] == [] and usage["usage"] == {"completion_tokens": 3}
    assert sse({"a": 1}) == 'data: {"a": 1}\n\n'
