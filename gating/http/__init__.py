"""An OpenAI-compatible HTTP front for the coordinator (Starlette on uvicorn).

It is a client of the coordinator's ZeroMQ frontend, nothing more: every request becomes one
QUERY (:mod:`edge_moe.wire`) and its REPLY or ERROR becomes the response, so there is one
routing path. One ``zmq.asyncio`` DEALER carries every request; answers are matched by id.

Endpoints:

- ``GET /v1/models``: the ensemble (model id ``edge-moe``) and each expert as its own id; a
  request naming an expert is pinned to it (QUERY ``expert``).
- ``POST /v1/chat/completions`` and ``POST /v1/completions``: greedy decoding on the nodes, so
  ``temperature`` must be absent or 0, ``top_p`` absent or 1, ``n`` absent or 1, and ``stop``
  is refused (400 naming the parameter): never silently ignored.
- ``stream: true``: server-sent events in OpenAI's chunk format, ending with ``[DONE]``
  (``stream_options.include_usage`` adds the usage chunk). When one expert answers a
  generation, its text streams from the node as it is decoded (QUERY ``stream``, PARTIAL
  messages); with k > 1, or for an options query, the text comes in one chunk once the REPLY
  is in (a mixture or vote needs every answer). The last chunk carries ``edge_moe``.
  ``max_tokens`` / ``max_completion_tokens`` become ``max_new_tokens`` (default 32).
- Budgets and routing per request: the body extension ``edge_moe: {energy_j, latency_ms,
  category, top_k, tau, options, mode, deadline_ms}`` (what the openai client sends with
  ``extra_body``) and the headers ``x-edge-moe-energy-j``, ``x-edge-moe-latency-ms``,
  ``x-edge-moe-category`` (the body wins). With ``options`` the message content is the chosen
  option's text, and ``edge_moe.answer_index`` / ``edge_moe.probabilities`` come back.
- Every response carries the decision: an ``edge_moe`` object (experts with weight, status,
  ms, J and source; the plan; energy_j and energy_source; degraded and reasons; stage_ms) and
  the headers ``x-edge-moe-experts`` (``name=weight,...``) and ``x-edge-moe-energy-j``.
  ``usage.completion_tokens`` counts the answering experts' tokens; ``prompt_tokens`` is 0
  (each expert has its own tokenizer; the front counts none).
- Errors in OpenAI's shape ``{"error": {"message", "type", "code", "param"}}``:
  ``bad_request`` / ``protocol`` → 400; an infeasible budget → 422 with ``min_energy_j`` /
  ``min_latency_ms``; ``no_experts`` / ``overloaded`` → 503 with ``Retry-After``;
  ``deadline`` → 504; ``expert_error`` → 502; a missing or wrong key → 401; ``internal`` → 500.
- ``GET /healthz`` (the process is up), ``GET /readyz`` (the coordinator answers and at least
  one expert is live, else 503; it asks with a zero budget, which the coordinator answers
  from its plan without running anything), ``GET /metrics`` (prometheus-client text format).

Metrics (:mod:`gating.coordinator.metrics`): beside the coordinator the front serves the coordinator's
own, which count every answer (ZeroMQ clients too); on its own, what passes through it.

Security: API keys (``Authorization: Bearer <key>``, one key per line in a file); with keys
every path but ``/healthz`` needs one. TLS through uvicorn's certificate options
(``--ssl-certfile`` / ``--ssl-keyfile``). Binding a non-loopback address without keys and TLS
is refused unless ``--insecure``, as binding ZeroMQ off loopback without CURVE is. The metrics count what passes through this front (ZeroMQ clients of the
same coordinator are not counted here).

Run it::

    python -m gating.http --endpoint tcp://127.0.0.1:5555 --listen 127.0.0.1:8000 \\
        [--config fleet.yaml] [--api-keys keys.txt]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import math
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from edge_moe.errors import ConfigError, ProtocolError
from edge_moe.security import connect_dealer
from edge_moe.wire import MODES, Error, ErrorCode, Partial, Query, Reply, WireBudget, decode, encode
from gating.coordinator.metrics import ServingMetrics

ENSEMBLE = "edge-moe"
DEFAULT_MAX_TOKENS = 32
ACCEPTED = {"model", "messages", "prompt", "max_tokens", "max_completion_tokens", "n", "temperature",
            "top_p", "stream", "stream_options", "stop", "user", "edge_moe"}
EXTENSION = {"energy_j", "latency_ms", "category", "top_k", "tau", "options", "mode", "deadline_ms"}
STATUS_OF = {ErrorCode.BAD_REQUEST: 400, ErrorCode.PROTOCOL: 400, ErrorCode.NO_EXPERTS: 503,
             ErrorCode.OVERLOADED: 503, ErrorCode.DEADLINE: 504, ErrorCode.EXPERT_ERROR: 502,
             ErrorCode.INTERNAL: 500}


class _ApiError(Exception):
    """An error response in OpenAI's shape."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 type_: str = "invalid_request_error", headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.type, self.headers, self.extra = type_, headers or {}, extra or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code,
                          "param": self.param, **self.extra}}


