"""The edge-moe client: send a QUERY to the coordinator, get a REPLY (or ERROR).

**Lazy Pirate** (zguide ``lpclient.py``): a DEALER sends the QUERY (with the empty
delimiter frame, so it looks like REQ to the ROUTER) and polls for the answer with the same
id. On timeout it closes the socket (dropping anything stale), opens a new one and sends
again, up to ``retries`` times; then it raises :class:`~edge_moe.errors.DeadlineError`.
A retried query may be computed twice by the fleet: queries are read-only, so the only
cost is energy.

::

    with EdgeMoEClient("tcp://127.0.0.1:5555", timeout_s=5) as client:
        answer = client.query("2+2=? A. 3 B. 4 Answer:", options=["3", "4"], energy_j=20)
        if isinstance(answer, Reply): print(answer.answer_index, answer.probabilities)

**Sampling** (``query(..., sampling=Sampling(temperature=0.7, seed=1))``): a generation
whose tokens are drawn; the coordinator has the gate's top expert answer it alone (a
greedy generation, the default, is a weighted vote over the chosen experts).

**Cancel** (:meth:`EdgeMoEClient.cancel`): CANCEL with the QUERY's id, on the socket that
sent the QUERY (the coordinator knows a query by connection and id); it stops the nodes'
work, and the query is answered ERROR ``cancelled``. The client is synchronous and its
socket is not thread-safe, so cancel from the thread that waits: from ``on_partial``
while a stream arrives (:meth:`EdgeMoEClient.request` then returns that ERROR), or after
:meth:`EdgeMoEClient.send`. After a Lazy Pirate retry the socket is a new one, and a
CANCEL on it finds nothing to cancel (ignored).

:func:`query_command` is what the ``edge-moe query`` CLI command calls.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Sequence
from typing import Any

import zmq

from edge_moe.errors import ConfigError, DeadlineError
from edge_moe.security import connect_dealer
from edge_moe.wire import (
    Cancel,
    Error,
    Partial,
    Query,
    Reply,
    Sampling,
    WireBudget,
    decode,
    encode,
    to_json,
)

logger = logging.getLogger(__name__)


class EdgeMoEClient:
    """A Lazy Pirate client for the coordinator's frontend.

    Args:
        endpoint: e.g. ``tcp://127.0.0.1:5555``.
        timeout_s: how long one try waits for the answer.
        retries: extra tries after the first times out.
        curve: optional ``(server_public, client_public, client_secret)`` Z85 keys.
    """

    def __init__(self, endpoint: str, timeout_s: float = 10.0, retries: int = 2,
                 curve: tuple[bytes, bytes, bytes] | None = None,
                 context: zmq.Context | None = None) -> None:
        if not timeout_s > 0 or retries < 0:
            raise ConfigError(f"timeout_s={timeout_s} must be > 0 and retries={retries} >= 0")
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.retries = retries
        self.curve = curve
        self._own_context = context is None
        self.ctx = context or zmq.Context()
        self.sock = self._open()

    def _open(self) -> zmq.Socket:
        return connect_dealer(self.ctx, self.endpoint, self.curve)

    def close(self) -> None:
        self.sock.close(linger=0)
        if self._own_context:
            self.ctx.term()

    def __enter__(self) -> EdgeMoEClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, query: Query, on_partial: Any = None) -> Reply | Error:
        """Send a QUERY and return the REPLY or ERROR that answers it.

        ``on_partial(piece)`` is called with each PARTIAL of a ``stream`` query as it arrives.

        Raises:
            DeadlineError: no answer after ``1 + retries`` tries of ``timeout_s`` each.
            ProtocolError: the coordinator answered with undecodable frames.
        """
        frames = [b"", *encode(query)]
        wait_s = self.timeout_s
        if query.deadline_ms is not None:  # never give up before the coordinator's deadline
            wait_s = max(wait_s, query.deadline_ms / 1000.0 + 1.0)
        for attempt in range(1 + self.retries):
            self.sock.send_multipart(frames)
            end = time.monotonic() + wait_s
            while (left := end - time.monotonic()) > 0:
                if not self.sock.poll(max(1, int(left * 1000)), zmq.POLLIN):
                    break
                got = self.sock.recv_multipart()
                body = got[1:] if got and got[0] == b"" else got
                msg = decode(body)
                if isinstance(msg, Reply | Error) and msg.id in (query.id, ""):
                    return msg
                if isinstance(msg, Partial) and msg.id == query.id:
                    if on_partial is not None:
                        on_partial(msg)
                    end = time.monotonic() + wait_s  # it is alive: the wait restarts
                    continue
                logger.debug("discarding a stale answer %r", getattr(msg, "id", None))
            logger.warning("no answer from %s in %.1f s (try %d of %d)", self.endpoint, wait_s,
                           attempt + 1, 1 + self.retries)
            self.sock.close(linger=0)  # Lazy Pirate: a fresh socket drops stale replies
            self.sock = self._open()
        raise DeadlineError(f"no answer from {self.endpoint} after {1 + self.retries} tries of "
                            f"{wait_s:.1f} s each")

    def query(self, prompt: str, options: Sequence[str] | None = None, *,
              category: str | None = None, energy_j: float | None = None,
              latency_ms: float | None = None, max_new_tokens: int = 32,
              top_k: int | None = None, tau: float | None = None,
              deadline_ms: float | None = None, mode: str = "letter",
              id: str | None = None, sampling: Sampling | None = None) -> Reply | Error:
        """Build a QUERY and :meth:`request` it. ``None`` fields take the coordinator's defaults.

        ``sampling``: how a generation draws its tokens (None or temperature 0: greedy, the
        experts' vote; temperature > 0: the gate's top expert alone). Not for options.
        """
        budget = None if energy_j is None and latency_ms is None else WireBudget(energy_j, latency_ms)
        q = Query(id=id or uuid.uuid4().hex[:16], prompt=prompt,
                  options=tuple(options) if options is not None else None, category=category,
                  budget=budget, max_new_tokens=max_new_tokens, top_k=top_k, tau=tau,
                  deadline_ms=deadline_ms, mode=mode, sampling=sampling)
        return self.request(q)

    def send(self, query: Query) -> None:
        """Send a QUERY without waiting (one try, no retry): read the answer with
        :meth:`receive`, and :meth:`cancel` it meanwhile if need be."""
        self.sock.send_multipart([b"", *encode(query)])

    def receive(self, query_id: str, timeout_s: float | None = None) -> Reply | Error | None:
        """The REPLY or ERROR for ``query_id`` sent by :meth:`send`, or None after
        ``timeout_s`` (default ``timeout_s`` of the client). PARTIALs and stale answers are
        skipped.

        Raises:
            ProtocolError: the coordinator answered with undecodable frames.
        """
        end = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while (left := end - time.monotonic()) > 0:
            if not self.sock.poll(max(1, int(left * 1000)), zmq.POLLIN):
                return None
            got = self.sock.recv_multipart()
            msg = decode(got[1:] if got and got[0] == b"" else got)
            if isinstance(msg, Reply | Error) and msg.id in (query_id, ""):
                return msg
        return None

    def cancel(self, query_id: str) -> None:
        """Send CANCEL for ``query_id`` (a QUERY this socket sent); no reply of its own: the
        query is answered ERROR ``cancelled`` if it was still in flight, and an unknown or
        finished id is ignored by the coordinator."""
        self.sock.send_multipart([b"", *encode(Cancel(query_id))])


# ---------------------------------------------------------------- CLI helper


def _f(v: float | None, fmt: str = ".3g") -> str:
    if v is None:
        return "-"
    return "inf" if math.isinf(v) else format(v, fmt)


def format_answer(msg: Reply | Error) -> str:
    """A readable breakdown of a REPLY (or ERROR) for the terminal."""
    if isinstance(msg, Error):
        return f"ERROR {msg.code}: {msg.message}"
    lines = []
    plan = msg.plan
    if plan.status == "infeasible":
        lines.append(f"INFEASIBLE budget: {plan.message}")
        lines.append(f"  smallest energy budget that fits: {_f(plan.min_energy_j)} J; "
                     f"smallest latency budget: {_f(plan.min_latency_ms)} ms")
    elif msg.probabilities is not None:
        probs = "  ".join(f"{chr(65 + i)}={p:.3f}" for i, p in enumerate(msg.probabilities))
        lines.append(f"answer: {chr(65 + (msg.answer_index or 0))}   ({probs})")
    else:
        lines.append(f"answer: {msg.text!r}" + (f"   (finish: {msg.finish_reason})" if msg.finish_reason else ""))
    if msg.experts:
        lines.append(f"{'expert':<24} {'node':<12} {'weight':>7} {'status':<6} {'ms':>8} {'J':>8}  source")
        for e in msg.experts:
            lines.append(f"{e.name:<24} {e.node:<12} {e.weight:>7.3f} {e.status:<6} "
                         f"{e.compute_ms:>8.2f} {e.energy_j:>8.3g}  {e.energy_source}")
    stages = "  ".join(f"{k}={v:.2f}" for k, v in msg.stage_ms.items())
    lines.append(f"ms by stage: {stages}")
    lines.append(f"energy: {msg.energy_j:.4g} J ({msg.energy_source or '-'})")
    lines.append(f"plan: {list(plan.experts)} status={plan.status} objective={_f(plan.objective)} "
                 f"category={plan.category or 'worst case'} budget={_f(plan.budget_energy_j)} J / "
                 f"{_f(plan.budget_latency_ms)} ms live={list(plan.live)}{' (cached)' if plan.cached else ''}")
    if msg.degraded:
        lines.append("DEGRADED: " + "; ".join(msg.reasons))
    return "\n".join(lines)


def query_command(prompt: str, options: Sequence[str] | None = None, *,
                  endpoint: str = "tcp://127.0.0.1:5555", energy_j: float | None = None,
                  latency_ms: float | None = None, category: str | None = None,
                  top_k: int | None = None, tau: float | None = None, max_new_tokens: int = 32,
                  deadline_ms: float | None = None, timeout_s: float = 10.0, retries: int = 2,
                  as_json: bool = False,
                  curve: tuple[bytes, bytes, bytes] | None = None) -> tuple[int, str]:
    """What ``edge-moe query`` prints, and its exit code (0 REPLY, 1 ERROR).

    ``curve``: from :func:`edge_moe.security.load_client_keys` when the fleet uses CURVE.

    Raises:
        DeadlineError: the coordinator did not answer (the CLI maps it to exit 1).
        ProtocolError: the answer could not be decoded.
    """
    with EdgeMoEClient(endpoint, timeout_s=timeout_s, retries=retries, curve=curve) as client:
        msg = client.query(prompt, options or None, category=category, energy_j=energy_j,
                           latency_ms=latency_ms, top_k=top_k, tau=tau,
                           max_new_tokens=max_new_tokens, deadline_ms=deadline_ms)
    code = 1 if isinstance(msg, Error) else 0
    return code, json.dumps(to_json(msg), indent=2) if as_json else format_answer(msg)
