"""The HTTP front's request side without a server: OpenAI request JSON → QUERYs (every accepted
parameter → its Query / Sampling field, every refused one → a 400 naming it), ERROR code → HTTP
status."""

from __future__ import annotations

import dataclasses

import pytest

from edge_moe.wire import MAX_NEW_TOKENS, Error, ErrorCode, Query, Sampling, WireBudget
from gating.http.protocol import (
    DEFAULT_MAX_TOKENS,
    PARAMETERS,
    STATUS_OF,
    _ApiError,
    error_of,
    no_answer,
    parse_body,
    readiness_probe,
    to_queries,
    to_query,
    unauthorized,
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
    (chat(model="gpt-17"), 404, "model_not_found", "model",
     "model 'gpt-17' does not exist (models: edge-moe, qwen, smol)"),
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
    (chat(max_tokens=0), 400, "invalid_value", "max_tokens", f"max_tokens=0 must be in 1..{MAX_NEW_TOKENS}"),
    (chat(max_tokens=8, max_completion_tokens=5000), 400, "invalid_value", "max_completion_tokens",
     f"max_completion_tokens=5000 must be in 1..{MAX_NEW_TOKENS}"),
    (chat(edge_moe={"top_k": 1.0}), 400, "invalid_value", "edge_moe.top_k", "edge_moe.top_k=1.0 must be an integer"),
    (chat(messages=[]), 400, "invalid_value", "messages", "messages must be a non-empty array"),
    (chat(messages=[{"role": "tool", "content": "x"}]), 400, "invalid_value", "messages[0]",
     "messages[0] must be {role: system|user|assistant|developer, content: string} "
     "(content parts are not supported)"),
    # sampling out of the wire's ranges (edge_moe.wire.sampling_problem), named as OpenAI names them
    (chat(temperature=2.5), 400, "invalid_value", "temperature", "temperature=2.5 must be in [0, 2]"),
    (chat(temperature="hot"), 400, "invalid_value", "temperature", "temperature='hot' must be a number"),
    (chat(top_p=0), 400, "invalid_value", "top_p", "top_p=0.0 must be in (0, 1]"),
    (chat(top_k=1001), 400, "invalid_value", "top_k", "top_k=1001 must be in 0..1000 (0: off)"),
    (chat(top_k=1.5), 400, "invalid_value", "top_k", "top_k=1.5 must be an integer"),
    (chat(min_p=1.5), 400, "invalid_value", "min_p", "min_p=1.5 must be in [0, 1]"),
    (chat(repetition_penalty=0), 400, "invalid_value", "repetition_penalty",
     "repetition_penalty=0.0 must be in (0, 2]"),
    (chat(presence_penalty=-3), 400, "invalid_value", "presence_penalty", "presence_penalty=-3.0 must be in [-2, 2]"),
    (chat(frequency_penalty=2.5), 400, "invalid_value", "frequency_penalty",
     "frequency_penalty=2.5 must be in [-2, 2]"),
    (chat(seed="1"), 400, "invalid_value", "seed", "seed='1' must be an integer"),
    (chat(stop=["a", "b", "c", "d", "e"]), 400, "invalid_value", "stop",
     "stop holds 5 strings, at most 4 are allowed"),
    (chat(stop=""), 400, "invalid_value", "stop", "stop strings must be 1..256 characters, got 0"),
    (chat(stop=[1]), 400, "invalid_value", "stop", "stop must be a string or a list of strings"),
    (chat(logprobs="yes"), 400, "invalid_value", "logprobs", "logprobs='yes' must be a boolean"),
    (chat(logprobs=True, top_logprobs=6), 400, "invalid_value", "top_logprobs", "top_logprobs=6 must be in 0..5"),
    (chat(top_logprobs=2), 400, "invalid_value", "top_logprobs", "top_logprobs needs logprobs: true"),
    (chat(n=9), 400, "invalid_value", "n", "n=9 must be in 1..8"),
    (chat(n=0), 400, "invalid_value", "n", "n=0 must be in 1..8"),
    (chat(n=2, edge_moe={"options": OPTIONS}), 400, "unsupported_parameter", "n",
     "n=2: an options query (edge_moe.options) is scored once; n must be 1"),
    (chat(temperature=0.7, edge_moe={"options": OPTIONS}), 400, "unsupported_parameter", "temperature",
     "temperature applies to a generation; an options query (edge_moe.options) is scored, not sampled"),
    (chat(logprobs=True, edge_moe={"options": OPTIONS}), 400, "unsupported_parameter", "logprobs",
     "logprobs applies to a generation; an options query (edge_moe.options) is scored, not sampled"),
    (chat(stream_options="usage"), 400, "invalid_value", "stream_options", "stream_options must be an object"),
])
def test_bad_requests_are_refused_naming_the_parameter(body, status, code, param, message) -> None:
    e = refused(body)
    assert (e.status, e.code, e.param, e.message) == (status, code, param, message)
    assert e.body() == {"error": {"message": message, "type": "invalid_request_error", "code": code,
                                  "param": param}}