class CoordinatorLink:
    """One DEALER to the coordinator's frontend, shared by every request (answers by id)."""

    def __init__(self, endpoint: str, curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.endpoint = endpoint
        self.curve = curve
        self._sock: zmq.asyncio.Socket | None = None
        self._ctx: zmq.asyncio.Context | None = None
        self._waiting: dict[str, asyncio.Queue[Reply | Error | Partial]] = {}
        self._reader: asyncio.Task[None] | None = None

    def _open(self) -> zmq.asyncio.Socket:
        if self._sock is None:
            self._ctx = zmq.asyncio.Context()
            self._sock = connect_dealer(self._ctx, self.endpoint, self.curve)
            self._reader = asyncio.get_running_loop().create_task(self._read())
        return self._sock

    async def _read(self) -> None:
        assert self._sock is not None
        while True:
            frames = await self._sock.recv_multipart()
            body = frames[1:] if frames and frames[0] == b"" else frames
            try:
                msg = decode(body)
            except ProtocolError:
                continue
            box = self._waiting.get(getattr(msg, "id", ""))
            if box is not None and isinstance(msg, Reply | Error | Partial):
                box.put_nowait(msg)

    async def ask(self, q: Query, timeout_s: float) -> Reply | Error:
        """Send ``q`` and wait for its answer; raises ``TimeoutError`` after ``timeout_s``."""
        async for msg in self.stream(q, timeout_s):
            if isinstance(msg, Reply | Error):
                return msg
        raise TimeoutError  # not reached: stream ends with an answer or raises

    async def stream(self, q: Query, timeout_s: float) -> Any:
        """Send ``q``; yield its PARTIALs, then its REPLY or ERROR (last). ``TimeoutError``
        when nothing arrives for ``timeout_s``."""
        sock = self._open()
        box: asyncio.Queue[Reply | Error | Partial] = asyncio.Queue()
        self._waiting[q.id] = box
        try:
            await sock.send_multipart([b"", *encode(q)])
            while True:
                msg = await asyncio.wait_for(box.get(), timeout_s)
                yield msg
                if isinstance(msg, Reply | Error):
                    return
        finally:
            self._waiting.pop(q.id, None)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._sock is not None:
            self._sock.close(linger=0)
        if self._ctx is not None:
            self._ctx.term()


# ---------------------------------------------------------------- request → QUERY


def _number(v: Any, name: str, *, integer: bool = False) -> float | int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or (integer and not isinstance(v, int)):
        raise _ApiError(400, f"{name}={v!r} must be {'an integer' if integer else 'a number'}",
                       "invalid_value", name)
    return v


def _header_number(headers: Any, name: str) -> float | None:
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


def to_query(body: Any, headers: Any, chat: bool, experts: Sequence[str]) -> Query:
    """The QUERY for an OpenAI request body; :class:`_ApiError` (400) names what is wrong."""
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
    ext = body.get("edge_moe") or {}
    if not isinstance(ext, dict):
        raise _ApiError(400, "edge_moe must be an object", "invalid_value", "edge_moe")
    bad = sorted(set(ext) - EXTENSION)
    if bad:
        raise _ApiError(400, f"unknown edge_moe field {bad[0]!r} (known: {', '.join(sorted(EXTENSION))})",
                       "invalid_value", f"edge_moe.{bad[0]}")
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
    return Query(id=uuid.uuid4().hex, prompt=_prompt_of(body, chat),
                 options=tuple(options) if options is not None else None,
                 category=category if isinstance(category, str) else None, budget=budget,
                 max_new_tokens=int(max_new), top_k=_number(ext.get("top_k"), "edge_moe.top_k", integer=True),  # type: ignore[arg-type]
                 tau=_number(ext.get("tau"), "edge_moe.tau"),  # type: ignore[arg-type]
                 deadline_ms=_number(ext.get("deadline_ms"), "edge_moe.deadline_ms"),  # type: ignore[arg-type]
                 mode=mode, expert=None if model == ENSEMBLE else model, stream=bool(body.get("stream")))


# ---------------------------------------------------------------- REPLY → response


def _finite(x: float | None) -> float | str | None:
    if x is None or math.isfinite(x):
        return x
    return "inf" if x > 0 else ("-inf" if x < 0 else "nan")


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
                 "budget_energy_j": _finite(p.budget_energy_j), "budget_latency_ms": _finite(p.budget_latency_ms),
                 "cached": p.cached, "min_energy_j": p.min_energy_j, "min_latency_ms": p.min_latency_ms},
        "energy_j": r.energy_j, "energy_source": r.energy_source, "degraded": r.degraded,
        "reasons": list(r.reasons), "stage_ms": dict(r.stage_ms), "answer_index": r.answer_index,
        "probabilities": None if r.probabilities is None else list(r.probabilities),
    }


