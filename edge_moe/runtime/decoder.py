"""The KV-cache decoder runner: option scoring and generation (greedy or sampled) through onnxruntime.

:class:`OrtRunner` runs a decoder artifact (either exporter's graph: with or without
``position_ids``) and implements the runner interface of :mod:`edge_moe.runtime.capabilities`.
numpy, onnxruntime and `tokenizers` only (never torch or transformers).
"""

from __future__ import annotations

import logging
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_moe.errors import ArtifactError, RunnerError
from edge_moe.runtime.batch import (
    MAX_BATCH_TOKENS,
    DecodeBatch,
    Outcome,
    ScoreRequest,
    _renormalise,
    score_batch,
)
from edge_moe.runtime.capabilities import Capability
from edge_moe.runtime.chat import format_chat, has_chat
from edge_moe.runtime.generation import Decoding, Generation, GenRequest, decode_alone, stop_strings
from edge_moe.runtime.manifest import load_manifest
from edge_moe.runtime.session import ORT_DTYPES, load_tokenizer, log_softmax, make_session
from edge_moe.wire import MODES, Sampling

logger = logging.getLogger(__name__)


class OrtRunner:
    """A KV-cache decoder artifact run by onnxruntime.

    Args:
        artifact_dir: folder with manifest.json, the ONNX file and tokenizer.json.
        providers: onnxruntime providers in priority order (default CPU).
        intra_op_threads / inter_op_threads: onnxruntime thread counts.
        max_context: cap on prompt + generated tokens (default: the model's context).
        max_batch_tokens: padded tokens per batched prefill pass (:mod:`edge_moe.runtime.batch`).
        prepack / arena: onnxruntime memory settings (:func:`edge_moe.runtime.session.make_session`).

    Raises:
        ArtifactError: missing or malformed artifact, wrong manifest version, not a
            decoder, or graph I/O that disagrees with the manifest.
        RunnerError: a requested provider is not available.
    """

    name = "onnxruntime"
    runner_name = "onnxruntime"

    def __init__(
        self,
        artifact_dir: str | Path,
        *,
        providers: Sequence[str | tuple[str, dict[str, Any]]] | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int = 1,
        max_context: int | None = None,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
        prepack: bool = True,
        arena: bool = False,
    ) -> None:
        self.artifact_dir = Path(artifact_dir)
        self.manifest = load_manifest(self.artifact_dir)
        m = self.manifest
        if m.kind != "decoder" or m.decoder is None:
            raise ArtifactError(f"{self.artifact_dir}: kind={m.kind!r}, OrtRunner needs a decoder")
        self.session = make_session(
            self.artifact_dir / m.model_file, providers, intra_op_threads, inter_op_threads,
            prepack=prepack, arena=arena,
        )
        graph_in = [i.name for i in self.session.get_inputs()]
        graph_out = [o.name for o in self.session.get_outputs()]
        if graph_in != m.inputs or graph_out != m.outputs:
            raise ArtifactError(
                f"{self.artifact_dir}: graph I/O {graph_in[:4]}…/{graph_out[:3]}… disagrees with "
                f"the manifest {m.inputs[:4]}…/{m.outputs[:3]}…"
            )
        self.tokenizer = load_tokenizer(self.artifact_dir, m)
        self.num_layers = int(m.decoder["num_layers"])
        self.num_kv_heads = int(m.decoder["num_kv_heads"])
        self.head_dim = int(m.decoder["head_dim"])
        # Graphs from the torch exporter take position_ids and honour any padding; graphs
        # from onnxruntime-genai's builder (GroupQueryAttention) take no position_ids and
        # derive positions from the mask, so they need right padding and one past length.
        self.has_position_ids = "position_ids" in m.inputs
        self._past_names = [n for n in m.inputs if n.startswith("past_key_values.")]
        if len(self._past_names) != 2 * self.num_layers:
            raise ArtifactError(
                f"{self.artifact_dir}: {len(self._past_names)} past_key_values inputs for "
                f"{self.num_layers} layers (expected {2 * self.num_layers})"
            )
        first_past = m.inputs.index(self._past_names[0])
        self.kv_dtype = ORT_DTYPES.get(self.session.get_inputs()[first_past].type, np.float32)
        self.max_context = min(int(m.decoder["max_context"]), max_context or 1 << 62)
        self.max_batch_tokens = int(max_batch_tokens)

    # ---- tokens ---------------------------------------------------------------------

    def format_prompt(self, prompt: str, chat: bool) -> str:
        """The text the model sees: the chat-formatted prompt, or the prompt itself."""
        return format_chat(self.manifest, prompt) if chat else prompt

    def encode(self, text: str, *, formatted_chat: bool = False) -> list[int]:
        """Token ids of ``text``. Chat-formatted text already holds its special tokens,
        so the tokenizer adds none (as ``apply_chat_template`` does)."""
        return list(self.tokenizer.encode(text, add_special_tokens=not formatted_chat).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def check_context(self, n: int, what: str = "prompt") -> None:
        """Raises RunnerError when ``n`` tokens are none or more than the context."""
        if n == 0:
            raise RunnerError(f"{what} is empty after tokenisation")
        if n > self.max_context:
            raise RunnerError(
                f"{what} has {n} tokens, longer than {self.manifest.name}'s context of "
                f"{self.max_context} tokens"
            )

    # ---- the graph ------------------------------------------------------------------

    def empty_past(self, batch: int) -> list[np.ndarray]:
        """Past KV tensors of length 0, for a prefill."""
        shape = (batch, self.num_kv_heads, 0, self.head_dim)
        return [np.zeros(shape, self.kv_dtype) for _ in range(2 * self.num_layers)]

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray | None = None,
        past: list[np.ndarray] | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One pass of the decoder graph.

        Args:
            input_ids: (B, T) int64 new tokens.
            attention_mask: (B, P+T) 1 for real tokens, 0 for padding (default all ones).
                Graphs without ``position_ids`` (onnxruntime-genai) accept right padding
                only.
            past: 2·layers arrays (B, kv_heads, P, head_dim), or None for a prefill.

        Returns:
            logits (B, T, V) float32 and the present KV arrays (B, kv_heads, P+T, head_dim).

        Raises:
            RunnerError: onnxruntime rejected the inputs.
        """
        ids = np.asarray(input_ids, dtype=np.int64)
        b, t = ids.shape
        past = past if past is not None else self.empty_past(b)
        p = past[0].shape[2]
        mask = (
            np.ones((b, p + t), np.int64)
            if attention_mask is None
            else np.asarray(attention_mask, np.int64)
        )
        feed = {"input_ids": ids, "attention_mask": mask}
        if self.has_position_ids:
            feed["position_ids"] = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)[:, p:]  # (B, T)
        feed.update(zip(self._past_names, past, strict=True))
        try:
            out = self.session.run(None, feed)
        except Exception as exc:
            raise RunnerError(
                f"onnxruntime failed on input_ids {ids.shape}, past {p}: {exc}"
            ) from exc
        return out[0].astype(np.float32, copy=False), out[1:]

    # ---- requests -------------------------------------------------------------------

    def _letter_ids(
        self, text: str, prompt_ids: list[int], k: int, formatted_chat: bool
    ) -> list[int]:
        """The token of each option letter right after ``text``: " A" if that is one
        extra token, else "A"."""
        ids = []
        n = len(prompt_ids)
        for letter in string.ascii_uppercase[:k]:
            for cand in (f" {letter}", letter):
                joint = self.encode(text + cand, formatted_chat=formatted_chat)
                if len(joint) == n + 1 and joint[:n] == prompt_ids:
                    ids.append(joint[-1])
                    break
            else:
                raise RunnerError(
                    f"option letter {letter!r} is not a single token after the prompt for "
                    f"{self.manifest.name}'s tokenizer"
                )
        return ids

    def prepare_score(
        self, prompt: str, options: Sequence[str], mode: str = "letter", *, chat: bool = False
    ) -> tuple[list[int], list[int] | None, list[list[int]] | None]:
        """Check a scoring request and tokenise it: the prompt's ids, and the option
        letters' token ids (``letter``) or each option's tokens (``continuation``).

        Raises:
            RunnerError: as :meth:`score_options`.
        """
        if mode not in MODES:
            raise RunnerError(f"unknown scoring mode {mode!r}; choose one of {list(MODES)}")
        if isinstance(options, str) or len(options) == 0:
            raise RunnerError("options must be a non-empty list of strings (got none)")
        if mode == "letter" and len(options) > 26:
            raise RunnerError(f"letter mode supports at most 26 options, got {len(options)}")
        text = self.format_prompt(prompt, chat)
        prompt_ids = self.encode(text, formatted_chat=chat)
        self.check_context(len(prompt_ids))
        if mode == "letter":
            return prompt_ids, self._letter_ids(text, prompt_ids, len(options), chat), None
        conts = [self._continuation_ids(text, prompt_ids, o, chat) for o in options]
        for i, c in enumerate(conts):
            if not c:
                raise RunnerError(f"option {i} ({options[i]!r}) has no tokens")
            self.check_context(len(prompt_ids) + len(c), f"prompt + option {i}")
        return prompt_ids, None, conts

    def score_options(
        self,
        prompt: str,
        options: Sequence[str],
        mode: str = "letter",
        *,
        chat: bool = False,
    ) -> np.ndarray:
        """Log-probabilities over the K options, renormalised so they logsumexp to 0.

        Args:
            prompt: the question; in ``letter`` mode it already lists the options as
                "A. …", "B. …" and ends where the letter should follow ("Answer:").
            options: the K option texts (in ``letter`` mode only K is used).
            mode: ``letter`` or ``continuation``.
            chat: wrap the prompt in the model's chat template first.

        Returns:
            (K,) float64 log-probabilities.

        Raises:
            RunnerError: empty options, K > 26 in letter mode, unknown mode, empty prompt,
                or a prompt (plus option) longer than the context.
        """
        (out,) = self.score_batch([ScoreRequest(prompt, tuple(options), mode, chat)])
        if out.error is not None:
            raise out.error
        return np.asarray(out.value)

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[Outcome]:
        """Score many requests in padded batches (:func:`edge_moe.runtime.batch.score_batch`):
        each gets its log-probs or its own error, and its share of the compute ms."""
        return score_batch(self, requests, self.max_batch_tokens)

    def decode_batch(self) -> DecodeBatch:
        """An empty :class:`edge_moe.runtime.batch.DecodeBatch` over this runner (needs
        :attr:`batches_generation`)."""
        return DecodeBatch(self, self.max_batch_tokens)

    @property
    def batches(self) -> bool:
        """Whether a batch gives each request what it would get alone (within float
        rounding). Not for ``quantize_dynamic`` int8 graphs: their activation scales are
        computed over the whole input tensor, so one row's log-probs depend on the other
        rows of its batch (measured on SmolLM2 int8: up to 2.0 nats apart, and different
        greedy tokens). A node serves such an expert one task at a time."""
        quant = self.manifest.extra.get("quantization") or {}
        return not (isinstance(quant, dict) and quant.get("method") == "quantize_dynamic")

    @property
    def batches_generation(self) -> bool:
        """Whether :meth:`decode_batch` works: graphs with ``position_ids`` (see
        :mod:`edge_moe.runtime.batch`) that :attr:`batches`."""
        return self.has_position_ids and self.batches

    @property
    def capabilities(self) -> frozenset[Capability]:
        """What this artifact can do beyond scoring and generating one request
        (:mod:`edge_moe.runtime.capabilities`): it always streams (``generate(..., on_text=...)``
        reports text as it decodes), samples (``sampling=``) and stops early
        (``should_stop=``); it batches as :attr:`batches` and :attr:`batches_generation` say."""
        caps = {Capability.STREAM, Capability.SAMPLE, Capability.CANCEL}
        if self.batches:
            caps.add(Capability.BATCH_SCORE)
        if self.batches_generation:
            caps.add(Capability.BATCH_GENERATE)
        return frozenset(caps)

    def _continuation_ids(
        self, text: str, prompt_ids: list[int], option: str, chat: bool
    ) -> list[int]:
        joint = self.encode(text + option, formatted_chat=chat)
        n = len(prompt_ids)
        if joint[:n] == prompt_ids and len(joint) > n:
            return joint[n:]
        # the option merges with the prompt's last token: tokenise it on its own
        return list(self.tokenizer.encode(option, add_special_tokens=False).ids)

    def continuation_scores(self, prompt_ids: list[int], conts: list[list[int]]) -> np.ndarray:
        """One request's continuation scores, one option per pass on the prompt's KV cache
        (for graphs without ``position_ids``: GroupQueryAttention places new tokens after
        sum(mask) - T, so their cache cannot hold padding)."""
        logits, past = self.forward(np.array([prompt_ids]))  # prefix KV, computed once
        first = log_softmax(logits[0, -1])  # (V,) log-probs of each option's first token
        scores = np.array([first[c[0]] for c in conts])
        for i, c in enumerate(conts):
            if len(c) > 1:
                logits, _ = self.forward(np.array([c[:-1]]), None, past)
                logp = log_softmax(logits[0])
                scores[i] += sum(logp[j, c[j + 1]] for j in range(len(c) - 1))
        return _renormalise(scores)

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
        eos = set(self.manifest.eos_token_ids)
        req = GenRequest(tuple(ids), max_new_tokens, on_text, stop_strings(stop, sampling), sampling)
        seq = Decoding(None, req, Outcome(), lambda t: self.decode([t]))
        past: list[np.ndarray] = []

        def prefill() -> np.ndarray:
            logits, present = self.forward(np.array([ids]))
            past[:] = present
            return logits[0, -1]  # (V,)

        def step(tok: int) -> np.ndarray:
            logits, present = self.forward(np.array([[tok]]), None, list(past))
            past[:] = present
            return logits[0, -1]  # (V,)

        return decode_alone(seq, prefill, step, eos, self.decode, self.max_context, should_stop)

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
        """Generation with the KV cache: greedy, or sampled as ``sampling`` says
        (:mod:`edge_moe.runtime.sampling`; the same seed gives the same tokens as in a
        :class:`~edge_moe.runtime.batch.DecodeBatch`).

        Args:
            prompt: the user's text.
            max_new_tokens: at most this many new tokens.
            stop: strings that end the generation (excluded from the text), besides
                ``sampling.stop``.
            chat: apply the chat template (default: when the model has one).
            on_text: called with each new piece of decoded text, as it is decoded (a piece
                is held back while the text ends in an incomplete character or in the start
                of a stop string, or when a later token changes what was decoded before;
                the pieces stay a prefix of the final text).
            sampling: temperature, top-k/p, min-p, penalties, seed, stop strings, log-probs
                (None: greedy).
            should_stop: checked before each forward pass; True ends the generation with
                ``stop_reason`` ``cancelled`` and the text so far.

        Raises:
            RunnerError: empty prompt, prompt longer than the context, bad max_new_tokens.
        """
        return self.generate_ids(self.prompt_ids(prompt, chat), max_new_tokens, stop, on_text,
                                 sampling=sampling, should_stop=should_stop)

    def prompt_ids(self, prompt: str, chat: bool | None = None) -> list[int]:
        """The token ids :meth:`generate` decodes from: the prompt, chat-formatted when
        ``chat`` (default: when the model has a chat template)."""
        use_chat = has_chat(self.manifest) if chat is None else chat
        return self.encode(self.format_prompt(prompt, use_chat), formatted_chat=use_chat)