def test_an_unknown_parameter_or_one_of_the_other_endpoint_is_refused_with_the_list() -> None:
    e = refused(chat(frobnicate=1))
    assert (e.status, e.code, e.param) == (400, "unsupported_parameter", "frobnicate")
    assert e.message.startswith("unsupported parameter 'frobnicate' on /v1/chat/completions (this server "
                                "supports: audio, edge_moe, frequency_penalty, function_call, functions, ")
    assert refused(chat(prompt="x")).param == "prompt"
    e = refused({"prompt": "x", "messages": []}, chat_=False)
    assert e.param == "messages" and "on /v1/completions" in e.message and "echo" in e.message
    assert refused({"prompt": "x", "top_logprobs": 2}, chat_=False).param == "top_logprobs"


# One value per no-op parameter that would change something here: each is a 400 naming it.
NOT_NO_OPS = {
    "user": 7, "safety_identifier": ["x"], "prompt_cache_key": 1,
    "response_format": {"type": "json_object"}, "logit_bias": {"50256": -100},
    "tools": [{"type": "function", "function": {"name": "f"}}], "functions": [{"name": "f"}],
    "tool_choice": "required", "function_call": {"name": "f"}, "parallel_tool_calls": "yes",
    "service_tier": "flex", "store": True, "metadata": "tag", "modalities": ["text", "audio"],
    "audio": {"voice": "alloy", "format": "wav"}, "prediction": {"type": "content", "content": "x"},
    "reasoning_effort": "high", "web_search_options": {}, "echo": True, "best_of": 2, "suffix": "!",
}


def test_every_no_op_parameter_has_a_refused_example() -> None:
    assert set(NOT_NO_OPS) == {k for k, r in PARAMETERS.items() if r.kind == "no-op"}
    assert {r.kind for r in PARAMETERS.values()} == {"mapped", "no-op"}
    assert all((r.ok is None) == (r.kind == "mapped") for r in PARAMETERS.values())


@pytest.mark.parametrize("name", sorted(NOT_NO_OPS))
def test_a_no_op_parameter_that_would_do_something_is_a_400_naming_it(name: str) -> None:
    chat_ = PARAMETERS[name].where != "completions"
    body = chat() if chat_ else {"prompt": "Hi?"}
    e = refused({**body, name: NOT_NO_OPS[name]}, chat_=chat_)
    assert (e.status, e.code, e.param) == (400, "unsupported_parameter", name)
    assert e.message.startswith(f"{name}=") and f"accepted: {PARAMETERS[name].accepts}" in e.message


def test_no_op_parameters_at_their_defaults_change_nothing() -> None:
    plain = to_query(chat(), {}, True, EXPERTS)
    body = chat(user="u-1", safety_identifier="s", prompt_cache_key="k", response_format={"type": "text"},
                logit_bias={}, tools=[], functions=None, tool_choice="none", function_call="auto",
                parallel_tool_calls=True, service_tier="auto", store=False, metadata={"app": "x"},
                modalities=["text"], audio=None, prediction=None, reasoning_effort=None, web_search_options=None,
                stream_options={"include_usage": True})
    q = to_query(body, {}, True, EXPERTS)
    assert q == dataclasses.replace(plain, id=q.id) and q.sampling is None
    done = to_query({"prompt": "Hi?", "echo": False, "best_of": 1, "suffix": "", "user": "u"}, {}, False, EXPERTS)
    assert done.prompt == "Hi?" and done.sampling is None
    assert set(body) | {"prompt", "echo", "best_of", "suffix"} >= {k for k, r in PARAMETERS.items() if r.kind == "no-op"}


# ---------------------------------------------------------------- sampling


def test_every_sampling_parameter_maps_to_its_field() -> None:
    body = chat(temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, repetition_penalty=1.1, presence_penalty=0.5,
                frequency_penalty=-0.5, seed=7, stop="\n\n", logprobs=True, top_logprobs=3)
    assert to_query(body, {}, True, EXPERTS).sampling == Sampling(
        temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, repetition_penalty=1.1, presence_penalty=0.5,
        frequency_penalty=-0.5, seed=7, stop=("\n\n",), logprobs=True, top_logprobs=3)


