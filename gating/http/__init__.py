"""An OpenAI-compatible HTTP front for the coordinator (Starlette on uvicorn).

It is a client of the coordinator's ZeroMQ frontend, nothing more: every request becomes QUERYs
(:mod:`edge_moe.wire`, one per choice) and their REPLYs or ERROR the response, so there is one
routing path. Run it with ``edge-moe http --endpoint tcp://127.0.0.1:5555 --listen
127.0.0.1:8000 [--config fleet.yaml] [--api-keys keys.txt]``.

The parts:

- :mod:`~gating.http.protocol` (pure): OpenAI request JSON → QUERYs (one per choice, ``n``)
  with every check: :data:`~gating.http.protocol.PARAMETERS` is the table of the fields it
  takes (sampling → ``Sampling``; no-ops accepted only at values that change nothing; any
  other field or value is a 400 naming the parameter, never ignored); budgets and routing from
  the ``edge_moe`` body extension or the ``x-edge-moe-*`` headers; the error mapping
  (ErrorCode → HTTP status).
- :mod:`~gating.http.responses` (pure): REPLYs → the (chat) completion object, SSE chunks and
  log-probabilities in OpenAI's formats (every response carries the decision, ``edge_moe``).
- :mod:`~gating.http.link`: one ``zmq.asyncio`` DEALER to the coordinator, answers by id; a
  query given up before its answer is cancelled (CANCEL on the same DEALER).
- :mod:`~gating.http.streams`: the choices' link streams merged into the event stream; its end,
  a client's disconnect included, cancels what is still in flight.
- :mod:`~gating.http.routes`: ``POST /v1/chat/completions`` and ``/v1/completions`` (``stream:
  true`` streams a one-expert generation as it is decoded), ``GET /v1/models`` (the ensemble
  ``edge-moe`` and each expert, which a request can pin), ``/healthz``, ``/readyz``,
  ``/metrics`` (:mod:`gating.coordinator.metrics`); one middleware checks the API keys
  (``Authorization: Bearer <key>``) on every path but ``/healthz``.
- :mod:`~gating.http.server`: the app, the listening socket, uvicorn with TLS, the rule that a
  non-loopback address needs API keys and TLS unless ``insecure``; :func:`build_http` /
  :func:`serve_http` (``edge-moe http``) and :class:`HttpThread` (beside the coordinator).
"""

from __future__ import annotations

from gating.http.link import CoordinatorLink
from gating.http.protocol import ENSEMBLE, PARAMETERS, error_of, to_queries, to_query
from gating.http.responses import decision, response_body
from gating.http.server import (
           HttpFront,
           HttpThread,
           build_http,
           load_api_keys,
           make_app,
           serve_http,
)

__all__ = ["ENSEMBLE", "PARAMETERS", "CoordinatorLink", "HttpFront", "HttpThread", "build_http", "decision",
           "error_of", "load_api_keys", "make_app", "response_body", "serve_http", "to_queries", "to_query"]
