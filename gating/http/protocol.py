"""The OpenAI API's shapes, apart from any server: request JSON → QUERY, REPLY / ERROR /
PARTIAL → response JSON and server-sent-event chunks, and the error mapping.

Pure: no sockets, no Starlette, no clock beyond the ``created`` stamps OpenAI's objects carry.
The route functions (:mod:`gating.http.routes`) call these and only move bytes.

Errors in OpenAI's shape ``{"error": {"message", "type", "code", "param"}}``, raised as
:class:`_ApiError` (its ``status`` is the HTTP status):

- the front's own checks of a request: 400 naming the parameter (404 for an unknown model);
- the coordinator's ERROR (:func:`error_of`): ``bad_request`` / ``protocol`` → 400,
  ``no_experts`` / ``overloaded`` → 503 with ``Retry-After``, ``deadline`` → 504,
  ``expert_error`` → 502, ``internal`` (or an unknown code) → 500;
- an infeasible budget (a REPLY whose plan is infeasible, :func:`response_body`) → 422 with
  ``min_energy_j`` / ``min_latency_ms`` and the decision;
- a missing or wrong API key (:func:`unauthorized`) → 401.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from edge_moe.wire import MODES, Error, ErrorCode, Query, Reply, WireBudget, json_float

ENSEMBLE = "edge-moe"
DEFAULT_MAX_TOKENS = 32
ACCEPTED = {"model", "messages", "prompt", "max_tokens", "max_completion_tokens", "n", "temperature",
            "top_p", "stream", "stream_options", "stop", "user", "edge_moe"}
EXTENSION = {"energy_j", "latency_ms", "category", "top_k", "tau", "options", "mode", "deadline_ms"}
STATUS_OF = {ErrorCode.BAD_REQUEST: 400, ErrorCode.PROTOCOL: 400, ErrorCode.NO_EXPERTS: 503,
             ErrorCode.OVERLOADED: 503, ErrorCode.DEADLINE: 504, ErrorCode.EXPERT_ERROR: 502,
             ErrorCode.INTERNAL: 500, ErrorCode.CANCELLED: 499}  # 499: the client closed the request
DONE = "data: [DONE]\n\n"


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


# ---------------------------------------------------------------- request → QUERY


def parse_body(raw: bytes) -> Any:
    """The request's JSON; a 400 ``invalid_json`` when it is not JSON."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _ApiError(400, f"the body is not JSON: {exc}", "invalid_json") from None


def _number(v: Any, name: str, *, integer: bool = False) -> float | int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or (integer and not isinstance(v, int)):
        raise _ApiError(400, f"{name}={v!r} must be {'an integer' if integer else 'a number'}",
                        "invalid_value", name)
    return v


def _header_number(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise _ApiError(400, f"header {name}: {raw!r} is not a number", "invalid_value", name) from None


def _prompt_of(body: dict[str, Any], chat: bool) -> str:
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise _ApiError(400, "messages must be a non-empty array", "invalid_value", "messages")
        parts = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) \
                    or m.get("role") not in ("system", "user", "assistant", "developer"):
                raise _ApiError(400, f"messages[{i}] must be {{role: system|user|assistant|developer, "
                                "content: string}} (content parts are not supported)", "invalid_value",
                                f"messages[{i}]")
            parts.append((m["role"], m["content"]))
        if len(parts) == 1 and parts[0][0] == "user":
            return parts[0][1]
        return "\n".join(f"{r.capitalize()}: {c}" for r, c in parts) + "\nAssistant:"
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _ApiError(400, "prompt must be a string (one prompt per request)", "invalid_value", "prompt")
    return prompt


def _check_sampling(body: dict[str, Any]) -> None:
    """Greedy decoding only: n, temperature, top_p and stop are refused, never ignored."""
    if body.get("n") not in (None, 1):
        raise _ApiError(400, f"n={body['n']!r}: one choice per request", "unsupported_parameter", "n")
    if body.get("temperature") not in (None, 0, 0.0):
        raise _ApiError(400, f"temperature={body['temperature']!r}: the nodes decode greedily "
                        "(temperature 0)", "unsupported_parameter", "temperature")
    if body.get("top_p") not in (None, 1, 1.0):
        raise _ApiError(400, f"top_p={body['top_p']!r}: the nodes decode greedily", "unsupported_parameter",
                        "top_p")
    if body.get("stop") not in (None, [], ""):
        raise _ApiError(400, "stop sequences are not supported", "unsupported_parameter", "stop")


