"""The front's endpoints: one flat function per route, and one auth middleware.

Each route reads its request, calls :mod:`gating.http.protocol` for the shapes and the
:class:`~gating.http.link.CoordinatorLink` for the answer, and writes the response; what a
route needs (the link, the experts, the wait, the metrics) is the app's :class:`Front`
(``app.state.front``). :class:`ApiKeyAuth` checks ``Authorization: Bearer <key>`` once, for
every path but ``/healthz``, before any route runs.

Metrics: with ``Front.own`` the front counts what passes through it (requests in flight,
answers by outcome, live experts seen by ``/readyz``); beside the coordinator it serves the
coordinator's metrics, which already count every answer, and counts nothing itself.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from edge_moe.wire import Error, Partial, Query, Reply
from gating.coordinator.metrics import ServingMetrics
from gating.http.link import CoordinatorLink
from gating.http.protocol import (
    DONE,
    ENSEMBLE,
    _ApiError,
    chunk_body,
    error_of,
    infeasible,
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

READYZ_WAIT_S = 3.0


@dataclass(frozen=True)
class Front:
    """What the routes share: the link, the experts (model ids), how long to wait for the
    coordinator, the metrics, and whether they are the front's own (it counts) or the
    coordinator's (it already counts)."""

    link: CoordinatorLink
    experts: tuple[str, ...]
    timeout_s: float
    metrics: ServingMetrics
    own: bool

    def count(self, msg: Reply | Error, mode: str, t0: float) -> None:
        if self.own:
            self.metrics.answered(msg, mode, time.perf_counter() - t0)


def _front(request: Request) -> Front:
    front: Front = request.app.state.front
    return front


