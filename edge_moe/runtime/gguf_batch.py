"""Continuous batching on a GGUF: :class:`GgufDecodeBatch`, the decode session of
:meth:`edge_moe.runtime.gguf.GgufRunner.decode_batch` (``BATCH_GENERATE``: a runner made with
``n_seq`` > 1, what a node with ``llama_cpp_batch: exact`` builds).

Up to ``n_seq`` sequences decode together through llama.cpp's multi-sequence batch: one
``llama_decode`` per step holds every live sequence's next token. Sequences join between
steps (the node's continuous batching) and leave when they end or are cancelled.

**Alone and batched give the same tokens**, bit for bit (tested against ``generate``). Two
conditions make it so, both measured on SmolLM2 Q8_0 (logits of 3 sequences × 20 steps
against each alone):

- each sequence has its own KV stream (``kv_unified`` off). In one shared cache the attention
  spans every sequence's cells (masked), its length padded to 256, so a row's rounding
  depends on what else is cached: a prompt computed beside another sequence moved its logits
  by up to 1.0;
- attention without flash attention. llama.cpp's CPU flash-attention kernel splits one
  query row's work differently from several rows': a ~400-token sequence's first step beside
  two others moved by 0.48.

With both, equal to 0.0 at every step, one stream or eight. The cost is a lone request's (no
flash attention: prefill 7%, decode 18% slower at ~400 tokens of context) and memory: every
stream holds the per-sequence context (``n_seq`` × its tokens).

**Sequences and the prefix cache.** Sequence 0 is the runner's prefix cache
(``prefix_reuse``): a sequence that starts while no other holds it takes sequence 0 and its
prompt reuses what the cache shares with it, as a lone request does; its tokens stay cached
when it ends, for the next request. A sequence that starts beside it takes another stream and
computes its whole prompt (llama.cpp copies between streams only whole buffers); its cells
go when it ends.

**Room.** A stream holds the runner's per-sequence context (:attr:`GgufRunner.n_ctx`). A
sequence needs its prompt plus its ``max_new_tokens`` (at most ``max_context``); one that
needs more than a stream holds waits (counted in :attr:`active`) until no sequence is live,
and the context then grows for it (:meth:`~edge_moe.runtime.gguf.GgufRunner._fit`); the ones
behind it wait too, in order.

Compute ms: a prompt's pass goes to its sequence; a step's wall time is shared equally by
the sequences in it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_moe.errors import RunnerError
from edge_moe.runtime.generation import Decoding, GenRequest, Outcome

__all__ = ["GgufDecodeBatch"]


class GgufDecodeBatch:
    """A :class:`~edge_moe.runtime.capabilities.DecodeSession` on a ``GgufRunner`` (the
    module docstring): :meth:`add` sequences, :meth:`step` while :attr:`active`, :meth:`cancel`
    one between steps; each returns the ``(key, outcome)`` pairs that ended."""

    def __init__(self, runner: Any) -> None:  # a GgufRunner (which imports this module)
        self.runner = runner
        self.live: list[Decoding] = []
        self.waiting: list[Decoding] = []  # admitted, no room yet
        self._slot: dict[int, int] = {}  # id(Decoding) -> its llama.cpp sequence id
        self._pos: dict[int, int] = {}  # id(Decoding) -> the position of its next token
        self._next: dict[int, int] = {}  # id(Decoding) -> the token it feeds next

    @property
    def active(self) -> int:
        return len(self.live) + len(self.waiting)

    @property
    def seqs(self) -> list[Decoding]:
        return [*self.live, *self.waiting]

    # ---- room -----------------------------------------------------------------------

    def _need(self, s: Decoding) -> int:
        return min(len(s.request.prompt_ids) + s.request.max_new_tokens, self.runner.max_context)

    def _free_slot(self) -> int | None:
        used = set(self._slot.values())
        return next((i for i in range(self.runner.n_seq) if i not in used), None)

    def _start_waiting(self) -> list[tuple[Any, Outcome]]:
        """Start the waiting sequences that fit, oldest first (the module docstring's Room)."""
        r, done = self.runner, []
        while self.waiting:
            s = self.waiting[0]
            slot = self._free_slot()
            if slot is None:
                break
            if self._need(s) > r.n_ctx:
                if self.live:
                    break  # waits until nothing is live
                try:
                    r._fit(self._need(s))
                except RunnerError as exc:
                    self.waiting.pop(0)
                    s.outcome.error = exc
                    done.append((s.key, s.outcome))
                    continue
            self.waiting.pop(0)
            ended = self._prefill(s, slot)
            if ended is not None:
                done.append(ended)
        return done

    def _prefill(self, s: Decoding, slot: int) -> tuple[Any, Outcome] | None:
        """Compute ``s``'s prompt into sequence ``slot`` and pick its first token; its
        ``(key, outcome)`` when it ends there (or fails), else None (it is live)."""
        r, ll = self.runner, self.runner._ll
        ids = list(s.request.prompt_ids)
        t0 = time.perf_counter()
        try:
            if slot == 0:
                logits = r._prefill(ids)  # the prefix cache's own rule
            else:
                mem = ll.llama_get_memory(r.ctx)
                ll.llama_memory_seq_rm(mem, slot, -1, -1)
                r.prompt_tokens += len(ids)
                try:
                    logits = r._decode_chunks(ids, 0, None, seq=slot)[-1]
                except BaseException:
                    ll.llama_memory_seq_rm(mem, slot, -1, -1)
                    raise
        except RunnerError as exc:
            s.outcome.error = exc
            return s.key, s.outcome
        ms = (time.perf_counter() - t0) * 1e3
        s.prefill_ms = ms
        s.outcome.compute_ms += ms
        self._slot[id(s)], self._pos[id(s)] = slot, len(ids)
        self.live.append(s)
        r._session_live = len(self.live)
        return self._take(s, logits)

    def _take(self, s: Decoding, logits: np.ndarray) -> tuple[Any, Outcome] | None:
        """Pick ``s``'s next token: its ``(key, outcome)`` when it ends, else None."""
        tok, logprob = s.pick(logits)
        reason = s.take(tok, self.runner.eos, self.runner.decode, self.runner.max_context, logprob)
        if reason is None:
            self._next[id(s)] = tok
            return None
        self._leave(s)
        s.outcome.value = s.result(reason, self.runner.decode)
        return s.key, s.outcome

    def _leave(self, s: Decoding) -> None:
        """``s`` stops decoding: its cells go, but sequence 0's stay as the prefix cache."""
        self.live.remove(s)
        self.runner._session_live = len(self.live)
        slot = self._slot.pop(id(s))
        self._pos.pop(id(s), None)
        self._next.pop(id(s), None)
        if slot != 0:
            ll = self.runner._ll
            ll.llama_memory_seq_rm(ll.llama_get_memory(self.runner.ctx), slot, -1, -1)

    # ---- the session ----------------------------------------------------------------

    def add(self, items: Sequence[tuple[Any, GenRequest]]) -> list[tuple[Any, Outcome]]:
        """Check these sequences, and start those that fit (the others wait)."""
        r, done = self.runner, []
        for key, req in items:
            s = Decoding(key, req, Outcome(), lambda t: r.decode([t]))
            try:
                if req.max_new_tokens < 1:
                    raise RunnerError(f"max_new_tokens must be ≥ 1, got {req.max_new_tokens}")
                r.check_context(len(req.prompt_ids))
            except RunnerError as exc:
                s.outcome.error = exc
                done.append((key, s.outcome))
                continue
            self.waiting.append(s)
        with r._lock:
            done += self._start_waiting()
        return done

    def step(self) -> list[tuple[Any, Outcome]]:
        """One decode step for every live sequence (after starting waiting ones that fit);
        returns those that ended."""
        r = self.runner
        with r._lock:
            done = self._start_waiting()
            if not self.live:
                return done
            ll, b = r._ll, r._batch
            b.n_tokens = len(self.live)
            for i, s in enumerate(self.live):
                b.token[i], b.pos[i] = self._next[id(s)], self._pos[id(s)]
                b.n_seq_id[i], b.seq_id[i][0], b.logits[i] = 1, self._slot[id(s)], True
            t0 = time.perf_counter()
            rc = ll.llama_decode(r.ctx, b)
            ms = (time.perf_counter() - t0) * 1e3
            if rc != 0:
                exc = RunnerError(f"llama_decode returned {rc} on a step of {len(self.live)} sequences "
                                  f"({r.model_name})")
                for s in list(self.live):
                    self._leave(s)
                    s.outcome.error = exc
                    done.append((s.key, s.outcome))
                r._reset()
                return done
            rows = [np.ctypeslib.as_array(ll.llama_get_logits_ith(r.ctx, i), shape=(r.n_vocab,)).copy()
                    for i in range(len(self.live))]
            for s, logits in zip(list(self.live), rows, strict=True):
                s.outcome.compute_ms += ms / len(rows)
                s.decode_ms += ms
                self._pos[id(s)] += 1
                if self._slot[id(s)] == 0:  # sequence 0's cache now holds the fed token
                    r._cached.append(self._next[id(s)])
                ended = self._take(s, logits)
                if ended is not None:
                    done.append(ended)
            return done

    def cancel(self, key: Any) -> Outcome | None:
        """End sequence ``key`` now, between steps: the tokens so far, ``cancelled``."""
        for s in self.waiting:
            if s.key == key:
                self.waiting.remove(s)
                s.outcome.value = s.result("cancelled", self.runner.decode)
                return s.outcome
        for s in self.live:
            if s.key == key:
                with self.runner._lock:
                    self._leave(s)
                s.outcome.value = s.result("cancelled", self.runner.decode)
                return s.outcome
        return None