def _extension(body: dict[str, Any]) -> dict[str, Any]:
    ext = body.get("edge_moe") or {}
    if not isinstance(ext, dict):
        raise _ApiError(400, "edge_moe must be an object", "invalid_value", "edge_moe")
    bad = sorted(set(ext) - EXTENSION)
    if bad:
        raise _ApiError(400, f"unknown edge_moe field {bad[0]!r} (known: {', '.join(sorted(EXTENSION))})",
                        "invalid_value", f"edge_moe.{bad[0]}")
    return ext


def to_query(body: Any, headers: Mapping[str, str], chat: bool, experts: Sequence[str]) -> Query:
    """The QUERY for an OpenAI request body; :class:`_ApiError` (400, or 404 for an unknown
    model) names what is wrong. ``headers``: lower-case names (Starlette's are case-blind)."""
    if not isinstance(body, dict):
        raise _ApiError(400, "the body must be a JSON object", "invalid_value")
    unknown = sorted(set(body) - ACCEPTED)
    if unknown:
        raise _ApiError(400, f"unsupported parameter {unknown[0]!r} (this server supports: "
                        f"{', '.join(sorted(ACCEPTED))})", "unsupported_parameter", unknown[0])
    model = body.get("model", ENSEMBLE)
    if model != ENSEMBLE and model not in experts:
        raise _ApiError(404, f"model {model!r} does not exist (models: {ENSEMBLE}, {', '.join(experts)})",
                        "model_not_found", "model")
    _check_sampling(body)
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
        raise _ApiError(400, "edge_moe.options must be an array of strings", "invalid_value", "edge_moe.options")
    mode = ext.get("mode", "letter")
    if mode not in MODES:
        raise _ApiError(400, f"edge_moe.mode={mode!r} is not one of {list(MODES)}", "invalid_value",
                        "edge_moe.mode")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_new = _number(max_tokens, "max_tokens", integer=True) or DEFAULT_MAX_TOKENS
    budget = None if energy is None and latency is None else WireBudget(
        None if energy is None else float(energy), None if latency is None else float(latency))
    top_k = _number(ext.get("top_k"), "edge_moe.top_k", integer=True)
    return Query(id=uuid.uuid4().hex, prompt=_prompt_of(body, chat),
                 options=tuple(options) if options is not None else None,
                 category=category if isinstance(category, str) else None, budget=budget,
                 max_new_tokens=int(max_new), top_k=None if top_k is None else int(top_k),
                 tau=_number(ext.get("tau"), "edge_moe.tau"),
                 deadline_ms=_number(ext.get("deadline_ms"), "edge_moe.deadline_ms"),
                 mode=mode, expert=None if model == ENSEMBLE else model, stream=bool(body.get("stream")))


def wait_s(q: Query, timeout_s: float) -> float:
    """How long the front waits for the coordinator: ``timeout_s``, or the query's deadline
    plus 5 s when that is longer."""
    return max(timeout_s, (q.deadline_ms or 0) / 1e3 + 5.0)


def readiness_probe() -> Query:
    """The QUERY behind ``/readyz``: a zero budget, which the coordinator answers from its
    plan (infeasible, with the live experts) without running anything."""
    return Query(id=uuid.uuid4().hex, prompt="readyz", options=("a",),
                 budget=WireBudget(0.0, 0.0), deadline_ms=1000.0)


# ---------------------------------------------------------------- REPLY → response


