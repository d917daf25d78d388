"""The OpenAI API's request side, apart from any server: request JSON → QUERYs (one per
choice, ``n``), every check of a parameter, and the error mapping (ERROR → HTTP status).

Pure: no sockets, no Starlette, no clock. The response side (REPLY → JSON, stream chunks,
log-probabilities) is :mod:`gating.http.responses`; the route functions
(:mod:`gating.http.routes`) call both and only move bytes.

Parameters: :data:`PARAMETERS` is the table of every top-level field the front knows. A field
not in it, a "no-op" field at a value that would change something here, and a value out of
its range are each a 400 naming the parameter; nothing is silently ignored.

Errors in OpenAI's shape ``{"error": {"message", "type", "code", "param"}}``, raised as
:class:`_ApiError` (its ``status`` is the HTTP status):

- the front's own checks of a request: 400 naming the parameter (404 for an unknown model);
- the coordinator's ERROR (:func:`error_of`): ``bad_request`` / ``protocol`` → 400,
  ``no_experts`` / ``overloaded`` → 503 with ``Retry-After``, ``deadline`` → 504,
  ``expert_error`` → 502, ``cancelled`` → 499, ``internal`` (or an unknown code) → 500;
- an infeasible budget (a REPLY whose plan is infeasible, :func:`infeasible`) → 422 with
  ``min_energy_j`` / ``min_latency_ms`` and the decision;
- a missing or wrong API key (:func:`unauthorized`) → 401.
"""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge_moe.wire import (
    MAX_NEW_TOKENS,
    MODES,
    Error,
    ErrorCode,
    Query,
    Sampling,
    WireBudget,
    sampling_problem,
)

ENSEMBLE = "edge-moe"
DEFAULT_MAX_TOKENS = 32
MAX_N = 8  # choices per request: n QUERYs in flight at once
SEED_MODULUS = 2**63  # the wire's seeds are 0..2^63-1; choice i of seed s draws with (s + i) mod 2^63
EXTENSION = {"energy_j", "latency_ms", "category", "top_k", "tau", "options", "mode", "deadline_ms"}
STATUS_OF = {ErrorCode.BAD_REQUEST: 400, ErrorCode.PROTOCOL: 400, ErrorCode.NO_EXPERTS: 503,
             ErrorCode.OVERLOADED: 503, ErrorCode.DEADLINE: 504, ErrorCode.EXPERT_ERROR: 502,
             ErrorCode.INTERNAL: 500, ErrorCode.CANCELLED: 499}  # 499: the client closed the request


@dataclass(frozen=True)
class Param:
    """One row of :data:`PARAMETERS`.

    ``kind``: "mapped" (it becomes part of the QUERY), "no-op" (accepted only at a value that
    changes nothing here, ``ok`` says which; any other value is a 400 quoting ``accepts``).
    ``where``: "both", "chat" (``/v1/chat/completions`` only) or "completions".
    """

    kind: str
    accepts: str
    where: str = "both"
    ok: Callable[[Any], bool] | None = None


def _is_none(v: Any) -> bool:
    return v is None


def _none_or(*values: Any) -> Callable[[Any], bool]:
    return lambda v: v is None or any(type(v) is type(x) and v == x for x in values)


def _none_or_type(*types: type) -> Callable[[Any], bool]:
    return lambda v: v is None or isinstance(v, types)


