"""The front's link to the coordinator, against a real ROUTER on loopback: a query given up
before its answer (closed, cancelled, timed out) is cancelled with CANCEL on the same DEALER
connection; an answered one is not."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import zmq
import zmq.asyncio

from edge_moe.wire import Cancel, ExpertUse, Partial, PlanInfo, Query, Reply, decode, encode
from gating.http.link import CoordinatorLink

pytestmark = pytest.mark.timeout(30)


def answer(qid: str) -> Reply:
    plan = PlanInfo(("a",), "optimal", 0.0, "", ("a",), None, 1.0, 100.0)
    return Reply(qid, (ExpertUse("a", "n", 1.0, "ok", text="hi", n_tokens=1),), {}, 1.0, 0.0, "modelled", plan,
                 text="hi", finish_reason="stop")


async def _received(router: zmq.asyncio.Socket, timeout_s: float = 2.0) -> tuple[bytes, object]:
    frames = await asyncio.wait_for(router.recv_multipart(), timeout_s)
    return frames[0], decode(frames[2:])


async def _nothing(router: zmq.asyncio.Socket, wait_s: float = 0.3) -> bool:
    return not await router.poll(int(wait_s * 1000))


@contextlib.asynccontextmanager
async def _pair():
    ctx = zmq.asyncio.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    link = CoordinatorLink(f"tcp://127.0.0.1:{port}")
    try:
        yield router, link
    finally:
        link.close()
        router.close(0)
        ctx.term()


def test_an_answered_query_is_not_cancelled() -> None:
    async def run() -> None:
        async with _pair() as (router, link):
            task = asyncio.create_task(link.ask(Query("q1", "p"), 5.0))
            who, q = await _received(router)
            await router.send_multipart([who, b"", *encode(answer("q1"))])
            assert (await task).text == "hi"
            assert await _nothing(router) and link.cancels == 0 and link.waiting == 0

    asyncio.run(run())


def test_a_stream_closed_before_its_answer_sends_cancel_on_the_same_connection() -> None:
    async def run() -> None:
        async with _pair() as (router, link):
            stream = link.stream(Query("q2", "p", stream=True), 5.0)
            first = asyncio.create_task(stream.__anext__())
            who, q = await _received(router)
            await router.send_multipart([who, b"", *encode(Partial("q2", "a", "Hel", 0))])
            assert (await first).text == "Hel"
            await stream.aclose()  # the HTTP client went away
            who2, msg = await _received(router)
            assert msg == Cancel("q2") and who2 == who and link.cancels == 1 and link.waiting == 0
            await router.send_multipart([who, b"", *encode(answer("q2"))])  # late: dropped, nobody waits
            assert link.cancel("q2") is False and await _nothing(router)

    asyncio.run(run())


def test_a_cancelled_ask_and_a_timed_out_ask_send_cancel() -> None:
    async def run() -> None:
        async with _pair() as (router, link):
            task = asyncio.create_task(link.ask(Query("q3", "p"), 5.0))
            await _received(router)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert (await _received(router))[1] == Cancel("q3")
            with pytest.raises(TimeoutError):
                await link.ask(Query("q4", "p"), 0.2)
            assert (await _received(router))[1] == Query("q4", "p")
            assert (await _received(router))[1] == Cancel("q4") and link.cancels == 2

    asyncio.run(run())


def test_cancel_forgets_the_query_and_sends_once() -> None:
    async def run() -> None:
        async with _pair() as (router, link):
            task = asyncio.create_task(link.ask(Query("q5", "p"), 5.0))
            await _received(router)
            assert link.cancel("q5") is True and link.cancel("q5") is False
            assert (await _received(router))[1] == Cancel("q5")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await task
            assert await _nothing(router) and link.cancels == 1

    asyncio.run(run())
