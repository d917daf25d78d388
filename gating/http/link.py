"""The HTTP front's one ZeroMQ link to the coordinator's frontend.

One ``zmq.asyncio`` DEALER (CURVE when keys are given, :func:`edge_moe.security.connect_dealer`)
carries every request of the front. A reader task decodes each answer and hands it to the
waiting request by QUERY id; PARTIALs of a streamed query arrive on the same box before its
REPLY or ERROR. Frames that do not decode, and answers nobody waits for (the request gave up),
are dropped. Every wait has a deadline: ``TimeoutError`` when nothing arrives in time.

A query the front stops waiting for before its answer (its HTTP client went away, its wait ran
out, or the request was cut short for any other reason) is cancelled: :meth:`CoordinatorLink.cancel`
sends CANCEL with the QUERY's id on this same DEALER (the coordinator matches a CANCEL to its
sender) and forgets the query, so the nodes stop spending tokens on an answer nobody reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any

import zmq
import zmq.asyncio

from edge_moe.errors import ProtocolError
from edge_moe.security import connect_dealer
from edge_moe.wire import Cancel, Error, Partial, Query, Reply, decode, encode

logger = logging.getLogger(__name__)


class CoordinatorLink:
    """One DEALER to the coordinator's frontend, shared by every request (answers by id).

    The socket opens on first use, inside the server's event loop; :meth:`close` closes it.
    ``cancels``: how many CANCELs the link has sent.
    """

    def __init__(self, endpoint: str, curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.endpoint = endpoint
        self.curve = curve
        self.cancels = 0
        self.on_cancel: Callable[[], object] | None = None  # called once per CANCEL sent
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
        """Send ``q`` and wait for its answer; raises ``TimeoutError`` after ``timeout_s`` (the
        query is then cancelled, as it is when the caller is)."""
        async with contextlib.aclosing(self.stream(q, timeout_s)) as messages:
            async for msg in messages:
                if isinstance(msg, Reply | Error):
                    return msg
        raise TimeoutError  # not reached: stream ends with an answer or raises

    async def stream(self, q: Query, timeout_s: float) -> AsyncGenerator[Reply | Error | Partial, None]:
        """Send ``q``; yield its PARTIALs, then its REPLY or ERROR (last). ``TimeoutError``
        when nothing arrives for ``timeout_s``. Closed (or cancelled) before the answer, it
        cancels ``q`` (:meth:`cancel`)."""
        sock = self._open()
        box: asyncio.Queue[Reply | Error | Partial] = asyncio.Queue()
        self._waiting[q.id] = box
        try:
            await sock.send_multipart([b"", *encode(q)])
            while True:
                msg = await asyncio.wait_for(box.get(), timeout_s)
                if isinstance(msg, Reply | Error):
                    self._waiting.pop(q.id, None)  # answered: nothing to cancel any more
                    yield msg
                    return
                yield msg
        finally:
            self.cancel(q.id)

    def cancel(self, query_id: str) -> bool:
        """Send CANCEL for a query still waiting for its answer, and forget it.

        Returns:
            True when a CANCEL went out; False when the query was answered, already cancelled
            or never sent.
        """
        if self._waiting.pop(query_id, None) is None or self._sock is None:
            return False
        # not awaited: this runs in ``finally`` blocks of cancelled tasks; a DEALER with room
        # sends at once, and frames keep their order on the socket, so CANCEL follows its QUERY
        sent = asyncio.ensure_future(self._sock.send_multipart([b"", *encode(Cancel(query_id))]))
        sent.add_done_callback(_log_failure)
        self.cancels += 1
        if self.on_cancel is not None:
            self.on_cancel()
        return True

    @property
    def waiting(self) -> int:
        """Queries sent and not yet answered or cancelled."""
        return len(self._waiting)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._sock is not None:
            self._sock.close(linger=0)
        if self._ctx is not None:
            self._ctx.term()


def _log_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        logger.warning("CANCEL not sent: %s", fut.exception())