TOOLS = "(this server has no tool calling)"
PARAMETERS: dict[str, Param] = {
    # mapped: the QUERY (Query fields) and its Sampling (edge_moe.wire.Sampling, whose ranges
    # edge_moe.wire.sampling_problem checks); temperature absent or 0 decodes greedily
    "model": Param("mapped", f'"{ENSEMBLE}" (the ensemble) or an expert\'s name (pinned)'),
    "messages": Param("mapped", "[{role: system|user|assistant|developer, content: string}]", "chat"),
    "prompt": Param("mapped", "a string, or a list of one string", "completions"),
    "max_tokens": Param("mapped", f"an integer 1..{MAX_NEW_TOKENS} (default {DEFAULT_MAX_TOKENS})"),
    "max_completion_tokens": Param("mapped", f"an integer 1..{MAX_NEW_TOKENS}; wins over max_tokens"),
    "n": Param("mapped", f"an integer 1..{MAX_N}: n QUERYs, one per choice (generations only)"),
    "temperature": Param("mapped", "a number 0..2 (0, the default here: greedy)"),
    "top_p": Param("mapped", "a number in (0, 1]"),
    "top_k": Param("mapped", "an integer 0..1000, 0 or -1: off (vLLM / llama.cpp extension)"),
    "min_p": Param("mapped", "a number 0..1 (vLLM / llama.cpp extension)"),
    "repetition_penalty": Param("mapped", "a number in (0, 2] (vLLM / llama.cpp extension)"),
    "presence_penalty": Param("mapped", "a number -2..2"),
    "frequency_penalty": Param("mapped", "a number -2..2"),
    "seed": Param("mapped", "an integer; choice i draws with seed + i (mod 2^63)"),
    "stop": Param("mapped", "a string or a list of at most 4 non-empty strings"),
    "logprobs": Param("mapped", "chat: a boolean; completions: an integer 0..5 (the alternatives)"),
    "top_logprobs": Param("mapped", "an integer 0..5, with logprobs: true", "chat"),
    "stream": Param("mapped", "a boolean"),
    "stream_options": Param("mapped", '{"include_usage": boolean} (a last chunk with the usage)'),
    "edge_moe": Param("mapped", f"an object with {', '.join(sorted(EXTENSION))}"),
    # no-ops: accepted at the values that change nothing here
    "user": Param("no-op", "a string (not used)", ok=_none_or_type(str)),
    "safety_identifier": Param("no-op", "a string (not used)", ok=_none_or_type(str)),
    "prompt_cache_key": Param("no-op", "a string (not used)", ok=_none_or_type(str)),
    "response_format": Param("no-op", 'null or {"type": "text"} (no JSON mode)', ok=_none_or({"type": "text"})),
    "logit_bias": Param("no-op", "null or {} (no logit bias)", ok=_none_or({})),
    "tools": Param("no-op", f"null or [] {TOOLS}", "chat", _none_or([])),
    "functions": Param("no-op", f"null or [] {TOOLS}", "chat", _none_or([])),
    "tool_choice": Param("no-op", f'null, "none" or "auto" {TOOLS}', "chat", _none_or("none", "auto")),
    "function_call": Param("no-op", f'null, "none" or "auto" {TOOLS}', "chat", _none_or("none", "auto")),
    "parallel_tool_calls": Param("no-op", f"a boolean {TOOLS}", "chat", _none_or_type(bool)),
    "service_tier": Param("no-op", 'null, "auto" or "default" (one tier here)',
                          ok=_none_or("auto", "default")),
    "store": Param("no-op", "null or false (nothing is stored)", ok=_none_or(False)),
    "metadata": Param("no-op", "an object (kept only with store, which is off)", ok=_none_or_type(dict)),
    "modalities": Param("no-op", 'null or ["text"] (text only)', "chat", _none_or(["text"])),
    "audio": Param("no-op", "null (text only)", "chat", _is_none),
    "prediction": Param("no-op", "null (no predicted outputs)", "chat", _is_none),
    "reasoning_effort": Param("no-op", "null (no reasoning models)", "chat", _is_none),
    "web_search_options": Param("no-op", "null (no web search)", "chat", _is_none),
    "echo": Param("no-op", "null or false (the prompt is not echoed)", "completions", _none_or(False)),
    "best_of": Param("no-op", "null or 1", "completions", _none_or(1)),
    "suffix": Param("no-op", 'null or "" (no insertion)', "completions", _none_or("")),
}
SAMPLED = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
           "frequency_penalty", "seed", "stop", "logprobs", "top_logprobs")  # → Sampling fields


