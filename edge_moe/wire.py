"""The edge-moe wire protocol: every message the client, coordinator and nodes exchange.

One module holds the protocol (STYLE.md). A message is three ZeroMQ frames::

    [PROTOCOL, TYPE, BODY]
    PROTOCOL  b"EMOE1"                  the version frame; anything else is refused
    TYPE      one byte, a MsgType value
    BODY      a msgpack map: the message's fields by name (str keys)

ROUTER envelopes (peer identity, and the empty delimiter frame clients send) are routing,
not protocol: sockets code strips them before :func:`decode` and adds them after
:func:`encode`, the only two frame builders in the codebase.

Who sends what (DESIGN.md §3; the README section "Wire protocol" gives the full field tables):

- client → coordinator frontend (ROUTER): QUERY; answered by REPLY or ERROR.
- node → coordinator backend (ROUTER), nodes connect out as DEALER (Paranoid Pirate):
  READY, HEARTBEAT, RESULT, ERROR. Coordinator → node: TASK, HEARTBEAT, ERROR.

:func:`decode` checks the version frame, the type byte, and every field's presence and
type, and raises :class:`~edge_moe.errors.ProtocolError` saying what it got and what it
expected. It never raises anything else, whatever the bytes.

The protocol's value limits live here too (:data:`MODES`, :data:`MAX_ID_CHARS`,
:data:`MAX_NEW_TOKENS`, :data:`MAX_DEADLINE_MS`): :func:`check_query` says why a decoded
QUERY breaks one (a NaN budget, top_k and tau both given, an unknown mode);
:func:`prompt_size_problem` checks the configured prompt size before anything reads the
prompt, and :func:`echo_id` says which id an ERROR may echo. The one rule
that needs context, a category the coordinator knows, is the router's
(:meth:`gating.coordinator.routing.Router.route`, which runs :func:`check_query` first). Both are
answered with ERROR ``bad_request``. :func:`check_result` is the same for a RESULT, given
the TASK it answers (K finite, normalised log-probs or a text; finite, non-negative ms
and J; a documented energy source): the coordinator counts a RESULT that breaks it as
that expert's error.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, Union

import msgpack

from edge_moe.errors import ProtocolError

logger = logging.getLogger(__name__)

VERSION = 1
PROTOCOL = b"EMOE1"  # the version frame: b"EMOE" + str(VERSION)
MAX_FRAME_BYTES = 16 * 1024 * 1024  # larger bodies are refused before msgpack sees them


class MsgType(IntEnum):
    """The TYPE frame (one byte)."""

    QUERY = 1
    REPLY = 2
    ERROR = 3
    READY = 4
    HEARTBEAT = 5
    TASK = 6
    RESULT = 7
    PARTIAL = 8


class ErrorCode(StrEnum):
    """``Error.code`` values. A client may branch on them; the message is for people."""

    PROTOCOL = "protocol"  # the frames could not be decoded (wrong version, type, field)
    BAD_REQUEST = "bad_request"  # decoded, but a value breaks a rule (NaN budget, unknown category)
    DEADLINE = "deadline"  # the deadline passed before any expert answered / before the task ran
    NO_EXPERTS = "no_experts"  # no live expert can answer (empty live set)
    EXPERT_ERROR = "expert_error"  # every chosen expert failed or was lost
    UNKNOWN_EXPERT = "unknown_expert"  # a TASK named an expert the node does not host
    RUNNER = "runner"  # the expert's runner refused the task (prompt too long, bad options)
    NOT_READY = "not_ready"  # a node spoke before READY (e.g. the coordinator restarted)
    REFUSED = "refused"  # a READY the fleet file does not allow (unknown node, unplaced expert, name taken)
    OVERLOADED = "overloaded"  # load binds: no plan meets the budget at the current queues, or a queue is full
    INTERNAL = "internal"  # a bug; the message says what


# --------------------------------------------------------------------------- client messages


@dataclass(frozen=True)
class WireBudget:
    """A per-request budget; None means "use the coordinator's default" for that field.

    ``latency_ms`` is one number for every category; ``inf`` means unbounded.
    """

    energy_j: float | None = None
    latency_ms: float | None = None


@dataclass(frozen=True)
class Query:
    """QUERY: client → coordinator.

    ``options`` present: score the options (``mode`` "letter" or "continuation") and
    answer with an option index; absent: generate up to ``max_new_tokens`` tokens.
    ``category`` absent: plan for the worst case over categories. ``deadline_ms`` is
    relative to the coordinator's receipt; absent: the budget's latency, else 30 s.
    ``top_k`` / ``tau`` (adaptive k) override the coordinator's fine-level setting.
    ``expert`` pins the query to that one expert (it must be live and fit the budget).
    ``stream``: for a generation answered by one expert, PARTIAL messages carry the text as
    it is generated, before the REPLY (which holds the whole text either way).
    """

    id: str
    prompt: str
    options: tuple[str, ...] | None = None
    category: str | None = None
    budget: WireBudget | None = None
    max_new_tokens: int = 32
    top_k: int | None = None
    tau: float | None = None
    deadline_ms: float | None = None
    mode: str = "letter"
    expert: str | None = None
    stream: bool = False


@dataclass(frozen=True)
class ExpertUse:
    """One chosen expert's part in a reply.

    ``status``: "ok" (answered in time), "late" (not back by the deadline), "lost" (its
    node left the live set), "error" (it answered ERROR; ``error`` says why).
    ``compute_ms`` / ``energy_j`` / ``energy_source`` are the node's own figures;
    ``rtt_ms`` is dispatch to receipt at the coordinator.
    """

    name: str
    node: str
    weight: float
    status: str
    compute_ms: float = 0.0
    rtt_ms: float = 0.0
    energy_j: float = 0.0
    energy_source: str = ""
    logprobs: tuple[float, ...] | None = None
    text: str | None = None
    error: str = ""
    n_tokens: int = 0


@dataclass(frozen=True)
class PlanInfo:
    """The coarse-level plan used for a query.

    ``status`` is the selector's ("optimal" or "infeasible"); ``objective`` its F(S)
    (None when infeasible). When infeasible, ``message`` names the binding constraint and
    ``min_energy_j`` / ``min_latency_ms`` the smallest budget (with the other one kept)
    that a single live expert would fit; None when no change of that budget alone helps.
    """

    experts: tuple[str, ...]
    status: str
    objective: float | None
    message: str
    live: tuple[str, ...]
    category: str | None
    budget_energy_j: float
    budget_latency_ms: float
    cached: bool = False
    min_energy_j: float | None = None
    min_latency_ms: float | None = None


@dataclass(frozen=True)
class Reply:
    """REPLY: coordinator → client, answering a QUERY with the same ``id``.

    Options query: ``answer_index`` and ``probabilities`` (the gate-weighted mixture over
    the experts that answered). Generation: ``text`` (the weighted vote's winner).
    Infeasible budget: no answer, ``plan.status == "infeasible"``.
    ``stage_ms`` keys: embed, gate, select, fanout, aggregate (and total).
    """

    id: str
    experts: tuple[ExpertUse, ...]
    stage_ms: dict[str, float]
    total_ms: float
    energy_j: float
    energy_source: str
    plan: PlanInfo
    answer_index: int | None = None
    probabilities: tuple[float, ...] | None = None
    text: str | None = None
    degraded: bool = False
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Error:
    """ERROR: any direction. ``id`` is the QUERY's or TASK's id ("" when unknown).

    ``retry_after_ms`` (code ``overloaded`` only): when the coordinator predicts a retry
    could be planned within the budget (the queues it waits on drained); None otherwise.
    """

    id: str
    code: str
    message: str
    retry_after_ms: float | None = None


# --------------------------------------------------------------------------- node messages


@dataclass(frozen=True)
class ExpertInfo:
    name: str
    runner: str
    precision: str


@dataclass(frozen=True)
class Ready:
    """READY: node → coordinator, first message after every (re)connect."""

    node: str
    experts: tuple[ExpertInfo, ...]
    device_class: str
    energy_source: str


@dataclass(frozen=True)
class Heartbeat:
    """HEARTBEAT: both ways, every ``heartbeat_s`` (Paranoid Pirate).

    From a node it also reports its load: ``queued`` TASKs received and not yet answered
    (waiting or running), and per hosted expert its recent service times (moving averages
    of the runner's compute ms): ``service_ms`` per option-scoring task, ``token_ms`` per
    generated token; ``batch``, the moving average of the tasks it serves per batch (dynamic
    batching; 1 when it serves one at a time, 0 before its first task). The coordinator's
    heartbeats leave them empty. The coordinator treats these figures as hints from a peer:
    non-finite or negative values are ignored.
    """

    node: str
    queued: int = 0
    service_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    token_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    batch: float = 0.0


@dataclass(frozen=True)
class Task:
    """TASK: coordinator → node. ``timeout_ms`` counts from the node's receipt; a task
    still queued when it passes is answered ERROR "deadline", not computed."""

    id: str
    expert: str
    prompt: str
    timeout_ms: float
    options: tuple[str, ...] | None = None
    mode: str = "letter"
    max_new_tokens: int = 32
    stream: bool = False


@dataclass(frozen=True)
class Partial:
    """PARTIAL: a piece of generated text before the answer (protocol version 1, added later).

    Node → coordinator for a TASK with ``stream`` (``id`` is the TASK's); coordinator → client
    for a QUERY with ``stream`` answered by one expert (``id`` is the QUERY's). ``index``
    counts the pieces from 0; their concatenation is a prefix of the final text (the REPLY's
    ``text`` is authoritative). Old peers never receive one unless they asked (``stream``).
    """

    id: str
    expert: str
    text: str
    index: int


@dataclass(frozen=True)
class Result:
    """RESULT: node → coordinator, answering the TASK with the same ``id``.

    ``logprobs`` for an options task (renormalised over the options), ``text`` for a
    generation. ``energy_source``: "modelled" or "measured:<counter>".
    """

    id: str
    expert: str
    compute_ms: float
    energy_j: float
    energy_source: str
    logprobs: tuple[float, ...] | None = None
    text: str | None = None
    n_tokens: int = 0


Message = Union[Query, Reply, Error, Ready, Heartbeat, Task, Result, Partial]  # noqa: UP007

TYPE_OF: dict[type, MsgType] = {
    Query: MsgType.QUERY,
    Reply: MsgType.REPLY,
    Error: MsgType.ERROR,
    Ready: MsgType.READY,
    Heartbeat: MsgType.HEARTBEAT,
    Task: MsgType.TASK,
    Result: MsgType.RESULT,
    Partial: MsgType.PARTIAL,
}
CLASS_OF: dict[int, type] = {int(t): c for c, t in TYPE_OF.items()}


# --------------------------------------------------------------------------- encode

# Per class: (field name, encoder or None). None means msgpack packs the value as it is
# (str, int, float, bool, None, tuples and maps of those); nested dataclasses need one.
_ENCODERS: dict[type, tuple[tuple[str, Callable[[Any], Any] | None], ...]] = {}


def _encoder_for(tp: Any) -> Callable[[Any], Any] | None:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        inner = [_encoder_for(a) for a in typing.get_args(tp) if a is not type(None)]
        enc = inner[0] if len(inner) == 1 else None
        return None if enc is None else (lambda v: None if v is None else enc(v))
    if origin is tuple:
        item = _encoder_for(typing.get_args(tp)[0])
        return None if item is None else (lambda v: [item(x) for x in v])
    if dataclasses.is_dataclass(tp):
        return lambda v: _plain_dataclass(v)
    return None


def _plain_dataclass(value: Any) -> dict[str, Any]:
    cls = type(value)
    fields = _ENCODERS.get(cls)
    if fields is None:
        hints = _hints(cls)
        fields = tuple((f.name, _encoder_for(hints[f.name])) for f in dataclasses.fields(cls))
        _ENCODERS[cls] = fields
    return {name: (getattr(value, name) if enc is None else enc(getattr(value, name)))
            for name, enc in fields}


def _plain(value: Any) -> Any:
    """Dataclasses → maps, tuples → lists; scalars as they are (for JSON and msgpack)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def encode(msg: Message) -> list[bytes]:
    """The frames ``[PROTOCOL, TYPE, BODY]`` of a message (no routing envelope).

    Raises:
        ProtocolError: ``msg`` is not one of the protocol's dataclasses.
    """
    kind = TYPE_OF.get(type(msg))
    if kind is None:
        raise ProtocolError(f"cannot encode {type(msg).__name__}: not a wire message "
                            f"(expected one of {[c.__name__ for c in TYPE_OF]})")
    body = msgpack.packb(_plain_dataclass(msg), use_bin_type=True)
    return [PROTOCOL, _TYPE_BYTES[kind], body]


_TYPE_BYTES = {t: bytes([int(t)]) for t in MsgType}


# --------------------------------------------------------------------------- decode


def _show(v: Any, limit: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


class _Bad(Exception):
    """A field failed its check: ``path`` below the message (".budget.energy_j"), ``msg``."""

    def __init__(self, path: str, msg: str) -> None:
        self.path, self.msg = path, msg


Converter = Callable[[Any], Any]
_CONVERTERS: dict[Any, Converter] = {}


def _converter(tp: Any) -> Converter:
    """A compiled checker for the annotation ``tp``: returns the value in the dataclass's
    types, or raises :class:`_Bad`. Built once per type, so decoding is a few calls per field."""
    conv = _CONVERTERS.get(tp)
    if conv is None:
        conv = _CONVERTERS[tp] = _build(tp)
    return conv


def _build(tp: Any) -> Converter:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        inner_types = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner_types) != 1:  # not used by any message
            raise TypeError(f"unsupported union {tp}")
        inner = _converter(inner_types[0])
        return lambda v: None if v is None else inner(v)
    if tp is str:
        def conv_str(v: Any) -> str:
            if type(v) is str:
                return v
            raise _Bad("", f"={_show(v)}: expected a string")
        return conv_str
    if tp is bool:
        def conv_bool(v: Any) -> bool:
            if type(v) is bool:
                return v
            raise _Bad("", f"={_show(v)}: expected true or false")
        return conv_bool
    if tp is int:
        def conv_int(v: Any) -> int:
            if type(v) is int:
                return v
            raise _Bad("", f"={_show(v)}: expected an integer")
        return conv_int
    if tp is float:
        def conv_float(v: Any) -> float:
            t = type(v)
            if t is float:
                return v  # type: ignore[no-any-return]
            if t is int:
                return float(v)
            raise _Bad("", f"={_show(v)}: expected a number")
        return conv_float
    if origin is tuple:
        item_t = typing.get_args(tp)[0]
        item = _converter(item_t)

        def conv_tuple(v: Any) -> tuple[Any, ...]:
            if type(v) is not list:
                raise _Bad("", f"={_show(v)}: expected an array of {_type_name(item_t)}")
            out = []
            for i, x in enumerate(v):
                try:
                    out.append(item(x))
                except _Bad as e:
                    raise _Bad(f"[{i}]{e.path}", e.msg) from None
            return tuple(out)
        return conv_tuple
    if origin is dict:
        key_t, val_t = typing.get_args(tp)
        key, val = _converter(key_t), _converter(val_t)

        def conv_dict(v: Any) -> dict[Any, Any]:
            if type(v) is not dict:
                raise _Bad("", f"={_show(v)}: expected a map")
            out = {}
            for k, x in v.items():
                try:
                    kk = key(k)
                except _Bad as e:
                    raise _Bad(" key", e.msg) from None
                try:
                    out[kk] = val(x)
                except _Bad as e:
                    raise _Bad(f".{k}{e.path}", e.msg) from None
            return out
        return conv_dict
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp)
    raise TypeError(f"no decoder for {tp}")  # a bug in this module, caught at import


def _build_dataclass(cls: Any) -> Converter:
    hints = _hints(cls)
    spec = []
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        spec.append((f.name, _converter(hints[f.name]), required, _type_name(hints[f.name])))
    names = {s[0] for s in spec}
    expected = ", ".join(s[0] for s in spec)

    def conv_dataclass(v: Any) -> Any:
        if type(v) is not dict:
            raise _Bad("", f": expected a msgpack map, got {type(v).__name__} {_show(v)}")
        for k in v:
            if k not in names:
                raise _Bad("", f": unknown field {_show(k)} (expected fields: {expected})")
        kwargs = {}
        for name, conv, required, tname in spec:
            if name in v:
                try:
                    kwargs[name] = conv(v[name])
                except _Bad as e:
                    raise _Bad(f".{name}{e.path}", e.msg) from None
            elif required:
                raise _Bad("", f": missing required field '{name}' (a {tname})")
        return cls(**kwargs)
    return conv_dataclass


def decode(frames: list[bytes] | tuple[bytes, ...]) -> Message:
    """The message in ``[PROTOCOL, TYPE, BODY]`` frames (routing envelope already removed).

    Raises:
        ProtocolError: what was wrong, what was got and what was expected. No other
            exception escapes, whatever the input.
    """
    try:
        return _decode(frames)
    except ProtocolError:
        raise
    except Exception as exc:  # a decoder bug must still look like a refused frame
        raise ProtocolError(f"undecodable frames ({type(exc).__name__}: {exc})") from exc


def _decode(frames: list[bytes] | tuple[bytes, ...]) -> Message:
    if len(frames) != 3:
        raise ProtocolError(f"got {len(frames)} frames, expected 3: [{PROTOCOL!r}, type byte, msgpack body]")
    version, kind, body = (bytes(f) for f in frames)
    if version != PROTOCOL:
        raise ProtocolError(f"version frame {_show(version)}, expected {PROTOCOL!r} "
                            f"(edge-moe wire protocol version {VERSION})")
    if len(kind) != 1 or kind[0] not in CLASS_OF:
        raise ProtocolError(f"type frame {_show(kind)}, expected one byte in "
                            f"{ {int(t): t.name for t in MsgType} }")
    if len(body) > MAX_FRAME_BYTES:
        raise ProtocolError(f"body of {len(body)} bytes, expected at most {MAX_FRAME_BYTES}")
    try:
        raw = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises ExtraData, FormatError, ValueError, ...
        raise ProtocolError(f"body is not one msgpack value ({type(exc).__name__}: {exc})") from exc
    cls = CLASS_OF[kind[0]]
    try:
        return typing.cast(Message, _converter(cls)(raw))
    except _Bad as e:
        raise ProtocolError(f"{MsgType(kind[0]).name}{e.path}{e.msg}") from None


# --------------------------------------------------------------------------- value limits

MODES = ("letter", "continuation")  # how an options query is scored (QUERY.mode, TASK.mode)
MAX_ID_CHARS = 256
MAX_OPTIONS = 26  # one letter each, A..Z
MAX_NEW_TOKENS = 4096
MAX_DEADLINE_MS = 600_000.0
ENERGY_SOURCES = ("modelled", "measured:nvml", "measured:rapl", "measured:jetson")
LOGPROB_SUM_TOLERANCE = 1e-3  # |logsumexp(RESULT.logprobs)| allowed: "renormalised over the options"


def check_query(q: Query) -> str | None:
    """Why a decoded QUERY breaks the protocol's value limits, or None when it does not.

    Context-free: whether ``q.category`` is one the coordinator knows is checked by the
    router. The text is the ERROR ``bad_request`` message.
    """
    if not q.id or len(q.id) > MAX_ID_CHARS:
        return f"id must be 1..{MAX_ID_CHARS} characters, got {len(q.id)}"
    if not q.prompt.strip():
        return "prompt is empty"
    if q.options is not None and not 0 < len(q.options) <= MAX_OPTIONS:
        return f"options must hold 1..{MAX_OPTIONS} strings, got {len(q.options)}"
    if q.mode not in MODES:
        return f"mode={q.mode!r} is not one of {list(MODES)}"
    if not 0 < q.max_new_tokens <= MAX_NEW_TOKENS:
        return f"max_new_tokens={q.max_new_tokens} must be in 1..{MAX_NEW_TOKENS}"
    if q.top_k is not None and q.top_k < 1:
        return f"top_k={q.top_k} must be >= 1"
    if q.tau is not None and not (0 < q.tau <= 1):
        return f"tau={q.tau} must be in (0, 1]"
    if q.top_k is not None and q.tau is not None:
        return "give top_k or tau, not both"
    if q.deadline_ms is not None and not (0 < q.deadline_ms <= MAX_DEADLINE_MS):
        return f"deadline_ms={q.deadline_ms} must be in (0, {MAX_DEADLINE_MS:g}]"
    if q.expert is not None and not 0 < len(q.expert) <= MAX_ID_CHARS:
        return f"expert must be 1..{MAX_ID_CHARS} characters, got {len(q.expert)}"
    if q.budget is not None:
        for name in ("energy_j", "latency_ms"):
            v = getattr(q.budget, name)
            if v is not None and (math.isnan(v) or v < 0):
                return f"budget.{name}={v} must be a number >= 0 (inf for no budget)"
    return None


def echo_id(query_id: str) -> str:
    """The id an ERROR echoes: the QUERY's when it is valid (1..MAX_ID_CHARS), else ""."""
    return query_id if 0 < len(query_id) <= MAX_ID_CHARS else ""


def prompt_size_problem(prompt: str, limit: int, options: tuple[str, ...] | None = None) -> str | None:
    """Why ``prompt`` plus its ``options`` are over ``limit`` UTF-8 bytes, or None.

    The options count because a node tokenizes them with the prompt (continuation scoring
    runs each one). Cheap for texts far below the limit.
    """
    texts = (prompt, *(options or ()))
    chars = sum(len(t) for t in texts)
    if chars * 4 <= limit:  # UTF-8 takes at most 4 bytes a character
        return None
    size = sum(len(t) if t.isascii() else len(t.encode("utf-8", "surrogatepass")) for t in texts)
    if size <= limit:
        return None
    what = "prompt and options are" if options else "prompt is"
    return (f"{what} {size} bytes (UTF-8), over the limit of {limit} bytes "
            "(coordinator.max_prompt_bytes)")


def check_result(r: Result, expert: str, options: tuple[str, ...] | None) -> str | None:
    """Why a decoded RESULT cannot answer the TASK it names, or None when it can.

    Args:
        r: the RESULT.
        expert: the TASK's expert.
        options: the TASK's options (None: a generation task).

    Returns:
        The problem, for the expert's ``error`` in the REPLY; None when the RESULT is sane:
        the TASK's expert; for options exactly K = ``len(options)`` finite log-probs whose
        probabilities sum to 1 (``|logsumexp| <= LOGPROB_SUM_TOLERANCE``) and no text; for
        generation a text and no log-probs; finite, non-negative ``compute_ms`` and
        ``energy_j``; ``n_tokens >= 0``; ``energy_source`` one of :data:`ENERGY_SOURCES`.
    """
    if r.expert != expert:
        return f"expert={_show(r.expert)} but the TASK went to expert {expert!r}"
    for name in ("compute_ms", "energy_j"):
        v = getattr(r, name)
        if not (math.isfinite(v) and v >= 0):
            return f"{name}={v} must be a finite number >= 0"
    if r.energy_source not in ENERGY_SOURCES:
        return f"energy_source={_show(r.energy_source)} is not one of {list(ENERGY_SOURCES)}"
    if r.n_tokens < 0:
        return f"n_tokens={r.n_tokens} must be >= 0"
    if options is None:
        if r.text is None:
            return "a generation TASK needs a text, got none"
        if r.logprobs is not None:
            return f"a generation TASK takes a text, got {len(r.logprobs)} log-probs"
        return None
    k = len(options)
    if r.logprobs is None:
        return f"an options TASK needs {k} log-probs, got none"
    if len(r.logprobs) != k:
        return f"got {len(r.logprobs)} log-probs for {k} options"
    if not all(math.isfinite(x) for x in r.logprobs):
        return f"log-probs {_show(list(r.logprobs))} must all be finite"
    top = max(r.logprobs)
    lse = top + math.log(math.fsum(math.exp(x - top) for x in r.logprobs))
    if abs(lse) > LOGPROB_SUM_TOLERANCE:
        return (f"log-probs {_show(list(r.logprobs))} are not renormalised over the options "
                f"(logsumexp={lse:.4g}, expected 0)")
    if r.text is not None:
        return "an options TASK takes log-probs, got a text too"
    return None


# --------------------------------------------------------------------------- helpers


def finite_or_none(x: float | None) -> float | None:
    """For building replies: NaN becomes None (msgpack carries inf, but JSON does not)."""
    return None if x is None or math.isnan(x) else float(x)


def to_json(msg: Message) -> dict[str, Any]:
    """A message as a JSON-ready dict (``type`` added; inf/NaN floats become strings)."""

    def fix(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if isinstance(v, list):
            return [fix(x) for x in v]
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        return v

    return {"type": TYPE_OF[type(msg)].name, **fix(_plain(msg))}


__all__ = [
    "VERSION", "PROTOCOL", "MsgType", "ErrorCode", "WireBudget", "Query", "ExpertUse", "PlanInfo",
    "Reply", "Error", "ExpertInfo", "Ready", "Heartbeat", "Task", "Result", "Partial", "Message", "encode",
    "decode", "to_json", "finite_or_none", "echo_id", "prompt_size_problem", "MODES", "MAX_ID_CHARS", "MAX_OPTIONS", "MAX_NEW_TOKENS",
    "MAX_DEADLINE_MS", "ENERGY_SOURCES", "LOGPROB_SUM_TOLERANCE", "check_query", "check_result",
]

for _cls in TYPE_OF:  # compile every converter at import: a schema bug fails loudly here
    _converter(_cls)

