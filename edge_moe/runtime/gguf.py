"""The llama.cpp runner: a GGUF file served as an expert, with no export step.

:class:`GgufRunner` (registry name ``llama.cpp``) runs a ``.gguf`` file through llama.cpp's C
API (the ``llama-cpp-python`` bindings, the ``gguf`` extra) and keeps the runner interface
and RESULT contract of :class:`~edge_moe.runtime.decoder.OrtRunner`:

- **tokens** are llama.cpp's own tokenizer (what llama.cpp users get), with OrtRunner's
  rules: plain text gets the model's BOS when its vocabulary asks for one, chat-formatted
  text none; special-token text is parsed as special tokens (as `tokenizers` does); decoding
  skips control tokens and turns a character cut between tokens into U+FFFD;
- **chat**: the GGUF's ``tokenizer.chat_template`` is rendered once, at load, around a
  sentinel user message (as the exporter does for a manifest's ``chat_prefix`` and
  ``chat_suffix``), so a prompt is formatted by concatenation exactly as OrtRunner formats it;
- **scoring**: ``letter`` reads the option letters' logits at the prompt's last position and
  renormalises over them; ``continuation`` sums each option's token log-probs, computing the
  prompt's KV cache once and dropping each option's tail from it before the next;
- **generation**: :class:`~edge_moe.runtime.generation.Decoding` picks every token from
  llama.cpp's logits with our :class:`~edge_moe.runtime.sampling.Sampler` (not llama.cpp's
  sampler chain), so a seed draws the same way on every runner and greedy is ``argmax``;
  stop strings, streaming and the stop reasons are the shared rule. A sequence ends at any
  of llama.cpp's end-of-generation tokens (``llama_vocab_is_eog``: for SmolLM2 both
  ``<|im_end|>`` and ``<|endoftext|>``, where the exported manifest names the first only).

Capabilities: ``STREAM``, ``SAMPLE``, ``CANCEL``; with ``n_seq`` > 1 also
``BATCH_GENERATE``: :meth:`GgufRunner.decode_batch` decodes up to ``n_seq`` sequences together
through llama.cpp's multi-sequence batch (:mod:`edge_moe.runtime.gguf_batch`), each token
bit for bit what the sequence gets alone (tested). Such a runner gives every sequence its own
KV stream (``kv_unified`` off) and computes attention without flash attention, the two
conditions under which llama.cpp's rows do not depend on the other sequences (measured; the
module :mod:`~edge_moe.runtime.gguf_batch` says why), at a cost to a lone request (SmolLM2
Q8_0, ~400-token prompt: prefill 7%, decode 18% slower). Option scoring is one at a time.

**Prompts in aligned chunks.** A prompt is computed in chunks of ``n_batch`` (default
:data:`CHUNK`) tokens whose bounds are multiples of ``n_batch`` in absolute positions. llama.cpp's
CPU kernels give a row results that depend on the batch it was computed in (splitting SmolLM2's
Q4_1 prompt anywhere moves its last logits by up to 1.0), so fixed bounds are what make the
prefix reuse below exact. 128-token chunks cost 0 to 6% of prefill against one 512-token batch
(~100 and ~500-token prompts, the three demo models, 2 threads; 64-token chunks cost 7 to 23%).

**Prefix reuse** (``prefix_reuse``). The context keeps the last request's tokens in its KV
cache; a new request keeps part of what it shares with them and computes the rest (a
conversation's earlier turns, a retried prompt, a shared system prompt or few-shot header):

- ``"exact"`` (the default): only the whole chunks it shares with rows computed as whole
  chunks of a prompt; rows computed while generating (one token per pass), and a chunk shared
  only in part, are computed again. Every answer is then bit for bit what the same request
  gets from a fresh context (tested), whatever came before it. A shared prefix shorter than
  one chunk (a chat template's short system prompt) is computed again.
- ``"tokens"``: every shared token, as llama.cpp's own prompt cache (llama-server,
  ``llama_cpp.Llama``) does. Faster on short shared prefixes; the reused rows were computed
  in another batch, so an answer depends on the request before it, by llama.cpp's batch
  rounding (up to 0.24 nats on SmolLM2's Q4_1 letter log-probs; a greedy reply may change).
- ``"off"``: every prompt from position 0.

It is one sequence in the cache the context already holds, so it costs no memory. The last prompt token is always computed (its logits are the answer). With a
sliding-window model (Gemma 3) the prefix is reused only while the window's positions before it
are still cached (llama.cpp's own server rule). ``self.reused_tokens`` / ``self.prompt_tokens``
count what was reused and asked.

**Memory: a context that grows.** llama.cpp allocates a context's KV cache (f16) whole when
the context is made, and writes all of it, so its size is resident from then on. The runner
makes its context ``initial_context`` tokens (default :data:`INITIAL_CONTEXT`) and, when a
request needs more positions (its prompt plus ``max_new_tokens``, or plus its longest
option), makes it again at the next power of two that holds them, up to ``max_context``
(default :data:`DEFAULT_CONTEXT` tokens, at most the model's training context): the memory
follows the longest request served, as OrtRunner's cache follows the prompt, instead of the
cap. Measured (SmolLM2-135M Q4_1, 2 threads): peak RSS 266 MB with 4,096 tokens allocated,
196 MB with 1,024, 184 MB with 512; the same logits and tokens at every size (the cache's
size changes no computation: tested). Growing frees the old context before it makes the new
one (no moment with both), costs the prefix cache once and a few ms; a context that cannot
be made raises :class:`RunnerError` for that request and the runner keeps the old size.
``initial_context=max_context`` allocates the whole cap at load, as llama-server and
llama-cli do with their ``--ctx-size`` (4,096 by default). A runner with ``n_seq`` > 1 holds
that per-sequence context once per sequence (a KV stream each; :attr:`kv_cells` in all).

Starting llama.cpp in a process (its CPU backend, its threads' wait policy, its log) is
:mod:`edge_moe.runtime.gguf_start`.

numpy and ``llama_cpp`` only (imported lazily, when a runner is built). One module because
one llama.cpp context is one state: the tokens its cache holds, the chunks that make reuse
exact and the requests that read and move them share one lock and one set of invariants.
"""