class _ApiError(Exception):
    """An error response in OpenAI's shape (private: the project's exception tree lives in
    :mod:`edge_moe.errors`; this one never leaves the HTTP front)."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 type_: str = "invalid_request_error", headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.type, self.headers, self.extra = type_, headers or {}, extra or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code,
                          "param": self.param, **self.extra}}


def unauthorized() -> _ApiError:
    """The 401 for a missing or wrong API key."""
    return _ApiError(401, "missing or wrong API key (Authorization: Bearer <key>)",
                     "invalid_api_key", type_="authentication_error")


def no_answer(message: str = "the coordinator did not answer in time",
              type_: str = "server_error") -> _ApiError:
    """The 504 when the coordinator is silent past the wait."""
    return _ApiError(504, message, "deadline", type_=type_)


def error_of(msg: Error) -> _ApiError:
    """The HTTP error for the coordinator's ERROR (status by :data:`STATUS_OF`, else 500)."""
    status = STATUS_OF.get(msg.code, 500)  # type: ignore[call-overload]
    headers = {}
    if msg.code in (ErrorCode.NO_EXPERTS, ErrorCode.OVERLOADED):
        retry = msg.retry_after_ms if msg.retry_after_ms is not None else 1000.0
        headers["Retry-After"] = str(max(1, math.ceil(retry / 1e3)))
    type_ = "invalid_request_error" if status < 500 else "server_error"
    extra = {"retry_after_ms": msg.retry_after_ms} if msg.retry_after_ms is not None else {}
    return _ApiError(status, msg.message, msg.code, type_=type_, headers=headers, extra=extra)


# ---------------------------------------------------------------- request → QUERYs


