"""The HTTP front's shapes without a server: OpenAI request JSON → QUERY (and the 400s that name
what is wrong), REPLY → response body and stream chunks, ERROR code → HTTP status."""

from __future__ import annotations

import json
import math

import pytest

from edge_moe.wire import Error, ErrorCode, ExpertUse, PlanInfo, Query, Reply, WireBudget
from gating.http.protocol import (
    DEFAULT_MAX_TOKENS,
    STATUS_OF,
    _ApiError,
    chunk_body,
    decision,
    error_of,
    models_body,
    no_answer,
    parse_body,
    readiness_probe,
    reply_headers,
    response_body,
    response_text,
    sse,
    to_query,
    unauthorized,
    usage_chunk,
    wait_s,
    wants_usage,
)

EXPERTS = ("qwen", "smol")
OPTIONS = ["red", "green", "blue"]


def chat(**extra: object) -> dict[str, object]:
    return {"model": "edge-moe", "messages": [{"role": "user", "content": "Hi?"}], **extra}


def refused(body: object, headers: dict[str, str] | None = None, chat_: bool = True) -> _ApiError:
    with pytest.raises(_ApiError) as err:
        to_query(body, headers or {}, chat_, EXPERTS)
    return err.value


def reply(*, status: str = "optimal", text: str | None = None, answer_index: int | None = None,
          n_tokens: int = 0, experts: tuple[ExpertUse, ...] | None = None,
          budget_energy_j: float = math.inf) -> Reply:
    uses = experts if experts is not None else (
        ExpertUse("qwen", "node-a", 0.75, "ok", 12.0, 1.5, 0.4, "modelled", (-0.1, -2.0, -3.0), text,
                  "", n_tokens),
        ExpertUse("smol", "node-b", 0.25, "ok", 8.0, 1.0, 0.1, "modelled", None, None, "", 0))
    plan = PlanInfo(("qwen", "smol"), status, 0.5, "ok", ("qwen", "smol"), None, budget_energy_j, 500.0,
                    cached=True, min_energy_j=0.2, min_latency_ms=9.0)
    return Reply("q1", uses, {"gate": 1.0}, 20.0, 0.5, "modelled", plan, answer_index=answer_index,
                 probabilities=None if answer_index is None else (0.2, 0.7, 0.1), text=text,
                 reasons=("energy budget 1e-06 J is below the cheapest plan (0.2 J)",)
                 if status == "infeasible" else ())


# ---------------------------------------------------------------- request → QUERY


def test_a_single_user_message_is_the_prompt_and_defaults_fill_the_rest() -> None:
    q = to_query(chat(), {}, True, EXPERTS)
    assert q.prompt == "Hi?" and q.options is None and q.budget is None and q.expert is None
    assert q.max_new_tokens == DEFAULT_MAX_TOKENS and q.mode == "letter" and not q.stream
    assert q.top_k is None and q.tau is None and q.deadline_ms is None and len(q.id) == 32


def test_several_messages_become_a_transcript_ending_with_the_assistant() -> None:
    body = chat(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}])
    assert to_query(body, {}, True, EXPERTS).prompt == "System: Be brief.\nUser: Hi?\nAssistant:"


def test_the_extension_and_the_openai_fields_map_to_the_query() -> None:
    body = chat(model="smol", max_completion_tokens=7, max_tokens=99, stream=True, temperature=0, top_p=1, n=1,
                edge_moe={"options": OPTIONS, "mode": "continuation", "category": "stem", "top_k": 2,
                          "energy_j": 3, "latency_ms": 250.0, "deadline_ms": 900})
    q = to_query(body, {}, True, EXPERTS)
    assert q.options == tuple(OPTIONS) and q.mode == "continuation" and q.category == "stem"
    assert q.top_k == 2 and q.budget == WireBudget(3.0, 250.0) and q.deadline_ms == 900
    assert q.expert == "smol" and q.max_new_tokens == 7 and q.stream


def test_budgets_and_category_come_from_headers_and_the_body_wins() -> None:
    headers = {"x-edge-moe-energy-j": "1.5", "x-edge-moe-latency-ms": "60000", "x-edge-moe-category": "law"}
    q = to_query(chat(), headers, True, EXPERTS)
    assert q.budget == WireBudget(1.5, 60000.0) and q.category == "law"
    q = to_query(chat(edge_moe={"energy_j": 9, "category": "stem"}), headers, True, EXPERTS)
    assert q.budget == WireBudget(9.0, 60000.0) and q.category == "stem"


def test_a_completion_takes_a_string_or_a_one_string_list() -> None:
    assert to_query({"prompt": "Say hi."}, {}, False, EXPERTS).prompt == "Say hi."
    assert to_query({"prompt": ["Say hi."]}, {}, False, EXPERTS).prompt == "Say hi."


