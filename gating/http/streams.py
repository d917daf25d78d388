"""A streamed answer: the link streams of a request's choices merged into OpenAI's chunks.

- :class:`Choices` merges the n streams (one per choice, :meth:`CoordinatorLink.stream
  <gating.http.link.CoordinatorLink.stream>`) into one queue of ``(choice index, message)``,
  one pump task per stream; ``close`` stops the pumps.
- :func:`events` writes the chunks: a role chunk per choice, each PARTIAL as it arrives, the
  rest of a choice's final text, its finishing chunk (``finish_reason``, its log-probabilities
  when asked, and its decision ``edge_moe``), the usage chunk with
  ``stream_options.include_usage``, ``[DONE]``. A later ERROR or silence is an error event,
  and the stream ends there.
- :class:`EventStream` is Starlette's ``StreamingResponse`` with an ``on_close`` that runs
  however the response ends. Starlette (ASGI spec < 2.4, as uvicorn serves HTTP) cancels the
  body iterator when the client disconnects, wherever it is waiting; ``on_close`` is the one
  place that then cancels the queries still in flight, so the nodes stop generating for a
  reader that has gone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from edge_moe.wire import Error, Partial, Query, Reply
from gating.http.protocol import error_of, no_answer
from gating.http.responses import (
    DONE,
    choice_body,
    chunk_body,
    decision,
    response_text,
    sse,
    usage_chunk,
    usage_of,
)

Message = Reply | Error | Partial


class Choices:
    """The streams of one request's choices, merged: :meth:`next` gives ``(i, message)`` in
    arrival order, ``message`` None when stream ``i`` fell silent past its wait.

    Args:
        streams: one link stream per choice, each already past its first message.
        firsts: those first messages (they come out of :meth:`next` first, in order).
    """

    def __init__(self, streams: Sequence[AsyncIterator[Message]], firsts: Sequence[Message]) -> None:
        self.firsts = tuple(firsts)
        self._queue: asyncio.Queue[tuple[int, Message | None]] = asyncio.Queue()
        for i, msg in enumerate(firsts):
            self._queue.put_nowait((i, msg))
        self._pumps = [asyncio.get_running_loop().create_task(self._pump(i, s))
                       for i, s in enumerate(streams) if isinstance(firsts[i], Partial)]

    async def _pump(self, i: int, stream: AsyncIterator[Message]) -> None:
        try:
            async for msg in stream:
                self._queue.put_nowait((i, msg))
        except TimeoutError:
            self._queue.put_nowait((i, None))

    async def next(self) -> tuple[int, Message | None]:
        return await self._queue.get()

    def close(self) -> None:
        """Stop every pump (their streams then cancel what is unanswered)."""
        for p in self._pumps:
            p.cancel()


async def events(qs: Sequence[Query], chat: bool, model: str, usage_too: bool, answers: Choices,
                 counted: Callable[[Reply | Error], None]) -> AsyncIterator[str]:
    """The server-sent events of a stream (see the module docstring). ``counted`` is called
    with each answer that arrives after the first messages."""
    rid, created, n = f"edge-moe-{qs[0].id}", int(time.time()), len(qs)
    sent = [""] * n
    finals: dict[int, Reply] = {}
    try:
        for i in range(n):
            yield sse(chunk_body(rid, model, chat, created, None, role=True, index=i))
        while len(finals) < n:
            i, msg = await answers.next()
            if msg is None:
                yield sse(no_answer("the coordinator stopped answering", "invalid_request_error").body())
                break
            if isinstance(msg, Partial):
                sent[i] += msg.text
                yield sse(chunk_body(rid, model, chat, created, msg.text, index=i))
                continue
            if msg is not answers.firsts[i]:
                counted(msg)
            if isinstance(msg, Error):
                yield sse(error_of(msg).body())
                break
            finals[i] = msg
            for chunk in _finish(qs[i], msg, chat, rid, model, created, i, sent[i]):
                yield sse(chunk)
        else:
            if usage_too:
                yield sse(usage_chunk(rid, model, chat, created, usage_of(list(finals.values()))))
        yield DONE
    finally:
        answers.close()


def _finish(q: Query, r: Reply, chat: bool, rid: str, model: str, created: int, i: int,
            sent: str) -> list[dict[str, Any]]:
    """The last chunks of choice ``i``: the text not streamed yet, then its finishing chunk."""
    choice = choice_body(q, r, chat, i)
    text = response_text(choice, chat)
    rest = text[len(sent):] if text.startswith(sent) else ""
    out = [chunk_body(rid, model, chat, created, rest, index=i)] if rest else []
    out.append(chunk_body(rid, model, chat, created, None, choice["finish_reason"], index=i,
                          logprobs=choice["logprobs"], edge_moe=decision(r)))
    return out


class EventStream(StreamingResponse):
    """A ``StreamingResponse`` that calls ``on_close`` however it ends: finished, failed, or cut
    off by the client's disconnect."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
