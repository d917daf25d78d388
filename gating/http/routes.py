"""The front's endpoints: one flat function per route, and one auth middleware.

Each route reads its request, calls :mod:`gating.http.protocol` and
:mod:`gating.http.responses` for the shapes and the :class:`~gating.http.link.CoordinatorLink`
for the answers, and writes the response; what a
route needs (the link, the experts, the wait, the metrics) is the app's :class:`Front`
(``app.state.front``). :class:`ApiKeyAuth` checks ``Authorization: Bearer <key>`` once, for
every path but ``/healthz``, before any route runs.

Metrics: with ``Front.own`` the front counts what passes through it (requests in flight,
answers by outcome, live experts seen by ``/readyz``); beside the coordinator it serves the
coordinator's metrics, which already count every answer, and counts nothing itself.

Disconnects: a client that goes before its answer cancels its queries (:meth:`Front.forget`:
CANCEL on the link; ``edge_moe_cancelled_queries_total`` when the metrics are the front's own).
A plain request notices by waiting on the ASGI disconnect beside its answers; a stream by its
end (:class:`gating.http.streams.EventStream`).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from edge_moe.wire import Error, Partial, Query, Reply
from gating.coordinator.metrics import ServingMetrics
from gating.http.link import CoordinatorLink
from gating.http.protocol import (
    ENSEMBLE,
    _ApiError,
    error_of,
    no_answer,
    parse_body,
    readiness_probe,
    to_queries,
    unauthorized,
    wait_s,
    wants_usage,
)
from gating.http.responses import infeasible, models_body, reply_headers, response_body
from gating.http.streams import Choices, EventStream, events

READYZ_WAIT_S = 3.0
GONE = 499  # the status logged for a request whose client left before its answer (nobody reads it)
T = TypeVar("T")


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

    def __post_init__(self) -> None:
        # every CANCEL the link sends is counted where it is sent, whichever path sends it first
        # (this, or a closing stream's own clean-up)
        if self.own:
            self.link.on_cancel = self.metrics.cancelled_queries.inc

    def forget(self, qs: Sequence[Query]) -> int:
        """Cancel the queries of ``qs`` still waiting for their answers (CANCEL each, on the
        link, which counts them in ``edge_moe_cancelled_queries_total`` when the metrics are
        the front's own). Returns how many were cancelled here (0 once all are answered)."""
        return sum(self.link.cancel(q.id) for q in qs)


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
    """One QUERY per choice, sent at once; the answers in one response (or a stream). A
    client that disconnects before its answer cancels the queries (:meth:`Front.forget`)."""
    front = _front(request)
    t0 = time.perf_counter()
    if front.own:
        front.metrics.inflight.inc()
    try:
        body = parse_body(await request.body())
        qs = to_queries(body, request.headers, chat, front.experts)
        mode = "options" if qs[0].options is not None else "generation"
        wait = wait_s(qs[0], front.timeout_s)
        model = str(body.get("model", ENSEMBLE))
        if qs[0].stream:
            return await _streamed(request, front, qs, chat, model, wants_usage(body), wait, mode, t0)
        answers = await _unless_gone(request, front, qs, _ask_all(front.link, qs, wait))
        if answers is None:
            return Response(status_code=GONE)
        if any(a is None for a in answers):
            raise no_answer()
        msgs = [a for a in answers if a is not None]
        for msg in msgs:
            front.count(msg, mode, t0)
        for msg in msgs:
            if isinstance(msg, Error):
                raise error_of(msg)
        replies = [m for m in msgs if isinstance(m, Reply)]
        return JSONResponse(response_body(qs, replies, chat, model), headers=reply_headers(replies))
    except _ApiError as e:
        return _fail(e)
    finally:
        if front.own:
            front.metrics.inflight.dec()


async def _ask_all(link: CoordinatorLink, qs: Sequence[Query], wait: float) -> list[Reply | Error | None]:
    """Every QUERY's answer, asked at once (None: silent past ``wait``; it is then cancelled)."""
    async def one(q: Query) -> Reply | Error | None:
        try:
            return await link.ask(q, wait)
        except TimeoutError:
            return None

    if len(qs) == 1:  # the usual request: no gather, no task of its own
        return [await one(qs[0])]
    return list(await asyncio.gather(*(one(q) for q in qs)))


async def _disconnect(request: Request) -> None:
    """Returns once the client has gone (the body is read, so the next ASGI message is the
    disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_gone(request: Request, front: Front, qs: Sequence[Query], work: Awaitable[T]) -> T | None:
    """``work``'s result, or None when the client disconnects first: the queries still in
    flight are then cancelled (:meth:`Front.forget`) and ``work`` with them.

    ``work`` runs in the request's own task; only the disconnect watch is a task of its own,
    and it cancels the request's task when the client goes (one task per request, not two,
    and no ``asyncio.wait``)."""
    me = asyncio.current_task()
    assert me is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _disconnect(request)
        gone = True
        front.forget(qs)  # before the work is cancelled: forget sends (and counts) the CANCELs
        me.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        me.uncancel()  # the cancel was ours: the request goes on, to answer GONE
        return None
    finally:
        watcher.cancel()


async def _streamed(request: Request, front: Front, qs: Sequence[Query], chat: bool, model: str,
                    usage_too: bool, wait: float, mode: str, t0: float) -> Response:
    """Server-sent events (:func:`gating.http.streams.events`) once every choice has sent its
    first message. An ERROR (or an infeasible budget, or silence) before that is a plain error
    response; the stream's end, however it comes, cancels what is still in flight."""
    streams = [front.link.stream(q, wait) for q in qs]
    firsts = await _unless_gone(request, front, qs, asyncio.gather(*(_first(s) for s in streams)))
    if firsts is None:
        return Response(status_code=GONE)
    for f in firsts:
        if isinstance(f, Reply | Error):
            front.count(f, mode, t0)
    for f in firsts:
        problem = (no_answer() if f is None else error_of(f) if isinstance(f, Error)
                   else infeasible(f) if isinstance(f, Reply) and f.plan.status == "infeasible" else None)
        if problem is not None:
            front.forget(qs)
            raise problem
    answers = Choices(streams, [f for f in firsts if f is not None])

    def close() -> None:
        answers.close()
        front.forget(qs)

    def counted(msg: Reply | Error) -> None:
        front.count(msg, mode, t0)

    return EventStream(events(qs, chat, model, usage_too, answers, counted), on_close=close,
                       media_type="text/event-stream", headers={"cache-control": "no-cache"})


async def _first(messages: AsyncIterator[Reply | Error | Partial]) -> Reply | Error | Partial | None:
    try:
        return await messages.__anext__()
    except (TimeoutError, StopAsyncIteration):
        return None


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