@pytest.mark.parametrize("body,status,code,param,message", [
    ([1], 400, "invalid_value", None, "the body must be a JSON object"),
    (chat(frequency_penalty=1.0), 400, "unsupported_parameter", "frequency_penalty",
     "unsupported parameter 'frequency_penalty' (this server supports: edge_moe, max_completion_tokens, "
     "max_tokens, messages, model, n, prompt, stop, stream, stream_options, temperature, top_p, user)"),
    (chat(model="gpt-17"), 404, "model_not_found", "model",
     "model 'gpt-17' does not exist (models: edge-moe, qwen, smol)"),
    (chat(n=2), 400, "unsupported_parameter", "n", "n=2: one choice per request"),
    (chat(temperature=0.7), 400, "unsupported_parameter", "temperature",
     "temperature=0.7: the nodes decode greedily (temperature 0)"),
    (chat(top_p=0.5), 400, "unsupported_parameter", "top_p", "top_p=0.5: the nodes decode greedily"),
    (chat(stop=["\n"]), 400, "unsupported_parameter", "stop", "stop sequences are not supported"),
    (chat(edge_moe=[1]), 400, "invalid_value", "edge_moe", "edge_moe must be an object"),
    (chat(edge_moe={"k": 2}), 400, "invalid_value", "edge_moe.k",
     "unknown edge_moe field 'k' (known: category, deadline_ms, energy_j, latency_ms, mode, options, tau, "
     "top_k)"),
    (chat(edge_moe={"energy_j": "lots"}), 400, "invalid_value", "edge_moe.energy_j",
     "edge_moe.energy_j='lots' must be a number"),
    (chat(edge_moe={"latency_ms": True}), 400, "invalid_value", "edge_moe.latency_ms",
     "edge_moe.latency_ms=True must be a number"),
    (chat(edge_moe={"options": "red"}), 400, "invalid_value", "edge_moe.options",
     "edge_moe.options must be an array of strings"),
    (chat(edge_moe={"mode": "poetry"}), 400, "invalid_value", "edge_moe.mode",
     "edge_moe.mode='poetry' is not one of ['letter', 'continuation']"),
    (chat(max_tokens=2.5), 400, "invalid_value", "max_tokens", "max_tokens=2.5 must be an integer"),
    (chat(edge_moe={"top_k": 1.0}), 400, "invalid_value", "edge_moe.top_k", "edge_moe.top_k=1.0 must be an integer"),
    (chat(messages=[]), 400, "invalid_value", "messages", "messages must be a non-empty array"),
    (chat(messages=[{"role": "tool", "content": "x"}]), 400, "invalid_value", "messages[0]",  # "}}": today's text
     "messages[0] must be {role: system|user|assistant|developer, content: string}} "
     "(content parts are not supported)"),
])
def test_bad_requests_are_refused_naming_the_parameter(body, status, code, param, message) -> None:
    e = refused(body)
    assert (e.status, e.code, e.param, e.message) == (status, code, param, message)
    assert e.body() == {"error": {"message": message, "type": "invalid_request_error", "code": code,
                                  "param": param}}


def test_a_bad_header_number_and_a_bad_completion_prompt_are_400s() -> None:
    e = refused(chat(), {"x-edge-moe-energy-j": "lots"})
    assert (e.status, e.param, e.message) == (400, "x-edge-moe-energy-j",
                                              "header x-edge-moe-energy-j: 'lots' is not a number")
    e = refused({"prompt": ["a", "b"]}, chat_=False)
    assert (e.status, e.param, e.message) == (400, "prompt", "prompt must be a string (one prompt per request)")


def test_a_body_that_is_not_json_is_a_400() -> None:
    assert parse_body(b'{"a": 1}') == {"a": 1}
    with pytest.raises(_ApiError) as err:
        parse_body(b"{nope")
    assert err.value.status == 400 and err.value.code == "invalid_json"
    assert err.value.message.startswith("the body is not JSON: ")


def test_the_wait_covers_the_deadline_and_the_readiness_probe_runs_nothing() -> None:
    assert wait_s(Query("a", "p"), 60.0) == 60.0
    assert wait_s(Query("a", "p", deadline_ms=90_000), 60.0) == 95.0
    probe = readiness_probe()
    assert probe.budget == WireBudget(0.0, 0.0) and probe.options == ("a",) and probe.deadline_ms == 1000.0


# ---------------------------------------------------------------- REPLY → response


def test_an_options_reply_is_the_chosen_options_text_with_the_decision() -> None:
    q = Query("q1", "Which colour?", tuple(OPTIONS))
    r = reply(answer_index=1)
    out = response_body(q, r, True, "edge-moe")
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
    assert reply_headers(r) == {"x-edge-moe-experts": "qwen=0.7500,smol=0.2500", "x-edge-moe-energy-j": "0.5"}


