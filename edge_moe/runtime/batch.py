"""Batched option scoring and batched decoding over a KV-cache decoder graph.

A node batches the TASKs that wait for the same expert (:mod:`nodes.scheduler`); this module
runs such a batch through :class:`edge_moe.runtime.decoder.OrtRunner`'s graph:

- **Scoring** (:func:`score_batch`): the prompts are sorted by length and cut into chunks of
  at most ``max_tokens`` padded tokens (the graph returns logits at every position, so a
  chunk's logits take ``B · T · vocab · 4`` bytes); each chunk is one padded prefill. Graphs
  from the torch exporter (with ``position_ids``) take *left* padding: every prompt ends at
  the last column and its KV cache is reused for the continuation options of all its
  requests in one more pass. Graphs from onnxruntime-genai (GroupQueryAttention, positions
  from the mask) take *right* padding: the letter is read at each row's last real token, and
  continuation options are scored one request at a time (their KV cache cannot hold holes).
- **Generation** (:class:`DecodeBatch`, torch-exporter graphs only): one padded prefill per
  chunk of new sequences, then one decode step for every live sequence at a time. Each
  sequence picks its tokens with its own sampler (:mod:`edge_moe.runtime.generation`: greedy
  or seeded sampling, stop strings), so it gets the tokens it gets alone. A sequence stops at
  its own EOS, stop string, ``max_new_tokens`` or the context, or when cancelled
  (:meth:`DecodeBatch.cancel`, between steps), and leaves the batch at once (its rows of the
  KV cache are dropped, and columns no live sequence uses are trimmed). Sequences may join
  between steps (continuous batching): the caches of the two groups are left-padded to one
  length and concatenated.

Cost attribution: every forward pass's wall time is split over its rows by the tokens each
row brings to it (its real prompt tokens in a prefill, its option tokens in a continuation
pass, one token per decode step); a request's ``compute_ms`` is the sum of its shares, so
the shares of a batch add up to its wall time.

numpy, onnxruntime and `tokenizers` only (never torch or transformers).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edge_moe.errors import RunnerError
from edge_moe.runtime.generation import Decoding, Generation, GenRequest, Outcome, finish_reason
from edge_moe.runtime.session import log_softmax


class DecoderGraph(Protocol):
    """What batching needs of a runner (:class:`edge_moe.runtime.decoder.OrtRunner` has it)."""

    manifest: Any
    has_position_ids: bool
    max_context: int

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
                past: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[np.ndarray]]: ...

    def prepare_score(self, prompt: str, options: Sequence[str], mode: str = "letter", *,
                      chat: bool = False) -> tuple[list[int], list[int] | None, list[list[int]] | None]: ...

    def continuation_scores(self, prompt_ids: list[int], conts: list[list[int]]) -> np.ndarray: ...

    def check_context(self, n: int, what: str = "prompt") -> None: ...

    def decode(self, ids: Sequence[int]) -> str: ...

MAX_BATCH_TOKENS = 1024  # padded tokens per prefill pass (one longer prompt still runs alone)


@dataclass(frozen=True)
class ScoreRequest:
    """One option-scoring request (the arguments of ``OrtRunner.score_options``)."""

    prompt: str
    options: tuple[str, ...]
    mode: str = "letter"
    chat: bool = False


def _renormalise(logp: np.ndarray) -> np.ndarray:
    m = logp.max()
    return logp - (m + np.log(np.exp(logp - m).sum()))


def chunks(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices of ``lengths`` sorted by length, cut so each chunk's padded size
    (rows × longest) stays within ``max_tokens`` (a chunk holds at least one row)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out: list[list[int]] = []
    for i in order:
        if out and (len(out[-1]) + 1) * lengths[i] <= max_tokens:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def padded(rows: Sequence[Sequence[int]], left: bool) -> tuple[np.ndarray, np.ndarray]:
    """(B, T) int64 ids and mask of ``rows``, padded with id 0 on the left or the right."""
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, sl] = r
        mask[i, sl] = 1
    return ids, mask


def _timed(runner: DecoderGraph, ids: np.ndarray, mask: np.ndarray,
           past: list[np.ndarray] | None) -> tuple[np.ndarray, list[np.ndarray], float]:
    t0 = time.perf_counter()
    logits, present = runner.forward(ids, mask, past)
    return logits, present, (time.perf_counter() - t0) * 1e3


def _split(ms: float, weights: Sequence[float]) -> list[float]:
    total = float(sum(weights))
    return [ms * w / total for w in weights] if total > 0 else [ms / len(weights)] * len(weights)


@dataclass
class _Scored:
    ids: list[int]
    letters: list[int] | None  # letter mode: the option letters' token ids
    conts: list[list[int]] | None  # continuation mode: each option's tokens


def score_batch(runner: DecoderGraph, requests: Sequence[ScoreRequest],
                max_tokens: int = MAX_BATCH_TOKENS) -> list[Outcome]:
    """Score every request; one that cannot be scored gets its own error and the others
    are still scored. See the module docstring for padding and cost attribution."""
    out = [Outcome() for _ in requests]
    prepared: dict[int, _Scored] = {}
    for i, r in enumerate(requests):
        try:
            ids, letters, conts = runner.prepare_score(r.prompt, r.options, r.mode, chat=r.chat)
        except RunnerError as exc:
            out[i].error = exc
            continue
        if conts is not None and not runner.has_position_ids:
            t0 = time.perf_counter()  # one request at a time (see the module docstring)
            try:
                out[i].value = runner.continuation_scores(ids, conts)
            except RunnerError as exc:
                out[i].error = exc
            out[i].compute_ms = (time.perf_counter() - t0) * 1e3
            continue
        prepared[i] = _Scored(ids, letters, conts)
    keys = list(prepared)
    for chunk in chunks([len(prepared[k].ids) for k in keys], max_tokens):
        members = [keys[j] for j in chunk]
        try:
            _score_chunk(runner, [prepared[k] for k in members], [out[k] for k in members])
        except RunnerError as exc:
            for k in members:
                out[k].error = exc
    return out


def _score_chunk(runner: DecoderGraph, rows: list[_Scored], out: list[Outcome]) -> None:
    left = runner.has_position_ids
    ids, mask = padded([r.ids for r in rows], left)
    logits, past, ms = _timed(runner, ids, mask, None)
    for o, share in zip(out, _split(ms, [len(r.ids) for r in rows]), strict=True):
        o.compute_ms += share
    width = ids.shape[1]
    last = [width - 1 if left else len(r.ids) - 1 for r in rows]
    first = [log_softmax(logits[b, last[b]]) for b in range(len(rows))]  # (V,) each
    ext: list[tuple[int, list[int]]] = []  # (row, option tokens) needing a second pass
    for b, (r, o) in enumerate(zip(rows, out, strict=True)):
        if r.letters is not None:
            o.value = _renormalise(first[b][r.letters])
        else:
            assert r.conts is not None
            o.value = np.array([first[b][c[0]] for c in r.conts])
            ext.extend((b, c) for c in r.conts if len(c) > 1)
    if not ext:
        for r, o in zip(rows, out, strict=True):
            if r.conts is not None:
                o.value = _renormalise(o.value)
        return
    # One pass over every option's later tokens, each row on its prompt's cached KV: right
    # padding after the prompt; a padded position only affects logits at or after itself.
    w = max(len(c) for _, c in ext) - 1
    opt_ids = np.zeros((len(ext), w), np.int64)
    opt_mask = np.zeros((len(ext), width + w), np.int64)
    for j, (b, c) in enumerate(ext):
        opt_ids[j, : len(c) - 1] = c[:-1]
        opt_mask[j, :width] = mask[b]
        opt_mask[j, width: width + len(c) - 1] = 1
    sel = np.array([b for b, _ in ext])
    logits2, _, ms2 = _timed(runner, opt_ids, opt_mask, [p[sel] for p in past])
    logp = log_softmax(logits2)
    shares = _split(ms2, [len(c) - 1 for _, c in ext])
    add: dict[int, list[float]] = {}
    for j, (b, c) in enumerate(ext):
        add.setdefault(b, []).append(sum(logp[j, t, c[t + 1]] for t in range(len(c) - 1)))
        out[b].compute_ms += shares[j]
    for b, (r, o) in enumerate(zip(rows, out, strict=True)):
        if r.conts is None:
            continue
        extra = iter(add.get(b, []))
        o.value = _renormalise(np.array([s + (next(extra) if len(c) > 1 else 0.0)
                                         for s, c in zip(o.value, r.conts, strict=True)]))


def _left_pad(arrays: list[np.ndarray], mask: np.ndarray, to: int) -> tuple[list[np.ndarray], np.ndarray]:
    n = to - mask.shape[1]
    if n <= 0:
        return arrays, mask
    pad = [(0, 0), (0, 0), (n, 0), (0, 0)]
    return [np.pad(a, pad) for a in arrays], np.pad(mask, [(0, 0), (n, 0)])


class DecodeBatch:
    """Decoding of many sequences at once with one KV cache (torch-exporter graphs, i.e.
    with ``position_ids``; see the module docstring).

    Use: :meth:`add` sequences (any time, also between steps), then call :meth:`step` while
    :attr:`active`; both return the ``(key, outcome)`` pairs of the sequences that ended.
    :meth:`cancel` ends one between steps.

    Raises:
        RunnerError: the graph has no ``position_ids`` (its positions cannot skip padding).
    """

    def __init__(self, runner: DecoderGraph, max_tokens: int = MAX_BATCH_TOKENS) -> None:
        if not runner.has_position_ids:
            raise RunnerError(f"{runner.manifest.name}: batched decoding needs a graph with "
                              "position_ids (onnxruntime-genai graphs decode one sequence at a time)")
        self.runner = runner
        self.max_tokens = max_tokens
        self.eos = set(runner.manifest.eos_token_ids)
        self.seqs: list[Decoding] = []
        self.past: list[np.ndarray] | None = None
        self.mask = np.zeros((0, 0), np.int64)
        self.pending: list[int] = []  # each live sequence's next token to feed

    @property
    def active(self) -> int:
        return len(self.seqs)

    def _token_text(self, tok: int) -> str:
        return self.runner.decode([tok])

    def cancel(self, key: Any) -> Outcome | None:
        """End the live sequence ``key`` now (between steps): its row and the cache columns
        no other row uses are freed.

        Returns:
            Its outcome, a :class:`Generation` of the tokens so far with ``stop_reason``
            ``cancelled`` and its compute ms so far; None when ``key`` is not live.
        """
        for b, s in enumerate(self.seqs):
            if s.key == key:
                rows = [i for i in range(len(self.seqs)) if i != b]
                self._keep(rows, [self.pending[i] for i in rows])
                s.outcome.value = s.result("cancelled", self.runner.decode)
                return s.outcome
        return None

    def add(self, items: Sequence[tuple[Any, GenRequest]]) -> list[tuple[Any, Outcome]]:
        """Prefill these sequences and make them part of the batch."""
        done: list[tuple[Any, Outcome]] = []
        fresh: list[Decoding] = []
        for key, req in items:
            seq = Decoding(key, req, Outcome(), self._token_text)
            try:
                if req.max_new_tokens < 1:
                    raise RunnerError(f"max_new_tokens must be ≥ 1, got {req.max_new_tokens}")
                self.runner.check_context(len(req.prompt_ids))
            except RunnerError as exc:
                seq.outcome.error = exc
                done.append((key, seq.outcome))
                continue
            fresh.append(seq)
        for chunk in chunks([len(s.request.prompt_ids) for s in fresh], self.max_tokens):
            group = [fresh[j] for j in chunk]
            ids, mask = padded([s.request.prompt_ids for s in group], left=True)
            try:
                logits, past, ms = _timed(self.runner, ids, mask, None)
            except RunnerError as exc:
                for s in group:
                    s.outcome.error = exc
                    done.append((s.key, s.outcome))
                continue
            for s, share in zip(group, _split(ms, [len(s.request.prompt_ids) for s in group]), strict=True):
                s.outcome.compute_ms += share
                s.prefill_ms = ms
            ended, keep, tokens = self._pick(group, logits[:, -1])
            done.extend(ended)
            if keep:
                sel = np.array(keep, np.int64)
                self._join([group[b] for b in keep], [p[sel] for p in past], mask[sel], tokens)
        return done

    def _join(self, group: list[Decoding], past: list[np.ndarray], mask: np.ndarray,
              tokens: list[int]) -> None:
        if self.past is None or not self.seqs:
            self.seqs, self.past, self.mask, self.pending = list(group), past, mask, tokens
            return
        width = max(self.mask.shape[1], mask.shape[1])
        old, old_mask = _left_pad(self.past, self.mask, width)
        new, new_mask = _left_pad(past, mask, width)
        self.past = [np.concatenate([a, b]) for a, b in zip(old, new, strict=True)]
        self.mask = np.concatenate([old_mask, new_mask])
        self.pending = self.pending + tokens
        self.seqs.extend(group)

    def _pick(self, seqs: list[Decoding], logits: np.ndarray
              ) -> tuple[list[tuple[Any, Outcome]], list[int], list[int]]:
        """Each sequence's next token from its logits (B, V): the ended sequences' outcomes,
        the rows that go on, and the tokens they feed next."""
        done: list[tuple[Any, Outcome]] = []
        keep: list[int] = []
        tokens: list[int] = []
        for b, s in enumerate(seqs):
            tok, logprob = s.pick(logits[b])
            reason = s.take(tok, self.eos, self.runner.decode, self.runner.max_context, logprob)
            if reason is None:
                keep.append(b)
                tokens.append(tok)
                continue
            s.outcome.value = s.result(reason, self.runner.decode)
            done.append((s.key, s.outcome))
        return done, keep, tokens

    def _keep(self, rows: list[int], tokens: list[int]) -> None:
        """Drop the rows not in ``rows``, and the cache columns no remaining row uses."""
        assert self.past is not None
        self.pending = tokens
        if len(rows) == len(self.seqs):
            return
        sel = np.array(rows, np.int64)
        self.seqs = [self.seqs[b] for b in rows]
        if not rows:
            self.past, self.mask = None, np.zeros((0, 0), np.int64)
            return
        mask = self.mask[sel]
        start = int(np.flatnonzero(mask.any(axis=0))[0])
        self.mask = np.ascontiguousarray(mask[:, start:])
        self.past = [np.ascontiguousarray(p[sel][:, :, start:]) for p in self.past]

    def step(self) -> list[tuple[Any, Outcome]]:
        """One decode step for every live sequence; returns those that ended."""
        if not self.seqs:
            return []
        assert self.past is not None
        ids = np.array(self.pending, np.int64)[:, None]
        mask = np.concatenate([self.mask, np.ones((len(self.seqs), 1), np.int64)], axis=1)
        try:
            logits, past, ms = _timed(self.runner, ids, mask, self.past)
        except RunnerError as exc:
            done = []
            for s in self.seqs:
                s.outcome.error = exc
                done.append((s.key, s.outcome))
            self.seqs, self.past, self.pending = [], None, []
            return done
        share = ms / len(self.seqs)
        for s in self.seqs:
            s.outcome.compute_ms += share
            s.decode_ms += ms
        self.past, self.mask = past, mask
        ended, keep, tokens = self._pick(self.seqs, logits[:, -1])
        self._keep(keep, tokens)
        return ended


def generate_batch(runner: DecoderGraph, requests: Sequence[GenRequest],
                   max_tokens: int = MAX_BATCH_TOKENS) -> list[Outcome]:
    """Generate every request in one batch (no later joins); a helper for tests and tools."""
    batch = DecodeBatch(runner, max_tokens)
    out: dict[int, Outcome] = dict(batch.add(list(enumerate(requests))))
    while batch.active:
        out.update(batch.step())
    return [out[i] for i in range(len(requests))]


__all__ = ["MAX_BATCH_TOKENS", "DecodeBatch", "GenRequest", "Generation", "Outcome", "ScoreRequest",
           "chunks", "finish_reason", "generate_batch", "padded", "score_batch"]
