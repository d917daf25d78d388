"""The OpenAI API's response side, apart from any server: REPLYs → the (chat) completion
object, server-sent-event chunks, log-probabilities in OpenAI's two formats, and the 422 of
an infeasible budget.

Pure: no sockets, no Starlette, no clock beyond the ``created`` stamps OpenAI's objects carry.
A response answers the QUERYs of one request (:func:`gating.http.protocol.to_queries`), one
choice each (``choices[i]`` answers QUERY i); every response carries the decision behind
choice 0 as ``edge_moe`` (and, with ``n`` > 1, each choice its own).

Log-probabilities (asked with chat ``logprobs: true`` / completions ``logprobs: k``) are the
REPLY's ``token_logprobs``, the answering expert's, before the sampling transforms:

- chat: ``choices[i].logprobs = {"content": [{"token", "logprob", "bytes", "top_logprobs":
  [{"token", "logprob", "bytes"}]}], "refusal": null}``;
- completions: ``choices[i].logprobs = {"tokens", "token_logprobs", "top_logprobs" (a
  ``{token: logprob}`` per token, null with ``logprobs: 0``), "text_offset"}`` (offsets in the
  generated text, from 0, as vLLM gives them);
- a log-probability of -inf is written -9999.0 (OpenAI's value), so the JSON stays valid.

Streamed, a PARTIAL carries text only, so a choice's log-probabilities all come in its
finishing chunk (the one with its ``finish_reason``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

from edge_moe.wire import Query, Reply, TokenLogprob, json_float
from gating.http.protocol import ENSEMBLE, _ApiError

DONE = "data: [DONE]\n\n"
FLOOR_LOGPROB = -9999.0  # OpenAI's stand-in for log 0


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


def infeasible(r: Reply) -> _ApiError:
    """The 422 for a REPLY whose plan is infeasible: the floor of the budget and the decision."""
    return _ApiError(422, r.reasons[0] if r.reasons else r.plan.message, "budget_infeasible",
                     "edge_moe", extra={"min_energy_j": r.plan.min_energy_j,
                                        "min_latency_ms": r.plan.min_latency_ms,
                                        "edge_moe": decision(r)})


# ---------------------------------------------------------------- log-probabilities


def _lp(x: float) -> float:
    return x if math.isfinite(x) else FLOOR_LOGPROB


def chat_logprobs(tokens: Sequence[TokenLogprob], top: int) -> dict[str, Any]:
    """Chat's ``logprobs`` object: each token with its bytes and ``top`` alternatives."""
    def entry(token: str, lp: float) -> dict[str, Any]:
        return {"token": token, "logprob": _lp(lp), "bytes": list(token.encode())}

    return {"content": [{**entry(t.token, t.logprob),
                         "top_logprobs": [entry(a, b) for a, b in zip(t.top_tokens[:top], t.top_logprobs[:top],
                                                                      strict=False)]}
                        for t in tokens], "refusal": None}


def completion_logprobs(tokens: Sequence[TokenLogprob], top: int) -> dict[str, Any]:
    """Completions' ``logprobs`` object (parallel lists; ``top_logprobs`` null when ``top`` is 0)."""
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t.token)
    return {"tokens": [t.token for t in tokens], "token_logprobs": [_lp(t.logprob) for t in tokens],
            "top_logprobs": [{a: _lp(b) for a, b in zip(t.top_tokens[:top], t.top_logprobs[:top], strict=False)}
                             for t in tokens] if top else None,
            "text_offset": offsets}


def logprobs_of(q: Query, r: Reply, chat: bool) -> dict[str, Any] | None:
    """The choice's ``logprobs`` when ``q`` asked for them and the REPLY has them, else None."""
    s = q.sampling
    if s is None or not s.logprobs or r.token_logprobs is None:
        return None
    return (chat_logprobs if chat else completion_logprobs)(r.token_logprobs, s.top_logprobs)


# ---------------------------------------------------------------- REPLY → response


def _text(q: Query, r: Reply) -> str:
    if q.options is not None:
        return q.options[r.answer_index] if r.answer_index is not None else ""
    return r.text or ""


