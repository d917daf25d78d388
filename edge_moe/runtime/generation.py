"""One generation, token by token: its request, its state, and the one decision rule.

:class:`Decoding` is the state of one sequence being decoded, the same object whether it
decodes alone (``OrtRunner.generate_ids``, ``ToyExpert.generate``) or in a
:class:`~edge_moe.runtime.batch.DecodeBatch`, so both give the same tokens and text:

- its :class:`~edge_moe.runtime.sampling.Sampler` picks each token (greedy, or drawn with
  the sequence's own seeded generator) and its log-probs;
- :meth:`Decoding.take` adds a token and says why the sequence ends: ``eos`` (the token is
  an end-of-sequence token; not added), ``stop`` (a stop string appeared, across token
  boundaries too; the text ends before it), ``length`` (``max_new_tokens``), ``context``;
  a caller that cancels it ends it ``cancelled`` (:meth:`Decoding.result`);
- **streaming with stop strings**: ``on_text`` gets the decoded text as it grows, except
  its longest suffix that is a prefix of a stop string (it might become one), a text that
  ends in U+FFFD (a character cut between tokens), or a text that no longer starts with
  what was sent. So the pieces never hold any part of a stop string and always concatenate
  to a prefix of the final text; what was held back and is kept is sent when it ends.

:func:`finish_reason` maps a ``stop_reason`` to the wire's ``finish_reason``.
numpy only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_moe.errors import RunnerError
from edge_moe.runtime.sampling import Sampler
from edge_moe.wire import Sampling, TokenLogprob

logger = logging.getLogger(__name__)

__all__ = ["FINISH_OF", "Decoding", "decode_alone", "GenRequest", "Generation", "Outcome", "finish_reason", "held_back",
           "stop_strings"]

# Generation.stop_reason -> the wire's finish_reason (RESULT, REPLY)
FINISH_OF = {"eos": "stop", "stop": "stop", "length": "length", "context": "length",
             "cancelled": "cancelled"}


def finish_reason(stop_reason: str) -> str:
    """The wire's ``finish_reason`` of a :attr:`Generation.stop_reason`: ``eos`` / ``stop``
    → ``stop``, ``length`` / ``context`` → ``length``, ``cancelled`` → ``cancelled``.

    Raises:
        ValueError: an unknown stop reason (a runner bug).
    """
    try:
        return FINISH_OF[stop_reason]
    except KeyError:
        raise ValueError(f"unknown stop_reason {stop_reason!r}; expected one of {sorted(FINISH_OF)}") from None


@dataclass(frozen=True)
class GenRequest:
    """One generation request: the prompt's token ids, the cap on new tokens, an optional
    ``on_text`` (called with each new piece of decoded text), stop strings (the caller
    fills them from ``sampling.stop``) and the sampling settings (None: greedy)."""

    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    on_text: Callable[[str], None] | None = None
    stop: tuple[str, ...] = ()
    sampling: Sampling | None = None


@dataclass
class Outcome:
    """What one request of a batch came to: ``value`` (log-probs, or a :class:`Generation`)
    or ``error``, and its share of the batch's compute in ms."""

    value: Any = None
    error: RunnerError | None = None
    compute_ms: float = 0.0


@dataclass(frozen=True)
class Generation:
    """A generation.

    Attributes:
        text: the decoded new text (stop string and EOS excluded).
        token_ids: the new token ids (EOS excluded).
        n_tokens: ``len(token_ids)``.
        prefill_ms: wall time of the prompt's forward pass.
        decode_ms: wall time of every later forward pass.
        stop_reason: ``eos``, ``stop``, ``length``, ``context`` or ``cancelled``
            (:func:`finish_reason` gives the wire's).
        token_logprobs: one per token id, when the sampling asked for log-probs.
    """

    text: str
    token_ids: list[int]
    n_tokens: int
    prefill_ms: float
    decode_ms: float
    stop_reason: str
    token_logprobs: tuple[TokenLogprob, ...] | None = None


def stop_strings(stop: Sequence[str] | None, sampling: Sampling | None) -> tuple[str, ...]:
    """The stop strings of a generation: ``stop`` and ``sampling.stop``, each once, empty ones
    dropped."""
    both = [*(stop or ()), *(sampling.stop if sampling is not None else ())]
    return tuple(dict.fromkeys(x for x in both if x))