from __future__ import annotations

import ctypes
import logging
import os
import string
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_moe.config_schema import PREFIX_REUSE
from edge_moe.errors import ArtifactError, RunnerError
from edge_moe.runtime.batch import _renormalise
from edge_moe.runtime.capabilities import Capability
from edge_moe.runtime.generation import (
    Decoding,
    Generation,
    GenRequest,
    Outcome,
    decode_alone,
    stop_strings,
)
from edge_moe.runtime.gguf_start import import_llama_cpp, spin_in_effect, start_llama_cpp
from edge_moe.runtime.sampling import log_softmax64
from edge_moe.wire import MODES, Sampling

logger = logging.getLogger(__name__)

__all__ = ["CHUNK", "DEFAULT_CONTEXT", "INITIAL_CONTEXT", "GgufRunner"]

DEFAULT_CONTEXT = 4096  # the most tokens a request may use (see the module docstring's Memory)
INITIAL_CONTEXT = 512  # tokens of KV cache allocated at load; grows as requests need
CHUNK = 128  # tokens per aligned prompt chunk (see the module docstring)
MAX_SEQ = 64  # sequences one context decodes together at most (n_seq)
_SENTINEL = "\x00EDGE_MOE_USER_MESSAGE\x00"


def _gguf_path(artifact: str | Path) -> Path:
    """The ``.gguf`` file of an expert's artifact: the file, or the one ``.gguf`` in a folder."""
    p = Path(artifact)
    if p.is_dir():
        found = sorted(p.glob("*.gguf"))
        if len(found) != 1:
            raise ArtifactError(f"{p}: runner 'llama.cpp' needs one .gguf file in the folder, found "
                                f"{[f.name for f in found]}")
        p = found[0]
    if not p.is_file() or p.suffix != ".gguf":
        raise ArtifactError(f"{p}: runner 'llama.cpp' needs a .gguf file (the expert's artifact)")
    return p