def parse_body(raw: bytes) -> Any:
    """The request's JSON; a 400 ``invalid_json`` when it is not JSON."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _ApiError(400, f"the body is not JSON: {exc}", "invalid_json") from None


def _bad(name: str, message: str) -> _ApiError:
    return _ApiError(400, message, "invalid_value", name)


def _number(v: Any, name: str, *, integer: bool = False) -> float | int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or (integer and not isinstance(v, int)):
        raise _bad(name, f"{name}={v!r} must be {'an integer' if integer else 'a number'}")
    return v


def _header_number(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise _bad(name, f"header {name}: {raw!r} is not a number") from None


def _prompt_of(body: dict[str, Any], chat: bool) -> str:
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise _bad("messages", "messages must be a non-empty array")
        parts = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) \
                    or m.get("role") not in ("system", "user", "assistant", "developer"):
                raise _bad(f"messages[{i}]", f"messages[{i}] must be {{role: system|user|assistant|developer, "
                           "content: string} (content parts are not supported)")
            parts.append((m["role"], m["content"]))
        if len(parts) == 1 and parts[0][0] == "user":
            return parts[0][1]
        return "\n".join(f"{r.capitalize()}: {c}" for r, c in parts) + "\nAssistant:"
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _bad("prompt", "prompt must be a string (one prompt per request)")
    return prompt


def _check_parameters(body: dict[str, Any], chat: bool) -> None:
    """Every field is in :data:`PARAMETERS`, for this endpoint, and each no-op at a no-op value."""
    endpoint = "chat" if chat else "completions"
    for name, v in body.items():
        row = PARAMETERS.get(name)
        if row is None or row.where not in ("both", endpoint):
            here = sorted(k for k, r in PARAMETERS.items() if r.where in ("both", endpoint))
            path = "/v1/chat/completions" if chat else "/v1/completions"
            raise _ApiError(400, f"unsupported parameter {name!r} on {path} (this server supports: "
                            f"{', '.join(here)})", "unsupported_parameter", name)
        if row.ok is not None and not row.ok(v):
            shown = json.dumps(v)[:80]
            raise _ApiError(400, f"{name}={shown} is not supported here; accepted: {row.accepts}",
                            "unsupported_parameter", name)


def _checked(name: str, field: str, value: Any, **also: Any) -> Any:
    """``value`` for Sampling ``field`` under the wire's rule (:func:`sampling_problem`), else a
    400 naming the OpenAI parameter ``name``."""
    problem = sampling_problem(Sampling(**{field: value, **also}))
    if problem is not None:
        problem = problem.removeprefix("sampling.")
        raise _bad(name, problem if name == field else f"{name}: {problem}")
    return value


def _stop(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(x, str) for x in stops):
        raise _bad("stop", "stop must be a string or a list of strings")
    return tuple(_checked("stop", "stop", tuple(stops)))


def _sampling(body: dict[str, Any], chat: bool) -> tuple[Sampling, list[str]]:
    """The Sampling the body asks for, and the parameters that set it (in :data:`SAMPLED` order)."""
    fields: dict[str, Any] = {}
    for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
        v = _number(body.get(name), name)
        if v is not None:
            fields[name] = _checked(name, name, float(v))
    top_k = _number(body.get("top_k"), "top_k", integer=True)
    if top_k is not None:
        fields["top_k"] = _checked("top_k", "top_k", 0 if top_k == -1 else int(top_k))
    seed = _number(body.get("seed"), "seed", integer=True)
    if seed is not None:
        fields["seed"] = int(seed) % SEED_MODULUS
    if body.get("stop") is not None:
        fields["stop"] = _stop(body["stop"])
    logprobs, top = body.get("logprobs"), body.get("top_logprobs")
    if chat:
        if logprobs is not None and not isinstance(logprobs, bool):
            raise _bad("logprobs", f"logprobs={logprobs!r} must be a boolean")
        top = _number(top, "top_logprobs", integer=True)
        if top is not None and top > 0 and not logprobs:
            raise _bad("top_logprobs", "top_logprobs needs logprobs: true")
        if logprobs:
            fields["logprobs"] = True
            fields["top_logprobs"] = _checked("top_logprobs", "top_logprobs", int(top or 0), logprobs=True)
    elif logprobs is not None:
        k = _number(logprobs, "logprobs", integer=True)
        fields["logprobs"] = True
        fields["top_logprobs"] = _checked("logprobs", "top_logprobs", int(k or 0), logprobs=True)
    sampling = Sampling(**fields)
    default = Sampling()
    set_by = [n for n in SAMPLED if n in fields and getattr(sampling, n) != getattr(default, n)]
    if not chat and "logprobs" in fields:
        set_by = [n for n in set_by if n != "top_logprobs"]
    return sampling, set_by


def _extension(body: dict[str, Any]) -> dict[str, Any]:
    ext = body.get("edge_moe") or {}
    if not isinstance(ext, dict):
        raise _bad("edge_moe", "edge_moe must be an object")
    bad = sorted(set(ext) - EXTENSION)
    if bad:
        raise _bad(f"edge_moe.{bad[0]}", f"unknown edge_moe field {bad[0]!r} (known: {', '.join(sorted(EXTENSION))})")
    return ext


def _max_new_tokens(body: dict[str, Any]) -> int:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    v = _number(body.get(name), name, integer=True)
    if v is None:
        return DEFAULT_MAX_TOKENS
    if not 1 <= v <= MAX_NEW_TOKENS:
        raise _bad(name, f"{name}={v} must be in 1..{MAX_NEW_TOKENS}")
    return int(v)


def _n(body: dict[str, Any], options: bool) -> int:
    n = _number(body.get("n"), "n", integer=True)
    if n is None:
        return 1
    if not 1 <= n <= MAX_N:
        raise _bad("n", f"n={n} must be in 1..{MAX_N}")
    if n > 1 and options:
        raise _ApiError(400, f"n={n}: an options query (edge_moe.options) is scored once; n must be 1",
                        "unsupported_parameter", "n")
    return int(n)


def to_queries(body: Any, headers: Mapping[str, str], chat: bool, experts: Sequence[str]) -> tuple[Query, ...]:
    """The QUERYs for an OpenAI request body, one per choice (``n``); :class:`_ApiError` (400,
    or 404 for an unknown model) names what is wrong. ``headers``: lower-case names
    (Starlette's are case-blind).

    Choice i is the same QUERY under its own id; with a ``seed``, its seed is ``(seed + i) mod
    2^63``. A QUERY's ``sampling`` is None when every sampling parameter is at its default
    (greedy decoding), so a greedy request reaches the coordinator as it always did.
    """
    if not isinstance(body, dict):
        raise _ApiError(400, "the body must be a JSON object", "invalid_value")
    _check_parameters(body, chat)
    model = body.get("model", ENSEMBLE)
    if model != ENSEMBLE and model not in experts:
        raise _ApiError(404, f"model {model!r} does not exist (models: {ENSEMBLE}, {', '.join(experts)})",
                        "model_not_found", "model")
    if body.get("stream_options") is not None and not isinstance(body["stream_options"], dict):
        raise _bad("stream_options", "stream_options must be an object")
    ext = _extension(body)
    energy = _number(ext.get("energy_j"), "edge_moe.energy_j")
    latency = _number(ext.get("latency_ms"), "edge_moe.latency_ms")
    if energy is None:
        energy = _header_number(headers, "x-edge-moe-energy-j")
    if latency is None:
        latency = _header_number(headers, "x-edge-moe-latency-ms")
    category = ext.get("category", headers.get("x-edge-moe-category"))
    options = ext.get("options")
    if options is not None and (not isinstance(options, list) or not all(isinstance(o, str) for o in options)):
        raise _bad("edge_moe.options", "edge_moe.options must be an array of strings")
    mode = ext.get("mode", "letter")
    if mode not in MODES:
        raise _bad("edge_moe.mode", f"edge_moe.mode={mode!r} is not one of {list(MODES)}")
    sampling, set_by = _sampling(body, chat)
    if options is not None and set_by:
        raise _ApiError(400, f"{set_by[0]} applies to a generation; an options query (edge_moe.options) "
                        "is scored, not sampled", "unsupported_parameter", set_by[0])
    n = _n(body, options is not None)
    budget = None if energy is None and latency is None else WireBudget(
        None if energy is None else float(energy), None if latency is None else float(latency))
    top_k = _number(ext.get("top_k"), "edge_moe.top_k", integer=True)
    first = Query(id=uuid.uuid4().hex, prompt=_prompt_of(body, chat),
                  options=tuple(options) if options is not None else None,
                  category=category if isinstance(category, str) else None, budget=budget,
                  max_new_tokens=_max_new_tokens(body), top_k=None if top_k is None else int(top_k),
                  tau=_number(ext.get("tau"), "edge_moe.tau"),
                  deadline_ms=_number(ext.get("deadline_ms"), "edge_moe.deadline_ms"),
                  mode=mode, expert=None if model == ENSEMBLE else model, stream=bool(body.get("stream")),
                  sampling=sampling if set_by else None)
    return (first, *(_choice(first, i) for i in range(1, n)))


def _choice(first: Query, i: int) -> Query:
    s = first.sampling
    if s is not None and s.seed is not None:
        s = dataclasses.replace(s, seed=(s.seed + i) % SEED_MODULUS)
    return dataclasses.replace(first, id=uuid.uuid4().hex, sampling=s)


def to_query(body: Any, headers: Mapping[str, str], chat: bool, experts: Sequence[str]) -> Query:
    """The first (with ``n`` 1, the only) QUERY of :func:`to_queries`."""
    return to_queries(body, headers, chat, experts)[0]


def wants_usage(body: dict[str, Any]) -> bool:
    """``stream_options.include_usage``."""
    opts = body.get("stream_options") or {}
    return isinstance(opts, dict) and bool(opts.get("include_usage"))


def wait_s(q: Query, timeout_s: float) -> float:
    """How long the front waits for the coordinator: ``timeout_s``, or the query's deadline
    plus 5 s when that is longer."""
    return max(timeout_s, (q.deadline_ms or 0) / 1e3 + 5.0)


def readiness_probe() -> Query:
    """The QUERY behind ``/readyz``: a zero budget, which the coordinator answers from its
    plan (infeasible, with the live experts) without running anything."""
    return Query(id=uuid.uuid4().hex, prompt="readyz", options=("a",),
                 budget=WireBudget(0.0, 0.0), deadline_ms=1000.0)