def _fail(e: _ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


class ApiKeyAuth:
    """ASGI middleware: every HTTP request but ``/healthz`` needs ``Authorization: Bearer
    <key>`` with one of ``keys`` (compared in constant time), else a 401 in OpenAI's shape."""

    OPEN = frozenset({"/healthz"})

    def __init__(self, app: ASGIApp, keys: Sequence[str]) -> None:
        self.app = app
        self._keys = [k.encode() for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.OPEN or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        await _fail(unauthorized())(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        auth = Headers(scope=scope).get("authorization", "")
        token = auth[7:].encode() if auth.lower().startswith("bearer ") else b""
        return any(hmac.compare_digest(token, k) for k in self._keys)


# ---------------------------------------------------------------- completions


async def chat_completions(request: Request) -> Response:
    """``POST /v1/chat/completions``."""
    return await _completions(request, chat=True)


async def completions(request: Request) -> Response:
    """``POST /v1/completions``."""
    return await _completions(request, chat=False)


async def _completions(request: Request, chat: bool) -> Response:
    front = _front(request)
    t0 = time.perf_counter()
    if front.own:
        front.metrics.inflight.inc()
    try:
        body = parse_body(await request.body())
        q = to_query(body, request.headers, chat, front.experts)
        mode = "options" if q.options is not None else "generation"
        wait = wait_s(q, front.timeout_s)
        if q.stream:
            return await _streamed(front, q, body, chat, wait, mode, t0)
        try:
            msg = await front.link.ask(q, wait)
        except TimeoutError:
            raise no_answer() from None
        front.count(msg, mode, t0)
        if isinstance(msg, Error):
            raise error_of(msg)
        out = response_body(q, msg, chat, body.get("model", ENSEMBLE))
        return JSONResponse(out, headers=reply_headers(msg))
    except _ApiError as e:
        return _fail(e)
    finally:
        if front.own:
            front.metrics.inflight.dec()


async def _streamed(front: Front, q: Query, body: dict[str, object], chat: bool, wait: float,
                    mode: str, t0: float) -> Response:
    """Server-sent events (:func:`_events`). An ERROR (or an infeasible budget) before anything
    streamed is a plain error response (raised as :class:`_ApiError`)."""
    model = str(body.get("model", ENSEMBLE))
    messages = front.link.stream(q, wait)
    try:
        first = await messages.__anext__()
    except TimeoutError:
        raise no_answer() from None
    if isinstance(first, Reply | Error):
        front.count(first, mode, t0)
    if isinstance(first, Error):
        await messages.aclose()
        raise error_of(first)
    if isinstance(first, Reply) and first.plan.status == "infeasible":
        await messages.aclose()
        raise infeasible(first)
    events = _events(front, q, chat, model, wants_usage(body), first, messages, mode, t0)
    return StreamingResponse(events, media_type="text/event-stream", headers={"cache-control": "no-cache"})


async def _events(front: Front, q: Query, chat: bool, model: str, usage_too: bool,
                  first: Reply | Error | Partial, messages: AsyncIterator[Reply | Error | Partial],
                  mode: str, t0: float) -> AsyncIterator[str]:
    """OpenAI's chunk format: the role first, each PARTIAL as it arrives, the rest of the final
    text, a last chunk with finish_reason and the decision (``edge_moe``), the usage chunk when
    ``stream_options.include_usage``, ``[DONE]``. A later ERROR or silence is an error event."""
    created = int(time.time())
    sent = ""
    msg = first
    yield sse(chunk_body(q, model, chat, created, None, role=True))
    while True:
        if isinstance(msg, Partial):
            sent += msg.text
            yield sse(chunk_body(q, model, chat, created, msg.text))
        elif isinstance(msg, Error):
            if msg is not first:
                front.count(msg, mode, t0)
            yield sse(error_of(msg).body())
            break
        else:
            if msg is not first:
                front.count(msg, mode, t0)
            whole = response_body(q, msg, chat, model)
            text = response_text(whole, chat)
            rest = text[len(sent):] if text.startswith(sent) else ""
            if rest:
                yield sse(chunk_body(q, model, chat, created, rest))
            yield sse(chunk_body(q, model, chat, created, None, whole["choices"][0]["finish_reason"],
                                 edge_moe=whole["edge_moe"]))
            if usage_too:
                yield sse(usage_chunk(q, model, chat, created, whole["usage"]))
            break
        try:
            msg = await messages.__anext__()
        except (StopAsyncIteration, TimeoutError):
            yield sse(no_answer("the coordinator stopped answering", "invalid_request_error").body())
            break
    yield DONE


# ---------------------------------------------------------------- the rest


async def models(request: Request) -> Response:
    """``GET /v1/models``: the ensemble and each expert."""
    return JSONResponse(models_body(_front(request).experts))


async def healthz(request: Request) -> Response:
    """``GET /healthz``: the process is up (open without a key)."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """``GET /readyz``: 200 when the coordinator answers a zero-budget probe, else 503."""
    front = _front(request)
    try:
        msg = await front.link.ask(readiness_probe(), READYZ_WAIT_S)
    except TimeoutError:
        return JSONResponse({"ready": False, "why": "the coordinator did not answer"}, status_code=503)
    if isinstance(msg, Error):
        return JSONResponse({"ready": False, "why": f"{msg.code}: {msg.message}"}, status_code=503)
    if front.own:
        front.metrics.live.set(len(msg.plan.live))
    return JSONResponse({"ready": True, "live_experts": list(msg.plan.live)})


async def metrics(request: Request) -> Response:
    """``GET /metrics``: prometheus-client text format."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return PlainTextResponse(generate_latest(_front(request).metrics.registry),
                             media_type=CONTENT_TYPE_LATEST)


ROUTES = [Route("/v1/chat/completions", chat_completions, methods=["POST"]),
          Route("/v1/completions", completions, methods=["POST"]),
          Route("/v1/models", models, methods=["GET"]),
          Route("/healthz", healthz, methods=["GET"]),
          Route("/readyz", readyz, methods=["GET"]),
          Route("/metrics", metrics, methods=["GET"])]