def test_a_generation_counts_tokens_and_finishes_by_length_at_the_limit() -> None:
    one = (ExpertUse("qwen", "node-a", 1.0, "ok", 5.0, 1.0, 0.2, "modelled", None, "hello there", "", 4),)
    q = Query("q2", "Say hi.", None, max_new_tokens=4)
    out = response_body(q, reply(text="hello there", experts=one), False, "qwen")
    assert out["object"] == "text_completion" and out["model"] == "qwen"
    assert out["choices"][0]["text"] == "hello there" and out["choices"][0]["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 0, "completion_tokens": 4, "total_tokens": 4}
    assert response_text(out, chat=False) == "hello there"
    q = Query("q3", "Say hi.", None, max_new_tokens=8)
    assert response_body(q, reply(text="hello there", experts=one), True, "qwen")["choices"][0]["finish_reason"] == "stop"


def test_an_infeasible_reply_is_a_422_with_the_floor_and_the_decision() -> None:
    r = reply(status="infeasible", budget_energy_j=1e-6)
    with pytest.raises(_ApiError) as err:
        response_body(Query("q1", "p", tuple(OPTIONS)), r, True, "edge-moe")
    e = err.value
    assert (e.status, e.code, e.param) == (422, "budget_infeasible", "edge_moe")
    assert e.message == "energy budget 1e-06 J is below the cheapest plan (0.2 J)"
    body = e.body()["error"]
    assert body["min_energy_j"] == 0.2 and body["min_latency_ms"] == 9.0 and body["edge_moe"] == decision(r)


@pytest.mark.parametrize("code,status", [
    (ErrorCode.BAD_REQUEST, 400), (ErrorCode.PROTOCOL, 400), (ErrorCode.NO_EXPERTS, 503),
    (ErrorCode.OVERLOADED, 503), (ErrorCode.DEADLINE, 504), (ErrorCode.EXPERT_ERROR, 502),
    (ErrorCode.INTERNAL, 500),
])
def test_each_error_code_has_its_status(code: ErrorCode, status: int) -> None:
    e = error_of(Error("q1", code, "why"))
    assert e.status == status and e.code == code and e.message == "why"
    assert e.type == ("invalid_request_error" if status < 500 else "server_error")
    assert ("Retry-After" in e.headers) == (code in (ErrorCode.NO_EXPERTS, ErrorCode.OVERLOADED))


def test_every_code_a_client_can_get_is_mapped_and_any_other_is_a_500() -> None:
    node_side = {ErrorCode.UNKNOWN_EXPERT, ErrorCode.RUNNER, ErrorCode.NOT_READY, ErrorCode.REFUSED}
    assert set(STATUS_OF) == set(ErrorCode) - node_side
    assert error_of(Error("q1", ErrorCode.RUNNER, "?")).status == 500
    assert error_of(Error("q1", "martian", "?")).status == 500


def test_retry_after_rounds_up_to_whole_seconds_and_defaults_to_one() -> None:
    e = error_of(Error("q1", ErrorCode.OVERLOADED, "busy", retry_after_ms=1500.0))
    assert e.headers == {"Retry-After": "2"} and e.body()["error"]["retry_after_ms"] == 1500.0
    e = error_of(Error("q1", ErrorCode.NO_EXPERTS, "none live"))
    assert e.headers == {"Retry-After": "1"} and "retry_after_ms" not in e.body()["error"]


def test_the_front_s_own_errors() -> None:
    e = unauthorized()
    assert (e.status, e.code, e.type) == (401, "invalid_api_key", "authentication_error")
    e = no_answer()
    assert (e.status, e.code, e.type, e.message) == (504, "deadline", "server_error",
                                                     "the coordinator did not answer in time")


def test_models_lists_the_ensemble_first() -> None:
    assert [m["id"] for m in models_body(EXPERTS)["data"]] == ["edge-moe", "qwen", "smol"]


# ---------------------------------------------------------------- streaming


def test_stream_chunks_in_both_shapes() -> None:
    q = Query("q1", "p")
    first = chunk_body(q, "edge-moe", True, 7, None, role=True)
    assert first == {"id": "edge-moe-q1", "object": "chat.completion.chunk", "created": 7, "model": "edge-moe",
                     "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None,
                                  "logprobs": None}]}
    last = chunk_body(q, "edge-moe", True, 7, None, "stop", edge_moe={"x": 1})
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "stop"
    assert last["edge_moe"] == {"x": 1}
    text = chunk_body(q, "edge-moe", False, 7, "he")
    assert text["object"] == "text_completion" and text["choices"][0]["text"] == "he"
    usage = usage_chunk(q, "edge-moe", True, 7, {"completion_tokens": 3})
    assert usage["choices"] == [] and usage["usage"] == {"completion_tokens": 3}
    assert sse({"a": 1}) == 'data: {"a": 1}\n\n'
    assert wants_usage({"stream_options": {"include_usage": True}}) and not wants_usage({"stream_options": 1})
