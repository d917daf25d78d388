"""The wire protocol's value rules: why a decoded message breaks one, each rule written once.

:func:`~edge_moe.wire.codec.decode` checks types; these functions check values, and every
boundary that takes the value calls the same one:

- :func:`check_query`: a decoded QUERY against the limits of :mod:`edge_moe.wire.messages`
  (a NaN budget, top_k and tau both given, an unknown mode, ...). The one rule that needs
  context, a category the coordinator knows, is the router's
  (:meth:`gating.coordinator.routing.Router.route`, which runs :func:`check_query` first).
  Both are answered with ERROR ``bad_request``.
- :func:`k_or_tau_problem`: the fine level takes a fixed ``top_k`` or an adaptive ``tau``,
  never both. :func:`check_query` applies it to a QUERY; the router's configuration and
  ``gating.planning.mixture`` raise its text as their own error.
- :func:`budget_problem`: a budget's energy and latency are numbers >= 0 (inf: no budget).
- :func:`sampling_problem`: a generation's sampling settings are in their ranges (the
  coordinator checks a QUERY's, a node its TASK's).
- :func:`prompt_size_problem`: the configured prompt size, checked before anything reads
  the prompt; :func:`echo_id`: which id an ERROR may echo.
- :func:`check_result`: a RESULT, given the TASK it answers (K finite, normalised log-probs
  or a text; finite, non-negative ms and J; a documented energy source). The coordinator
  counts a RESULT that breaks it as that expert's error.

Each returns the problem as text (the ERROR message, or the expert's ``error``), or None.
"""

from __future__ import annotations

import logging
import math

from edge_moe.wire.messages import (
    ENERGY_SOURCES,
    FINISH_REASONS,
    LOGPROB_SUM_TOLERANCE,
    MAX_DEADLINE_MS,
    MAX_ID_CHARS,
    MAX_NEW_TOKENS,
    MAX_OPTIONS,
    MAX_STOP,
    MAX_STOP_CHARS,
    MAX_TOP_LOGPROBS,
    MODES,
    Query,
    Result,
    Sampling,
    WireBudget,
)
from edge_moe.wire.values import short_repr

logger = logging.getLogger(__name__)


def k_or_tau_problem(top_k: int | None, tau: float | None) -> str | None:
    """Why a fine-level setting gives both a fixed k and an adaptive tau, or None.

    Either one alone, or neither (the caller's default), is fine; their ranges are the
    caller's rules.

    Args:
        top_k: the number of experts kept per request, or None.
        tau: the gate mass the adaptive k must reach, or None.

    Returns:
        ``"give top_k or tau, not both (got top_k=2, tau=0.5)"`` when both are given, else None.
    """
    if top_k is not None and tau is not None:
        return f"give top_k or tau, not both (got top_k={top_k}, tau={tau})"
    return None


def budget_problem(budget: WireBudget) -> str | None:
    """Why a QUERY's budget breaks the rules, or None.

    Args:
        budget: the QUERY's budget; a None field means the coordinator's default.

    Returns:
        ``"budget.energy_j=nan must be a number >= 0 (inf for no budget)"`` (or the same for
        ``latency_ms``) when a given figure is NaN or negative, else None.
    """
    for name in ("energy_j", "latency_ms"):
        v = getattr(budget, name)
        if v is not None and (math.isnan(v) or v < 0):
            return f"budget.{name}={v} must be a number >= 0 (inf for no budget)"
    return None