def error_of(msg: Error) -> _ApiError:
    status = STATUS_OF.get(msg.code, 500)  # type: ignore[call-overload]
    headers = {}
    if msg.code in (ErrorCode.NO_EXPERTS, ErrorCode.OVERLOADED):
        retry = msg.retry_after_ms if msg.retry_after_ms is not None else 1000.0
        headers["Retry-After"] = str(max(1, math.ceil(retry / 1e3)))
    type_ = "invalid_request_error" if status < 500 else "server_error"
    extra = {"retry_after_ms": msg.retry_after_ms} if msg.retry_after_ms is not None else {}
    return _ApiError(status, msg.message, msg.code, type_=type_, headers=headers, extra=extra)


def response_body(q: Query, r: Reply, chat: bool, model: str) -> dict[str, Any]:
    if r.plan.status == "infeasible":
        raise _ApiError(422, r.reasons[0] if r.reasons else r.plan.message, "budget_infeasible",
                       "edge_moe", extra={"min_energy_j": r.plan.min_energy_j,
                                          "min_latency_ms": r.plan.min_latency_ms,
                                          "edge_moe": decision(r)})
    if q.options is not None:
        text = q.options[r.answer_index] if r.answer_index is not None else ""
    else:
        text = r.text or ""
    tokens = sum(u.n_tokens for u in r.experts if u.status == "ok")
    finish = "length" if q.options is None and tokens >= q.max_new_tokens * max(
        1, sum(u.status == "ok" for u in r.experts)) else "stop"
    created = int(time.time())
    usage = {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens}
    if chat:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": finish, "logprobs": None}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        obj = "text_completion"
    return {"id": f"edge-moe-{q.id}", "object": obj, "created": created, "model": model,
            "choices": [choice], "usage": usage, "edge_moe": decision(r)}


# ---------------------------------------------------------------- the app