def held_back(text: str, stops: Sequence[str]) -> int:
    """The length of the longest suffix of ``text`` that is a proper prefix of a stop string
    (0 when none): the characters a stream must hold back until the next token."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


@dataclass
class Decoding:
    """One sequence being decoded (see the module docstring).

    Args:
        key: the caller's key (a batch returns it with the outcome).
        request: what to generate.
        outcome: where the result and the compute ms go.
        token_text: a token id's text, for the log-probs.
    """

    key: Any
    request: GenRequest
    outcome: Outcome = field(default_factory=Outcome)
    token_text: Callable[[int], str] | None = None
    new: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    sent: str = ""
    text: str = ""
    prefill_ms: float = 0.0
    decode_ms: float = 0.0

    def __post_init__(self) -> None:
        self.sampler = Sampler(self.request.sampling, self.request.prompt_ids, self.token_text)

    def pick(self, logits: Any) -> tuple[int, TokenLogprob | None]:
        """The next token from this sequence's (V,) logits (:meth:`Sampler.pick`)."""
        return self.sampler.pick(logits, self.new)

    def take(self, tok: int, eos: set[int], decode: Callable[[Sequence[int]], str],
             max_context: int, logprob: TokenLogprob | None = None) -> str | None:
        """Add the picked token ``tok`` (with its log-prob, if any); returns why the sequence
        ends (``eos``, ``stop``, ``length``, ``context``) or None when it goes on. The one
        decision rule of serial and batched decoding."""
        if tok in eos:
            return "eos"
        self.new.append(tok)
        if logprob is not None:
            self.logprobs.append(logprob)
        req = self.request
        if req.stop or req.on_text is not None:
            self.text = decode(self.new)
        if req.stop:
            hits = [self.text.index(x) for x in req.stop if x and x in self.text]
            if hits:
                self.text = self.text[: min(hits)]
                self._flush(self.text)
                return "stop"
        if req.on_text is not None:
            shown = self.text[: len(self.text) - held_back(self.text, req.stop)]
            self._send(shown)
        if len(self.new) >= req.max_new_tokens:
            return "length"
        if len(req.prompt_ids) + len(self.new) >= max_context:
            return "context"
        return None

    def _send(self, shown: str) -> None:
        """Hand ``on_text`` what ``shown`` adds to what was sent (nothing while it ends in
        U+FFFD or no longer starts with what was sent)."""
        on_text = self.request.on_text
        if (on_text is None or shown.endswith("\ufffd") or not shown.startswith(self.sent)
                or len(shown) == len(self.sent)):
            return
        on_text(shown[len(self.sent):])
        self.sent = shown

    def _flush(self, final: str) -> None:
        """Send the rest of the final text (held back or cut between characters)."""
        on_text = self.request.on_text
        if on_text is not None and final.startswith(self.sent) and len(final) > len(self.sent):
            on_text(final[len(self.sent):])
            self.sent = final

    def result(self, reason: str, decode: Callable[[Sequence[int]], str]) -> Generation:
        """The :class:`Generation` of a sequence that ended for ``reason`` (also
        ``cancelled``); flushes the stream to the final text."""
        text = self.text if reason == "stop" else decode(self.new)
        self._flush(text)
        logprobs = tuple(self.logprobs) if self.sampler.logprobs else None
        return Generation(text, list(self.new), len(self.new), self.prefill_ms, self.decode_ms,
                          reason, logprobs)


def decode_alone(seq: Decoding, prefill: Callable[[], Any], step: Callable[[int], Any],
                 eos: set[int], decode: Callable[[Sequence[int]], str], max_context: int,
                 should_stop: Callable[[], bool] | None = None) -> Generation:
    """One sequence decoded on its own, the loop every single-sequence runner shares:
    ``prefill()`` gives the (V,) logits after the prompt, ``step(token)`` feeds one token
    and gives the next (V,) logits; each token is picked and judged by ``seq`` (the rule
    batched decoding uses too), and ``should_stop`` (a CANCEL) ends it as "cancelled"
    before the next step. Prefill and decode wall times go into the Generation."""
    if should_stop is not None and should_stop():
        return seq.result("cancelled", decode)
    t0 = time.perf_counter()
    logits = prefill()
    seq.prefill_ms = (time.perf_counter() - t0) * 1e3
    t1 = time.perf_counter()
    while True:
        tok, logprob = seq.pick(logits)
        reason = seq.take(tok, eos, decode, max_context, logprob)
        if reason is None and should_stop is not None and should_stop():
            reason = "cancelled"
        if reason is not None:
            break
        logits = step(tok)
    seq.decode_ms = (time.perf_counter() - t1) * 1e3
    return seq.result(reason, decode)