def check_query(q: Query) -> str | None:
    """Why a decoded QUERY breaks the protocol's value limits, or None when it does not.

    Context-free: whether ``q.category`` is one the coordinator knows is checked by the
    router.

    Args:
        q: the decoded QUERY.

    Returns:
        The first rule it breaks, as the ERROR ``bad_request`` message; None when it breaks none.
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
    if (problem := k_or_tau_problem(q.top_k, q.tau)) is not None:
        return problem
    if q.deadline_ms is not None and not (0 < q.deadline_ms <= MAX_DEADLINE_MS):
        return f"deadline_ms={q.deadline_ms} must be in (0, {MAX_DEADLINE_MS:g}]"
    if q.expert is not None and not 0 < len(q.expert) <= MAX_ID_CHARS:
        return f"expert must be 1..{MAX_ID_CHARS} characters, got {len(q.expert)}"
    if q.sampling is not None:
        if q.options is not None:
            return "sampling applies to generation; an options query is scored, not sampled"
        if (problem := sampling_problem(q.sampling)) is not None:
            return problem
    if q.budget is not None:
        return budget_problem(q.budget)
    return None


SAMPLING_RANGES: dict[str, tuple[float, float, str]] = {  # field: (low, high, "closed"/"open-low")
    "temperature": (0.0, 2.0, "closed"),
    "top_p": (0.0, 1.0, "open-low"),
    "min_p": (0.0, 1.0, "closed"),
    "presence_penalty": (-2.0, 2.0, "closed"),
    "frequency_penalty": (-2.0, 2.0, "closed"),
    "repetition_penalty": (0.0, 2.0, "open-low"),
}
MAX_SAMPLING_TOP_K = 1000
MAX_SEED = 2**63 - 1


def sampling_problem(s: Sampling) -> str | None:
    """Why a generation's sampling settings break the rules, or None.

    Ranges: ``temperature`` [0, 2]; ``top_p`` (0, 1]; ``min_p`` [0, 1]; presence and
    frequency penalties [-2, 2]; ``repetition_penalty`` (0, 2]; ``top_k`` 0..1000 (0: off);
    ``seed`` 0..2^63-1 or None; at most :data:`MAX_STOP` non-empty ``stop`` strings of at
    most :data:`MAX_STOP_CHARS` characters; ``top_logprobs`` 0..:data:`MAX_TOP_LOGPROBS`,
    and only with ``logprobs``.
    """
    for name, (low, high, kind) in SAMPLING_RANGES.items():
        v = getattr(s, name)
        ok = math.isfinite(v) and v <= high and (v > low if kind == "open-low" else v >= low)
        if not ok:
            bracket = "(" if kind == "open-low" else "["
            return f"sampling.{name}={v} must be in {bracket}{low:g}, {high:g}]"
    if not 0 <= s.top_k <= MAX_SAMPLING_TOP_K:
        return f"sampling.top_k={s.top_k} must be in 0..{MAX_SAMPLING_TOP_K} (0: off)"
    if s.seed is not None and not 0 <= s.seed <= MAX_SEED:
        return f"sampling.seed={s.seed} must be in 0..2^63-1"
    if len(s.stop) > MAX_STOP:
        return f"sampling.stop holds {len(s.stop)} strings, at most {MAX_STOP} are allowed"
    for x in s.stop:
        if not 0 < len(x) <= MAX_STOP_CHARS:
            return f"sampling.stop strings must be 1..{MAX_STOP_CHARS} characters, got {len(x)}"
    if not 0 <= s.top_logprobs <= MAX_TOP_LOGPROBS:
        return f"sampling.top_logprobs={s.top_logprobs} must be in 0..{MAX_TOP_LOGPROBS}"
    if s.top_logprobs and not s.logprobs:
        return "sampling.top_logprobs needs sampling.logprobs"
    return None


def echo_id(query_id: str) -> str:
    """The id an ERROR echoes.

    Args:
        query_id: the id the QUERY (or TASK) carried.

    Returns:
        ``query_id`` when it is valid (1..MAX_ID_CHARS characters), else "".
    """
    return query_id if 0 < len(query_id) <= MAX_ID_CHARS else ""


def prompt_size_problem(prompt: str, limit: int, options: tuple[str, ...] | None = None) -> str | None:
    """Why ``prompt`` plus its ``options`` are over ``limit`` UTF-8 bytes, or None.

    The options count because a node tokenizes them with the prompt (continuation scoring
    runs each one). Cheap for texts far below the limit.

    Args:
        prompt: the QUERY's prompt.
        limit: the most UTF-8 bytes allowed (``coordinator.max_prompt_bytes``).
        options: the QUERY's options, or None for a generation.

    Returns:
        The problem, naming the size and the limit; None when the texts fit.
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
        generation a text and no log-probs (a documented ``finish_reason``; token log-probs
        finite and <= 0, alternatives paired); finite, non-negative ``compute_ms`` and
        ``energy_j``; ``n_tokens >= 0``; ``energy_source`` one of :data:`ENERGY_SOURCES`.
    """
    if r.expert != expert:
        return f"expert={short_repr(r.expert)} but the TASK went to expert {expert!r}"
    for name in ("compute_ms", "energy_j"):
        v = getattr(r, name)
        if not (math.isfinite(v) and v >= 0):
            return f"{name}={v} must be a finite number >= 0"
    if r.energy_source not in ENERGY_SOURCES:
        return f"energy_source={short_repr(r.energy_source)} is not one of {list(ENERGY_SOURCES)}"
    if r.n_tokens < 0:
        return f"n_tokens={r.n_tokens} must be >= 0"
    if options is None:
        if r.text is None:
            return "a generation TASK needs a text, got none"
        if r.logprobs is not None:
            return f"a generation TASK takes a text, got {len(r.logprobs)} log-probs"
        if r.finish_reason is not None and r.finish_reason not in FINISH_REASONS:
            return f"finish_reason={short_repr(r.finish_reason)} is not one of {list(FINISH_REASONS)}"
        for t in r.token_logprobs or ():
            values = (t.logprob, *t.top_logprobs)
            if not all(math.isfinite(x) and x <= 1e-6 for x in values):
                return f"token log-probs {short_repr(list(values))} must be finite and <= 0"
            if len(t.top_tokens) != len(t.top_logprobs) or len(t.top_tokens) > MAX_TOP_LOGPROBS:
                return (f"a token's top_tokens and top_logprobs must pair up, at most "
                        f"{MAX_TOP_LOGPROBS} (got {len(t.top_tokens)} and {len(t.top_logprobs)})")
        return None
    k = len(options)
    if r.logprobs is None:
        return f"an options TASK needs {k} log-probs, got none"
    if len(r.logprobs) != k:
        return f"got {len(r.logprobs)} log-probs for {k} options"
    if not all(math.isfinite(x) for x in r.logprobs):
        return f"log-probs {short_repr(list(r.logprobs))} must all be finite"
    top = max(r.logprobs)
    lse = top + math.log(math.fsum(math.exp(x - top) for x in r.logprobs))
    if abs(lse) > LOGPROB_SUM_TOLERANCE:
        return (f"log-probs {short_repr(list(r.logprobs))} are not renormalised over the options "
                f"(logsumexp={lse:.4g}, expected 0)")
    if r.text is not None:
        return "an options TASK takes log-probs, got a text too"
    return None