def load_api_keys(path: str | os.PathLike[str] | None) -> list[str] | None:
    """Keys, one per line (blank lines and ``#`` comments skipped); None without a file."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: API key file not found")
    keys = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not keys:
        raise ConfigError(f"{p}: no API key in the file")
    return keys


def make_app(link: CoordinatorLink, experts: Sequence[str] = (), api_keys: Sequence[str] | None = None,
             timeout_s: float = 60.0, metrics: ServingMetrics | None = None) -> Any:
    """The Starlette app over ``link``.

    ``metrics``: the coordinator's (the front runs beside it, which counts every answer,
    these included); None: the front counts what passes through it, in metrics of its own.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    own = metrics is None
    metrics = metrics if metrics is not None else ServingMetrics()
    keys = [k.encode() for k in api_keys] if api_keys else None

    def fail(e: _ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    def check_key(request: Request) -> None:
        if keys is None:
            return
        auth = request.headers.get("authorization", "")
        token = auth[7:].encode() if auth.lower().startswith("bearer ") else b""
        if not any(hmac.compare_digest(token, k) for k in keys):
            raise _ApiError(401, "missing or wrong API key (Authorization: Bearer <key>)",
                           "invalid_api_key", type_="authentication_error")

    def count(msg: Reply | Error, mode: str, t0: float) -> None:
        if own:
            metrics.answered(msg, mode, time.perf_counter() - t0)

    async def completions(request: Request, chat: bool) -> Response:
        t0 = time.perf_counter()
        if own:
            metrics.inflight.inc()
        try:
            check_key(request)
            try:
                body = json.loads(await request.body())
            except json.JSONDecodeError as exc:
                raise _ApiError(400, f"the body is not JSON: {exc}", "invalid_json") from None
            q = to_query(body, request.headers, chat, experts)
            mode = "options" if q.options is not None else "generation"
            deadline_s = (q.deadline_ms or 0) / 1e3
            wait_s = max(timeout_s, deadline_s + 5.0)
            if q.stream:
                return await streamed(q, body, chat, wait_s, lambda m: count(m, mode, t0))
            try:
                msg = await link.ask(q, wait_s)
            except TimeoutError:
                raise _ApiError(504, "the coordinator did not answer in time", "deadline",
                               type_="server_error") from None
            count(msg, mode, t0)
            if isinstance(msg, Error):
                raise error_of(msg)
            out = response_body(q, msg, chat, body.get("model", ENSEMBLE))
            headers = {"x-edge-moe-experts": ",".join(f"{u.name}={u.weight:.4f}" for u in msg.experts),
                       "x-edge-moe-energy-j": f"{msg.energy_j:.6g}"}
            return JSONResponse(out, headers=headers)
        except _ApiError as e:
            return fail(e)
        finally:
            if own:
                metrics.inflight.dec()

    async def streamed(q: Query, body: dict[str, Any], chat: bool, wait_s: float,
                       counted: Any) -> Response:
        """Server-sent events in OpenAI's chunk format: the role first, each PARTIAL as it
        arrives, the rest of the final text, a last chunk with finish_reason and the decision
        (``edge_moe``), the usage chunk when ``stream_options.include_usage``, ``[DONE]``. An
        ERROR (or an infeasible budget) before anything streamed is a plain error response."""
        model = body.get("model", ENSEMBLE)
        opts = body.get("stream_options") or {}
        usage_too = isinstance(opts, dict) and bool(opts.get("include_usage"))
        messages = link.stream(q, wait_s)
        try:
            first = await messages.__anext__()
        except TimeoutError:
            raise _ApiError(504, "the coordinator did not answer in time", "deadline",
                            type_="server_error") from None
        if isinstance(first, Reply | Error):
            counted(first)
        if isinstance(first, Error):
            await messages.aclose()
            raise error_of(first)
        if isinstance(first, Reply) and first.plan.status == "infeasible":
            await messages.aclose()
            response_body(q, first, chat, model)  # raises the 422
        obj = "chat.completion.chunk" if chat else "text_completion"
        created = int(time.time())

        def chunk(delta: str | None, finish: str | None = None, role: bool = False,
                  **extra: Any) -> str:
            if chat:
                d: dict[str, Any] = {"role": "assistant"} if role else {}
                if delta:
                    d["content"] = delta
                choice: dict[str, Any] = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
            out = {"id": f"edge-moe-{q.id}", "object": obj, "created": created, "model": model,
                   "choices": [choice], **extra}
            return f"data: {json.dumps(out)}\n\n"

        async def events() -> Any:
            sent = ""
            msg: Reply | Error | Partial = first
            yield chunk(None, role=True)
            while True:
                if isinstance(msg, Partial):
                    sent += msg.text
                    yield chunk(msg.text)
                elif isinstance(msg, Error):
                    if msg is not first:
                        counted(msg)
                    err = error_of(msg)
                    yield f"data: {json.dumps(err.body())}\n\n"
                    break
                else:
                    if msg is not first:
                        counted(msg)
                    whole = response_body(q, msg, chat, model)
                    text = (whole["choices"][0]["message"]["content"] if chat
                            else whole["choices"][0]["text"])
                    rest = text[len(sent):] if text.startswith(sent) else ""
                    if rest:
                        yield chunk(rest)
                    yield chunk(None, whole["choices"][0]["finish_reason"], edge_moe=whole["edge_moe"])
                    if usage_too:
                        out = {"id": f"edge-moe-{q.id}", "object": obj, "created": created,
                               "model": model, "choices": [], "usage": whole["usage"]}
                        yield f"data: {json.dumps(out)}\n\n"
                    break
                try:
                    msg = await messages.__anext__()
                except (StopAsyncIteration, TimeoutError):
                    yield f"data: {json.dumps(_ApiError(504, 'the coordinator stopped answering', 'deadline').body())}\n\n"
                    break
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})

    async def chat_route(request: Request) -> Response:
        return await completions(request, chat=True)

    async def completion_route(request: Request) -> Response:
        return await completions(request, chat=False)

    async def models(request: Request) -> Response:
        try:
            check_key(request)
        except _ApiError as e:
            return fail(e)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "edge-moe"} for m in (ENSEMBLE, *experts)]
        return JSONResponse({"object": "list", "data": data})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            check_key(request)
        except _ApiError as e:
            return fail(e)
        probe = Query(id=uuid.uuid4().hex, prompt="readyz", options=("a",),
                      budget=WireBudget(0.0, 0.0), deadline_ms=1000.0)
        try:
            msg = await link.ask(probe, 3.0)
        except TimeoutError:
            return JSONResponse({"ready": False, "why": "the coordinator did not answer"}, status_code=503)
        if isinstance(msg, Error):
            return JSONResponse({"ready": False, "why": f"{msg.code}: {msg.message}"}, status_code=503)
        if own:
            metrics.live.set(len(msg.plan.live))
        return JSONResponse({"ready": True, "live_experts": list(msg.plan.live)})

    async def metrics_route(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        try:
            check_key(request)
        except _ApiError as e:
            return fail(e)
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        link.close()

    routes = [Route("/v1/chat/completions", chat_route, methods=["POST"]),
              Route("/v1/completions", completion_route, methods=["POST"]),
              Route("/v1/models", models, methods=["GET"]),
              Route("/healthz", healthz, methods=["GET"]),
              Route("/readyz", readyz, methods=["GET"]),
              Route("/metrics", metrics_route, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.metrics = metrics
    return app


def _bind(listen: str) -> Any:
    """A listening TCP socket for ``host:port`` (port 0: a free one)."""
    import socket

    host, _, port_s = listen.rpartition(":")
    host = host.strip("[]")
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets, and without it
    # Nagle holds a response's second segment for the client's delayed ACK (~40 ms a reply)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                         socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port_s)))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot serve HTTP on {listen}: {exc}") from exc
    return sock


class HttpThread:
    """The front on a daemon thread (uvicorn in its own event loop), for running beside the
    coordinator in one process (``edge-moe deploy`` with ``coordinator.http``).

    Raises:
        ConfigError: the address cannot be bound, or the key file is missing or empty.
    """

    def __init__(self, endpoint: str, listen: str, experts: Sequence[str] = (),
                 api_keys_file: str | None = None, metrics: ServingMetrics | None = None) -> None:
        import threading

        import uvicorn

        keys = load_api_keys(api_keys_file)
        sock = _bind(listen)
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        app = make_app(CoordinatorLink(endpoint), experts, keys, metrics=metrics)
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve(sockets=[sock])),
                                        name="edge-moe-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gating.http", description=__doc__.split("\n")[0])
    ap.add_argument("--endpoint", required=True, help="the coordinator's frontend, e.g. tcp://127.0.0.1:5555")
    ap.add_argument("--listen", default="127.0.0.1:8000", help="host:port to serve HTTP on (port 0: a free one)")
    ap.add_argument("--config", help="fleet YAML: its experts are listed by /v1/models and can be pinned")
    ap.add_argument("--api-keys", help="file of API keys, one per line (Authorization: Bearer <key>)")
    ap.add_argument("--insecure", action="store_true",
                    help="allow a non-loopback address without API keys and TLS")
    ap.add_argument("--ssl-certfile", help="TLS certificate (PEM): serve https")
    ap.add_argument("--ssl-keyfile", help="TLS private key (PEM) for --ssl-certfile")
    ap.add_argument("--timeout-s", type=float, default=60.0, help="give up on the coordinator after this")
    args = ap.parse_args(argv)
    import uvicorn

    from edge_moe.config import load_fleet
    from edge_moe.errors import EdgeMoEError

    try:
        host, _, port_s = args.listen.rpartition(":")
        int(port_s)  # ValueError: not host:port
        keys = load_api_keys(args.api_keys)
        tls = bool(args.ssl_certfile and args.ssl_keyfile)
        if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
            raise ConfigError("give both --ssl-certfile and --ssl-keyfile, or neither")
        if (keys is None or not tls) and not args.insecure and not _is_loopback(host):
            raise ConfigError(f"serving {args.listen} off loopback needs API keys and TLS "
                              "(--api-keys, --ssl-certfile, --ssl-keyfile), or --insecure")
        experts = [e.name for e in load_fleet(args.config).experts] if args.config else []
    except (EdgeMoEError, ValueError) as exc:
        print(f"{type(exc).__name__}: {exc}", flush=True)
        return 1
    try:
        sock = _bind(args.listen)
    except ConfigError as exc:
        print(f"ConfigError: {exc}", flush=True)
        return 1
    app = make_app(CoordinatorLink(args.endpoint), experts, keys, args.timeout_s)
    scheme = "https" if tls else "http"
    print(f"http front {scheme}://{host}:{sock.getsockname()[1]} -> {args.endpoint}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile))
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
