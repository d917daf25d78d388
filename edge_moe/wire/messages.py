"""The wire protocol's schema: its version, message types, one frozen dataclass per message, limits.

A message is three ZeroMQ frames ``[PROTOCOL, TYPE, BODY]`` (:mod:`edge_moe.wire.codec` builds
and reads them); this module says what they may hold:

- :data:`VERSION` / :data:`PROTOCOL`, the version frame, and :data:`MAX_FRAME_BYTES`;
- :class:`MsgType`, the TYPE byte, and :data:`TYPE_OF` / :data:`CLASS_OF` between it and the
  dataclasses: client messages (:class:`Query`, :class:`Reply`, :class:`Error`, with
  :class:`WireBudget`, :class:`ExpertUse`, :class:`PlanInfo`) and node messages
  (:class:`Ready`, :class:`Heartbeat`, :class:`Task`, :class:`Result`, :class:`Partial`);
- :class:`ErrorCode`, the ``Error.code`` values;
- the value limits the checks (:mod:`edge_moe.wire.checks`) and the runners hold peers to:
  :data:`MODES`, :data:`MAX_ID_CHARS`, :data:`MAX_OPTIONS`, :data:`MAX_NEW_TOKENS`,
  :data:`MAX_DEADLINE_MS`, :data:`ENERGY_SOURCES`, :data:`LOGPROB_SUM_TOLERANCE`.

docs/protocol.md gives the full field tables.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, Union

logger = logging.getLogger(__name__)

VERSION = 1
PROTOCOL = b"EMOE1"  # the version frame: b"EMOE" + str(VERSION)
MAX_FRAME_BYTES = 16 * 1024 * 1024  # larger bodies are refused before msgpack sees them

# --------------------------------------------------------------------------- value limits

MODES = ("letter", "continuation")  # how an options query is scored (QUERY.mode, TASK.mode)
MAX_ID_CHARS = 256
MAX_OPTIONS = 26  # one letter each, A..Z
MAX_NEW_TOKENS = 4096
MAX_DEADLINE_MS = 600_000.0
ENERGY_SOURCES = ("modelled", "measured:nvml", "measured:rapl", "measured:jetson")
LOGPROB_SUM_TOLERANCE = 1e-3  # |logsumexp(RESULT.logprobs)| allowed: "renormalised over the options"
MAX_STOP = 4  # stop strings per generation (OpenAI's limit)
MAX_STOP_CHARS = 256
MAX_TOP_LOGPROBS = 5  # alternatives per generated token
FINISH_REASONS = ("stop", "length", "cancelled")  # why a generation ended (RESULT, REPLY)


def added(default: object = None) -> Any:
    """A field added to a message after its first release: the codec leaves it out of a
    frame while it holds its default, so a peer that predates it never sees it."""
    return dataclasses.field(default=default, metadata={"added": True})


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
    CANCEL = 9


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
    CANCELLED = "cancelled"  # the client sent CANCEL for the query
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
class Sampling:
    """How a generation picks its tokens (QUERY.sampling, forwarded as TASK.sampling).

    ``temperature`` 0 (the default) is greedy decoding: the other sampling fields are then
    ignored. Above 0 each token is drawn from the expert's next-token distribution after,
    in order: the ``repetition_penalty`` (> 1 discourages tokens of the prompt and the text
    so far), ``presence_penalty`` / ``frequency_penalty`` (OpenAI's, on the generated
    tokens), the ``temperature``, ``top_k`` (0: off), ``top_p`` (nucleus) and ``min_p``
    (tokens below ``min_p`` × the top token's probability dropped). ``seed``: the same seed,
    prompt and artifact give the same tokens, batched or alone; None draws a fresh seed.
    ``stop``: up to :data:`MAX_STOP` strings; the text ends before the first one found,
    across token boundaries, the stop string excluded. ``logprobs``: return each chosen
    token's log-probability (and ``top_logprobs`` ≤ :data:`MAX_TOP_LOGPROBS` alternatives).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def sampled(self) -> bool:
        """True when tokens are drawn (temperature > 0), False for greedy decoding."""
        return self.temperature > 0


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log-probability under the expert that produced it (the
    distribution before the sampling transforms), and the most likely alternatives."""

    token: str
    logprob: float
    top_tokens: tuple[str, ...] = ()
    top_logprobs: tuple[float, ...] = ()


@dataclass(frozen=True)
class Cancel:
    """CANCEL (protocol version 1, added later): stop working on a request.

    Client → coordinator: ``id`` is the QUERY's; the coordinator sends CANCEL to every node
    with a TASK of it open, answers the client ERROR ``cancelled`` (unless already answered)
    and counts the tokens and joules spent so far. Coordinator → node: ``id`` is the TASK's;
    the node drops it from its queue, or from its decode batch at the next step, and answers
    a RESULT with ``finish_reason`` "cancelled" and what it generated and spent so far.
    An unknown or finished id is ignored.
    """

    id: str


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
    sampling: Sampling | None = added()


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
    finish_reason: str | None = added()
    token_logprobs: tuple[TokenLogprob, ...] | None = added()


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
    the experts that answered). Generation: ``text`` (the weighted vote's winner; a sampled
    generation is answered by the gate's top expert alone), with ``finish_reason`` and, when
    asked, ``token_logprobs`` of the expert whose text it is.
    Infeasible budget: no answer, ``plan.status == "infeasible"``.
    ``stage_ms`` keys: embed, gate, select, queue (time waiting for the embedding worker;
    absent when the query was answered at admission), fanout, aggregate (and total).
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
    finish_reason: str | None = added()
    token_logprobs: tuple[TokenLogprob, ...] | None = added()


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
    """One expert a node hosts, as its READY names it (``runner`` and ``precision`` as built)."""

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
    sampling: Sampling | None = added()


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
    generation. ``energy_source``: "modelled" or "measured:<counter>". A generation also
    says why it ended (``finish_reason``: "stop" at EOS or a stop string, "length" at
    ``max_new_tokens`` or the context, "cancelled" after a CANCEL) and, when its TASK's
    sampling asked, ``token_logprobs`` (one per generated token).
    """

    id: str
    expert: str
    compute_ms: float
    energy_j: float
    energy_source: str
    logprobs: tuple[float, ...] | None = None
    text: str | None = None
    n_tokens: int = 0
    finish_reason: str | None = added()
    token_logprobs: tuple[TokenLogprob, ...] | None = added()


Message = Union[Query, Reply, Error, Ready, Heartbeat, Task, Result, Partial, Cancel]  # noqa: UP007

TYPE_OF: dict[type, MsgType] = {
    Query: MsgType.QUERY,
    Reply: MsgType.REPLY,
    Error: MsgType.ERROR,
    Ready: MsgType.READY,
    Heartbeat: MsgType.HEARTBEAT,
    Task: MsgType.TASK,
    Result: MsgType.RESULT,
    Partial: MsgType.PARTIAL,
    Cancel: MsgType.CANCEL,
}
CLASS_OF: dict[int, type] = {int(t): c for c, t in TYPE_OF.items()}