def decision(r: Reply) -> dict[str, Any]:
    """The ``edge_moe`` object of a response."""
    p = r.plan
    return {
        "experts": [{"name": u.name, "node": u.node, "weight": u.weight, "status": u.status,
                     "compute_ms": u.compute_ms, "rtt_ms": u.rtt_ms, "energy_j": u.energy_j,
                     "energy_source": u.energy_source, "n_tokens": u.n_tokens, "text": u.text,
                     "logprobs": None if u.logprobs is None else list(u.logprobs), "error": u.error}
                    for u in r.experts],
        "plan": {"experts": list(p.experts), "status": p.status, "objective": p.objective,
                 "message": p.message, "live": list(p.live), "category": p.category,
                 "budget_energy_j": json_float(p.budget_energy_j), "budget_latency_ms": json_float(p.budget_latency_ms),
                 "cached": p.cached, "min_energy_j": p.min_energy_j, "min_latency_ms": p.min_latency_ms},
        "energy_j": r.energy_j, "energy_source": r.energy_source, "degraded": r.degraded,
        "reasons": list(r.reasons), "stage_ms": dict(r.stage_ms), "answer_index": r.answer_index,
        "probabilities": None if r.probabilities is None else list(r.probabilities),
    }


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


def infeasible(r: Reply) -> _ApiError:
    """The 422 for a REPLY whose plan is infeasible: the floor of the budget and the decision."""
    return _ApiError(422, r.reasons[0] if r.reasons else r.plan.message, "budget_infeasible",
                     "edge_moe", extra={"min_energy_j": r.plan.min_energy_j,
                                        "min_latency_ms": r.plan.min_latency_ms,
                                        "edge_moe": decision(r)})


def response_body(q: Query, r: Reply, chat: bool, model: str) -> dict[str, Any]:
    """The (chat) completion object for ``q``'s REPLY; raises the 422 when it is infeasible."""
    if r.plan.status == "infeasible":
        raise infeasible(r)
    if q.options is not None:
        text = q.options[r.answer_index] if r.answer_index is not None else ""
    else:
        text = r.text or ""
    tokens = sum(u.n_tokens for u in r.experts if u.status == "ok")
    finish = "length" if q.options is None and tokens >= q.max_new_tokens * max(
        1, sum(u.status == "ok" for u in r.experts)) else "stop"
    usage = {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens}
    if chat:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": finish, "logprobs": None}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        obj = "text_completion"
    return {"id": f"edge-moe-{q.id}", "object": obj, "created": int(time.time()), "model": model,
            "choices": [choice], "usage": usage, "edge_moe": decision(r)}


def response_text(whole: dict[str, Any], chat: bool) -> str:
    """The answer's text in a :func:`response_body`."""
    choice = whole["choices"][0]
    return str(choice["message"]["content"] if chat else choice["text"])


def reply_headers(r: Reply) -> dict[str, str]:
    """``x-edge-moe-experts`` (``name=weight,...``) and ``x-edge-moe-energy-j``."""
    return {"x-edge-moe-experts": ",".join(f"{u.name}={u.weight:.4f}" for u in r.experts),
            "x-edge-moe-energy-j": f"{r.energy_j:.6g}"}


def models_body(experts: Sequence[str]) -> dict[str, Any]:
    """``/v1/models``: the ensemble first, then each expert."""
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "edge-moe"} for m in (ENSEMBLE, *experts)]
    return {"object": "list", "data": data}


# ---------------------------------------------------------------- streaming (SSE)


def chunk_body(q: Query, model: str, chat: bool, created: int, delta: str | None,
               finish: str | None = None, role: bool = False, **extra: Any) -> dict[str, Any]:
    """One chunk of a stream: ``chat.completion.chunk`` (a ``delta``, with the role first)
    or ``text_completion`` (a ``text``)."""
    if chat:
        d: dict[str, Any] = {"role": "assistant"} if role else {}
        if delta:
            d["content"] = delta
        choice: dict[str, Any] = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
    else:
        choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
    return {"id": f"edge-moe-{q.id}", "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created, "model": model, "choices": [choice], **extra}


def usage_chunk(q: Query, model: str, chat: bool, created: int, usage: dict[str, Any]) -> dict[str, Any]:
    """The last chunk with ``stream_options.include_usage``: no choices, the usage."""
    return {"id": f"edge-moe-{q.id}", "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created, "model": model, "choices": [], "usage": usage}


def wants_usage(body: dict[str, Any]) -> bool:
    """``stream_options.include_usage``."""
    opts = body.get("stream_options") or {}
    return isinstance(opts, dict) and bool(opts.get("include_usage"))


def sse(obj: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(obj)}\n\n"