class GgufRunner:
    """A GGUF file run by llama.cpp (see the module docstring).

    Args:
        artifact: the ``.gguf`` file, or a folder holding exactly one.
        intra_op_threads: llama.cpp threads for prefill and decode (default: the host's cores).
        max_context: the most positions (prompt + generated tokens) a request may use, the KV
            cache's cap (default :data:`DEFAULT_CONTEXT`, at most the model's training context).
        initial_context: KV cache tokens allocated at load (default :data:`INITIAL_CONTEXT`,
            at most ``max_context``); it grows as requests need (the module docstring's Memory).
        n_batch: tokens per ``llama_decode`` of a prompt: the aligned chunk (the module docstring).
        precise: an f32 KV cache and no flash attention, in place of llama.cpp's defaults (f16
            cache, flash attention where it can): on the same F32 weights, SmolLM2's letter
            log-probs are then within 4e-5 nats of onnxruntime's fp32, instead of 1e-2. For
            parity checks; the defaults are what llama.cpp users run.
        spin: how long each thread polls at ggml's barrier before sleeping (``GOMP_SPINCOUNT``;
            None: :data:`~edge_moe.runtime.gguf_start.DEFAULT_SPIN`; the environment's
            ``OMP_WAIT_POLICY``/``GOMP_SPINCOUNT`` win, and libgomp reads them once per
            process). ``self.spin``: what is in effect.
        prefix_reuse: what a request keeps of the tokens it shares with the cache: ``"exact"``,
            ``"tokens"`` or ``"off"`` (the module docstring).
        n_seq: sequences :meth:`decode_batch` decodes together (a node's ``max_batch``); 1:
            one at a time, no ``BATCH_GENERATE``. They share the one cache (and its cap).

    Raises:
        RunnerError: ``llama_cpp`` does not import (the message names the extra).
        ArtifactError: no .gguf file, or llama.cpp cannot load it.
    """

    name = "llama.cpp"
    runner_name = "llama.cpp"
    capabilities: frozenset[Capability] = frozenset(
        {Capability.STREAM, Capability.SAMPLE, Capability.CANCEL})

    def __init__(self, artifact: str | Path, *, intra_op_threads: int | None = None,
                 max_context: int | None = None, initial_context: int | None = None, n_batch: int = CHUNK,
                 precise: bool = False, spin: int | None = None, prefix_reuse: str = "exact",
                 n_seq: int = 1) -> None:
        if prefix_reuse not in PREFIX_REUSE:
            raise RunnerError(f"prefix_reuse={prefix_reuse!r}: choose one of {list(PREFIX_REUSE)}")
        if not 1 <= int(n_seq) <= min(MAX_SEQ, n_batch):
            raise RunnerError(f"n_seq={n_seq!r}: sequences decoded together must be 1 to {min(MAX_SEQ, n_batch)}")
        self.n_seq = int(n_seq)
        if self.n_seq > 1:  # this instance decodes sequences together
            self.capabilities = type(self).capabilities | {Capability.BATCH_GENERATE}
        self.path = _gguf_path(artifact)
        self.prefix_reuse = prefix_reuse
        self._cached: list[int] = []  # the tokens at positions 0… of the cache (sequence 0)
        self._exact = 0  # its leading positions computed in whole aligned chunks of a prompt
        self.prompt_tokens = self.reused_tokens = 0  # totals over requests (see prefix_reuse)
        ll = self._ll = import_llama_cpp(spin)
        self.backend = start_llama_cpp(ll)
        self.spin = spin_in_effect()
        self.threads = int(intra_op_threads or os.cpu_count() or 1)
        self.n_batch = int(n_batch)
        self.model: Any = None  # llama.cpp handles, freed by close()
        self.ctx: Any = None
        self._batch: Any = None
        mp = ll.llama_model_default_params()
        self.model = ll.llama_model_load_from_file(str(self.path).encode(), mp)
        if not self.model:
            raise ArtifactError(f"llama.cpp cannot load {self.path} (not a GGUF it knows? its log says why "
                                "at debug level: `edge-moe -vv ...`)")
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.n_vocab = int(ll.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(ll.llama_model_n_ctx_train(self.model))
        self.n_swa = int(ll.llama_model_n_swa(self.model))  # 0: no sliding-window layers
        self.max_context = min(int(max_context or DEFAULT_CONTEXT), self.n_ctx_train)
        self.precise = precise
        self.n_ctx = 0  # KV cache tokens per sequence (grows; _make_context)
        self.kv_cells = 0  # KV cache tokens in all: n_ctx per sequence × n_seq
        self._session_live = 0  # sequences a decode session (gguf_batch) holds now
        self.context_grown = 0  # how many times a request made it larger
        if not self._make_context(min(int(initial_context or INITIAL_CONTEXT), self.max_context)):
            self.close()
            raise ArtifactError(f"llama.cpp cannot make a context of {initial_context or INITIAL_CONTEXT} "
                                f"tokens for {self.path}")
        self._batch = ll.llama_batch_init(self.n_batch, 0, 1)
        self.model_name = self._meta("general.name") or self.path.stem
        self.eos = {t for t in range(self.n_vocab) if ll.llama_vocab_is_eog(self.vocab, t)}
        self._pieces: dict[int, bytes] = {}
        self.chat_prefix, self.chat_suffix = self._chat_parts()
        self._lock = threading.Lock()  # one llama.cpp context: one request at a time
        logger.info("llama.cpp runner %s: %d threads, context %d of at most %d tokens, backend %s",
                    self.path.name, self.threads, self.n_ctx, self.max_context, self.backend or "built in")

    # ---- lifetime -------------------------------------------------------------------

    def close(self) -> None:
        """Free the batch, the context and the model (idempotent)."""
        ll = self._ll
        batch, self._batch = self._batch, None
        if batch is not None:
            ll.llama_batch_free(batch)
        ctx, self.ctx = self.ctx, None
        if ctx:
            ll.llama_free(ctx)
        model, self.model = self.model, None
        if model:
            ll.llama_model_free(model)

    def __del__(self) -> None:
        if getattr(self, "_ll", None) is not None and hasattr(self, "model"):
            self.close()

    def __enter__(self) -> GgufRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- tokens ---------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        """A GGUF metadata value as text, or None."""
        buf = ctypes.create_string_buffer(512)
        n = self._ll.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def _chat_parts(self) -> tuple[str | None, str | None]:
        """The GGUF's chat template rendered around one user message: (prefix, suffix)."""
        raw = self._ll.llama_model_chat_template(self.model, None)
        if not raw:
            return None, None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        def text(tok: int) -> str:
            return self._piece(tok, special=True).decode("utf-8", "replace") if tok >= 0 else ""

        try:
            fmt = Jinja2ChatFormatter(raw.decode("utf-8"), eos_token=text(self._ll.llama_vocab_eos(self.vocab)),
                                      bos_token=text(self._ll.llama_vocab_bos(self.vocab)),
                                      add_generation_prompt=True)
            rendered = fmt(messages=[{"role": "user", "content": _SENTINEL}]).prompt
        except Exception as exc:  # a template jinja2 cannot render
            raise ArtifactError(f"{self.path}: its chat template does not render: {exc}") from exc
        if rendered.count(_SENTINEL) != 1:
            raise ArtifactError(f"{self.path}: chat template does not render the user message exactly once")
        prefix, suffix = rendered.split(_SENTINEL)
        return prefix, suffix

    @property
    def has_chat(self) -> bool:
        """True when the GGUF carries a chat template."""
        return self.chat_prefix is not None

    def format_prompt(self, prompt: str, chat: bool) -> str:
        """The text the model sees: the chat-formatted prompt, or the prompt itself.

        Raises:
            RunnerError: ``chat`` for a model without a chat template.
        """
        if not chat:
            return prompt
        if self.chat_prefix is None:
            raise RunnerError(f"{self.model_name} has no chat template (a base model); call with chat=False")
        return f"{self.chat_prefix}{prompt}{self.chat_suffix}"

    def encode(self, text: str, *, formatted_chat: bool = False) -> list[int]:
        """Token ids of ``text`` (BOS as the vocabulary asks, unless ``formatted_chat``)."""
        raw = text.encode("utf-8")
        n_max = len(raw) + 8
        while True:
            buf = (self._ll.llama_token * n_max)()
            n = self._ll.llama_tokenize(self.vocab, raw, len(raw), buf, n_max, not formatted_chat, True)
            if n >= 0:
                return list(buf[:n])
            n_max = -n

    def _piece(self, tok: int, special: bool = False) -> bytes:
        """The bytes of one token (control tokens: empty unless ``special``)."""
        piece = None if special else self._pieces.get(tok)
        if piece is None:
            buf = ctypes.create_string_buffer(256)
            n = self._ll.llama_token_to_piece(self.vocab, tok, buf, len(buf), 0, special)
            piece = buf.raw[:max(n, 0)]
            if not special:
                self._pieces[tok] = piece
        return piece

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``, control tokens skipped; a cut character is U+FFFD."""
        return b"".join(self._piece(int(t)) for t in ids).decode("utf-8", "replace")

    def check_context(self, n: int, what: str = "prompt") -> None:
        """Raises RunnerError when ``n`` tokens are none or more than the context."""
        if n == 0:
            raise RunnerError(f"{what} is empty after tokenisation")
        if n > self.max_context:
            raise RunnerError(f"{what} has {n} tokens, longer than {self.model_name}'s context of "
                              f"{self.max_context} tokens")

    def prompt_ids(self, prompt: str, chat: bool | None = None) -> list[int]:
        """The token ids :meth:`generate` decodes from: the prompt, chat-formatted when
        ``chat`` (default: when the model has a chat template)."""
        use_chat = self.has_chat if chat is None else chat
        return self.encode(self.format_prompt(prompt, use_chat), formatted_chat=use_chat)

    # ---- the context ----------------------------------------------------------------

    def _make_context(self, n_ctx: int) -> bool:
        """Free the context (if any) and make one of ``n_ctx`` tokens per sequence; False when
        llama.cpp cannot (then there is none). The cache starts empty."""
        ll = self._ll
        if self.ctx:
            ll.llama_free(self.ctx)
            self.ctx = None
        self._cached, self._exact, self.n_ctx, self.kv_cells = [], 0, 0, 0
        cp = ll.llama_context_default_params()
        cp.n_ctx = n_ctx * self.n_seq
        cp.n_batch = cp.n_ubatch = self.n_batch
        cp.n_threads = cp.n_threads_batch = self.threads
        cp.no_perf = True
        if self.n_seq > 1:  # a KV stream per sequence, attention without flash attention:
            cp.n_seq_max, cp.kv_unified = self.n_seq, False  # a row then does not depend on the
            cp.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED  # other sequences (module doc)
        if self.precise:
            cp.type_k = cp.type_v = ll.GGML_TYPE_F32
            cp.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = ll.llama_init_from_model(self.model, cp)
        if self.ctx:
            self.kv_cells = int(ll.llama_n_ctx(self.ctx))  # llama.cpp may round it up
            self.n_ctx = self.kv_cells // self.n_seq
        return bool(self.ctx)

    def _fit(self, n: int) -> None:
        """Make the context hold ``n`` positions (at most ``max_context``): the next power of
        two from its size (the module docstring's Memory). Under the lock.

        Raises:
            RunnerError: llama.cpp cannot make it (the runner keeps the old size).
        """
        n = min(n, self.max_context)
        if n <= self.n_ctx:
            return
        if self._session_live:
            raise RunnerError(f"{self.model_name}: the context cannot grow while a decode batch holds "
                              f"{self._session_live} sequences")
        old, size = self.n_ctx, max(self.n_ctx, 1)
        while size < n:
            size *= 2
        size = min(size, self.max_context)
        if self._make_context(size):
            self.context_grown += 1
            logger.info("llama.cpp runner %s: context %d -> %d tokens", self.path.name, old, self.n_ctx)
            return
        if not self._make_context(old):
            raise RunnerError(f"llama.cpp cannot make a context of {size} tokens for {self.model_name}, nor "
                              f"again its old {old}: the runner is unusable")
        raise RunnerError(f"llama.cpp cannot make a context of {size} tokens for {self.model_name} (out of "
                          f"memory?); requests up to {old} tokens still run")

    def _alone(self) -> None:
        """Raises RunnerError when a decode session holds sequences (a lone request would take
        sequence 0 from under it; a node serves them one after the other)."""
        if self._session_live:
            raise RunnerError(f"{self.model_name}: a decode batch holds {self._session_live} sequences; "
                              "finish it before a lone request")

    def _reset(self) -> None:
        """Empty sequence 0 (its cells are marked free; llama.cpp masks what they held); the
        other sequences of a decode batch keep theirs."""
        self._cached, self._exact = [], 0
        mem = self._ll.llama_get_memory(self.ctx)
        if self.n_seq > 1:
            self._ll.llama_memory_seq_rm(mem, 0, -1, -1)
        else:
            self._ll.llama_memory_clear(mem, False)

    def _truncate(self, n: int) -> bool:
        """Drop every cached position from ``n`` on; False when the cache cannot."""
        ok = bool(self._ll.llama_memory_seq_rm(self._ll.llama_get_memory(self.ctx), 0, n, -1))
        if ok:
            del self._cached[n:]
            self._exact = min(self._exact, n)
        return ok

    def _reusable(self, ids: Sequence[int]) -> int:
        """How many leading tokens of ``ids`` the cache already holds and may keep: the
        prefix shared with :attr:`_cached`, less the last prompt token (whose logits are
        needed); with ``"exact"`` cut to the whole chunks computed as a prompt's; 0 when a
        sliding window has dropped positions the rest would attend to."""
        if self.prefix_reuse == "off" or not self._cached:
            return 0
        exact = self.prefix_reuse == "exact"
        n = 0
        for a, b in zip(self._cached[:self._exact] if exact else self._cached, ids[:-1], strict=False):
            if a != b:
                break
            n += 1
        if exact:
            n -= n % self.n_batch
        if n and self.n_swa > 0:
            pos_min = int(self._ll.llama_memory_seq_pos_min(self._ll.llama_get_memory(self.ctx), 0))
            if pos_min > max(0, n - self.n_swa):
                return 0
        return n

    def _prefill(self, ids: Sequence[int]) -> np.ndarray:
        """The (V,) logits after ``ids``, computing only what the cache lacks (the module
        docstring's prefix reuse); the cache then holds ``ids``. On an error the cache is
        emptied."""
        n = self._reusable(ids)
        if n == 0:
            self._reset()
        elif n < len(self._cached) and not self._truncate(n):
            self._reset()
            n = 0
        self.prompt_tokens += len(ids)
        self.reused_tokens += n
        logits = self._eval(ids[n:], n)[-1]
        self._exact = len(ids) - len(ids) % self.n_batch
        return logits

    def _eval(self, ids: Sequence[int], start: int, logits_from: int | None = None) -> np.ndarray:
        """Decode ``ids`` at positions ``start``… into the cache, in chunks whose bounds are
        multiples of ``n_batch`` (the module docstring); :attr:`_cached` then ends with them.
        On an error the cache is emptied (not left half written).

        Args:
            ids: the new tokens.
            start: the position of ``ids[0]`` (the cache holds positions before it).
            logits_from: return the logits of ``ids[logits_from:]``; None: of the last only.

        Returns:
            (T, V) float32 logits of the asked positions.

        Raises:
            RunnerError: llama_decode failed.
        """
        try:
            rows = self._decode_chunks(ids, start, logits_from)
        except BaseException:
            self._reset()
            raise
        self._cached.extend(int(t) for t in ids)
        return rows

    def _decode_chunks(self, ids: Sequence[int], start: int, logits_from: int | None,
                       seq: int = 0) -> np.ndarray:
        """:meth:`_eval`'s passes, into sequence ``seq``; the cache's bookkeeping is the caller's."""
        ll, b = self._ll, self._batch
        first = len(ids) - 1 if logits_from is None else logits_from
        rows: list[np.ndarray] = []
        c0 = 0
        while c0 < len(ids):
            pos = start + c0
            chunk = ids[c0:c0 + self.n_batch - pos % self.n_batch]
            b.n_tokens = len(chunk)
            for i, tok in enumerate(chunk):
                b.token[i] = int(tok)
                b.pos[i] = pos + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = seq
                b.logits[i] = c0 + i >= first
            rc = ll.llama_decode(self.ctx, b)
            if rc != 0:
                raise RunnerError(f"llama_decode returned {rc} on {len(chunk)} tokens at position "
                                  f"{pos} ({self.model_name})")
            for i in range(max(first - c0, 0), len(chunk)):
                ptr = ll.llama_get_logits_ith(self.ctx, i)
                rows.append(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy())
            c0 += len(chunk)
        return np.stack(rows)

    # ---- requests -------------------------------------------------------------------

    def _letter_ids(self, text: str, prompt_ids: list[int], k: int, chat: bool) -> list[int]:
        """The token of each option letter right after ``text``: " A" if that is one extra
        token, else "A" (OrtRunner's rule)."""
        ids, n = [], len(prompt_ids)
        for letter in string.ascii_uppercase[:k]:
            for cand in (f" {letter}", letter):
                joint = self.encode(text + cand, formatted_chat=chat)
                if len(joint) == n + 1 and joint[:n] == prompt_ids:
                    ids.append(joint[-1])
                    break
            else:
                raise RunnerError(f"option letter {letter!r} is not a single token after the prompt "
                                  f"for {self.model_name}'s tokenizer")
        return ids

    def _continuation_ids(self, text: str, prompt_ids: list[int], option: str, chat: bool) -> list[int]:
        joint = self.encode(text + option, formatted_chat=chat)
        n = len(prompt_ids)
        if joint[:n] == prompt_ids and len(joint) > n:
            return joint[n:]
        # the option merges with the prompt's last token: tokenise it on its own
        return self.encode(option, formatted_chat=True)

    def score_options(self, prompt: str, options: Sequence[str], mode: str = "letter", *,
                      chat: bool = False) -> np.ndarray:
        """Log-probabilities over the K options, renormalised so they logsumexp to 0
        (the contract of :meth:`OrtRunner.score_options <edge_moe.runtime.decoder.OrtRunner.score_options>`).

        Args:
            prompt: the question; in ``letter`` mode it lists the options and ends where the
                letter should follow ("Answer:").
            options: the K option texts (in ``letter`` mode only K is used).
            mode: ``letter`` or ``continuation``.
            chat: wrap the prompt in the model's chat template first.

        Returns:
            (K,) float64 log-probabilities.

        Raises:
            RunnerError: empty options, K > 26 in letter mode, unknown mode, empty prompt, a
                prompt (plus option) longer than the context, or a llama.cpp failure.
        """
        if mode not in MODES:
            raise RunnerError(f"unknown scoring mode {mode!r}; choose one of {list(MODES)}")
        if isinstance(options, str) or len(options) == 0:
            raise RunnerError("options must be a non-empty list of strings (got none)")
        if mode == "letter" and len(options) > 26:
            raise RunnerError(f"letter mode supports at most 26 options, got {len(options)}")
        text = self.format_prompt(prompt, chat)
        ids = self.encode(text, formatted_chat=chat)
        self.check_context(len(ids))
        if mode == "letter":
            letters = self._letter_ids(text, ids, len(options), chat)
            with self._lock:
                self._alone()
                self._fit(len(ids))
                z = self._prefill(ids)  # (V,)
            return _renormalise(z[letters].astype(np.float64))
        conts = [self._continuation_ids(text, ids, o, chat) for o in options]
        for i, c in enumerate(conts):
            if not c:
                raise RunnerError(f"option {i} ({options[i]!r}) has no tokens")
            self.check_context(len(ids) + len(c), f"prompt + option {i}")
        with self._lock:
            self._alone()
            self._fit(len(ids) + max(len(c) for c in conts))
            return self._continuations(ids, conts)

    def _continuations(self, ids: list[int], conts: list[list[int]]) -> np.ndarray:
        """Each option's summed token log-probs on the prompt's cache, computed once."""
        first = log_softmax64(self._prefill(ids))  # (V,) each option's first token
        scores = np.array([first[c[0]] for c in conts])
        n = len(ids)
        for i, c in enumerate(conts):
            if len(c) < 2:
                continue
            if not self._truncate(n):  # a cache that cannot drop a tail: start again
                self._reset()
                self._prefill(ids)
            logp = np.array([log_softmax64(row) for row in self._eval(c[:-1], n, logits_from=0)])
            scores[i] += sum(logp[j, c[j + 1]] for j in range(len(c) - 1))
        return _renormalise(scores)

    def decode_batch(self) -> Any:
        """An empty decode session over this runner (``n_seq`` > 1): a
        :class:`edge_moe.runtime.gguf_batch.GgufDecodeBatch`."""
        from edge_moe.runtime.gguf_batch import GgufDecodeBatch

        if self.n_seq < 2:
            raise RunnerError(f"{self.model_name}: batched decoding needs n_seq > 1 (nodes[].max_batch)")
        return GgufDecodeBatch(self)

    def generate_ids(
        self, prompt_ids: Sequence[int], max_new_tokens: int, stop: Sequence[str] | None = None,
        on_text: Callable[[str], None] | None = None, *, sampling: Sampling | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Generation:
        """Decoding from token ids, one sequence; see :meth:`generate`."""
        if max_new_tokens < 1:
            raise RunnerError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}")
        ids = list(prompt_ids)
        self.check_context(len(ids))
        req = GenRequest(tuple(ids), max_new_tokens, on_text, stop_strings(stop, sampling), sampling)
        seq = Decoding(None, req, Outcome(), lambda t: self.decode([t]))
        pos = [len(ids)]

        def step(tok: int) -> Any:
            logits = self._eval([tok], pos[0])[-1]
            pos[0] += 1
            return logits

        with self._lock:
            self._alone()
            self._fit(len(ids) + max_new_tokens)
            return decode_alone(seq, lambda: self._prefill(ids), step, self.eos, self.decode,
                                self.max_context, should_stop)

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 64,
        stop: Sequence[str] | None = None,
        *,
        chat: bool | None = None,
        on_text: Callable[[str], None] | None = None,
        sampling: Sampling | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Generation:
        """Generation with llama.cpp's KV cache, greedy or sampled as ``sampling`` says: the
        arguments and result of :meth:`OrtRunner.generate <edge_moe.runtime.decoder.OrtRunner.generate>`.

        Raises:
            RunnerError: empty prompt, prompt longer than the context, bad max_new_tokens,
                or a llama.cpp failure.
        """
        return self.generate_ids(self.prompt_ids(prompt, chat), max_new_tokens, stop, on_text,
                                 sampling=sampling, should_stop=should_stop)

