"""The edge-moe wire protocol: every message the client, coordinator and nodes exchange.

The protocol lives in this one package (docs/style.md), in three parts and a helper:

- :mod:`edge_moe.wire.messages`, the schema: the version frame, :class:`MsgType`, one frozen
  dataclass per message, :class:`ErrorCode`, and the value limits (:data:`MODES`,
  :data:`MAX_ID_CHARS`, ...).
- :mod:`edge_moe.wire.codec`, frames ⇄ messages: :func:`encode` and :func:`decode`, the only
  two frame builders in the codebase; :func:`decode` raises
  :class:`~edge_moe.errors.ProtocolError` (what it got, what it expected) on every bad frame
  and nothing else. :func:`to_json` gives a message as JSON.
- :mod:`edge_moe.wire.checks`, the value rules, each written once and called at every
  boundary: :func:`check_query`, :func:`k_or_tau_problem`, :func:`budget_problem`,
  :func:`prompt_size_problem`, :func:`echo_id`, :func:`check_result`.
- :mod:`edge_moe.wire.values`, how a value is written out: the one NaN/inf → JSON rule
  (:func:`json_float`, :func:`json_safe`) and :func:`finite_or_none`.

Who sends what (docs/design.md §3; docs/protocol.md gives the full field tables):

- client → coordinator frontend (ROUTER): QUERY; answered by PARTIALs (when streamed) and
  REPLY or ERROR; CANCEL stops a QUERY in flight.
- node → coordinator backend (ROUTER), nodes connect out as DEALER (Paranoid Pirate):
  READY, HEARTBEAT, RESULT, PARTIAL, ERROR. Coordinator → node: TASK, CANCEL, HEARTBEAT, ERROR.

Import from ``edge_moe.wire``: every public name is re-exported here.
"""

from __future__ import annotations

import logging

from edge_moe.wire.checks import (
    budget_problem,
    check_query,
    check_result,
    echo_id,
    k_or_tau_problem,
    prompt_size_problem,
    sampling_problem,
)
from edge_moe.wire.codec import Converter, decode, encode, to_json
from edge_moe.wire.messages import (
    CLASS_OF,
    ENERGY_SOURCES,
    FINISH_REASONS,
    LOGPROB_SUM_TOLERANCE,
    MAX_DEADLINE_MS,
    MAX_FRAME_BYTES,
    MAX_ID_CHARS,
    MAX_NEW_TOKENS,
    MAX_OPTIONS,
    MAX_STOP,
    MAX_STOP_CHARS,
    MAX_TOP_LOGPROBS,
    MODES,
    PROTOCOL,
    TYPE_OF,
    VERSION,
    Cancel,
    Error,
    ErrorCode,
    ExpertInfo,
    ExpertUse,
    Heartbeat,
    Message,
    MsgType,
    Partial,
    PlanInfo,
    Query,
    Ready,
    Reply,
    Result,
    Sampling,
    Task,
    TokenLogprob,
    WireBudget,
)
from edge_moe.wire.values import finite_or_none, json_float, json_safe, short_repr

logger = logging.getLogger(__name__)

__all__ = [
    # messages
    "VERSION", "PROTOCOL", "MAX_FRAME_BYTES", "MsgType", "ErrorCode", "WireBudget", "Query", "ExpertUse",
    "PlanInfo", "Reply", "Error", "ExpertInfo", "Ready", "Heartbeat", "Task", "Result", "Partial", "Message",
    "TYPE_OF", "CLASS_OF", "MODES", "MAX_ID_CHARS", "MAX_OPTIONS", "MAX_NEW_TOKENS", "MAX_DEADLINE_MS",
    "ENERGY_SOURCES", "LOGPROB_SUM_TOLERANCE", "Sampling", "TokenLogprob", "Cancel", "FINISH_REASONS",
    "MAX_STOP", "MAX_STOP_CHARS", "MAX_TOP_LOGPROBS", "sampling_problem",
    # codec
    "encode", "decode", "to_json", "Converter",
    # checks
    "check_query", "check_result", "k_or_tau_problem", "budget_problem", "echo_id", "prompt_size_problem",
    # values
    "json_float", "json_safe", "finite_or_none", "short_repr",
]