def _tokens(r: Reply) -> int:
    return sum(u.n_tokens for u in r.experts if u.status == "ok")


def finish_reason(q: Query, r: Reply) -> str:
    """The REPLY's ``finish_reason``; from a coordinator that does not say: "length" when a
    generation's answering experts used every token, else "stop"."""
    if r.finish_reason is not None:
        return r.finish_reason
    answered = max(1, sum(u.status == "ok" for u in r.experts))
    return "length" if q.options is None and _tokens(r) >= q.max_new_tokens * answered else "stop"


def choice_body(q: Query, r: Reply, chat: bool, index: int = 0) -> dict[str, Any]:
    """One entry of ``choices``."""
    out: dict[str, Any] = {"index": index}
    if chat:
        out["message"] = {"role": "assistant", "content": _text(q, r)}
    else:
        out["text"] = _text(q, r)
    return {**out, "finish_reason": finish_reason(q, r), "logprobs": logprobs_of(q, r, chat)}


def usage_of(replies: Sequence[Reply]) -> dict[str, int]:
    """The usage of a response: completion tokens summed over the choices (prompts uncounted)."""
    tokens = sum(_tokens(r) for r in replies)
    return {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens}


def response_body(qs: Sequence[Query], rs: Sequence[Reply], chat: bool, model: str) -> dict[str, Any]:
    """The (chat) completion object answering ``qs`` with their REPLYs ``rs`` (in order);
    raises the 422 when a plan is infeasible."""
    for r in rs:
        if r.plan.status == "infeasible":
            raise infeasible(r)
    choices = [choice_body(q, r, chat, i) for i, (q, r) in enumerate(zip(qs, rs, strict=True))]
    if len(rs) > 1:
        for c, r in zip(choices, rs, strict=True):
            c["edge_moe"] = decision(r)
    return {"id": f"edge-moe-{qs[0].id}", "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": choices, "usage": usage_of(rs),
            "edge_moe": decision(rs[0])}


def response_text(choice: dict[str, Any], chat: bool) -> str:
    """The text of one :func:`choice_body`."""
    return str(choice["message"]["content"] if chat else choice["text"])


def reply_headers(rs: Sequence[Reply]) -> dict[str, str]:
    """``x-edge-moe-experts`` (choice 0's, ``name=weight,...``) and ``x-edge-moe-energy-j``
    (summed over the choices)."""
    return {"x-edge-moe-experts": ",".join(f"{u.name}={u.weight:.4f}" for u in rs[0].experts),
            "x-edge-moe-energy-j": f"{sum(r.energy_j for r in rs):.6g}"}


def models_body(experts: Sequence[str]) -> dict[str, Any]:
    """``/v1/models``: the ensemble first, then each expert."""
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "edge-moe"} for m in (ENSEMBLE, *experts)]
    return {"object": "list", "data": data}


# ---------------------------------------------------------------- streaming (SSE)


def chunk_body(rid: str, model: str, chat: bool, created: int, delta: str | None,
               finish: str | None = None, role: bool = False, index: int = 0,
               logprobs: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """One chunk of a stream (``rid``: the response id): ``chat.completion.chunk`` (a
    ``delta``, with the role first) or ``text_completion`` (a ``text``), for choice ``index``."""
    if chat:
        d: dict[str, Any] = {"role": "assistant"} if role else {}
        if delta:
            d["content"] = delta
        choice: dict[str, Any] = {"index": index, "delta": d, "finish_reason": finish, "logprobs": logprobs}
    else:
        choice = {"index": index, "text": delta or "", "finish_reason": finish, "logprobs": logprobs}
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created, "model": model, "choices": [choice], **extra}


def usage_chunk(rid: str, model: str, chat: bool, created: int, usage: dict[str, Any]) -> dict[str, Any]:
    """The last chunk with ``stream_options.include_usage``: no choices, the usage."""
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created, "model": model, "choices": [], "usage": usage}


def sse(obj: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(obj)}\n\n"