@pytest.mark.parametrize("extra,sampling", [
    ({"temperature": 1}, Sampling(temperature=1.0)),
    ({"top_k": -1, "temperature": 1}, Sampling(temperature=1.0)),  # vLLM's "off"
    ({"stop": ["\n", "User:"]}, Sampling(stop=("\n", "User:"))),  # greedy, stopping early
    ({"seed": -1}, Sampling(seed=2**63 - 1)),  # any integer, folded into the wire's 0..2^63-1
    ({"seed": 2**64 + 5}, Sampling(seed=5)),
    ({"logprobs": True}, Sampling(logprobs=True)),
    ({"logprobs": True, "top_logprobs": 5}, Sampling(logprobs=True, top_logprobs=5)),
])
def test_a_chat_request_s_sampling(extra, sampling) -> None:
    assert to_query(chat(**extra), {}, True, EXPERTS).sampling == sampling


def test_completions_take_logprobs_as_the_number_of_alternatives() -> None:
    q = to_query({"prompt": "Hi", "logprobs": 2}, {}, False, EXPERTS)
    assert q.sampling == Sampling(logprobs=True, top_logprobs=2)
    assert to_query({"prompt": "Hi", "logprobs": 0}, {}, False, EXPERTS).sampling == Sampling(logprobs=True)
    assert to_query({"prompt": "Hi", "logprobs": None}, {}, False, EXPERTS).sampling is None
    for bad, why in ((6, "logprobs: top_logprobs=6 must be in 0..5"), (True, "logprobs=True must be an integer")):
        e = refused({"prompt": "Hi", "logprobs": bad}, chat_=False)
        assert (e.param, e.message) == ("logprobs", why)


def test_sampling_parameters_at_their_defaults_leave_the_query_greedy_and_unchanged() -> None:
    body = chat(temperature=0, top_p=1, top_k=0, min_p=0, repetition_penalty=1, presence_penalty=0,
                frequency_penalty=0, stop=[], logprobs=False, top_logprobs=0, n=1, seed=None)
    assert to_query(body, {}, True, EXPERTS).sampling is None
    q = to_query(chat(temperature=0, edge_moe={"options": OPTIONS}), {}, True, EXPERTS)  # scored: allowed
    assert q.sampling is None and q.options == tuple(OPTIONS)


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert to_query(chat(max_tokens=5), {}, True, EXPERTS).max_new_tokens == 5
    assert to_query(chat(max_tokens=5, max_completion_tokens=9), {}, True, EXPERTS).max_new_tokens == 9
    assert to_query(chat(max_tokens=5, max_completion_tokens=None), {}, True, EXPERTS).max_new_tokens == 5


def test_n_choices_are_n_queries_with_seeds_seed_plus_i() -> None:
    qs = to_queries(chat(n=3, seed=5, temperature=0.8, max_tokens=4), {}, True, EXPERTS)
    assert len(qs) == 3 and len({q.id for q in qs}) == 3
    assert [q.sampling.seed for q in qs] == [5, 6, 7]
    assert all(dataclasses.replace(q, id="x", sampling=None) == dataclasses.replace(qs[0], id="x", sampling=None)
               for q in qs)
    assert {dataclasses.replace(q.sampling, seed=None) for q in qs} == {Sampling(temperature=0.8)}
    unseeded = to_queries(chat(n=2, temperature=0.8), {}, True, EXPERTS)
    assert [q.sampling.seed for q in unseeded] == [None, None]  # each draws a fresh seed
    wrapped = to_queries(chat(n=2, seed=2**63 - 1, temperature=1), {}, True, EXPERTS)
    assert [q.sampling.seed for q in wrapped] == [2**63 - 1, 0]
    greedy = to_queries(chat(n=2), {}, True, EXPERTS)
    assert len(greedy) == 2 and all(q.sampling is None for q in greedy)
    assert to_query(chat(n=3, seed=5, temperature=1), {}, True, EXPERTS).sampling.seed == 5


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
    assert wants_usage({"stream_options": {"include_usage": True}}) and not wants_usage({"stream_options": 1})


# ---------------------------------------------------------------- ERROR → HTTP status


@pytest.mark.parametrize("code,status", [
    (ErrorCode.BAD_REQUEST, 400), (ErrorCode.PROTOCOL, 400), (ErrorCode.NO_EXPERTS, 503),
    (ErrorCode.OVERLOADED, 503), (ErrorCode.DEADLINE, 504), (ErrorCode.EXPERT_ERROR, 502),
    (ErrorCode.INTERNAL, 500), (ErrorCode.CANCELLED, 499),
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
